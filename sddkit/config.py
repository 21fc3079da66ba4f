"""The one typed, validated configuration: a preset, then params.yaml, then ``--set key=value``.

Every knob has one dotted name (``train.lr``) used in all three places and as the MLflow param name. pydantic
checks the dataclasses below; a bad key or value raises ``ConfigError``, one line naming the key and what it takes."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import BeforeValidator, ConfigDict, Strict, TypeAdapter, ValidationError

DATASETS = ("mnist5k", "mnist", "cifar10", "cifar100", "tinyimagenet")
ARCHS = ("lenet300_100", "resnet18", "resnet34", "resnet101", "vgg11_bn", "vgg16_bn")
# Fixed per-channel statistics a loader may normalise with instead of the train split's own (data.norm_stats):
# the paper's code normalises CIFAR and Tiny ImageNet with ImageNet's, MNIST with MNIST's usual ones.
NORM_STATS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "mnist": ((0.1307,), (0.3081,))}
TABLE_FORMATS = ("table", "csv", "json", "md")  # the commands' --format (rendered by results.render_table)
STAGES_KEY = "sddkit_stages"  # params.yaml section of DVC pipeline settings (not a trajectory's config)
SWEEP_KEY = "sweep"  # a params file's grid for `sddkit sweep` (not a trajectory's config either)
EXECUTORS = ("local", "ray")
RETRAIN_MODES = ("lottery", "finetune", "lr_rewind", "scratch", "reinit", "oneshot")


class ConfigError(ValueError):
    """A bad key or value; the message names the key and the allowed values."""


# ---------------------------------------------------------------- the schema (what each key means: keys.yaml)

# Strict: a YAML `true` is no number, `3.0` no int and `"3"` neither.
Bool = Annotated[bool, Strict()]
Text = Annotated[str, Strict(), BeforeValidator(lambda v: str(v) if type(v) is int else v)]  # `run_name: 2024`
NonNegInt = Annotated[int, Strict(), Ge(0)]
PosInt = Annotated[int, Strict(), Ge(1)]
NonNegFloat = Annotated[float, Strict(), Ge(0)]
PosFloat = Annotated[float, Strict(), Gt(0)]
Fraction = Annotated[float, Strict(), Ge(0), Lt(1)]
Percent = Annotated[float, Strict(), Gt(0), Le(100)]


class _Section:
    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # NaN passes every range check


@dataclass
class DataConfig(_Section):
    name: Literal[DATASETS] = "mnist5k"
    root: Text = "data"
    downsample: PosInt = 1
    standardize: Bool = True
    train_size: NonNegInt = 0
    test_size: PosInt = 1000
    split_seed: NonNegInt = 0
    augment: Literal["auto", "none", "crop_flip", "resized_crop_flip"] = "auto"
    norm_stats: Literal[("train", *NORM_STATS)] = "train"
    crop_size: NonNegInt = 0
    test_resize: NonNegInt = 0


@dataclass
class NoiseConfig(_Section):
    kind: Literal["none", "random", "symmetric", "asymmetric", "pairflip", "open_lth"] = "none"
    ratio: Fraction = 0.0
    seed: NonNegInt | None = None


@dataclass
class ModelConfig(_Section):
    arch: Literal[ARCHS] = "lenet300_100"
    init: Literal["default", "kaiming_normal", "open_lth"] = "default"


@dataclass
class TrainConfig(_Section):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: PosFloat = 0.1
    momentum: Fraction = 0.0
    weight_decay: NonNegFloat = 0.0
    schedule: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: list[NonNegInt] = field(default_factory=list)
    gamma: Annotated[float, Strict(), Gt(0), Le(1)] = 0.1
    epochs: NonNegInt = 10
    batch_size: PosInt = 128
    eval_batch_size: PosInt = 1024
    train_eval_size: NonNegInt = 0
    eval_every: PosInt = 1
    device: Text = "auto"
    threads: NonNegInt = 1
    precision: Literal["bf16", "fp32"] = "bf16"
    warmup_epochs: NonNegInt = 0
    bn_shards: PosInt = 1
    deterministic: Bool = False


@dataclass
class PruneConfig(_Section):
    criterion: Literal["magnitude", "gradient", "random"] = "magnitude"
    scope: Literal["global", "layer"] = "global"
    rate: Annotated[float, Strict(), Gt(0), Lt(1)] = 0.2
    rounds: NonNegInt = 10
    exclude: list[Text] | None = None
    gradient_batches: PosInt = 10


@dataclass
class RetrainConfig(_Section):
    mode: Literal[RETRAIN_MODES] = "lottery"
    rewind_step: NonNegInt = 0
    rewind_unit: Literal["iterations", "epochs"] = "iterations"
    finetune_lr: PosFloat = 0.001
    finetune_epochs: NonNegInt = 0
    masks_from: Text | None = None


@dataclass
class TrackingConfig(_Section):
    uri: Text | None = None
    experiment: Text = "sddkit"
    run_name: Text | None = None


@dataclass
class AnalysisConfig(_Section):
    interpolation_threshold: Percent = 95.0
    light_tolerance: Percent = 2.0


@dataclass
class CompareConfig(_Section):
    """``sddkit_stages.compare`` in params.yaml: changing it reruns only DVC's compare stage."""
    interpolation_threshold: Percent | None = None


