"""Label noise: realised rates, class mappings, determinism, and a clean test split."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sddkit import noise
from sddkit.config import ConfigError
from sddkit.sources import DatasetError

torch.set_num_threads(1)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def balanced(k: int, per_class: int, seed: int = 0) -> torch.Tensor:
    """``per_class`` labels of each of ``k`` classes, shuffled."""
    labels = np.repeat(np.arange(k), per_class)
    return torch.from_numpy(np.random.default_rng(seed).permutation(labels))


def flips(clean: torch.Tensor, noisy: torch.Tensor) -> dict[tuple[int, int], int]:
    """(true class, noisy class) -> how many samples moved that way."""
    changed = clean != noisy
    pairs = zip(clean[changed].tolist(), noisy[changed].tolist())
    out: dict[tuple[int, int], int] = {}
    for pair in pairs:
        out[pair] = out.get(pair, 0) + 1
    return out


# ---------------------------------------------------------------- uniform kinds

def test_random_rate_is_eps_times_one_minus_one_over_k():
    clean = balanced(10, 2000)
    noisy = noise.corrupt(clean, "random", 0.4, seed=3, num_classes=10)
    assert noise.realised_rate(clean, noisy) == pytest.approx(0.4 * (1 - 1 / 10), abs=0.01)
    # Drawn from all K classes: every class receives noisy labels from every other one.
    assert len(flips(clean, noisy)) == 10 * 9
    counts = torch.bincount(noisy, minlength=10).float()
    assert counts.min() > 1900 and counts.max() < 2100


def test_symmetric_rate_is_exactly_the_rounded_fraction():
    clean = balanced(7, 143)  # 1,001 labels: 0.3 x 1001 = 300.3 -> 300 corrupted
    noisy = noise.corrupt(clean, "symmetric", 0.3, seed=0, num_classes=7)
    assert int((clean != noisy).sum()) == 300
    assert noise.realised_rate(clean, noisy) == pytest.approx(300 / 1001)
    assert len(flips(clean, noisy)) == 7 * 6  # always another class, every other class reachable


# ---------------------------------------------------------------- class-dependent kinds

def test_pairflip_moves_each_class_to_the_next_at_rate_eps():
    clean = balanced(5, 101)
    noisy = noise.corrupt(clean, "pairflip", 0.25, seed=1, num_classes=5)
    assert flips(clean, noisy) == {(c, (c + 1) % 5): round(0.25 * 101) for c in range(5)}


@pytest.mark.parametrize("dataset", ["cifar10"])
def test_asymmetric_cifar10_follows_the_named_classes(dataset):
    clean = balanced(10, 200)
    noisy = noise.corrupt(clean, "asymmetric", 0.4, seed=0, num_classes=10, dataset=dataset)
    named = {(CIFAR10[a], CIFAR10[b]): n for (a, b), n in flips(clean, noisy).items()}
    assert named == {("truck", "automobile"): 80, ("bird", "airplane"): 80, ("cat", "dog"): 80,
                     ("dog", "cat"): 80, ("deer", "horse"): 80}
    assert noise.realised_rate(clean, noisy) == pytest.approx(5 * 80 / 2000)


@pytest.mark.parametrize("dataset", ["mnist", "mnist5k"])
def test_asymmetric_mnist_follows_the_digit_map(dataset):
    clean = balanced(10, 50)
    noisy = noise.corrupt(clean, "asymmetric", 0.2, seed=0, num_classes=10, dataset=dataset)
    assert flips(clean, noisy) == {(2, 7): 10, (3, 8): 10, (5, 6): 10, (6, 5): 10}


def scrambled_superclasses(seed: int = 0) -> np.ndarray:
    """A fine -> coarse table like CIFAR-100's: 20 super-classes of 5 fine classes, not in index order."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(20), 5))


def test_asymmetric_cifar100_goes_to_the_next_fine_class_of_the_same_superclass():
    coarse_of = scrambled_superclasses()
    clean = balanced(100, 20)
    coarse = torch.from_numpy(coarse_of[clean.numpy()])
    noisy = noise.corrupt(clean, "asymmetric", 0.5, seed=0, num_classes=100, dataset="cifar100", coarse=coarse)
    moved = flips(clean, noisy)
    assert all(n == 10 for n in moved.values()) and len(moved) == 100
    for source, target in moved:
        members = np.flatnonzero(coarse_of == coarse_of[source])  # the super-class, in fine-index order
        position = list(members).index(source)
        assert target == members[(position + 1) % len(members)]
    assert sorted(target for _, target in moved) == list(range(100))  # a permutation within super-classes


