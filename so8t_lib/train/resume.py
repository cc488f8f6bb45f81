"""What lets an interrupted run go on as if it had never stopped: the loop's position (``TrainerState``, saved in
every checkpoint) and the step boundary an emergency save goes back to (``StepBoundary``)."""

from __future__ import annotations

from dataclasses import dataclass

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
    finished step left them, so the emergency save must describe that step, not the half-done one: its RNG states
    and its data position (a resume then takes the failed step's rows again)."""

    def __init__(self) -> None:
        self.rng: dict | None = None
        self.position: tuple[int, int] | None = None

    def enter(self, state: TrainerState) -> None:
        """Record the boundary just before a step starts."""
        self.rng = rng_state()
        self.position = (state.epoch, state.batch_in_epoch)

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

    def rewind(self, state: TrainerState) -> dict | None:
        """Inside a step, put ``state``'s data position back to the step's start and return the RNG states to save
        with it; after a step, change nothing and return None (save the current RNG states)."""
        if self.position is None:
            return None
        state.epoch, state.batch_in_epoch = self.position
        return self.rng
