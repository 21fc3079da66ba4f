"""Every shipped preset loads through the one config loader, builds its model, and carries the paper's settings."""
from __future__ import annotations

import pytest
import torch

from sddkit import models
from sddkit.config import image_side, load_config, preset_description, preset_deviations, preset_names

# (classes, stored image shape) of each dataset; data.downsample divides the height and width.
DATASETS = {
    "mnist5k": (10, (1, 28, 28)),
    "mnist": (10, (1, 28, 28)),
    "cifar10": (10, (3, 32, 32)),
    "cifar100": (100, (3, 32, 32)),
    "tinyimagenet": (200, (3, 64, 64)),
}

# The paper's table (shared/docs/PAPER.md): arch, data, epochs, batch, optimiser, momentum, lr, milestones, wd,
# rewind iterations, retrain mode.
PAPER = {
    "mnist-lenet": ("lenet300_100", "mnist", 200, 128, "sgd", 0.0, 0.1, [], 0.0, 0, "lottery"),
    "cifar10-resnet18": ("resnet18", "cifar10", 160, 128, "sgd", 0.9, 0.1, [80, 120], 1e-4, 1000, "lottery"),
    "cifar100-resnet18": ("resnet18", "cifar100", 160, 128, "sgd", 0.9, 0.1, [80, 120], 1e-4, 1000, "lottery"),
    "cifar10-vgg16": ("vgg16_bn", "cifar10", 160, 128, "sgd", 0.9, 0.1, [80, 120], 1e-4, 2000, "lottery"),
    "cifar100-vgg16": ("vgg16_bn", "cifar100", 160, 128, "sgd", 0.9, 0.1, [80, 120], 1e-4, 2000, "lottery"),
    "tinyimagenet-resnet101": ("resnet101", "tinyimagenet", 200, 512, "sgd", 0.9, 0.2, [100, 150], 1e-4, 1000,
                               "oneshot"),
}


def test_the_paper_presets_ship_beside_quick():
    assert {"quick", *PAPER} <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
def test_preset_loads_and_builds_its_model_for_the_dataset(name):
    cfg = load_config(preset=name)
    assert cfg.preset == name
    description = preset_description(name)
    assert description and "\n" not in description
    classes, (channels, _, _) = DATASETS[cfg.data.name]
    shape = (channels, image_side(cfg), image_side(cfg))
    torch.manual_seed(0)
    model = models.build(cfg.model.arch, classes, shape, cfg.model.init).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, *shape)).shape == (1, classes)
    exclude = cfg.prune.exclude if cfg.prune.exclude is not None else models.default_exclude(cfg.model.arch)
    assert models.prunable(model, exclude)


@pytest.mark.parametrize("name", PAPER)
def test_paper_presets_carry_the_papers_settings(name):
    cfg = load_config(preset=name)
    t, r = cfg.train, cfg.retrain
    got = (cfg.model.arch, cfg.data.name, t.epochs, t.batch_size, t.optimizer, t.momentum, t.lr, t.milestones,
           t.weight_decay, r.rewind_step, r.mode)
    assert got == PAPER[name]
    assert (r.rewind_unit, cfg.prune.rate, cfg.prune.criterion, cfg.prune.scope) == ("iterations", 0.2, "magnitude",
                                                                                      "global")
    # The paper's runs: --random_labels_fraction=0.2 --fix_all_random_seeds=1, its own draw with seed 1.
    assert (cfg.noise.kind, cfg.noise.ratio, cfg.noise.seed) == ("open_lth", 0.2, 1)
    assert cfg.train.schedule == ("constant" if name == "mnist-lenet" else "multistep")
    assert cfg.model.init == "open_lth"  # the paper code's init, LeNet included
    assert cfg.train.precision == "fp32"  # as the paper trained
    assert cfg.data.norm_stats == ("mnist" if name == "mnist-lenet" else "imagenet")  # its loaders' statistics
    assert cfg.prune.rounds >= 15
    deviations = preset_deviations(name)  # what still departs from the paper's code is said, one line each
    assert deviations and all(line.strip() and "\n" not in line for line in deviations)
    if name != "tinyimagenet-resnet101":
        assert cfg.data.augment == "auto" and (cfg.train.warmup_epochs, cfg.train.bn_shards) == (0, 1)


def test_tinyimagenet_follows_the_papers_code():
    cfg = load_config(preset="tinyimagenet-resnet101")
    d, t = cfg.data, cfg.train
    # RandomResizedCrop(32) + flip of the 64x64 images; tests on resize 45 + centre crop 32.
    assert (d.downsample, d.augment, d.crop_size, d.test_resize, image_side(cfg)) == (1, "resized_crop_flip", 32,
                                                                                      45, 32)
    # lr warmed up over 5 epochs; batch 512 on 4 GPUs: batch-norm statistics over 128-image shards.
    assert (t.warmup_epochs, t.batch_size, t.bn_shards) == (5, 512, 4)
    assert cfg.prune.rounds == 16  # levels 0-16


def test_presets_outside_the_paper_state_no_deviations():
    assert preset_deviations("quick") == []


def test_the_tinyimagenet_protocol_runs_end_to_end_on_the_cpu(project):
    """The paper's Tiny ImageNet pipeline on a few real JPEGs: 64x64 images resized-cropped to 32 for training,
    seen through resize 45 + centre crop 32 for testing, a warmed-up lr and batch norm over shards."""
    from test_sources import write_tinyimagenet

    from sddkit import runner

    write_tinyimagenet(project / "data", per_class=4)  # 12 train images of 3 classes, 4 test images
    cfg = load_config(preset="tinyimagenet-resnet101", overrides={
        "model.arch": "resnet18", "train.epochs": 2, "train.batch_size": 8, "train.milestones": [],
        "train.warmup_epochs": 1, "prune.rounds": 1, "retrain.rewind_step": 1, "train.device": "cpu",
        "tracking.uri": f"sqlite:///{project}/mlflow.db"})
    assert (cfg.data.crop_size, cfg.data.test_resize, cfg.train.bn_shards) == (32, 45, 4)
    store, rows = runner.run_trajectory(cfg, project, quiet=True)
    assert [round(r["sparsity"], 3) for r in store.completed] == [0.0, 0.2]
    assert all(0.0 <= r["test_acc"] <= 100.0 for r in store.completed)
