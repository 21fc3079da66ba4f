"""Backbones by name: the paper's LeNet-300-100 and timm models adapted to 32x32 input.

``build(arch, num_classes, input_shape)`` returns an ``nn.Module``; ``prunable(model, exclude)`` names the
weights a mask covers (conv and linear ``.weight``, never biases or norm layers); ``default_exclude(arch)``
is the paper's choice of layers kept dense.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from sddkit.config import ConfigError


def lenet300_100(num_classes: int, input_shape: tuple[int, int, int]) -> nn.Module:
    """784-300-100-10 on the flattened image (fewer inputs when the image is downsampled)."""
    inputs = math.prod(input_shape)
    return nn.Sequential(nn.Flatten(), nn.Linear(inputs, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(),
                         nn.Linear(100, num_classes))


BUILDERS: dict[str, Callable[[int, tuple[int, int, int]], nn.Module]] = {
    "lenet300_100": lenet300_100,
}

# The paper keeps the output layer dense for the MLP and VGG, and prunes it for ResNet.
OUTPUT_LAYER = {"lenet300_100": "5.weight"}


def default_exclude(arch: str) -> list[str]:
    return [OUTPUT_LAYER[arch]] if arch in OUTPUT_LAYER else []


def build(arch: str, num_classes: int, input_shape: tuple[int, int, int], init: str = "default") -> nn.Module:
    model = BUILDERS[arch](num_classes, input_shape)
    if init == "kaiming_normal":
        kaiming_normal_(model)
    return model


def kaiming_normal_(model: nn.Module) -> None:
    """Kaiming-normal (fan_out for conv, fan_in for linear) weights, zero biases, unit norm layers."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
        else:
            continue
        if module.bias is not None:
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