def test_asymmetric_cifar100_needs_consistent_coarse_labels():
    clean = balanced(100, 2)
    with pytest.raises(DatasetError, match="coarse labels"):
        noise.corrupt(clean, "asymmetric", 0.2, seed=0, num_classes=100, dataset="cifar100")
    coarse = torch.from_numpy(scrambled_superclasses()[clean.numpy()])
    coarse[clean == 7] = torch.arange(int((clean == 7).sum())) % 20  # class 7 split over super-classes
    with pytest.raises(DatasetError, match="fine class 7 carries several coarse labels"):
        noise.corrupt(clean, "asymmetric", 0.2, seed=0, num_classes=100, dataset="cifar100", coarse=coarse)


def test_asymmetric_without_a_class_map_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.name = 'tinyimagenet'"):
        noise.corrupt(balanced(200, 1), "asymmetric", 0.2, seed=0, num_classes=200, dataset="tinyimagenet")


# ---------------------------------------------------------------- the paper's own draw

def randomize_labels(labels: np.ndarray, seed: int, fraction: float, k: int) -> np.ndarray:
    """The reference, from the rules of open_lth's ``Dataset.randomize_labels`` (datasets/base.py of
    he-zh/sparse-double-descent): n = ceil(N·ε); the new labels ``RandomState(seed).randint(K, size=n)``; the
    samples ``RandomState(seed + 1).permutation(N)[:n]``; ``labels[idx] = new``."""
    labels = labels.copy()
    n = math.ceil(len(labels) * fraction)
    new = np.random.RandomState(seed).randint(k, size=n)
    idx = np.random.RandomState(seed + 1).permutation(len(labels))[:n]
    labels[idx] = new
    return labels


@pytest.mark.parametrize("n, k, ratio, seed", [(50000, 10, 0.2, 1), (50000, 100, 0.4, 1), (50000, 10, 0.8, 1),
                                               (60000, 10, 0.2, 1), (100000, 200, 0.2, 1), (4000, 10, 0.2, 7),
                                               (7, 3, 0.5, 0)])
def test_open_lth_draw_equals_the_papers_randomize_labels_bit_for_bit(n, k, ratio, seed):
    clean = np.random.default_rng(n).integers(0, k, n)  # any labels, in a fixed order
    noisy = noise.corrupt(torch.from_numpy(clean), "open_lth", ratio, seed=seed, num_classes=k)
    assert noisy.dtype == torch.int64
    assert np.array_equal(noisy.numpy(), randomize_labels(clean, seed, ratio, k))
    # ceil(N·ε) samples drawn from all K classes: about ε(1 - 1/K) of the labels change, never more than ceil(N·ε).
    changed = int((noisy != torch.from_numpy(clean)).sum())
    assert changed <= math.ceil(n * ratio)
    if n >= 1000:
        assert changed / n == pytest.approx(ratio * (1 - 1 / k), abs=0.01)


def test_the_paper_presets_give_the_papers_noisy_cifar10_from_its_files(tmp_path):
    """The files in their standard order (data_batch_1..5, as torchvision reads them) -> the paper's noisy set."""
    from test_sources import write_cifar10

    from sddkit import data
    from sddkit.config import load_config

    written = write_cifar10(tmp_path / "data", per_batch=40)
    cfg = load_config(preset="cifar10-resnet18")
    splits, noisy = data.load_labelled(cfg, tmp_path)
    in_file_order = np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)]).astype(np.int64)
    assert np.array_equal(splits.y_train_clean.numpy(), in_file_order)
    # --random_labels_fraction=0.2 --fix_all_random_seeds=1: randomize_labels(seed=1, fraction=0.2)
    assert np.array_equal(noisy.numpy(), randomize_labels(in_file_order, 1, 0.2, 10))
    assert cfg.noise_seed == 1 and load_config(preset="cifar10-resnet18", overrides={"seed": 2}).noise_seed == 1