@dataclass
class SweepConfig(_Section):
    """The ``sweep:`` section of a params file, overridden by `sddkit sweep`'s options of the same names."""
    grid: dict = field(default_factory=dict)
    modes: list[Literal[RETRAIN_MODES]] = field(default_factory=list)
    seeds: list[NonNegInt] = field(default_factory=list)
    executor: Literal[EXECUTORS] = "local"
    jobs: NonNegInt = 0
    address: Text | None = None
    gpus_per_trajectory: NonNegFloat | None = None
    cpus_per_trajectory: PosFloat = 1.0
    max_retries: NonNegInt = 3
    max_cells: PosInt = 1000


@dataclass
class Config(_Section):
    preset: Text = "quick"
    seed: NonNegInt = 0
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, the names used by params.yaml, --set and MLflow params."""
        return dict(_flatten(dataclasses.asdict(self)))

    def identity_hash(self) -> str:
        """Hash of what determines the results: seeds included; paths, device and labels excluded."""
        return self._hash_without(NOT_IDENTITY)

    def group_hash(self) -> str:
        """The identity without ``seed``, shared by the replicates of one config (a pinned noise.seed stays)."""
        return self._hash_without(NOT_IDENTITY | {"seed"})

    def identity_values(self, excluded: frozenset[str] | None = None) -> dict[str, Any]:
        """The keys that determine the results and differ from the schema's defaults (as open_lth hashes):
        a new setting whose default keeps today's behaviour leaves every stored run's identity as it was."""
        defaults, excluded = schema_defaults(type(self)), NOT_IDENTITY if excluded is None else excluded
        return {k: v for k, v in self.flat().items()
                if k not in excluded and json.dumps(v, sort_keys=True) != defaults[k]}

    def _hash_without(self, excluded: frozenset[str]) -> str:
        science = self.identity_values(excluded)
        return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.tracking.run_name or self.retrain.mode

    @property
    def noise_seed(self) -> int:
        return self.seed if self.noise.seed is None else self.noise.seed


# Keys that do not change results: where things live, how fast they run, their names, how curves are labelled.
NOT_IDENTITY = frozenset({"preset", "data.root", "train.device", "train.threads", "train.eval_batch_size",
                          "train.eval_every", "tracking.uri", "tracking.experiment", "tracking.run_name",
                          "analysis.interpolation_threshold", "analysis.light_tolerance"})


@functools.cache
def schema_defaults(schema: type) -> dict[str, str]:
    """Every key's schema default (the dataclasses', not a preset's), in canonical text."""
    return {k: json.dumps(v, sort_keys=True) for k, v in schema().flat().items()}


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# ---------------------------------------------------------------- presets, params files and --set

class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; researchers write learning rates that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in (resources.files("sddkit") / "presets").iterdir() if p.name.endswith(".yaml"))


def preset_tree(name: str) -> dict:
    if name not in preset_names():
        raise ConfigError(f"preset: unknown preset {name!r}; allowed: {', '.join(preset_names())}")
    return read_yaml((resources.files("sddkit") / "presets" / f"{name}.yaml").read_text()) or {}


def preset_description(name: str) -> str:
    return str(preset_tree(name).get("description", ""))


