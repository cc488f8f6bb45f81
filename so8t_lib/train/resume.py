"""What lets an interrupted run go on as if it had never stopped: the loop's position (``TrainerState``, saved in
every checkpoint), the step boundary an emergency save goes back to (``StepBoundary``), the trainer's saves and
resume (``RunCheckpoints``), and the checks a resume makes that the run it continues is this one: its loop state
(``trainer_state_from``), its base (``check_same_base``) and its rows (``data_fingerprint``, ``check_same_data``)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import yaml
from torch import nn

from ..core.checkpoint import CheckpointError, ResumeMismatch, atomic_folder
from ..core.config import ModelConfig, SO8TConfig
from ..core.schema import ADAPTER_FILE, LAST_DIR, MODEL_CONFIG_FILE, TRAINER_STATE_FILE, is_adapter_key
from ..model.pretrained import base_mismatch
from .optim import rng_state, set_rng_state
from .run_folder import check_resumable, load_trainer_state, truncate_metrics

if TYPE_CHECKING:
    from accelerate import Accelerator

    from ..model.so8t import SO8TModel


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
    eval_pending: bool = False  # the step's evaluation has not finished: a resume does it before the next step


class RunCheckpoints:
    """The saves of Trainer (``best/``, ``last/``, the one an error leaves) and its resume from ``last/``."""

    accelerator: Accelerator
    main: bool
    run_dir: Path
    config: SO8TConfig
    model: SO8TModel
    opt_task: torch.optim.Optimizer
    opt_safety: torch.optim.Optimizer
    sched_task: torch.optim.lr_scheduler.LRScheduler
    sched_safety: torch.optim.lr_scheduler.LRScheduler
    state: TrainerState
    boundary: StepBoundary
    data_fingerprint: dict[str, dict]
    _last_save: float

    def _check_resumable(self) -> None:
        check_resumable(self.run_dir)

    def _load_last(self) -> None:
        last = self.run_dir / LAST_DIR
        saved = load_trainer_state(self.run_dir, self.config)
        check_same_base(last, self.model.base_record(), self.config.model)
        check_same_data(saved.get("data_fingerprint"), self.data_fingerprint, last, self.config.training.data_dir)
        self.state = trainer_state_from(saved, last)
        if self.state.step < self.config.training.max_steps and not self.state.stopped_early:  # steps left to train
            check_same_world(saved.get("world_size"), self.accelerator.num_processes, last)
        self.model.load_adapter(last / ADAPTER_FILE)
        self.opt_task.load_state_dict(saved["opt_task"])
        self.opt_safety.load_state_dict(saved["opt_safety"])
        self.sched_task.load_state_dict(saved["sched_task"])
        self.sched_safety.load_state_dict(saved["sched_safety"])
        set_rng_state(saved["rng"])
        if self.main:
            truncate_metrics(self.run_dir, self.state.step)

    def save(self, name: str, rng: dict | None = None, state: TrainerState | None = None) -> None:
        """Write ``best`` or ``last`` atomically (main process only), with ``state`` instead of the current one when
        given (an evaluation's outcome, which enters the state only once ``best/`` holds it)."""
        self.accelerator.wait_for_everyone()
        rng = rng or rng_state()
        if self.main:
            with atomic_folder(self.run_dir / name, owned=True) as tmp:
                self.model.write_files(tmp)
                torch.save({
                    "opt_task": self.opt_task.state_dict(), "opt_safety": self.opt_safety.state_dict(),
                    "sched_task": self.sched_task.state_dict(), "sched_safety": self.sched_safety.state_dict(),
                    "state": asdict(state or self.state), "rng": rng,
                    "config_fingerprint": self.config.fingerprint(), "config": self.config.to_dict(),
                    "data_fingerprint": self.data_fingerprint,
                    "world_size": self.accelerator.num_processes,
                }, tmp / TRAINER_STATE_FILE)
        self._last_save = time.monotonic()
        self.accelerator.wait_for_everyone()

    def _emergency_save(self) -> None:
        """After an error, ``last/`` as the last finished step left it (nothing when no step has finished)."""
        if self.boundary.entered and self.state.step > 0:
            inside = self.boundary.inside  # then the weights are still the last finished step's
            self.save(LAST_DIR, rng=self.boundary.rewind(self.state, self.model))
            print(f"\nerror {'in' if inside else 'after'} step {self.state.step + inside}; emergency checkpoint at "
                  f"{self.run_dir / LAST_DIR}", file=sys.stderr)


def trainer_state_from(saved: dict, last: Path) -> TrainerState:
    """The loop state saved in ``last/``; CheckpointError when this version cannot read it (fields it does not
    know: a newer version wrote it)."""
    state = saved.get("state")
    try:
        return TrainerState(**state)
    except TypeError:
        known = {field.name for field in fields(TrainerState)}
        unknown = sorted(set(state) - known) if isinstance(state, dict) else []
        raise ResumeMismatch(f"{last / TRAINER_STATE_FILE}: its loop state was written by another version of so8t "
                              f"({'unknown fields: ' + ', '.join(unknown) if unknown else f'not a mapping: {state!r}'})"
                              "; resume it with the version that wrote it, or start a new run in another "
                              "training.output_dir") from None


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


def check_same_base(last: Path, loaded: dict, model_config: ModelConfig) -> None:
    """CheckpointError when ``last/`` was trained on another base than the one ``model_config`` loaded now (its
    ``base_record``): the saved adapters would go on training on weights they were not fitted to."""
    meta_file = last / MODEL_CONFIG_FILE
    try:
        meta = yaml.safe_load(meta_file.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CheckpointError(f"{meta_file}: unreadable ({exc}); the run cannot be resumed from {last}") from None
    meta = meta if isinstance(meta, dict) else {}
    trained_on = meta.get("base_fingerprint")
    location = model_config.base_model or f"the {model_config.preset} preset's base"
    mismatch = base_mismatch(meta, loaded)
    if mismatch:
        raise ResumeMismatch(f"{last}: the run was trained on another base than the one at {location} ({mismatch});"
                              " point model.base_model at the base the run started on, or start a new run in "
                              "another training.output_dir")
    # a tiny base and its tokenizer come from last/ itself (SO8TModel.for_resume): nothing to compare here
    if trained_on and not loaded.get("base_fingerprint") and model_config.preset != "tiny":
        warnings.warn(f"{location} has no manifest, so the resume cannot check that it is the base {last} was "
                      f"trained on (manifest sha256 {trained_on})", stacklevel=2)


def data_fingerprint(train_rows: list[dict], val_rows: list[dict]) -> dict[str, dict]:
    """Per split, how many rows, and sha256s of their ids and of their contents, in order. The data order is a
    function of (seed, epoch, index) over the training rows, so a resume on other rows trains other batches."""
    return {"train": _rows_digest(train_rows), "val": _rows_digest(val_rows)}


def _rows_digest(rows: list[dict]) -> dict:
    ids, contents = hashlib.sha256(), hashlib.sha256()
    for row in rows:
        ids.update(f"{row.get('id')}\n".encode())
        contents.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode() + b"\n")
    return {"rows": len(rows), "ids": ids.hexdigest(), "contents": contents.hexdigest()}


def check_same_world(saved: int | None, now: int, last: Path) -> None:
    """CheckpointError when ``last/`` was saved by a run on another number of processes: its data position counts
    batches of (processes x batch_size) rows, so under another count the resumed steps would train rows of the epoch
    again (or skip some). A state saved before the count was recorded is resumed with a warning (nothing to compare;
    most such runs were single-process)."""
    if saved is None:
        warnings.warn(f"{last / TRAINER_STATE_FILE} records no process count (an older version wrote it): the resume "
                      f"cannot check that the run was started on {now} process(es) as it goes on now", stacklevel=2)
        return
    if int(saved) != now:
        launch = "so8t train ... --resume" if saved == 1 else \
            f"torchrun --nproc_per_node {saved} -m so8t_lib.train ... --resume"
        raise ResumeMismatch(f"{last}: the run was trained on {saved} process(es) and this resume runs on {now}; its "
                              f"data position counts batches of {saved} x training.batch_size rows, so the resumed "
                              f"steps would train other rows than the run's. Resume on {saved} process(es) "
                              f"({launch}), or start a new run in another training.output_dir")


def check_same_data(saved: dict | None, current: dict[str, dict], last: Path, data_dir: str) -> None:
    """CheckpointError when the rows differ from those the run in ``last/`` started on, naming what changed; a
    warning when ``last/`` was written before the fingerprint was recorded (nothing to compare)."""
    if saved is None:
        warnings.warn(f"{last / TRAINER_STATE_FILE} records no data fingerprint (an older version wrote it): the "
                      f"resume cannot check that {data_dir} holds the rows the run started on", stacklevel=2)
        return
    names = {"train": "training", "val": "validation"}
    changed = []
    for split, now in current.items():
        then = saved.get(split) if isinstance(saved, dict) else None
        if then == now:
            continue
        if not isinstance(then, dict):
            how = "no fingerprint was recorded for them"
        elif then.get("rows") != now["rows"]:
            how = f"{then.get('rows')} rows then, {now['rows']} now"
        elif then.get("ids") != now["ids"]:
            how = f"{now['rows']} rows, other row ids or another order"
        else:
            how = f"the same {now['rows']} row ids, other contents"
        changed.append(f"the {names[split]} rows changed since the run started ({how})")
    if changed:
        raise ResumeMismatch(f"{last}: {'; '.join(changed)}. Under the same config (training.data_dir {data_dir}) "
                              "the resumed steps would train and select on other rows than the run's: restore the "
                              "data the run started with, or start a new run in another training.output_dir")
