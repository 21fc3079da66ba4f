"""The package's layers, as docs/architecture.md ("Layers") draws them: every import of every sddkit module, at
module level or inside a function, goes to a lower layer (or to ``config``, which every module may import)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sddkit"
ANYWHERE = {"config"}  # the one typed config sits at the bottom and every module may import it


def module_name(path: Path) -> str:
    return "sddkit" if path.stem == "__init__" else path.stem


MODULES = {module_name(p) for p in PACKAGE.glob("*.py")}


def documented_layers() -> dict[str, int]:
    """Module -> layer number (1 = bottom), read from the table under "## Layers" in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    layers: dict[str, int] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        number = re.match(r"(\d+)\.", cells[0]) if line.startswith("|") else None
        for module in re.findall(r"`(\w+)`", cells[1]) if number else ():
            assert module not in layers, f"docs/architecture.md puts {module} in two layers"
            layers[module] = int(number.group(1))
    return layers


def sddkit_imports(source: str) -> set[str]:
    """The sddkit modules ``source`` imports anywhere in it ("sddkit" for the package itself)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("sddkit" + (f".{node.module}" if node.module else "")) if node.level else node.module or ""
            names = [f"{base}.{a.name}" for a in node.names] if base == "sddkit" else [base]
        else:
            continue
        for parts in (name.split(".") for name in names):
            if parts[0] == "sddkit":
                found.add(parts[1] if len(parts) > 1 and parts[1] in MODULES else "sddkit")
    return found


def test_every_module_has_exactly_one_documented_layer():
    layers = documented_layers()
    assert sorted(MODULES - set(layers)) == [], "give these modules a layer in docs/architecture.md"
    assert sorted(set(layers) - MODULES) == [], "docs/architecture.md places modules that do not exist"
    assert sorted(set(layers.values())) == list(range(1, max(layers.values()) + 1))
    assert layers["config"] == layers["paths"] == 1  # the bottom: everything may need them


def test_no_module_imports_its_own_layer_or_one_above():
    layers = documented_layers()
    wrong = [f"{name} (layer {layers[name]}) imports {other} (layer {layers[other]})"
             for path in sorted(PACKAGE.glob("*.py")) for name in [module_name(path)]
             for other in sorted(sddkit_imports(path.read_text()) - {name} - ANYWHERE)
             if layers[other] >= layers[name]]
    assert wrong == []


def test_the_scan_sees_every_form_of_import():
    source = '''
import sddkit
import sddkit.tracking as t
from sddkit import analysis, __version__
from sddkit.results import write_folder
from . import noise
from .files import DatasetError


def later():
    from sddkit import plots
'''
    assert sddkit_imports(source) == {"sddkit", "tracking", "analysis", "results", "noise", "files", "plots"}
    assert {"compare", "prepare", "ui"} <= sddkit_imports((PACKAGE / "cli.py").read_text())  # inside functions


# ---------------------------------------------------------------- one front door to the store

STORE_LAYER = {"store", "tracking", "runs", "lease"}  # docs/architecture.md: "The store layer"
LEASE_TAG = "sddkit.lease"


def docstrings(tree: ast.AST) -> set[int]:
    """The ids of the docstring nodes of ``tree``: prose may name what code must not touch."""
    found = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body \
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            found.add(id(body[0].value))
    return found


def mlflow_uses(source: str) -> list[str]:
    """Where ``source`` imports MLflow or touches an MLflow client (``MlflowClient``, ``….client``), by line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if not node.level else []
        elif isinstance(node, ast.Attribute) and node.attr in ("client", "MlflowClient"):
            names = [f".{node.attr}"]
        elif isinstance(node, ast.Name) and node.id == "MlflowClient":
            names = [node.id]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in ("mlflow", "", "MlflowClient")]
    return [f"line {line}: {name}" for line, name in sorted(found)]


def lease_tags(source: str) -> list[str]:
    """Where ``source`` spells a lease tag (``sddkit.lease…``) in code, by line."""
    tree = ast.parse(source)
    prose = docstrings(tree)
    return [f"line {line}" for line in sorted(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Constant)
                                              and isinstance(node.value, str) and LEASE_TAG in node.value
                                              and id(node) not in prose)]


def test_only_the_store_layer_talks_to_mlflow():
    assert STORE_LAYER <= set(documented_layers())
    wrong = {name: uses for path in sorted(PACKAGE.glob("*.py")) for name in [module_name(path)]
             if name not in STORE_LAYER for uses in [mlflow_uses(path.read_text())] if uses}
    assert wrong == {}, "go through tracking.Tracker (or give the store layer the call it lacks)"


def test_only_lease_spells_a_lease_tag():
    wrong = {name: spots for path in sorted(PACKAGE.glob("*.py")) for name in [module_name(path)]
             if name != "lease" for spots in [lease_tags(path.read_text())] if spots}
    assert wrong == {}, "ask lease (live_holder, drop, local_holders) instead"


def test_the_store_scans_see_a_planted_call_import_and_tag():
    source = '''
"""Names sddkit.lease.<identity> in prose only."""
import mlflow.entities
from mlflow import MlflowClient


def later(tracker):
    from mlflow.exceptions import MlflowException
    tracker.client.set_terminated("x", "KILLED")
    key = f"sddkit.lease.{tracker}"
    return MlflowClient, MlflowException, key
'''
    assert mlflow_uses(source) == ["line 3: mlflow.entities", "line 4: mlflow", "line 8: mlflow.exceptions",
                                   "line 9: .client", "line 11: MlflowClient"]
    assert lease_tags(source) == ["line 10"]
    assert mlflow_uses("from sddkit import tracking\ntracking.Tracker('u', 'r').run('x')\n") == []
