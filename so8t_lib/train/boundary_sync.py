"""What every process of a run must decide alike at a step boundary: whether to stop on a signal and whether the
autosave is due. Each process sees its own signal (torchrun forwards SIGTERM to each worker at its own moment) and
its own clock, and a save waits at a barrier for all of them: one process saving while another trains the next step
deadlocks the run (torchrun then SIGKILLs it without a last/ checkpoint). So the flags are agreed on once per step,
with one all-reduce (MAX) when there are several processes and no collective at all when there is one."""

from __future__ import annotations

import signal
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived (in any process); the loop saves and leaves at the next step boundary."""


class SignalFlag:
    """Records SIGINT/SIGTERM instead of dying mid-step; ``install`` returns what ``restore`` puts back."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:  # noqa: ARG002 - handler signature
        self.signum = signum

    def install(self) -> dict[int, Callable | int | None]:
        return {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    @staticmethod
    def restore(previous: dict[int, Callable | int | None]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def agreed_max(accelerator: Accelerator, *flags: int) -> list[int]:
    """Each flag's largest value over all processes (every process gets the same list). One process: the flags as
    they are, without a collective."""
    if accelerator.num_processes == 1 or not torch.distributed.is_initialized():
        return [int(f) for f in flags]
    values = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=accelerator.device)
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.MAX)
    return [int(v) for v in values.tolist()]
