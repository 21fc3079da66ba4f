"""Backbones by name: the paper's LeNet-300-100 and timm models adapted to 32x32 input, in this one place.

``build(arch, num_classes, input_shape, init)`` returns an ``nn.Module``; ``prunable(model, exclude)`` names
the weights a mask covers (conv and linear ``.weight``, never biases or norm layers); ``default_exclude(arch)``
is the paper's choice of layers kept dense. ``timm`` is imported inside the builders: importing this module
stays cheap.

Adaptations of timm's ImageNet models (see docs/models.md):

- ResNet (``resnet18/34/101``): the 7x7 stride-2 stem conv becomes 3x3 stride 1 padding 1 without bias, and
  the max-pool goes, so a 32x32 image reaches the last stage at 4x4 instead of 1x1.
- VGG (``vgg11_bn/16_bn``): timm's conv stack with batch norm, without its last max-pool, then global average
  pooling and one linear layer (no ConvMlp / 4096-wide head). At 32x32 the pool averages the final 2x2 map.

Initialisation (``model.init``):

- ``default``: each framework's own scheme. LeNet: PyTorch's (weights and biases uniform in ±1/sqrt(fan_in)).
  ResNet: timm's ``init_weights`` run on the adapted net — conv weights kaiming-normal (fan_out, ReLU gain),
  batch norm weight 1 and bias 0 except the last batch norm of every residual block, whose weight is 0
  (timm's ``zero_init_last``); the classifier keeps PyTorch's uniform init. VGG: timm's VGG rule — conv
  weights kaiming-normal (fan_out), conv biases 0, batch norm weight 1 and bias 0, linear weight N(0, 0.01²),
  linear bias 0.
- ``kaiming_normal``: the same for every arch — conv weights kaiming-normal with fan_out, linear weights
  kaiming-normal with fan_in (both with the ReLU gain sqrt(2)), every conv/linear bias 0, every batch norm
  weight 1 and bias 0 (no zero-initialised residual branches).
- ``open_lth``: the paper's code (its open_lth fork), for every arch, LeNet included — conv and linear weights
  ``nn.init.kaiming_normal_`` at its defaults (fan_in, gain sqrt(2): std sqrt(2/fan_in)), conv/linear biases
  PyTorch's default (uniform in ±1/sqrt(fan_in), redrawn because timm's VGG rule zeroes them), batch norm
  weight U(0, 1) and bias 0. It runs after the arch's own init and replaces it (timm's zero_init_last too).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable

import torch
from torch import nn

from sddkit.config import ConfigError

Shape = tuple[int, int, int]


def lenet300_100(num_classes: int, input_shape: Shape) -> nn.Module:
    """784-300-100-10 on the flattened image (fewer inputs when the image is downsampled)."""
    inputs = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, num_classes))


def timm_resnet(name: str) -> Callable[[int, Shape], nn.Module]:
    def builder(num_classes: int, input_shape: Shape) -> nn.Module:
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=input_shape[0])
        # ImageNet's 7x7/2 stem and 3x3/2 max-pool would shrink a 32x32 image 4x before the first block.
        model.conv1 = nn.Conv2d(input_shape[0], model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        model.init_weights()  # timm's own scheme, now covering the new stem too
        return model
    return builder


def timm_vgg(name: str) -> Callable[[int, Shape], nn.Module]:
    def builder(num_classes: int, input_shape: Shape) -> nn.Module:
        import timm
        from timm.models.vgg import VGG

        # Built on the meta device: timm's 7x7 ConvMlp head (~120M weights) is thrown away, so never allocate it.
        with torch.device("meta"):
            stock = timm.create_model(name, pretrained=False, in_chans=input_shape[0])
        # Without the last max-pool a 32x32 input ends at 2x2 (a 28x28 one at 1x1) before global pooling.
        features = stock.features[:-1].to_empty(device="cpu")
        for module in features.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()  # also resets batch-norm running statistics left empty by to_empty
        model = nn.Sequential(OrderedDict(features=features, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(),
                                          fc=nn.Linear(stock.num_features, num_classes)))
        VGG._initialize_weights(model)  # timm's VGG init rule (it only walks .modules())
        return model
    return builder


BUILDERS: dict[str, Callable[[int, Shape], nn.Module]] = {
    "lenet300_100": lenet300_100,
    "resnet18": timm_resnet("resnet18"),
    "resnet34": timm_resnet("resnet34"),
    "resnet101": timm_resnet("resnet101"),
    "vgg11_bn": timm_vgg("vgg11_bn"),
    "vgg16_bn": timm_vgg("vgg16_bn"),
}

# The paper keeps the output layer dense for the MLP and VGG, and prunes it for ResNet.
OUTPUT_LAYER = {"lenet300_100": "5.weight", "vgg11_bn": "fc.weight", "vgg16_bn": "fc.weight"}


def default_exclude(arch: str) -> list[str]:
    return [OUTPUT_LAYER[arch]] if arch in OUTPUT_LAYER else []


def build(arch: str, num_classes: int, input_shape: Shape, init: str = "default") -> nn.Module:
    if arch not in BUILDERS:
        raise ConfigError(f"model.arch = {arch!r}: unknown; allowed values: {', '.join(BUILDERS)}")
    model = BUILDERS[arch](num_classes, tuple(input_shape))
    if init == "kaiming_normal":
        kaiming_normal_(model)
    elif init == "open_lth":
        open_lth_(model)
    elif init != "default":
        raise ConfigError(f"model.init = {init!r}: unknown; allowed values: default, kaiming_normal, open_lth")
    return model


@torch.no_grad()
def kaiming_normal_(model: nn.Module) -> None:
    """Kaiming-normal weights (fan_out for conv, fan_in for linear), zero biases, batch norm weight 1 bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
        else:
            continue
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@torch.no_grad()
def open_lth_(model: nn.Module) -> None:
    """The paper's code: kaiming-normal weights at torch's defaults (fan_in, gain sqrt(2)), PyTorch's default
    biases, batch norm weight U(0, 1) and bias 0. Draws from torch's global generator, module by module."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight)
            if module.bias is not None:
                # PyTorch's own bias rule (what the paper's nets keep); timm's VGG init had set them to 0.
                bound = 1.0 / math.sqrt(module.weight[0].numel())  # fan_in: in_channels/groups x kernel
                nn.init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.uniform_(module.weight)
            nn.init.zeros_(module.bias)


def prunable(model: nn.Module, exclude: list[str]) -> dict[str, nn.Parameter]:
    """Conv and linear weights by parameter name, minus ``exclude``; unknown exclusions are an error."""
    weights = {f"{name}.weight" if name else "weight": m.weight for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))}
    missing = sorted(set(exclude) - set(weights))
    if missing:
        raise ConfigError(f"prune.exclude names {missing[0]!r}, not a conv/linear weight of this model; "
                         f"choose from: {', '.join(weights)}")
    return {name: w for name, w in weights.items() if name not in exclude}
