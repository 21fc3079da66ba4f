"""The fingerprint of the code that computes a trajectory's numbers: part of its identity, beside the config hash.

It covers the import closure of the engine (``ENGINE``) inside sddkit, found from the code's own import
statements, and hashes each module's syntax tree without docstrings: comments, formatting, docstrings and
every module outside the closure (compare, plots, the CLI, the sweep, the store) are not part of it.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

# The modules whose code makes the numbers: the round loop, and the pinned data files DVC's stages train on.
ENGINE = ("trajectory", "prepare")
IDENTITY_VERSION = "2"  # runs tagged before this scheme hashed every file and every config key


def package_folder() -> Path:
    return Path(__file__).resolve().parent


@functools.cache
def code_hash() -> str:
    """The fingerprint of the package *as imported* (an edited editable install, or a copy on PYTHONPATH,
    fingerprints its own code). Computed once per process: its modules are imported once."""
    return source_hash(package_folder())


def source_hash(folder: Path) -> str:
    """sha256 over (relative path, docstring-free syntax tree) of the engine's modules in ``folder``; 16 hex."""
    digest = hashlib.sha256()
    for relative in engine_files(folder):
        digest.update(f"{relative}\0{syntax_dump((folder / relative).read_text())}\n".encode())
    return digest.hexdigest()[:16]


def engine_files(folder: Path | None = None) -> list[str]:
    """The engine's import closure inside the package, as sorted paths relative to ``folder``."""
    folder = folder or package_folder()
    seen, todo = set(), [module_file(folder, name) for name in ENGINE]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        todo.extend(imported_files(folder, path))
    return sorted(p.relative_to(folder).as_posix() for p in seen)


def module_file(folder: Path, dotted: str) -> Path | None:
    """``a.b`` -> folder/a/b.py or folder/a/b/__init__.py, or None where it is not a module of the package."""
    base = folder.joinpath(*dotted.split(".")) if dotted else folder
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if dotted and candidate.is_file():
            return candidate
    return None


def imported_files(folder: Path, path: Path) -> list[Path | None]:
    """The package's modules ``path`` imports, anywhere in it (a lazy import inside a function counts too).
    The package's own ``__init__`` is left out: it only re-exports the user API and runs no engine code."""
    package = path.parent.relative_to(folder).parts  # where a relative import starts
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [module_file(folder, inside(a.name)) for a in node.names if inside(a.name) is not None]
        elif isinstance(node, ast.ImportFrom):
            base = absolute(node, package)
            if base is None:
                continue
            found.append(module_file(folder, base))
            # ``from sddkit import train``: the names may be modules themselves
            found += [module_file(folder, f"{base}.{a.name}" if base else a.name) for a in node.names]
    return found


def inside(name: str) -> str | None:
    """``sddkit.x.y`` -> ``x.y``; ``sddkit`` -> ''; another package -> None."""
    if name == "sddkit":
        return ""
    return name[len("sddkit."):] if name.startswith("sddkit.") else None


def absolute(node: ast.ImportFrom, package: tuple[str, ...]) -> str | None:
    if node.level == 0:
        return inside(node.module or "")
    parts = list(package[:len(package) - (node.level - 1)]) if node.level > 1 else list(package)
    return ".".join(parts + ([node.module] if node.module else []))


def syntax_dump(source: str) -> str:
    """The module's syntax tree without docstrings, as text: comments and layout are not in a tree."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)
