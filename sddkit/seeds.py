"""Independent generators per concern, derived from (seed, concern, round), so any round can be
recomputed alone and changing one concern's draws never shifts another's."""
from __future__ import annotations

import hashlib

import torch

CONCERNS = ("init", "order", "augment", "random_mask", "gradient", "landscape")


def derive(seed: int, concern: str, round_index: int = 0) -> int:
    if concern not in CONCERNS:
        raise ValueError(f"unknown seed concern {concern!r}")
    digest = hashlib.sha256(f"sddkit:{seed}:{concern}:{round_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, concern: str, round_index: int = 0, device: str | torch.device = "cpu") -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(derive(seed, concern, round_index))
    return gen
