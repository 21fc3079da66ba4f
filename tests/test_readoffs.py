"""The paper's read-offs as package data: every PAPER.md anchor, matched by the run's params."""
from __future__ import annotations

import pytest

from sddkit import config, readoffs

CIFAR10 = {"preset": "cifar10-resnet18", "data.name": "cifar10", "model.arch": "resnet18", "noise.kind": "random",
           "noise.ratio": "0.4", "retrain.mode": "lottery", "seed": "2"}


def test_every_anchor_of_the_paper_is_there():
    settings = {r.setting: r for r in readoffs.read_offs()}
    assert len(settings) == 7
    r = settings["ResNet-18 CIFAR-10, ε=40%"]
    assert (r.points["dense"].test_acc, r.points["minimum"], r.points["peak"]) == \
        (68.5, readoffs.Point(94.5, 62.0), readoffs.Point(99.6, 84.1))
    assert settings["ResNet-18 CIFAR-10, ε=80%"].points["minimum"].approx


def test_a_run_matches_by_preset_noise_and_mode_as_logged():
    assert readoffs.matching(CIFAR10).setting == "ResNet-18 CIFAR-10, ε=40%"
    assert readoffs.matching({**CIFAR10, "noise.ratio": "0.40"}).setting == "ResNet-18 CIFAR-10, ε=40%"
    assert readoffs.matching({**CIFAR10, "noise.ratio": "0.2", "retrain.mode": "reinit"}).setting.endswith("reinit")


@pytest.mark.parametrize("change", [{"noise.ratio": "0.3"}, {"model.arch": "vgg16_bn"}, {"noise.kind": "symmetric"},
                                    {"preset": "quick"}])
def test_another_setting_has_no_read_off(change):
    assert readoffs.matching({**CIFAR10, **change}) is None


def test_read_offs_name_real_presets_and_keys():
    """Each entry's preset is a real one whose dataset, model and noise kind are those of the entry."""
    keys = set(config.load_config().flat())
    for r in readoffs.read_offs():
        assert set(r.match) <= keys and r.match["preset"] in config.preset_names()
        cfg = config.load_config(preset=r.match["preset"])
        assert all(readoffs._same(str(cfg.flat()[k]), v) for k, v in r.match.items() if k not in ("retrain.mode", "noise.ratio"))
