"""The one typed, validated configuration.

A config is built from a preset (package data), then params.yaml overrides, then ``--set key=value``
overrides. Every knob has one dotted name (``train.lr``) used in all three places and as the MLflow
param name. Validation happens here and nowhere else: a bad key or value raises ``ConfigError`` naming
the key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DATASETS = ("mnist5k", "mnist", "cifar10", "cifar100", "tinyimagenet")
ARCHS = ("lenet300_100", "resnet18", "resnet34", "resnet101", "vgg11_bn", "vgg16_bn")
NOISE_KINDS = ("none", "random", "symmetric", "asymmetric", "pairflip", "open_lth")
AUGMENTS = ("auto", "none", "crop_flip", "resized_crop_flip")
# Fixed per-channel statistics a loader may normalise with instead of the train split's own (data.norm_stats):
# the paper's code normalises CIFAR and Tiny ImageNet with ImageNet's, MNIST with MNIST's usual ones.
NORM_STATS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), "mnist": ((0.1307,), (0.3081,))}
PRECISIONS = ("bf16", "fp32")
TABLE_FORMATS = ("table", "csv", "json", "md")  # the commands' --format (rendered by results.render_table)
STAGES_KEY = "sddkit_stages"  # params.yaml section of DVC pipeline settings (not a trajectory's config)
SWEEP_KEY = "sweep"  # a params file's grid for `sddkit sweep` (not a trajectory's config either)
EXECUTORS = ("local", "ray")
RETRAIN_MODES = ("lottery", "finetune", "lr_rewind", "scratch", "reinit", "oneshot")


class ConfigError(ValueError):
    """A bad key or value; the message names the key and the allowed values."""


def _spec(default: Any = None, *, choices: tuple | None = None, lo: float | None = None,
          hi: float | None = None, lo_open: bool = False, hi_open: bool = False, help: str = "",
          factory: Any = None, allowed: str = "") -> Any:
    """A knob: default, checked choices or range, ``help`` (its meaning, for `sddkit keys`) and ``allowed``
    (what it takes, where neither choices nor a range says it: patterns and names checked elsewhere)."""
    meta = dict(choices=choices, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, help=help, allowed=allowed)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DataConfig:
    name: str = _spec("mnist5k", choices=DATASETS, help="dataset (mnist5k is embedded; the others are read from data.root)")
    root: str = _spec("data", help="folder holding downloaded datasets (relative to the project root)",
                     allowed="a folder path")
    downsample: int = _spec(1, lo=1, help="average-pool factor applied to images (2: 28x28 -> 14x14)")
    standardize: bool = _spec(True, help="subtract the train mean and divide by the train std per channel")
    train_size: int = _spec(0, lo=0, help="stratified train subset size; 0 keeps the whole train split")
    test_size: int = _spec(1000, lo=1, help="held-out test size for datasets without a test split (mnist5k)")
    split_seed: int = _spec(0, lo=0, help="seed of the train/test split and of subsets; fixed across seeds")
    augment: str = _spec("auto", choices=AUGMENTS,
                         help="train augmentation; auto = crop+flip for colour images, none otherwise; "
                              "resized_crop_flip = RandomResizedCrop(data.crop_size) + flip (the paper's Tiny "
                              "ImageNet)")
    norm_stats: str = _spec("train", choices=("train", *NORM_STATS),
                            help="mean/std data.standardize uses: the train split's own, or fixed ones: imagenet "
                                 "(the paper's CIFAR and Tiny ImageNet), mnist (0.1307/0.3081, its MNIST)")
    crop_size: int = _spec(0, lo=0, help="side of the square images the model sees: resized_crop_flip crops to "
                                         "it, evaluation centre-crops to it; 0 = the images' own side")
    test_resize: int = _spec(0, lo=0, help="evaluation images are first resized to this side (bilinear, "
                                           "antialiased), then centre-cropped to data.crop_size; 0 = no resize")


@dataclass
class NoiseConfig:
    kind: str = _spec("none", choices=NOISE_KINDS, help="label noise on the train split")
    ratio: float = _spec(0.0, lo=0.0, hi=1.0, hi_open=True, help="fraction of train samples corrupted")
    seed: int | None = _spec(None, lo=0, help="seed of the noise draw; null follows the top-level seed")


@dataclass
class ModelConfig:
    arch: str = _spec("lenet300_100", choices=ARCHS, help="backbone (timm ResNet/VGG adapted to 32x32 input)")
    init: str = _spec("default", choices=("default", "kaiming_normal", "open_lth"),
                      help="weight init of conv/linear layers; default keeps the framework's, open_lth is the "
                           "paper code's (kaiming-normal fan_in, batch norm weight U(0, 1))")


@dataclass
class TrainConfig:
    optimizer: str = _spec("sgd", choices=("sgd", "adam"), help="optimizer of every round")
    lr: float = _spec(0.1, lo=0.0, lo_open=True, help="initial learning rate of a round's schedule")
    momentum: float = _spec(0.0, lo=0.0, hi=1.0, hi_open=True, help="SGD momentum (unused by adam)")
    weight_decay: float = _spec(0.0, lo=0.0, help="L2 weight decay of the optimizer")
    schedule: str = _spec("constant", choices=("constant", "multistep", "cosine"),
                          help="learning-rate schedule over a round's epochs")
    milestones: list[int] = _spec(factory=list, lo=0, help="epochs at which multistep multiplies lr by gamma")
    gamma: float = _spec(0.1, lo=0.0, hi=1.0, lo_open=True, help="multistep lr factor at each milestone")
    epochs: int = _spec(10, lo=0, help="training epochs of each round (dense and every pruned one)")
    batch_size: int = _spec(128, lo=1, help="training mini-batch size")
    eval_batch_size: int = _spec(1024, lo=1, help="batch size of evaluation (speed only; results unchanged)")
    train_eval_size: int = _spec(0, lo=0, help="fixed train subset for train accuracy; 0 = all")
    eval_every: int = _spec(1, lo=1, help="epochs between test evaluations within a round (the last epoch is "
                                         "always evaluated); 1 = every epoch, as the paper's code")
    device: str = _spec("auto", help="where to train: auto = CUDA when present, else the CPU",
                       allowed="auto, cpu, cuda, cuda:N")
    threads: int = _spec(1, lo=0, help="torch CPU threads; 0 leaves torch's default")
    precision: str = _spec("bf16", choices=PRECISIONS,
                           help="training precision on CUDA: bf16 autocast (fast) or fp32 (the paper's); the CPU "
                                "always trains in fp32, and accuracy is always computed in fp32")
    warmup_epochs: int = _spec(0, lo=0, help="linear lr warmup from 0 over this many epochs (lr x min(1, "
                                             "step / steps)), on top of the schedule; 0 = none")
    bn_shards: int = _spec(1, lo=1, help="batch-norm statistics over this many equal shards of each training "
                                         "batch, as DataParallel on that many GPUs (running stats from the first)")
    deterministic: bool = _spec(False, help="torch.use_deterministic_algorithms")


@dataclass
class PruneConfig:
    criterion: str = _spec("magnitude", choices=("magnitude", "gradient", "random"),
                           help="weight score before pruning: |w|, |w * dL/dw|, or random")
    scope: str = _spec("global", choices=("global", "layer"),
                       help="global: one threshold over all prunable tensors; layer: the same fraction of each")
    rate: float = _spec(0.2, lo=0.0, hi=1.0, lo_open=True, hi_open=True,
                        help="fraction of the remaining prunable weights removed per round")
    rounds: int = _spec(10, lo=0, help="pruning rounds after the dense round 0 (the paper's levels)")
    exclude: list[str] | None = _spec(None, help="parameter names kept dense; null = the arch's default",
                                      allowed="names of the model's .weight parameters, or null")
    gradient_batches: int = _spec(10, lo=1, help="batches accumulated by the gradient criterion")


@dataclass
class RetrainConfig:
    mode: str = _spec("lottery", choices=RETRAIN_MODES,
                      help="where a pruned round starts and which schedule it runs (docs/architecture.md)")
    rewind_step: int = _spec(0, lo=0, help="lottery rewind point (0 = dense initialisation)")
    rewind_unit: str = _spec("iterations", choices=("iterations", "epochs"), help="unit of retrain.rewind_step")
    finetune_lr: float = _spec(0.001, lo=0.0, lo_open=True, help="constant lr of finetune rounds")
    finetune_epochs: int = _spec(0, lo=0, help="epochs of finetune rounds; 0 = train.epochs")
    masks_from: str | None = _spec(None, help="reinit: run name or ID of the lottery trajectory",
                                  allowed="a run name or run ID, or null for the exact lottery twin")


@dataclass
class TrackingConfig:
    uri: str | None = _spec(None, help="MLflow tracking URI; null = sqlite mlflow.db at the project root",
                           allowed="sqlite:///path, http(s)://host:port, a database URI, or null")
    experiment: str = _spec("sddkit", help="MLflow experiment the trajectories are logged to",
                             allowed="a name of 1 to 256 characters")
    run_name: str | None = _spec(None, help="parent run name; null = the retrain mode",
                                allowed="a name of 1 to 250 characters, or null")


@dataclass
class AnalysisConfig:
    interpolation_threshold: float = _spec(95.0, lo=0.0, hi=100.0, lo_open=True,
                                           help="train_acc_noisy (%) below which the net no longer interpolates")
    light_tolerance: float = _spec(2.0, lo=0.0, hi=100.0, lo_open=True,
                                   help="test accuracy points a round may fall below dense and still be in the "
                                        "light phase (docs/analysis.md says why 2)")


@dataclass
class CompareConfig:
    """``sddkit compare`` settings: ``sddkit_stages.compare`` in params.yaml, beside the trajectory config
    (so changing them reruns only DVC's compare stage)."""
    interpolation_threshold: float | None = _spec(None, lo=0.0, hi=100.0, lo_open=True,
                                                  help="threshold of the compared curves' phases; null = each "
                                                       "run's own analysis.interpolation_threshold")


@dataclass
class SweepConfig:
    """``sddkit sweep``: the grid and how its cells run. The ``sweep:`` section of a params file (so DVC pins
    it), overridden by the command's options of the same names (``--grid``, ``--modes``, ``--executor``...)."""
    grid: dict = _spec(factory=dict, help="config key -> its values; every combination is a grid point",
                       allowed="a mapping of config keys to non-empty lists of values")
    modes: list[str] = _spec(factory=list, choices=RETRAIN_MODES,
                             help="retrain modes run at every grid point; empty = the config's retrain.mode")
    seeds: list[int] = _spec(factory=list, lo=0, help="seeds run at every grid point and mode; empty = the "
                                                      "config's seed")
    executor: str = _spec("local", choices=EXECUTORS, help="where cells run: processes on this machine, or Ray "
                                                           "tasks (pip install -e '.[ray]')")
    jobs: int = _spec(0, lo=0, help="local executor: cells at a time; 0 = one per GPU, else one per CPU core")
    address: str | None = _spec(None, help="ray executor: the cluster to join; null = a Ray started here",
                                allowed="auto, HOST:PORT, ray://HOST:PORT, or null")
    gpus_per_trajectory: float | None = _spec(None, lo=0.0, help="GPUs a cell holds (a fraction shares one); "
                                                                "null = 1 where the cluster has GPUs, else 0")
    cpus_per_trajectory: float = _spec(1.0, lo=0.0, lo_open=True, help="CPU cores a cell holds (Ray) and "
                                                                       "its torch threads (rounded up)")
    max_retries: int = _spec(3, lo=0, help="retries of a cell whose worker (or Ray node) died; each retry "
                                           "continues after the last finished round")
    max_cells: int = _spec(1000, lo=1, help="cells a sweep runs without --yes: a larger grid is refused at once "
                                            "(a typo in a grid multiplies fast)")


@dataclass
class Config:
    preset: str = _spec("quick", help="the preset this config starts from",
                         allowed="a name `sddkit presets` lists")
    seed: int = _spec(0, lo=0, help="seed of init, data order, augmentation (and noise, unless noise.seed)")
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
        """The identity without ``seed``: the replicates of one config share it. A pinned ``noise.seed``
        stays in it (null stays null), so replicates over a fixed noise draw form their own group."""
        return self._hash_without(NOT_IDENTITY | {"seed"})

    def identity_values(self, excluded: frozenset[str] | None = None) -> dict[str, Any]:
        """The keys that determine the results and differ from the schema's defaults (as open_lth hashes):
        a new setting whose default keeps today's behaviour leaves every stored run's identity as it was."""
        defaults, excluded = schema_defaults(type(self)), NOT_IDENTITY if excluded is None else excluded
        return {k: v for k, v in self.flat().items() if k not in excluded and _canonical(v) != defaults[k]}

    def _hash_without(self, excluded: frozenset[str]) -> str:
        science = self.identity_values(excluded)
        return hashlib.sha256(json.dumps(science, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        return self.tracking.run_name or self.retrain.mode

    @property
    def noise_seed(self) -> int:
        return self.seed if self.noise.seed is None else self.noise.seed


# Keys that do not change results: where things live, how fast they run, what they are called, and how
# the finished curve is labelled.
NOT_IDENTITY = frozenset({"preset", "data.root", "train.device", "train.threads", "train.eval_batch_size",
                          "train.eval_every",
                          "tracking.uri", "tracking.experiment", "tracking.run_name",
                          "analysis.interpolation_threshold", "analysis.light_tolerance"})


@functools.cache
def schema_defaults(schema: type) -> dict[str, str]:
    """Every key's schema default (the dataclasses', not a preset's), in canonical text."""
    return {k: _canonical(v) for k, v in schema().flat().items()}


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _flatten(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# ---------------------------------------------------------------- presets and loading

class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-3`` as a string; researchers write learning rates that way, so read it as a float."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def read_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def preset_names() -> list[str]:
    folder = resources.files("sddkit") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_tree(name: str) -> dict:
    if name not in preset_names():
        raise ConfigError(f"preset: unknown preset {name!r}; allowed: {', '.join(preset_names())}")
    text = (resources.files("sddkit") / "presets" / f"{name}.yaml").read_text()
    return read_yaml(text) or {}


def preset_description(name: str) -> str:
    return str(preset_tree(name).get("description", ""))


# Keys of a preset file that describe it rather than configure a run.
PRESET_ABOUT = ("description", "deviations")


def preset_deviations(name: str) -> list[str]:
    """Where preset ``name`` still departs from the paper's code (its ``deviations:`` list), one sentence
    each; empty for a preset that does not mirror the paper or departs nowhere known."""
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
    tree = preset_tree(name)
    for key in PRESET_ABOUT:
        tree.pop(key, None)
    tree = _deep_merge(tree, params)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_assignment, overrides or [])
    for key, value in items:
        _set_dotted(tree, key, value)
    tree["preset"] = name
    return check_combination(build(Config, tree, ""))


# Datasets with an asymmetric-noise class map (noise.ASYMMETRIC_MAPS, and CIFAR-100's super-classes).
ASYMMETRIC_DATASETS = ("mnist5k", "mnist", "cifar10", "cifar100")


DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")

# Side of each dataset's square images as ``sources`` loads them (Tiny ImageNet before any downsampling).
IMAGE_SIDE = {"mnist5k": 28, "mnist": 28, "cifar10": 32, "cifar100": 32, "tinyimagenet": 64}
# Smallest input side each arch runs on: VGG's four 2x2 max-pools (``models.timm_vgg``) end at 1x1 from 16x16;
# LeNet flattens and the adapted ResNets pool globally, so 1x1 suffices. tests/test_config.py builds each.
MIN_SIDE = {"vgg11_bn": 16, "vgg16_bn": 16}


def check_combination(cfg: Config) -> Config:
    """Rules that tie two keys together (or need a pattern), checked before any run is opened."""
    if not DEVICE_PATTERN.fullmatch(cfg.train.device):
        raise ConfigError(f"train.device = {cfg.train.device!r}: not allowed; allowed values: auto, cpu, cuda, cuda:N")
    if cfg.noise.kind == "asymmetric" and cfg.data.name not in ASYMMETRIC_DATASETS:
        raise ConfigError(f"noise.kind = 'asymmetric': no class map for data.name = {cfg.data.name!r}; "
                          f"defined for {', '.join(ASYMMETRIC_DATASETS)} (use pairflip or random instead)")
    if cfg.noise.kind == "open_lth" and cfg.noise_seed + 1 >= 2 ** 32:
        raise ConfigError(f"noise.seed = {cfg.noise_seed}: open_lth's draw seeds numpy's RandomState with it and "
                          f"it + 1, which take at most 2**32 - 1; use a smaller seed (the paper's is 1)")
    check_downsample(cfg)
    check_image_transforms(cfg)
    check_tracking(cfg.tracking)
    return cfg


def schedule_note(cfg: Config) -> str | None:
    """The warning for multistep milestones a round never reaches (a preset's, kept after train.epochs was
    lowered): the schedule the user reads is not the one that runs. A warning, not an error: such a config
    still trains (the lr stays put), and examples like ``dvc exp run -S +train.epochs=30`` rely on that."""
    t = cfg.train
    late = [m for m in t.milestones if m >= t.epochs]
    if t.schedule != "multistep" or not late or not t.epochs:
        return None
    return (f"train.milestones = {t.milestones}: {', '.join(map(str, late))} {'is' if len(late) == 1 else 'are'} "
            f"not before the last epoch (train.epochs = {t.epochs}), so the learning rate never drops there; set "
            f"train.milestones too (e.g. train.milestones=[] or [{max(1, int(t.epochs * 0.85))}])")


def check_name(key: str, name: str, limit: int, alternative: str = "") -> None:
    if not name.strip() or len(name) > limit:
        shown = repr(name[:40]) + ("…" if len(name) > 40 else "")
        raise ConfigError(f"{key} = {shown} ({len(name)} characters): give a name of 1 to {limit} characters"
                          f"{alternative}")


# The schemes MLflow 3 has a tracking store for ('' is a plain path: a file store); test_config checks the
# list against MLflow's own registry, which the config cannot import (it would slow every command).
TRACKING_SCHEMES = ("", "databricks", "databricks-uc", "file", "http", "https", "mssql", "mysql", "postgresql",
                    "sqlite", "uc")
# Column widths of MLflow's SQL stores: experiments.name is String(256), runs.name String(250).
MAX_EXPERIMENT_NAME, MAX_RUN_NAME = 256, 250


def check_tracking(tracking: TrackingConfig) -> None:
    check_name("tracking.experiment", tracking.experiment, MAX_EXPERIMENT_NAME)
    if tracking.run_name is not None:
        check_name("tracking.run_name", tracking.run_name, MAX_RUN_NAME, " (or null for the retrain mode)")
    if tracking.uri is not None:
        scheme = tracking.uri.partition("://")[0] if "://" in tracking.uri else tracking.uri.partition(":")[0]
        scheme = "" if scheme == tracking.uri or len(scheme) == 1 else scheme  # a path, or a Windows drive
        if scheme.split("+")[0] not in TRACKING_SCHEMES:
            raise ConfigError(f"tracking.uri = {tracking.uri!r}: MLflow has no tracking store for {scheme!r}; use "
                              f"sqlite:///path/mlflow.db, http(s)://host:port (sddkit ui's or a server's), a "
                              f"database URI, or null for the project's mlflow.db")


def check_downsample(cfg: Config) -> None:
    """The average pool must leave an image the arch can take (a 0x0 image fails deep inside torch)."""
    side, factor = IMAGE_SIDE[cfg.data.name], cfg.data.downsample
    need = MIN_SIDE.get(cfg.model.arch, 1)
    if side // factor < need:
        raise ConfigError(f"data.downsample = {factor}: pools the {side}x{side} images of {cfg.data.name} to "
                          f"{side // factor}x{side // factor}, below the {need}x{need} {cfg.model.arch} needs; "
                          f"at most {side // need}")


def image_side(cfg: Config) -> int:
    """Side of the square images the model sees: ``data.crop_size``, else the stored side after pooling."""
    return cfg.data.crop_size or IMAGE_SIDE[cfg.data.name] // cfg.data.downsample


def check_image_transforms(cfg: Config) -> None:
    """The crop must fit in the (pooled) images and in the evaluation resize; fixed stats must have one value
    per channel of the dataset."""
    d, stored = cfg.data, IMAGE_SIDE[cfg.data.name] // cfg.data.downsample
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
    need = MIN_SIDE.get(cfg.model.arch, 1)
    if image_side(cfg) < need:
        raise ConfigError(f"data.crop_size = {d.crop_size}: below the {need}x{need} {cfg.model.arch} needs")
    if d.norm_stats in NORM_STATS and len(NORM_STATS[d.norm_stats][0]) != channels:
        fits = [name for name, (mean, _) in NORM_STATS.items() if len(mean) == channels]
        raise ConfigError(f"data.norm_stats = {d.norm_stats!r}: has {len(NORM_STATS[d.norm_stats][0])} channel(s), "
                          f"{d.name} has {channels}; use train or {', '.join(fits)}")


def read_params_file(path: Path) -> dict:
    tree = _read_tree(path)
    tree.pop(STAGES_KEY, None)  # DVC pipeline settings live beside the config, not in it
    tree.pop(SWEEP_KEY, None)  # and so does a sweep's grid
    return tree


def read_sweep_settings(path: Path | None, overrides: dict | None = None) -> SweepConfig:
    """The ``sweep:`` section of a params file (defaults where absent) <- ``overrides`` (the command's options,
    by key), checked like every other key. Grid values are checked later, on the config of each cell."""
    tree = (_read_tree(path).get(SWEEP_KEY) if path and path.is_file() else None) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{SWEEP_KEY}: expected a section of keys, got {tree!r}")
    tree = {**tree, **{k: v for k, v in (overrides or {}).items() if v not in (None, (), [], {})}}
    grid = tree.pop("grid", None) or {}
    settings = build(SweepConfig, tree, f"{SWEEP_KEY}.")
    settings.grid = check_grid(grid)
    check_sweep(settings)
    return settings


def check_sweep(settings: SweepConfig) -> None:
    """Settings that would be silently dropped: a repeated seed or mode (one cell, not two), and an address the
    local executor never joins."""
    for key, values, what in (("seeds", settings.seeds, "seed"), ("modes", settings.modes, "mode")):
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise ConfigError(f"{SWEEP_KEY}.{key} = {' '.join(map(str, values))}: {what} {repeated[0]} is "
                              f"repeated; give each {what} once")
    if settings.executor == "local" and settings.address is not None:
        raise ConfigError(f"{SWEEP_KEY}.address = {settings.address!r}: only Ray joins a cluster; add "
                          f"--executor ray, or drop the address to run on local processes")


def count_cells(settings: SweepConfig) -> tuple[int, int]:
    """(cells, grid points) of a sweep, from the settings alone (a reinit cell's added twin not counted): known
    at once, where laying the cells out builds and hashes a config for each."""
    points = math.prod(len(values) for values in settings.grid.values())
    return points * max(1, len(settings.modes)) * max(1, len(settings.seeds)), points


def check_grid(grid: Any) -> dict[str, list]:
    """A grid is config key -> non-empty list of distinct values (a lone value is a list of one)."""
    if not isinstance(grid, dict):
        raise ConfigError(f"{SWEEP_KEY}.grid: expected a mapping of config keys to lists of values, got {grid!r}")
    known = {key for key, _, _ in leaf_fields()}
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


def parse_grid_option(text: str) -> tuple[str, list]:
    """``--grid noise.ratio=0.2,0.4`` -> ("noise.ratio", [0.2, 0.4]); values are read as one YAML flow list,
    so ``train.milestones=[80,120],[40]`` gives two lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise ConfigError(f"--grid {text!r}: expected KEY=V1,V2,..., e.g. --grid noise.ratio=0.2,0.4")
    try:
        values = read_yaml(f"[{raw}]")
    except yaml.YAMLError as exc:
        raise ConfigError(f"--grid {text!r}: the values are not a comma-separated list ({exc.__class__.__name__})")
    return key.strip(), values


def parse_grid_options(texts) -> dict[str, list]:
    """Every ``--grid`` option as one grid: a key given twice keeps the values of both, in order, rather than
    the last option alone (a value repeated is refused later, by check_grid)."""
    grid: dict[str, list] = {}
    for text in texts:
        key, values = parse_grid_option(text)
        grid.setdefault(key, []).extend(values)
    return grid


def read_compare_settings(path: Path | None) -> CompareConfig:
    """``sddkit_stages.compare`` of a params file; defaults where the file or the key is absent."""
    stages = (_read_tree(path).get(STAGES_KEY) if path and path.is_file() else None) or {}
    if not isinstance(stages, dict):
        raise ConfigError(f"{STAGES_KEY}: expected a section of keys, got {stages!r}")
    return build(CompareConfig, stages.get("compare") or {}, f"{STAGES_KEY}.compare.")


def _read_tree(path: Path) -> dict:
    try:
        tree = read_yaml(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path.name}: not valid YAML ({exc.__class__.__name__}); fix the syntax") from exc
    if not isinstance(tree, dict):
        raise ConfigError(f"{path.name}: expected a mapping of keys, got {type(tree).__name__}")
    return tree


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{key}: {part} is not a section")
    node[leaf] = value


# ---------------------------------------------------------------- validation

def build(cls: type, tree: Any, prefix: str):
    """Build dataclass ``cls`` from a nested dict, checking every key, type and range."""
    if not isinstance(tree, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a section of keys, got {tree!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(tree) - set(fields))
    if unknown:
        allowed = ", ".join(prefix + name for name in fields)
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key{did_you_mean(cls, prefix, unknown[0])}; "
                          f"allowed keys here: {allowed}")
    values = {}
    for name, value in tree.items():
        hint, key = hints[name], prefix + name
        if dataclasses.is_dataclass(hint):
            values[name] = build(hint, value, key + ".")
        else:
            values[name] = check_value(key, value, hint, fields[name].metadata)
    return cls(**values)


def did_you_mean(cls: type, prefix: str, name: str) -> str:
    """`` (did you mean train.lr?)`` for a mistyped key of section ``cls``: the closest of its keys and of the
    dotted keys below it (``lr`` at the top finds ``train.lr``), or ''."""
    keys = [f.name for f in dataclasses.fields(cls)] + [key for key, _, _ in leaf_fields(cls)]
    close = difflib.get_close_matches(name, keys, n=1, cutoff=0.6)
    close = close or [key for key in keys if key.endswith("." + name)][:1]
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def check_value(key: str, value: Any, hint: Any, meta: typing.Mapping) -> Any:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key} = {value!r}: expected a list of {args[0].__name__}")
        return [check_value(f"{key}[{i}]", v, args[0], meta) for i, v in enumerate(value)]
    value = _coerce(key, value, hint)
    _check_range(key, value, meta)
    return value


def _coerce(key: str, value: Any, hint: type) -> Any:
    if hint is str and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # YAML read `run_name: 2024` as a number; a name is text
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}[hint]
    if not ok:
        raise ConfigError(f"{key} = {value!r}: expected {hint.__name__}")
    if hint is not float:
        return value
    try:
        return float(value)
    except OverflowError:  # an integer beyond any float; _check_range then rejects it as not finite
        return math.inf


def _check_range(key: str, value: Any, meta: typing.Mapping) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        # NaN passes every comparison below, and inf trains to chance: both would be stored as a finished run.
        raise ConfigError(f"{key} = {value!r}: not a finite number; allowed: {_range_text(meta)}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key} = {value!r}: not allowed; allowed values: {', '.join(map(str, choices))}")
    lo, hi = meta.get("lo"), meta.get("hi")
    too_low = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
    too_high = hi is not None and (value >= hi if meta.get("hi_open") else value > hi)
    if too_low or too_high:
        raise ConfigError(f"{key} = {value!r}: out of range; allowed: {_range_text(meta)}")


def _range_text(meta: typing.Mapping) -> str:
    lo, hi = meta.get("lo"), meta.get("hi")
    left = "" if lo is None else f"{lo} {'<' if meta.get('lo_open') else '≤'} "
    right = "" if hi is None else f" {'<' if meta.get('hi_open') else '≤'} {hi}"
    return f"{left}value{right}" if left or right else "any finite number"


def leaf_fields(cls: type | None = None, prefix: str = ""):
    """(dotted key, type hint, dataclass field) for every knob."""
    hints = typing.get_type_hints(cls or Config)
    for f in dataclasses.fields(cls or Config):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from leaf_fields(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name, hints[f.name], f


KEY_COLUMNS = {"key": "key", "type": "type", "default": "default", "allowed": "allowed values",
               "meaning": "meaning"}


def describe_keys() -> list[dict[str, str]]:
    """Every knob's row for docs and `sddkit keys` (KEY_COLUMNS): dotted key, type, default (a config
    without params.yaml: the quick preset's value), allowed values and meaning, each as text."""
    defaults = {**load_config().flat(), **dict(_flatten({SWEEP_KEY: dataclasses.asdict(SweepConfig())}))}
    defaults[f"{SWEEP_KEY}.grid"] = {}
    fields = [*leaf_fields(), *leaf_fields(SweepConfig, f"{SWEEP_KEY}.")]  # sweep.*: `sddkit sweep`, a params file
    return [{"key": key, "type": type_name(hint), "default": yaml_text(defaults[key]),
             "allowed": allowed_text(hint, f.metadata), "meaning": f.metadata.get("help", "")}
            for key, hint, f in fields]


def type_name(hint: Any) -> str:
    """``int``, ``list[str]``, ``str or null``: the type as a params.yaml writer reads it."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return f"{type_name(inner[0])} or null"
    if typing.get_origin(hint) is list:
        return f"list[{type_name(inner[0])}]"
    return hint.__name__


def yaml_text(value: Any) -> str:
    """A value as params.yaml writes it: null, true, [68], 0.003."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("\n...\n").strip()


def allowed_text(hint: Any, meta: typing.Mapping) -> str:
    if meta.get("choices"):
        return ", ".join(map(str, meta["choices"]))
    if meta.get("allowed"):
        return meta["allowed"]
    if hint is bool:
        return "true, false"
    each = "each " if typing.get_origin(hint) is list or "list[" in type_name(hint) else ""
    text = each + _range_text(meta) if meta.get("lo") is not None or meta.get("hi") is not None else ""
    null = ", or null" if "or null" in type_name(hint) else ""
    return (text or ("any finite number" if "float" in type_name(hint) else "any")) + null


def from_params(params: dict[str, str]) -> Config:
    """The config a run logged as MLflow params (``str(value)``, lists as JSON), validated again.

    Params that are not config keys (logged by other tools) are ignored; keys the run lacks take the
    preset's value."""
    hints = {key: hint for key, hint, _ in leaf_fields()}
    overrides = {key: _param_value(text, hints[key]) for key, text in params.items()
                 if key in hints and key != "preset"}
    return load_config(preset=params.get("preset"), overrides=overrides)


def _param_value(text: str, hint: Any) -> Any:
    """Undo ``str()``: 'None' -> None where allowed, text stays text, the rest (numbers, bools, lists) as YAML."""
    inner = [a for a in typing.get_args(hint) if a is not type(None)]
    optional = len(inner) < len(typing.get_args(hint))
    if optional and text == "None":
        return None
    return text if (inner[0] if optional else hint) is str else read_yaml(text)


def with_values(cfg: Config, values: dict[str, Any]) -> Config:
    """``cfg`` with the dotted keys of ``values`` set, checked as ``--set`` would be (a sweep's grid point)."""
    return load_config(dataclasses.asdict(cfg), preset=cfg.preset, overrides=values)
