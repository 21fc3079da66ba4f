"""Backbones by name: the paper's LeNet-300-100 and timm's ResNets and VGGs adapted to 32x32 input, in this one
place, with their initialisations (``model.init``) and the weights a mask covers. docs/models.md details each
adaptation and init; timm is imported inside the builders, so importing this module stays cheap.
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
    """784-300-100-10 on the flattened image (fewer inputs when downsampled)."""
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
    """Kaiming-normal weights (conv fan_out, linear fan_in), zero biases, batch norm weight 1 and bias 0."""
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
    """The paper's code: kaiming-normal weights at torch's defaults, PyTorch's default biases, batch norm weight
    U(0, 1) and bias 0; after the arch's own init, drawing from torch's global generator module by module."""
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
