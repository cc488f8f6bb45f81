"""Adapters moved off their starting point, as training would move them, without training.

A new SO8T model is its base model exactly (LoRA B is zero, every gate the identity), so a parity check
on it (export against model, GGUF against HF, save against load) would pass even if the adapters were
dropped on the way. Tests and benchmarks perturb them first, with this one function.
"""

from __future__ import annotations

import torch
from torch import nn

ADAPTER_MARKERS = ("lora_", ".r_safe.", ".r_cmd.", ".modules_to_save.")  # parameters SO8T adds to the base


@torch.no_grad()
def perturb_adapters(model: nn.Module, scale: float = 0.05, seed: int = 1) -> None:
    """Add N(0, scale²) noise to every LoRA matrix, gate and saved module, and give the head's standardiser
    (where it has one) statistics that are not the identity; the same seed gives the same model."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if any(marker in name for marker in ADAPTER_MARKERS):
            param.add_(torch.randn(param.shape, generator=gen) * scale)
    standardizer = model.safety_head.standardizer
    if standardizer is not None:
        width = standardizer.mean.numel()
        standardizer.mean.copy_(torch.randn(width, generator=gen))
        standardizer.sq_mean.copy_(standardizer.mean.square() + torch.rand(width, generator=gen) + 0.1)
