"""The backbones: shapes, pinned parameter counts, the 32x32 adaptations, exclusions and initialisation."""
from __future__ import annotations

import functools
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from sddkit import models
from sddkit.config import ARCHS, ConfigError

TIMM_ARCHS = ("resnet18", "resnet34", "resnet101", "vgg11_bn", "vgg16_bn")
CIFAR = (3, 32, 32)

# Prunable conv + linear weights (prunable(model, [])) for 10 classes on 32x32 RGB input.
PRUNABLE_WEIGHTS = {
    "resnet18": 11_164_352,   # the paper's figure
    "resnet34": 21_265_088,
    "resnet101": 42_407_616,
    "vgg11_bn": 9_222_848,
    "vgg16_bn": 14_715_584,
}


@functools.cache
def built(arch: str, init: str = "default", classes: int = 10, shape: tuple = CIFAR) -> nn.Module:
    """Each model is built once per test session (ResNet-101 takes a second)."""
    torch.manual_seed(0)
    return models.build(arch, classes, shape, init)


def count(weights: dict) -> int:
    return sum(w.numel() for w in weights.values())


def test_registry_covers_every_configurable_arch():
    assert set(models.BUILDERS) == set(ARCHS)


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_timm_nets_map_a_cifar_batch_to_class_logits(arch):
    model = built(arch).eval()
    with torch.no_grad():
        assert model(torch.randn(2, *CIFAR)).shape == (2, 10)


def test_lenet_takes_the_downsampled_mnist_image():
    model = models.build("lenet300_100", 10, (1, 14, 14))
    assert model(torch.randn(2, 1, 14, 14)).shape == (2, 10)
    assert model[1].in_features == 196


@pytest.mark.parametrize("arch, shape", [("resnet18", (1, 28, 28)), ("vgg11_bn", (1, 28, 28))])
def test_grey_images_set_the_input_channels(arch, shape):
    model = built(arch, shape=shape).eval()
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, 10)


@pytest.mark.parametrize("arch", TIMM_ARCHS)
def test_prunable_weight_counts_are_pinned(arch):
    assert count(models.prunable(built(arch), [])) == PRUNABLE_WEIGHTS[arch]


