"""The one decision path: a checkpoint folder or a GGUF file becomes a *decider*.

Evaluation, the quantization ladder, the stakeholder app and the runtime all decide through
``load_decider``, so a number measured by ``so8t evaluate`` is a number of the served gate.
Model files are verified on the way in (a checkpoint against its manifest, a GGUF file against its
sha256 sidecar); files that cannot be verified are refused unless the operator set
``SO8T_ALLOW_UNVERIFIED_MODEL=1``, and then the decider's ``model_version`` ends in ``+unverified``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..core.checkpoint import UNVERIFIED_MARK, has_manifest, resolve_checkpoint

if TYPE_CHECKING:  # torch is imported by the backends themselves; the runtime starts without it
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

    folder = resolve_checkpoint(path)
    verified = has_manifest(folder)
    model = SO8TModel.load(path)  # refuses a folder without a manifest unless the override is set
    if not verified and not str(model.model_version).endswith(UNVERIFIED_MARK):
        model.model_version = f"{model.model_version}{UNVERIFIED_MARK}"
    return model
