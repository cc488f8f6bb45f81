"""The one decision path: a checkpoint folder or a GGUF file becomes a *decider*.

Evaluation, the quantization ladder, the stakeholder app and the runtime all decide through
``load_decider``, so a number measured by ``so8t evaluate`` is a number of the served gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Decider(Protocol):
    """What every backend offers: probabilities over ALLOW / REFUSE / ESCALATE, answers, a version."""

    model_version: str

    def decide(self, requests: list[str], contexts: list[str | None] | None = None, batch_size: int = 32,
               progress: bool = False) -> torch.Tensor: ...

    def generate(self, request: str, context: str | None = None, max_tokens: int = 128,
                 temperature: float = 0.0) -> str: ...


def is_gguf_path(path: str | Path) -> bool:
    return str(path).endswith(".gguf")


def load_decider(path: str | Path) -> Decider:
    """An SO8TModel for a checkpoint or run folder, a GGUFBackend for a ``.gguf`` file."""
    if is_gguf_path(path):
        from .gguf_backend import GGUFBackend

        return GGUFBackend(path)
    from ..model.so8t import SO8TModel

    return SO8TModel.load(path)
