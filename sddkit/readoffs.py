"""The paper's figure read-offs (``readoffs.yaml``, from PAPER.md): dense, minimum and peak of one curve, each a
sparsity and a test accuracy (%). A run matches one when every ``match`` param of the entry has its value."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

from sddkit import config

LANDMARKS = ("dense", "minimum", "peak")


@dataclass(frozen=True)
class Point:
    sparsity: float    # % of the prunable weights removed
    test_acc: float    # %
    approx: bool = False


@dataclass(frozen=True)
class ReadOff:
    setting: str               # e.g. "ResNet-18 CIFAR-10, ε=20%"
    match: dict[str, object]   # param -> value a run must have
    points: dict[str, Point]   # LANDMARKS -> point

    def matches(self, params: dict[str, str]) -> bool:
        return all(key in params and _same(params[key], value) for key, value in self.match.items())


@cache
def read_offs() -> tuple[ReadOff, ...]:
    entries = yaml.safe_load((resources.files("sddkit") / "readoffs.yaml").read_text(encoding="utf-8"))
    return tuple(ReadOff(e["setting"], dict(e["match"]),
                         {"dense": Point(0.0, float(e["dense"])),
                          **{k: Point(float(e[k]["sparsity"]), float(e[k]["test_acc"]), bool(e[k].get("approx")))
                             for k in ("minimum", "peak")}})
                 for e in entries)


def matching(params: dict[str, str]) -> ReadOff | None:
    """The read-off of the run with these (MLflow) params, or None."""
    return next((r for r in read_offs() if r.matches(params)), None)


def covered() -> str:
    """What the read-offs cover, in one line: ``cifar10-resnet18 (lottery) noise.ratio 0.2, 0.4, 0.8; ...``."""
    by_setting: dict[str, list[str]] = {}
    for r in read_offs():
        key = f"{r.match.get('preset')} ({r.match.get('retrain.mode')})"
        by_setting.setdefault(key, []).append(str(r.match.get("noise.ratio")))
    return "; ".join(f"{k} noise.ratio {', '.join(v)}" for k, v in by_setting.items())


def _same(stored: str, wanted: object) -> bool:
    """An MLflow param (text) against a YAML value: 0.4 == "0.40", "lottery" == "lottery"; a list of values
    accepts any of them (noise.kind: the paper's law, drawn by sddkit's ``random`` or the paper's ``open_lth``)."""
    if isinstance(wanted, list):
        return any(_same(stored, one) for one in wanted)
    try:
        value = config.read_yaml(stored)
    except yaml.YAMLError:
        value = stored
    if isinstance(wanted, float) or isinstance(value, float):
        try:
            return abs(float(value) - float(wanted)) < 1e-9
        except (TypeError, ValueError):
            return False
    return value == wanted
