"""Shared fixtures: the tiny preset's tokenizer (built once) and small model configs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of retrying
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from so8t_lib.core.config import ModelConfig
from so8t_lib.model.tokenizer import tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def tiny_config():
    """The tiny preset as configs/tiny.yaml ships it (embeddings trained in full), dropout off
    so outputs are deterministic."""
    return ModelConfig(lora={"dropout": 0.0, "modules_to_save": ["embed_tokens"]}, head={"dropout": 0.0})


def randomize_adapters(model, scale: float = 0.05, seed: int = 1) -> None:
    """Training-like random updates to every LoRA matrix, gate and head weight."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or ".r_safe." in name or ".r_cmd." in name or ".modules_to_save." in name:
                param.add_(torch.randn(param.shape, generator=gen) * scale)
        standardizer = model.safety_head.standardizer
        if standardizer is not None:  # statistics as training would leave them
            width = standardizer.mean.numel()
            standardizer.mean.copy_(torch.randn(width, generator=gen))
            standardizer.sq_mean.copy_(standardizer.mean.square() + torch.rand(width, generator=gen) + 0.1)


def sample_batch(tokenizer, texts, padding_side="right"):
    tokenizer.padding_side = padding_side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
