"""Label noise: realised rates, class mappings, determinism, and a clean test split."""
from __future__ import annotations

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


# ---------------------------------------------------------------- determinism and what stays clean

@pytest.mark.parametrize("kind", ["random", "symmetric", "pairflip", "asymmetric"])
def test_same_seed_same_labels_other_seed_other_labels(kind):
    clean = balanced(10, 100)
    first = noise.corrupt(clean, kind, 0.3, seed=4, num_classes=10, dataset="cifar10")
    assert torch.equal(first, noise.corrupt(clean, kind, 0.3, seed=4, num_classes=10, dataset="cifar10"))
    assert not torch.equal(first, noise.corrupt(clean, kind, 0.3, seed=5, num_classes=10, dataset="cifar10"))
    assert first.dtype == torch.int64


@pytest.mark.parametrize("kind", ["random", "symmetric", "pairflip", "asymmetric"])
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
