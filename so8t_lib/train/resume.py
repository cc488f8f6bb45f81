"""What lets an interrupted run go on as if it had never stopped: the loop's position (``TrainerState``, saved in
every checkpoint), the step boundary an emergency save goes back to (``StepBoundary``), and the checks a resume
makes that the run it continues is this one (``check_same_base``)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from torch import nn

from ..core.checkpoint import CheckpointError
from ..core.config import ModelConfig
from ..core.schema import MODEL_CONFIG_FILE, is_adapter_key
from ..model.base import base_location
from .optim import rng_state


@dataclass
class TrainerState:
    """Where the loop is; saved in every checkpoint so a resume continues exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False


class StepBoundary:
    """The state at the start of the step in progress. An error inside a step leaves the weights as the last
    finished step left them, so the emergency save must describe that step, not the half-done one: its RNG states,
    its data position (a resume then takes the failed step's rows again) and the adapter's buffers, which the
    forward already changed (SafetyHeadB's running statistics: kept, a resume would count the batch twice, and a
    step that overflowed would leave them NaN)."""

    def __init__(self) -> None:
        self.rng: dict | None = None
        self.position: tuple[int, int] | None = None
        self.buffers: dict[str, torch.Tensor] = {}

    def enter(self, state: TrainerState, model: nn.Module) -> None:
        """Record the boundary just before a step starts."""
        self.rng = rng_state()
        self.position = (state.epoch, state.batch_in_epoch)
        self.buffers = {name: buffer.detach().clone() for name, buffer in _adapter_buffers(model)}

    def leave(self) -> None:
        """The step finished: an error from here on saves the state as it is."""
        self.position = None

    @property
    def entered(self) -> bool:
        """True once a step has started in this process (an error before the first one saves nothing)."""
        return self.rng is not None

    @property
    def inside(self) -> bool:
        return self.position is not None

    def rewind(self, state: TrainerState, model: nn.Module) -> dict | None:
        """Inside a step, put ``state``'s data position and ``model``'s adapter buffers back to the step's start and
        return the RNG states to save with them; after a step, change nothing and return None (save the current
        RNG states)."""
        if self.position is None:
            return None
        state.epoch, state.batch_in_epoch = self.position
        with torch.no_grad():
            for name, buffer in _adapter_buffers(model):
                buffer.copy_(self.buffers[name])
        return self.rng


def _adapter_buffers(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The buffers saved in ``adapter.safetensors`` (the frozen base's, such as rotary tables, never change)."""
    return [(name, buffer) for name, buffer in model.named_buffers() if is_adapter_key(name)]


def check_same_base(last: Path, fingerprint: str | None, model_config: ModelConfig) -> None:
    """CheckpointError when ``last/`` was trained on another base than the one ``model_config`` loaded now (its
    ``fingerprint``): the saved adapters would go on training on weights they were not fitted to."""
    meta_file = last / MODEL_CONFIG_FILE
    try:
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{meta_file}: unreadable ({exc}); the run cannot be resumed from {last}") from None
    trained_on = meta.get("base_fingerprint") if isinstance(meta, dict) else None
    location = base_location(model_config) if trained_on else None
    if trained_on and fingerprint and trained_on != fingerprint:
        raise CheckpointError(f"{last}: the run was trained on another base (manifest sha256 {trained_on}) than the "
                              f"one at {location} (manifest sha256 {fingerprint}); point model.base_model at the base "
                              "the run started on, or start a new run in another training.output_dir")
    if trained_on and not fingerprint:
        warnings.warn(f"{location} has no manifest, so the resume cannot check that it is the base {last} was trained "
                      f"on (manifest sha256 {trained_on})", stacklevel=2)