def test_open_lth_seeds_beyond_what_randomstate_takes_are_refused_in_one_line():
    from sddkit.config import load_config

    with pytest.raises(ConfigError, match=r"^noise.seed = 4294967295: open_lth's draw .*\(the paper's is 1\)$"):
        load_config(preset="quick", overrides={"noise.kind": "open_lth", "noise.seed": 2 ** 32 - 1})
    assert load_config(preset="quick", overrides={"noise.kind": "open_lth", "noise.seed": 2 ** 32 - 2})


# ---------------------------------------------------------------- determinism and what stays clean

@pytest.mark.parametrize("kind", ["random", "symmetric", "pairflip", "asymmetric", "open_lth"])
def test_same_seed_same_labels_other_seed_other_labels(kind):
    clean = balanced(10, 100)
    first = noise.corrupt(clean, kind, 0.3, seed=4, num_classes=10, dataset="cifar10")
    assert torch.equal(first, noise.corrupt(clean, kind, 0.3, seed=4, num_classes=10, dataset="cifar10"))
    assert not torch.equal(first, noise.corrupt(clean, kind, 0.3, seed=5, num_classes=10, dataset="cifar10"))
    assert first.dtype == torch.int64


@pytest.mark.parametrize("kind", ["random", "symmetric", "pairflip", "asymmetric", "open_lth"])
def test_clean_labels_are_never_modified(kind):
    train, test = balanced(10, 50, seed=1), balanced(10, 10, seed=2)
    train_before, test_before = train.clone(), test.clone()
    noisy = noise.corrupt(train, kind, 0.6, seed=0, num_classes=10, dataset="cifar10")
    assert torch.equal(train, train_before) and torch.equal(test, test_before)
    assert noisy.data_ptr() != train.data_ptr()


def test_zero_ratio_and_none_leave_labels_as_they_are():
    clean = balanced(10, 20)
    assert torch.equal(noise.corrupt(clean, "none", 0.5, seed=0, num_classes=10), clean)
    assert torch.equal(noise.corrupt(clean, "random", 0.0, seed=0, num_classes=10), clean)
    assert torch.equal(noise.corrupt(clean, "open_lth", 0.0, seed=1, num_classes=10), clean)


class MemoryStore:
    """The trajectory's Store protocol, kept in memory: enough for the engine's setup."""

    def __init__(self):
        self.completed, self.states, self.labels = [], {}, None

    def log_labels(self, noisy, realised_rate):
        self.labels = (noisy.clone(), realised_rate)

    def save_state(self, name, state):
        self.states[name] = state

    def load_state(self, name):
        return self.states.get(name)

    def init_digest(self):
        return self.states.get("init_digest")

    def record_init_digest(self, digest):
        self.states["init_digest"] = digest


def test_trajectory_corrupts_train_labels_only(tmp_path):
    from sddkit import sources, trajectory
    from sddkit.config import load_config

    cfg = load_config(preset="quick", overrides={"noise.kind": "random", "noise.ratio": 0.4, "train.device": "cpu"})
    store = MemoryStore()
    ctx = trajectory.setup(cfg, tmp_path, store, trajectory.Reporter(), None)
    src = sources.load("mnist5k", tmp_path, cfg.data.test_size, cfg.data.split_seed)
    assert torch.equal(ctx.splits.y_test, src.y_test)             # the test split stays clean
    assert torch.equal(ctx.splits.y_train_clean, src.y_train)
    noisy, rate = store.labels
    assert torch.equal(noisy, ctx.noisy) and rate == noise.realised_rate(src.y_train, noisy)
    assert rate == pytest.approx(0.4 * 0.9, abs=0.03)


def test_config_refuses_asymmetric_noise_without_a_class_map():
    from sddkit.config import load_config

    with pytest.raises(ConfigError, match=r"noise.kind = 'asymmetric': no class map for data.name = 'tinyimagenet'"):
        load_config(preset="quick", overrides={"data.name": "tinyimagenet", "noise.kind": "asymmetric"})
    assert load_config(preset="quick", overrides={"data.name": "cifar100", "noise.kind": "asymmetric"})
