"""The paper's figures as studies (``sddkit/studies/<name>.yaml``): curves (config values over the preset), their
panels, and the paper's statements, each a *check* below parametrised in the file. A check judges the mean over
seeds: holds, does not hold, or cannot tell (a landmark not reached, a metric not measured)."""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from sddkit import analysis, config
from sddkit.config import ConfigError

HOLDS, FAILS, UNCLEAR = "holds", "does not hold", "cannot tell"
STUDY_KEYS = ("figure", "about", "curves", "panels", "metric", "landscape", "checks")
CHECK_KEYS = ("statement", "check", "params", "criterion")
LANDMARKS = ("dense", "minimum", "peak", "last", "interpolation_threshold", "critical")  # analysis.Phases


@dataclass(frozen=True)
class Check:
    statement: str   # the paper's words
    name: str        # a function of CHECKS
    params: dict
    criterion: str   # in words and numbers, from the study file


@dataclass(frozen=True)
class Study:
    name: str
    figure: str                     # the paper's figure it mirrors
    about: str
    curves: dict[str, dict]         # curve name -> config values (dotted keys)
    panels: list[list[str]]         # the figure's panels, each a list of curve names
    metric: str | None              # a per-round metric drawn beside the accuracy (learning_distance, sharpness)
    landscape: bool                 # measure the sharpness of every round (sddkit analyze's landscape walk)
    checks: list[Check]


@dataclass
class Replicate:  # one seed of a curve
    seed: int
    rows: list[dict]
    phases: analysis.Phases
    threshold: float = config.AnalysisConfig.interpolation_threshold  # what the phases were placed with
    tolerance: float = config.AnalysisConfig.light_tolerance


@dataclass
class Verdict:
    verdict: str
    numbers: str                               # what decided it, for the report
    values: dict = field(default_factory=dict)  # the same numbers for verdicts.json


# ---------------------------------------------------------------- reading and checking study files

PAPER_ORDER = ("noise", "criteria", "retrain", "reinit", "distance", "landscape", "clean")  # the report's order


