"""What the commands read beside a trajectory's config, checked as the config is (one line per error): the warning
for a schedule that never drops, the ``sweep:`` section and ``--grid`` options, ``sddkit_stages.compare``, and the
table of `sddkit keys`. Kept out of ``config``, which is in the engine's fingerprint: editing them re-keys no run."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sddkit.config import (STAGES_KEY, SWEEP_KEY, CompareConfig, Config, ConfigError, SweepConfig, build, hint_shape,
                           leaf_fields, load_config, range_text, read_tree, read_yaml, yaml_text)


def schedule_note(cfg: Config) -> str | None:
    """Multistep milestones a round never reaches: a warning, not an error (the lr stays put, and examples like
    ``dvc exp run -S +train.epochs=30`` rely on that)."""
    t = cfg.train
    late = [m for m in t.milestones if m >= t.epochs]
    if t.schedule != "multistep" or not late or not t.epochs:
        return None
    return (f"train.milestones = {t.milestones}: {', '.join(map(str, late))} {'is' if len(late) == 1 else 'are'} "
            f"not before the last epoch (train.epochs = {t.epochs}), so the learning rate never drops there; set "
            f"train.milestones too (e.g. train.milestones=[] or [{max(1, int(t.epochs * 0.85))}])")


def read_sweep_settings(path: Path | None, overrides: dict | None = None) -> SweepConfig:
    """The ``sweep:`` section of a params file <- ``overrides`` (the command's options). Grid values are checked
    on each cell's config; a repeated seed or mode, or an address local processes ignore, is refused."""
    tree = {**section(path, SWEEP_KEY), **{k: v for k, v in (overrides or {}).items() if v not in (None, (), [], {})}}
    grid = tree.pop("grid", None) or {}
    settings = build(SweepConfig, tree, f"{SWEEP_KEY}.")
    settings.grid = check_grid(grid)
    for key, values, what in (("seeds", settings.seeds, "seed"), ("modes", settings.modes, "mode")):
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise ConfigError(f"{SWEEP_KEY}.{key} = {' '.join(map(str, values))}: {what} {repeated[0]} is "
                              f"repeated; give each {what} once")
    if settings.executor == "local" and settings.address is not None:
        raise ConfigError(f"{SWEEP_KEY}.address = {settings.address!r}: only Ray joins a cluster; add "
                          f"--executor ray, or drop the address to run on local processes")
    return settings


def count_cells(settings: SweepConfig) -> tuple[int, int]:
    """(cells, grid points) of a sweep (a reinit cell's added twin not counted)."""
    points = math.prod(len(values) for values in settings.grid.values())
    return points * max(1, len(settings.modes)) * max(1, len(settings.seeds)), points


def check_grid(grid: Any) -> dict[str, list]:
    """A grid is config key -> non-empty list of distinct values (a lone value is a list of one)."""
    if not isinstance(grid, dict):
        raise ConfigError(f"{SWEEP_KEY}.grid: expected a mapping of config keys to lists of values, got {grid!r}")
    known = [key for key, _, _ in leaf_fields()]
    out = {}
    for key, values in grid.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else "; `sddkit keys` lists them"
            raise ConfigError(f"{SWEEP_KEY}.grid.{key}: unknown config key{hint}")
        if key in ("seed", "retrain.mode"):
            option = "seeds" if key == "seed" else "modes"
            raise ConfigError(f"{SWEEP_KEY}.grid.{key}: give these as {SWEEP_KEY}.{option} (--{option})")
        values = values if isinstance(values, list) else [values]
        if not values or len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"{SWEEP_KEY}.grid.{key} = {values!r}: expected a non-empty list of distinct values")
        out[key] = values
    return out


def parse_grid_options(texts) -> dict[str, list]:
    """Every ``--grid KEY=V1,V2`` as one grid (values read as a YAML flow list: ``[80,120],[40]`` is two lists);
    a key given twice keeps the values of both, in order."""
    grid: dict[str, list] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. --grid noise.ratio=0.2,0.4")
        try:
            values = read_yaml(f"[{raw}]")
        except yaml.YAMLError as exc:
            raise ConfigError(f"--grid {text!r}: the values are not a comma-separated list "
                              f"({exc.__class__.__name__})") from None
        grid.setdefault(key.strip(), []).extend(values)
    return grid


def read_compare_settings(path: Path | None) -> CompareConfig:
    """``sddkit_stages.compare`` of a params file (defaults where absent)."""
    return build(CompareConfig, section(path, STAGES_KEY).get("compare") or {}, f"{STAGES_KEY}.compare.")


def section(path: Path | None, key: str) -> dict:
    tree = (read_tree(path).get(key) if path and path.is_file() else None) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{key}: expected a section of keys, got {tree!r}")
    return tree


KEY_COLUMNS = {"key": "key", "type": "type", "default": "default", "allowed": "allowed values",
               "meaning": "meaning"}


def describe_keys() -> list[dict[str, str]]:
    """Every key's row (KEY_COLUMNS), the sweep's last; defaults without params.yaml (the quick preset's); the
    meaning, and what a key takes where its type cannot say it, from keys.yaml."""
    about = read_yaml((resources.files("sddkit") / "keys.yaml").read_text())
    defaults = {**load_config().flat(), **{f"{SWEEP_KEY}.{k}": v for k, v in dataclasses.asdict(SweepConfig()).items()}}
    rows = []
    for key, hint, _ in [*leaf_fields(), *leaf_fields(SweepConfig, f"{SWEEP_KEY}.")]:
        base, choices, bounds, is_list, nullable = hint_shape(hint)
        if choices or base is bool or key in about["allowed"]:
            allowed = ", ".join(map(str, choices)) or about["allowed"].get(key) or "true, false"
        else:
            allowed = ("each " if is_list else "") + range_text(base, bounds) if bounds else ""
            allowed = (allowed or ("any finite number" if base is float else "any")) + ", or null" * nullable
        name = (f"list[{base.__name__}]" if is_list else base.__name__) + " or null" * nullable
        rows.append({"key": key, "type": name, "default": yaml_text(defaults[key]), "allowed": allowed,
                     "meaning": about["meaning"][key]})
    return rows