def preset_deviations(name: str) -> list[str]:
    """Where preset ``name`` still departs from the paper's code, one sentence each (empty: nowhere known)."""
    deviations = preset_tree(name).get("deviations") or []
    if not isinstance(deviations, list):
        raise ConfigError(f"preset {name!r}: deviations must be a list of sentences, got {deviations!r}")
    return [str(line) for line in deviations]


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` from --set; the value is read as YAML so ``0.2``, ``true``, ``[80,120]`` are typed."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set noise.ratio=0.4")
    try:
        return key.strip(), read_yaml(raw)
    except yaml.YAMLError:
        return key.strip(), raw


def load_config(params: dict | None = None, preset: str | None = None,
                overrides: list[str] | dict | None = None) -> Config:
    """preset (params['preset'] unless given) <- params <- overrides, then validate."""
    params = dict(params or {})
    name = preset or params.pop("preset", None) or "quick"
    params.pop("preset", None)
    about = ("description", "deviations")  # keys of a preset file that describe it rather than configure a run
    tree = _deep_merge({k: v for k, v in preset_tree(name).items() if k not in about}, params)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_assignment, overrides or [])
    for key, value in items:
        *parents, leaf = key.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[leaf] = value
    tree["preset"] = name
    return check_combination(build(Config, tree, ""))


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_params_file(path: Path) -> dict:
    tree = read_tree(path)
    tree.pop(STAGES_KEY, None)  # DVC pipeline settings live beside the config, not in it
    tree.pop(SWEEP_KEY, None)  # and so does a sweep's grid
    return tree


def read_tree(path: Path) -> dict:
    try:
        tree = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({exc.__class__.__name__}); fix the syntax") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path.name}: expected a mapping of keys, got {type(tree).__name__}")
    return tree


def from_params(params: dict[str, str]) -> Config:
    """The config a run logged as MLflow params (``str(value)``, lists as JSON), validated again; params that are
    not config keys are ignored, keys the run lacks take the preset's value."""
    overrides = {key: _param_value(params[key], hint) for key, hint, _ in leaf_fields()
                 if key in params and key != "preset"}
    return load_config(preset=params.get("preset"), overrides=overrides)


def _param_value(text: str, hint: Any) -> Any:
    """Undo ``str()``: 'None' -> None where allowed, text stays text, the rest (numbers, bools, lists) as YAML."""
    base, _, _, is_list, nullable = hint_shape(hint)
    if nullable and text == "None":
        return None
    return text if base is str and not is_list else read_yaml(text)


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """``cfg`` with the dotted keys of ``values`` set, checked as ``--set`` would be (a sweep's grid point)."""
    return load_config(dataclasses.asdict(cfg), preset=cfg.preset, overrides=values)


# ---------------------------------------------------------------- rules that tie keys together

# Datasets with an asymmetric-noise class map (noise.ASYMMETRIC_MAPS, and CIFAR-100's super-classes).
ASYMMETRIC_DATASETS = ("mnist5k", "mnist", "cifar10", "cifar100")
# Side of each dataset's square images as ``sources`` loads them (Tiny ImageNet before any downsampling).
IMAGE_SIDE = {"mnist5k": 28, "mnist": 28, "cifar10": 32, "cifar100": 32, "tinyimagenet": 64}
# Smallest input side each arch runs on: VGG's four 2x2 max-pools (``models.timm_vgg``) end at 1x1 from 16x16;
# LeNet flattens and the adapted ResNets pool globally, so 1x1 suffices. tests/test_config.py builds each.
MIN_SIDE = {"vgg11_bn": 16, "vgg16_bn": 16}
# The schemes MLflow 3 has a tracking store for ('' is a plain path: a file store); test_config checks the
# list against MLflow's own registry, which the config cannot import (it would slow every command).
TRACKING_SCHEMES = ("", "databricks", "databricks-uc", "file", "http", "https", "mssql", "mysql", "postgresql",
                    "sqlite", "uc")
# Column widths of MLflow's SQL stores: experiments.name is String(256), runs.name String(250).
MAX_EXPERIMENT_NAME, MAX_RUN_NAME = 256, 250


def check_combination(cfg: Config) -> Config:
    """Rules that tie two keys together (or need a pattern), checked before any run is opened."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.train.device):
        raise ConfigError(f"train.device = {cfg.train.device!r}: not allowed; allowed values: auto, cpu, cuda, cuda:N")
    if cfg.noise.kind == "asymmetric" and cfg.data.name not in ASYMMETRIC_DATASETS:
        raise ConfigError(f"noise.kind = 'asymmetric': no class map for data.name = {cfg.data.name!r}; "
                          f"defined for {', '.join(ASYMMETRIC_DATASETS)} (use pairflip or random instead)")
    if cfg.noise.kind == "open_lth" and cfg.noise_seed + 1 >= 2 ** 32:
        raise ConfigError(f"noise.seed = {cfg.noise_seed}: open_lth's draw seeds numpy's RandomState with it and "
                          f"it + 1, which take at most 2**32 - 1; use a smaller seed (the paper's is 1)")
    check_image_sizes(cfg)
    check_tracking(cfg.tracking)
    return cfg


def check_tracking(tracking: TrackingConfig) -> None:
    names = [("tracking.experiment", tracking.experiment, MAX_EXPERIMENT_NAME, "")]
    if tracking.run_name is not None:
        names.append(("tracking.run_name", tracking.run_name, MAX_RUN_NAME, " (or null for the retrain mode)"))
    for key, name, limit, alternative in names:
        if not name.strip() or len(name) > limit:
            shown = repr(name[:40]) + ("…" if len(name) > 40 else "")
            raise ConfigError(f"{key} = {shown} ({len(name)} characters): give a name of 1 to {limit} characters"
                              f"{alternative}")
    if tracking.uri is not None:
        scheme = tracking.uri.partition("://")[0] if "://" in tracking.uri else tracking.uri.partition(":")[0]
        scheme = "" if scheme == tracking.uri or len(scheme) == 1 else scheme  # a path, or a Windows drive
        if scheme.split("+")[0] not in TRACKING_SCHEMES:
            raise ConfigError(f"tracking.uri = {tracking.uri!r}: MLflow has no tracking store for {scheme!r}; use "
                              f"sqlite:///path/mlflow.db, http(s)://host:port (sddkit ui's or a server's), a "
                              f"database URI, or null for the project's mlflow.db")


def image_side(cfg: Config) -> int:
    """Side of the square images the model sees: ``data.crop_size``, else the stored side after pooling."""
    return cfg.data.crop_size or IMAGE_SIDE[cfg.data.name] // cfg.data.downsample


def check_image_sizes(cfg: Config) -> None:
    """The pooled images must fit the arch (a 0x0 image fails deep inside torch), the crop must fit the images and
    the evaluation resize, and fixed stats need one value per channel of the dataset."""
    d, side, need = cfg.data, IMAGE_SIDE[cfg.data.name], MIN_SIDE.get(cfg.model.arch, 1)
    stored = side // d.downsample
    if stored < need:
        raise ConfigError(f"data.downsample = {d.downsample}: pools the {side}x{side} images of {d.name} to "
                          f"{stored}x{stored}, below the {need}x{need} {cfg.model.arch} needs; at most {side // need}")
    if d.crop_size > stored:
        raise ConfigError(f"data.crop_size = {d.crop_size}: larger than the {stored}x{stored} images of "
                          f"{d.name} (data.downsample = {d.downsample}); at most {stored}, or 0 for the whole image")
    if d.test_resize and d.test_resize < image_side(cfg):
        raise ConfigError(f"data.test_resize = {d.test_resize}: smaller than the {image_side(cfg)}-pixel centre "
                          f"crop (data.crop_size); use at least {image_side(cfg)}, or 0 for no resize")
    channels = 1 if d.name.startswith("mnist") else 3
    crops_and_flips = d.augment == "crop_flip" or (d.augment == "auto" and channels == 3)
    if crops_and_flips and d.crop_size not in (0, stored):
        raise ConfigError(f"data.crop_size = {d.crop_size} with data.augment = {d.augment!r}: crop+flip keeps the "
                          f"{stored}x{stored} side, so training and testing would see other sizes; use data.augment "
                          f"= resized_crop_flip (the paper's Tiny ImageNet) or none")
    if image_side(cfg) < need:
        raise ConfigError(f"data.crop_size = {d.crop_size}: below the {need}x{need} {cfg.model.arch} needs")
    if d.norm_stats in NORM_STATS and len(NORM_STATS[d.norm_stats][0]) != channels:
        fits = [name for name, (mean, _) in NORM_STATS.items() if len(mean) == channels]
        raise ConfigError(f"data.norm_stats = {d.norm_stats!r}: has {len(NORM_STATS[d.norm_stats][0])} channel(s), "
                          f"{d.name} has {channels}; use train or {', '.join(fits)}")


# ---------------------------------------------------------------- validation: pydantic's first error in one line

_adapter = functools.cache(TypeAdapter)  # one per checked dataclass: building one takes milliseconds
_hints = functools.partial(typing.get_type_hints, include_extras=True)  # Annotated kept: its bounds are the ranges


def build(cls: type, tree: Any, prefix: str):
    """Dataclass ``cls`` from a nested dict, every key, type and range checked; ``prefix`` names its section."""
    try:
        return _adapter(cls).validate_python(tree)
    except ValidationError as exc:  # an unknown key first: a typo explains the errors that follow it
        error = sorted(exc.errors(), key=lambda e: e["type"] != "unexpected_keyword_argument")[0]
    kind, value, names = error["type"], error["input"], [p for p in error["loc"] if isinstance(p, str)]
    section, where = cls, prefix
    for name in names[:-1]:
        section, where = _hints(section)[name], f"{where}{name}."
    key = (prefix + ".".join(names)).rstrip(".") + "".join(f"[{i}]" for i in error["loc"] if isinstance(i, int))
    if kind == "unexpected_keyword_argument":
        allowed = ", ".join(where + f.name for f in dataclasses.fields(section))
        raise ConfigError(f"{key}: unknown key{did_you_mean(section, where, names[-1])}; allowed keys here: {allowed}")
    if kind == "dataclass_type":
        raise ConfigError(f"{key or 'config'}: expected a section of keys, got {value!r}")
    base, choices, bounds, _, _ = hint_shape(_hints(section)[names[-1]])
    if type(value) is int and base in (float, str):  # shown as it would be stored
        value = str(value) if base is str else float(value) if abs(value) <= sys.float_info.max else math.inf
    if kind == "finite_number" or (kind == "float_type" and value == math.inf):  # an int beyond any float
        raise ConfigError(f"{key} = {value!r}: not a finite number; allowed: {range_text(base, bounds)}")
    if kind == "literal_error":
        raise ConfigError(f"{key} = {value!r}: not allowed; allowed values: {', '.join(map(str, choices))}")
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        raise ConfigError(f"{key} = {value!r}: out of range; allowed: {range_text(base, bounds)}")
    raise ConfigError(f"{key} = {value!r}: expected {'a list of ' if kind == 'list_type' else ''}{base.__name__}")


def did_you_mean(cls: type, prefix: str, name: str) -> str:
    """`` (did you mean train.lr?)``: the closest key of section ``cls`` or below it (``lr`` finds ``train.lr``)."""
    keys = [f.name for f in dataclasses.fields(cls)] + [key for key, _, _ in leaf_fields(cls)]
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    close = close or [key for key in keys if key.endswith("." + name)][:1]
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def hint_shape(hint: Any) -> tuple[type, tuple, dict, bool, bool]:
    """A knob's (scalar type, its choices, its bounds as {'ge': 0, ...}, a list of them?, may be null?)."""
    args = typing.get_args(hint)
    nullable = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args
    hint = next(a for a in args if a is not type(None)) if nullable else hint
    is_list = typing.get_origin(hint) is list
    hint = typing.get_args(hint)[0] if is_list else hint
    hint, *metadata = typing.get_args(hint) if typing.get_origin(hint) is Annotated else (hint,)
    bounds = {k: getattr(m, k) for m in metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}
    choices = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
    return (type(choices[0]) if choices else hint), choices, bounds, is_list, nullable


def range_text(base: type, bounds: dict) -> str:
    low = "".join(f"{base(v)} {'<' if k == 'gt' else '≤'} " for k, v in bounds.items() if k in ("ge", "gt"))
    high = "".join(f" {'<' if k == 'lt' else '≤'} {base(v)}" for k, v in bounds.items() if k in ("le", "lt"))
    return f"{low}value{high}" if bounds else "any finite number"


def leaf_fields(cls: type | None = None, prefix: str = ""):
    """(dotted key, type hint, dataclass field) for every knob."""
    hints = _hints(cls or Config)
    for f in dataclasses.fields(cls or Config):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_fields(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name, hints[f.name], f


def yaml_text(value: Any) -> str:
    """A value as params.yaml writes it: null, true, [68], 0.003."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("\n...\n").strip()
