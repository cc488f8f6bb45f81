"""Shared fixtures: the tiny preset's tokenizer (built once) and small model configs."""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of retrying
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest

from so8t_lib.core.config import ModelConfig
from so8t_lib.model.tokenizer import tiny_tokenizer


@pytest.fixture(autouse=True)
def _so8t_settings_left_as_found():
    """A test that changes an SO8T_* variable must undo it (monkeypatch does): a cache path left pointing at a
    deleted temp folder made every later test rebuild the Gemma base there, 1.3 GB a run, never cleaned."""
    before = {key: value for key, value in os.environ.items() if key.startswith("SO8T_")}
    yield
    after = {key: value for key, value in os.environ.items() if key.startswith("SO8T_")}
    assert after == before, f"the test left SO8T_* settings changed: {before} -> {after}"


@pytest.fixture(autouse=True)
def _torch_threads_left_as_found():
    """A test (or a benchmark's main() run in process) that sets torch's thread count must put it back: one left at 1
    made every later torch test in the suite run on one core (the learning test 135 s instead of 65 s)."""
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    yield
    torch = sys.modules.get("torch")
    if before is not None and torch is not None:
        assert torch.get_num_threads() == before, f"the test left torch's threads at {torch.get_num_threads()}, not {before}"


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture
def tiny_config():
    """The tiny preset as configs/tiny.yaml ships it (embeddings trained in full), dropout off
    so outputs are deterministic."""
    return ModelConfig(lora={"dropout": 0.0, "modules_to_save": ["embed_tokens"]}, head={"dropout": 0.0})


def sample_batch(tokenizer, texts, padding_side="right"):
    tokenizer.padding_side = padding_side
    try:
        return tokenizer(texts, return_tensors="pt", padding=True)
    finally:
        tokenizer.padding_side = "right"