def names() -> list[str]:
    """The packaged studies: the paper's in its order, then the others by name."""
    folder = resources.files("sddkit") / "studies"
    found = [p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml")]
    return sorted(found, key=lambda n: (PAPER_ORDER.index(n) if n in PAPER_ORDER else len(PAPER_ORDER), n))


def load(name: str) -> Study:
    """A packaged study by name, or a study file by path (``my-study.yaml``)."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return parse(Path(name).stem, Path(name).read_text(encoding="utf-8"), name)
    if name not in names():
        raise ConfigError(f"study {name!r}: no such study; the studies are {', '.join(names())} (`sddkit reproduce "
                          f"--list`), or give a study file's path ending in .yaml")
    return packaged(name)


@cache
def packaged(name: str) -> Study:
    text = (resources.files("sddkit") / "studies" / f"{name}.yaml").read_text(encoding="utf-8")
    return parse(name, text, f"sddkit/studies/{name}.yaml")


def parse(name: str, text: str, source: str) -> Study:
    """A bad key or value raises ConfigError naming ``source`` and the key."""
    try:
        tree = config.read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc.__class__.__name__}); fix the syntax") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{source}: expected a mapping of {', '.join(STUDY_KEYS)}")
    unknown(source, tree, STUDY_KEYS)
    curves = read_curves(source, tree.get("curves"))
    panels = tree.get("panels") or [list(curves)]
    if not isinstance(panels, list) or not all(isinstance(p, list) and p for p in panels):
        raise ConfigError(f"{source}: panels: expected a list of lists of curve names, e.g. [[a], [b, c]]")
    for panel in panels:
        curve_refs(source, "panels", panel, curves)
    checks = tree.get("checks") or []
    if not isinstance(checks, list) or not checks:
        raise ConfigError(f"{source}: checks: expected a non-empty list of the paper's statements")
    return Study(name, text_field(source, tree, "figure"), text_field(source, tree, "about"), curves, panels,
                 tree.get("metric"), bool(tree.get("landscape", False)),
                 [read_check(f"{source}: checks[{i}]", c, curves) for i, c in enumerate(checks)])


def unknown(where: str, tree: dict, allowed: tuple[str, ...]) -> None:
    extra = [k for k in tree if k not in allowed]
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r}; allowed: {', '.join(allowed)}")


def text_field(where: str, tree: dict, key: str) -> str:
    value = tree.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key}: expected a text")
    return value.strip()


def read_curves(source: str, curves) -> dict[str, dict]:
    """Curve name -> config values (checked when the cells are built)."""
    if not isinstance(curves, dict) or not curves:
        raise ConfigError(f"{source}: curves: expected a mapping of curve names to config values, e.g. "
                          f"eps-0.4: {{noise.ratio: 0.4}}")
    known = {key for key, _, _ in config.leaf_fields()}
    out = {}
    for curve, values in curves.items():
        values = values or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: curves.{curve}: expected a mapping of config keys to values")
        for key in values:
            if key not in known or key == "seed":
                raise ConfigError(f"{source}: curves.{curve}.{key}: not a config key a study may set (`sddkit keys` "
                                  f"lists them; seeds come from --seeds)")
        out[str(curve)] = dict(values)
    return out


def read_check(where: str, entry, curves: dict) -> Check:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(CHECK_KEYS)}")
    unknown(where, entry, CHECK_KEYS)
    name = entry.get("check")
    if name not in CHECKS:
        raise ConfigError(f"{where}: check {name!r}: unknown; the checks are {', '.join(CHECKS)}")
    params = entry.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{where}: params: expected a mapping")
    signature = inspect.signature(CHECKS[name])
    allowed = [p for p in signature.parameters if p != "data"]
    unknown(f"{where}: params of {name}", params, tuple(allowed))
    missing = [p for p in allowed if signature.parameters[p].default is inspect.Parameter.empty and p not in params]
    if missing:
        raise ConfigError(f"{where}: params of {name}: {missing[0]} is required")
    for key, value in params.items():
        check_param(f"{where}: params.{key}", key, value, curves)
    return Check(text_field(where, entry, "statement"), name, params, text_field(where, entry, "criterion"))


def check_param(where: str, key: str, value, curves: dict) -> None:
    if key in ("curves", "curve"):
        curve_refs(where, key, value if isinstance(value, list) else [value], curves)
    elif key in ("landmarks", "landmark", "start", "end"):
        for landmark in value if isinstance(value, list) else [value]:
            if landmark not in LANDMARKS:
                raise ConfigError(f"{where}: {landmark!r} is no landmark; the landmarks are {', '.join(LANDMARKS)}")
    elif key == "direction":
        if value not in ("rise", "fall"):
            raise ConfigError(f"{where}: {value!r}: expected rise or fall")
    elif key != "metric" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ConfigError(f"{where}: {value!r}: expected a number")


def curve_refs(where: str, key: str, refs: list, curves: dict) -> None:
    for ref in refs:
        if str(ref) not in curves:
            raise ConfigError(f"{where}: {key}: no curve {ref!r} in this study; its curves are {', '.join(curves)}")


# ---------------------------------------------------------------- numbers

def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def std(values: list[float]) -> float:
    """The sample standard deviation (0 for one value)."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def spread(values: list[float], digits: int = 1) -> str:
    """``6.1 ± 0.8`` over seeds; a single value alone."""
    text = f"{mean(values):.{digits}f}"
    return text + (f" ± {std(values):.{digits}f}" if len(values) > 1 else "")


def landmark_round(rep: Replicate, landmark: str) -> int | None:
    """The round of ``landmark`` in ``rep``; None where it has none. An interpolation threshold at round 0 is
    none too: a dense net that never fit the noisy labels has no point where it starts to fail them."""
    found = getattr(rep.phases, landmark)
    return None if landmark == "interpolation_threshold" and found == 0 else found


def landmark_rounds(reps: list[Replicate], landmark: str) -> list[int | None]:
    return [landmark_round(r, landmark) for r in reps]


def absent(name: str, reps: list[Replicate], landmark: str) -> str:
    """Why ``landmark`` is missing from some of ``reps``."""
    lacking = [r for r in reps if landmark_round(r, landmark) is None]
    why = {"minimum": "no round fits the noisy labels (train accuracy ≥ the interpolation threshold)",
           "peak": "the minimum is the last round", "critical": "no round drops more than the light tolerance",
           "interpolation_threshold": "every round still fits the noisy labels: the grid ends before the "
                                      "interpolation threshold" if lacking and lacking[0].phases.interpolation_threshold
                                      is None else "the dense net does not fit the noisy labels"}.get(landmark, "")
    seeds = "seed" + ("s " if len(lacking) > 1 else " ") + ", ".join(str(r.seed) for r in lacking)
    return f"{name}: no {landmark} in {seeds}" + (f" ({why})" if why else "")


def sparsity_at(reps: list[Replicate], rounds: float) -> float:
    """The sparsity (%) at a (mean, fractional) round, read between the rounds on the log remaining axis."""
    rows = reps[0].rows
    low = min(int(math.floor(rounds)), len(rows) - 1)
    high, part = min(low + 1, len(rows) - 1), rounds - low
    remaining = rows[low]["remaining"] ** (1 - part) * rows[high]["remaining"] ** part
    return 100 * (1 - remaining)


# ---------------------------------------------------------------- the checks

def double_descent(data: dict[str, list[Replicate]], curves: list | None = None, min_dip: float = 2.0,
                   min_rise: float = 3.0) -> Verdict:
    """Each curve dips (dense − minimum test accuracy ≥ ``min_dip`` points) and rises again (peak − minimum ≥
    ``min_rise``), on the mean over seeds."""
    def one(name: str, reps: list[Replicate]):
        margins = [analysis.double_descent_margins(r.rows, r.phases) for r in reps]
        if any(m["dip"] != m["dip"] for m in margins):  # NaN: no minimum or no peak
            return UNCLEAR, absent(name, reps, "minimum" if None in landmark_rounds(reps, "minimum") else "peak"), {}
        dip, rise = [m["dip"] for m in margins], [m["rise"] for m in margins]
        return (HOLDS if mean(dip) >= min_dip and mean(rise) >= min_rise else FAILS,
                f"{name}: dip {spread(dip)}, rise {spread(rise)}", dip_rise(dip, rise))
    return each_curve(data, curves, one)


def small_dip(data: dict[str, list[Replicate]], curves: list | None = None, max_dip: float = 2.0,
              min_rise: float = 3.0) -> Verdict:
    """No clear double descent: the dip (dense − minimum) stays within ``max_dip`` points, or it is not
    followed by a rise of ``min_rise`` (a descent that never recovers is no double descent)."""
    def one(name: str, reps: list[Replicate]):
        if None in landmark_rounds(reps, "minimum"):
            return UNCLEAR, absent(name, reps, "minimum"), {}
        acc = [[row["test_acc"] for row in r.rows] for r in reps]
        dip = [a[0] - a[r.phases.minimum] for a, r in zip(acc, reps)]
        rise = [(a[r.phases.peak] - a[r.phases.minimum]) if r.phases.peak is not None else 0.0
                for a, r in zip(acc, reps)]
        return (HOLDS if mean(dip) <= max_dip or mean(rise) < min_rise else FAILS,
                f"{name}: dip {spread(dip)}, rise after it {spread(rise)}", dip_rise(dip, rise))
    return each_curve(data, curves, one)


def each_curve(data: dict[str, list[Replicate]], curves: list | None, one) -> Verdict:
    """``one(name, reps)`` -> (verdict, numbers, values) for each curve (default: all), combined: any part that
    does not hold decides, else any that cannot be told."""
    judged = [(name, *one(name, data[name])) for name in map(str, curves or list(data))]
    verdicts = [verdict for _, verdict, _, _ in judged]
    return Verdict(FAILS if FAILS in verdicts else UNCLEAR if UNCLEAR in verdicts else HOLDS,
                   "; ".join(numbers for _, _, numbers, _ in judged),
                   {name: found for name, _, _, found in judged if found})


def dip_rise(dip: list[float], rise: list[float]) -> dict:
    return {"dip": mean(dip), "dip_std": std(dip), "rise": mean(rise), "rise_std": std(rise)}


def earlier_than(data: dict[str, list[Replicate]], curves: list, landmarks: list, min_rounds: float = 1.0,
                 tolerance: float = 0.5) -> Verdict:
    """Each curve reaches every landmark at lower sparsity than the next curve: along ``curves`` the mean round
    of each landmark never goes back by more than ``tolerance`` rounds, and for at least one landmark the
    last curve is ``min_rounds`` or more rounds later than the first."""
    return shift(data, curves, landmarks, min_rounds, tolerance, +1)


def later_than(data: dict[str, list[Replicate]], curves: list, landmarks: list, min_rounds: float = 1.0,
               tolerance: float = 0.5) -> Verdict:
    """``earlier_than`` the other way: each curve reaches the landmarks at higher sparsity than the next."""
    return shift(data, curves, landmarks, min_rounds, tolerance, -1)


def shift(data, curves, landmarks, min_rounds, tolerance, sign) -> Verdict:
    parts, values, moved, kept = [], {}, False, True
    for landmark in landmarks if isinstance(landmarks, list) else [landmarks]:
        means, texts = [], []
        for name in map(str, curves):
            rounds = landmark_rounds(data[name], landmark)
            if None in rounds:
                return Verdict(UNCLEAR, absent(name, data[name], landmark))
            means.append(mean(rounds))
            texts.append(f"{name} round {spread(rounds)} ({sparsity_at(data[name], mean(rounds)):.2f}%)")
            values.setdefault(landmark, {})[name] = {"round": mean(rounds), "round_std": std(rounds),
                                                     "sparsity": sparsity_at(data[name], mean(rounds))}
        kept = kept and all(sign * (b - a) >= -tolerance for a, b in zip(means, means[1:]))
        moved = moved or sign * (means[-1] - means[0]) >= min_rounds
        parts.append(f"{landmark}: " + ", ".join(texts))
    return Verdict(HOLDS if kept and moved else FAILS, "; ".join(parts), values)


def peak_near(data: dict[str, list[Replicate]], curve: str, metric: str, landmark: str = "minimum",
              max_rounds: float = 2.0) -> Verdict:
    """``metric`` is highest within ``max_rounds`` rounds of ``landmark`` (mean over seeds of the distance)."""
    reps = data[str(curve)]
    missing = unmeasured(str(curve), reps, metric, [landmark])
    if missing:
        return missing
    peaks = [max(range(len(r.rows)), key=lambda i, r=r: r.rows[i][metric]) for r in reps]
    marks = landmark_rounds(reps, landmark)
    gaps = [abs(p - m) for p, m in zip(peaks, marks)]
    numbers = (f"{curve}: {metric} highest at round {spread(peaks)}, {landmark} at round {spread(marks)}: "
               f"{spread(gaps)} rounds apart")
    return Verdict(HOLDS if mean(gaps) <= max_rounds else FAILS, numbers,
                   {"peak_round": mean(peaks), "landmark_round": mean(marks), "gap": mean(gaps), "gap_std": std(gaps)})


def trend(data: dict[str, list[Replicate]], curve: str, metric: str, start: str, end: str, direction: str = "rise",
          min_share: float = 0.6) -> Verdict:
    """From round ``start`` to round ``end`` (landmarks) ``metric`` moves in ``direction``: it ends above
    (rise) or below (fall) where it started, and at least ``min_share`` of the round-to-round steps go that way
    (means over seeds)."""
    reps = data[str(curve)]
    missing = unmeasured(str(curve), reps, metric, [start, end])
    if missing:
        return missing
    sign = 1 if direction == "rise" else -1
    shares, changes, spans = [], [], []
    for r in reps:
        i, j = landmark_round(r, start), landmark_round(r, end)
        if j - i < 1:
            return Verdict(UNCLEAR, f"{curve}: in seed {r.seed} {end} (round {j}) is not after {start} "
                                    f"(round {i}): no span to read a trend from")
        values = [row[metric] for row in r.rows[i:j + 1]]
        steps = [b - a for a, b in zip(values, values[1:])]
        shares.append(sum(1 for s in steps if sign * s > 0) / len(steps))
        changes.append(values[-1] - values[0])
        spans.append(f"{i}–{j}")
    holds = mean(shares) >= min_share and sign * mean(changes) > 0
    numbers = (f"{curve}: {metric} from {start} to {end} (rounds {', '.join(spans)}): changes by "
               f"{spread(changes, 3)}; {100 * mean(shares):.0f}% of the steps {direction}")
    return Verdict(HOLDS if holds else FAILS, numbers,
                   {"change": mean(changes), "change_std": std(changes), "share": mean(shares)})


def unmeasured(curve: str, reps: list[Replicate], metric: str, landmarks: list[str]) -> Verdict | None:
    """Cannot tell where ``metric`` was not measured in every round, or a seed lacks one of ``landmarks``."""
    if any(metric not in row for r in reps for row in r.rows):
        return Verdict(UNCLEAR, f"{curve}: {metric} was not measured in every round")
    for landmark in landmarks:
        if None in landmark_rounds(reps, landmark):
            return Verdict(UNCLEAR, absent(curve, reps, landmark))
    return None


CHECKS = {f.__name__: f for f in (double_descent, small_dip, earlier_than, later_than, peak_near, trend)}


def judge(check: Check, data: dict[str, list[Replicate]]) -> Verdict:
    return CHECKS[check.name](data, **check.params)
