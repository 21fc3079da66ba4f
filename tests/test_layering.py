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