def test_lenet_weight_count_and_classes_change_only_the_output_layer():
    assert count(models.prunable(models.build("lenet300_100", 10, (1, 28, 28)), [])) == 784 * 300 + 300 * 100 + 1000
    assert count(models.prunable(built("resnet18", classes=100), [])) == PRUNABLE_WEIGHTS["resnet18"] + 512 * 90


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet101"])
def test_resnet_stem_is_3x3_stride_1_without_bias_or_max_pool(arch):
    model = built(arch)
    stem = model.conv1
    assert (stem.kernel_size, stem.stride, stem.padding, stem.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert isinstance(model.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


@pytest.mark.parametrize("arch", ["vgg11_bn", "vgg16_bn"])
def test_vgg_has_batch_norm_global_pooling_and_a_single_linear_head(arch):
    model = built(arch)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 and (linears[0].in_features, linears[0].out_features) == (512, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) for c in convs)  # no ConvMlp 7x7 / 1x1 head
    assert len(convs) == {"vgg11_bn": 8, "vgg16_bn": 13}[arch]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == len(convs)
    assert isinstance(model.pool, nn.AdaptiveAvgPool2d)


def test_default_exclusions_keep_the_mlp_and_vgg_output_dense_and_prune_resnets():
    assert models.default_exclude("lenet300_100") == ["5.weight"]
    for arch in ("vgg11_bn", "vgg16_bn"):
        model = built(arch)
        assert models.default_exclude(arch) == ["fc.weight"]
        kept = models.prunable(model, models.default_exclude(arch))
        assert "fc.weight" not in kept and count(kept) == PRUNABLE_WEIGHTS[arch] - 5120
    for arch in ("resnet18", "resnet34", "resnet101"):
        assert models.default_exclude(arch) == []
        assert "fc.weight" in models.prunable(built(arch), [])


def test_unknown_exclusion_and_unknown_arch_are_config_errors():
    with pytest.raises(ConfigError, match="prune.exclude names 'head.weight'"):
        models.prunable(built("resnet18"), ["head.weight"])
    with pytest.raises(ConfigError, match="model.arch = 'resnet50': unknown"):
        models.build("resnet50", 10, CIFAR)


def _std_ratio(weight: torch.Tensor, fan: int) -> float:
    return float(weight.detach().std()) / math.sqrt(2.0 / fan)


@pytest.mark.parametrize("arch", ["resnet18", "vgg16_bn"])
def test_kaiming_normal_init(arch):
    model = built(arch, "kaiming_normal")
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.weight.numel() >= 10_000:
            fan_out = module.out_channels * math.prod(module.kernel_size)
            assert _std_ratio(module.weight, fan_out) == pytest.approx(1.0, abs=0.05)
        if isinstance(module, nn.Linear):
            assert _std_ratio(module.weight, module.in_features) == pytest.approx(1.0, abs=0.05)
        if isinstance(module, nn.BatchNorm2d):
            assert bool((module.weight == 1).all()) and bool((module.bias == 0).all())
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            assert bool((module.bias == 0).all())


def _sampling_bound(n: int, spread: float) -> float:
    """Four standard errors of a statistic whose single-sample spread is ``spread``, plus a small floor."""
    return 4.0 * spread / math.sqrt(n) + 1e-3


@pytest.mark.parametrize("arch", ["lenet300_100", "resnet18", "vgg16_bn"])
def test_open_lth_init_matches_the_papers_code(arch):
    shape = (1, 28, 28) if arch == "lenet300_100" else CIFAR
    model = built(arch, "open_lth", shape=shape)
    checked = {"weights": 0, "biases": 0, "norms": 0}
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            w, fan_in = module.weight.detach(), module.weight[0].numel()
            if w.numel() >= 1_000:  # too few samples to pin a std
                expected = math.sqrt(2.0 / fan_in)  # kaiming_normal_'s defaults: fan_in, gain sqrt(2)
                # The sample std's relative standard error is 1/sqrt(2n).
                assert float(w.std()) / expected == pytest.approx(1.0, abs=_sampling_bound(2 * w.numel(), 1.0))
                assert abs(float(w.mean())) <= _sampling_bound(w.numel(), expected)
                checked["weights"] += 1
            if module.bias is not None:  # PyTorch's default: uniform in ±1/sqrt(fan_in), never zeroed
                b = module.bias.detach()
                assert float(b.abs().max()) <= 1.0 / math.sqrt(fan_in) and bool((b != 0).any())
                checked["biases"] += 1
        if isinstance(module, nn.BatchNorm2d):
            w = module.weight.detach()
            assert bool(((w >= 0) & (w < 1)).all())  # U(0, 1), whose std is 1/sqrt(12)
            assert float(w.mean()) == pytest.approx(0.5, abs=_sampling_bound(w.numel(), 12 ** -0.5))
            assert bool((module.bias == 0).all())
            checked["norms"] += 1
    assert checked["weights"] >= 3 and checked["biases"] >= 1
    assert checked["norms"] == {"lenet300_100": 0, "resnet18": 20, "vgg16_bn": 13}[arch]


def test_open_lth_init_overrides_timms_zero_initialised_residual_branches():
    resnet = built("resnet18", "open_lth")
    assert not any(bool((m.weight == 0).all()) for m in resnet.modules() if isinstance(m, nn.BatchNorm2d))
    assert not bool((resnet.fc.bias == 0).all())


def test_default_init_is_timms_scheme():
    resnet = built("resnet18")
    # timm zero-initialises the last batch norm of each residual block: 8 basic blocks in ResNet-18.
    zeroed = [m for m in resnet.modules() if isinstance(m, nn.BatchNorm2d) and bool((m.weight == 0).all())]
    assert len(zeroed) == 8
    assert _std_ratio(resnet.conv1.weight, 64 * 9) == pytest.approx(1.0, abs=0.1)  # the new stem is initialised too
    vgg = built("vgg16_bn")
    assert float(vgg.fc.weight.detach().std()) == pytest.approx(0.01, rel=0.05) and bool((vgg.fc.bias == 0).all())
    bn = vgg.features[1]
    assert bool((bn.running_mean == 0).all()) and bool((bn.running_var == 1).all())  # no garbage from meta


@pytest.mark.parametrize("arch", ["vgg11_bn", "resnet18"])
def test_build_is_reproducible_under_a_seed(arch):
    def weights(seed):
        torch.manual_seed(seed)
        return models.build(arch, 10, CIFAR, "kaiming_normal").state_dict()

    a, b, c = weights(1), weights(1), weights(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_importing_models_does_not_import_timm():
    code = "import sys, sddkit.models; sys.exit('timm' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
