"""The code half of a run's identity, and a run's provenance. The fingerprint hashes the docstring-free syntax trees
of the engine's (``ENGINE``) import closure inside sddkit: comments, docstrings and every module outside the closure
(compare, plots, the CLI, the sweep, the store) are not part of it."""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sddkit.config import Config

# The modules whose code makes the numbers: the round loop, and the pinned data files DVC's stages train on.
ENGINE = ("trajectory", "prepare")
IDENTITY_VERSION = "2"  # runs tagged before this scheme hashed every file and every config key
IDENTITY_TAG = "sddkit.identity"


def package_folder() -> Path:
    return Path(__file__).resolve().parent


@functools.cache
def code_hash() -> str:
    """The fingerprint of the package *as imported* (a copy on PYTHONPATH fingerprints its own code); once per
    process, as its modules are imported once."""
    return source_hash(package_folder())


def source_hash(folder: Path) -> str:
    """sha256 over (relative path, docstring-free syntax tree) of the engine's modules; 16 hex."""
    digest = hashlib.sha256()
    for relative in engine_files(folder):
        digest.update(f"{relative}\0{syntax_dump((folder / relative).read_text())}\n".encode())
    return digest.hexdigest()[:16]


def engine_files(folder: Path | None = None) -> list[str]:
    """The engine's import closure inside the package, sorted, relative to ``folder``."""
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
    base = folder.joinpath(*dotted.split("."))
    return next((c for c in (base.with_suffix(".py"), base / "__init__.py") if dotted and c.is_file()), None)


def imported_files(folder: Path, path: Path) -> list[Path | None]:
    """The package's modules ``path`` imports, inside functions too. The package's ``__init__`` is left out: it
    only re-exports the user API."""
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
    """Comments and layout are not in a tree; docstrings are taken out."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


# ---------------------------------------------------------------- provenance

def current_identity(run) -> bool:
    """Whether the run's hashes were made the way this sddkit makes them."""
    return run.data.tags.get(IDENTITY_TAG) == IDENTITY_VERSION


def trajectory_tags(cfg: Config, root: Path, code: str) -> dict[str, str]:
    commit = git_commit(root)
    return {
        "sddkit.kind": "trajectory",
        "sddkit.config_hash": cfg.identity_hash(),
        "sddkit.code_hash": code,  # the run's identity is config + code (code_hash)
        IDENTITY_TAG: IDENTITY_VERSION,  # how the two hashes were made: older runs lack it (README: upgrading)
        "sddkit.group": cfg.group_hash(),  # replicates (same config, other seeds) share it
        "sddkit.name": cfg.name,
        "sddkit.preset": cfg.preset,
        "sddkit.retrain_mode": cfg.retrain.mode,
        "sddkit.criterion": cfg.prune.criterion,
        "sddkit.noise_kind": cfg.noise.kind,
        "sddkit.noise_ratio": str(cfg.noise.ratio),
        "sddkit.seed": str(cfg.seed),
        "sddkit.deterministic": str(cfg.train.deterministic),
        "sddkit.git_commit": commit,
        "mlflow.source.git.commit": commit,
        "sddkit.versions": package_versions(),
        # inside a DVC stage: the stage and, under `dvc exp run`, the experiment's name
        **{tag: os.environ[env] for env, tag in (("DVC_STAGE", "sddkit.dvc_stage"),
                                                 ("DVC_EXP_NAME", "sddkit.dvc_exp_name")) if os.environ.get(env)},
    }


def param_text(value) -> str:
    """A config value as it is logged as an MLflow param."""
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def run_label(cfg: Config) -> str:
    """The parent run's name in the MLflow UI (only a label: runs are found by their tags): ``lottery·bushy-lamb``
    (the DVC experiment's name), else ``lottery·ε=0.4·s1``."""
    exp = os.environ.get("DVC_EXP_NAME")
    return f"{cfg.name}·{exp}" if exp else f"{cfg.name}·ε={param_text(cfg.noise.ratio)}·s{cfg.seed}"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout.strip() + ("-dirty" if dirty else "")) if out.returncode == 0 else "unknown"


def package_versions() -> str:
    found = []
    for name in ("sddkit", "torch", "torchvision", "timm", "mlflow", "numpy"):
        try:
            found.append(f"{name}={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return " ".join(found)
