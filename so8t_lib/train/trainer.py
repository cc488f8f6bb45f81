"""Safety-aware (Q)LoRA training with two optimizers, early stopping, autosave and exact resume.

    so8t train --config configs/training.yaml [key=value ...] [--resume]
    accelerate launch --num_processes 2 -m so8t_lib.train --config ...   # several GPUs
    torchrun --nproc_per_node 2 -m so8t_lib.train --config ...           # several CPU processes (gloo)

The run folder (``training.output_dir``) holds ``config.yaml`` (the resolved config),
``metrics.jsonl`` (one line per logging step and per evaluation), ``best/`` (the best
checkpoint by the early-stopping metric) and ``last/`` (model + both optimizers, both
schedulers, RNG states, data position and step). Both are written atomically.

Dual policy: the task optimizer updates LoRA and R_cmd, the safety optimizer R_safe and
SafetyHeadB, each with its own learning rate and schedule. After ``freeze_safety_at``
(a fraction of max_steps) the safety side stays as it is: its optimizer stops, SafetyHeadB's running
statistics stop moving, and its gradients are left out of the clipped norm.
"""

from __future__ import annotations

import gc
import json
import math
import random
import sys
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..core.config import SO8TConfig, load_config
from ..core.io import atomic_write_text
from ..core.metrics import select_metric
from ..core.schema import (
    BEST_DIR,
    LAST_DIR,
    RUN_CONFIG_FILE,
    RUN_METRICS_FILE,
)
from ..data.tables import requests_and_contexts
from ..data.training_split import training_tables
from ..model.so8t import SO8TModel
from .boundary_sync import SignalFlag, StopRequested, agreed_max
from .collate import SafetyCollator, table_rows
from .head_init import warm_start_head
from .losses import composite_loss
from .optim import build_optimizers, check_one_batch, epoch_order, length_grouped_order
from .resume import RunCheckpoints, StepBoundary, TrainerState, data_fingerprint
from .run_folder import RunLock, check_fresh
from .state_cache import FrozenStates, check_frozen_below, decide_from_states
from .val_checks import TrainingDiverged, check_metric_measurable, check_prompts_fit, scored

__all__ = ["StopRequested", "Trainer", "TrainingDiverged", "run_config", "train"]

# ----- building blocks ----------------------------------------------------------------------------
@torch.no_grad()
def val_metrics(model: SO8TModel, rows: list[dict], batch_size: int) -> dict:
    """Decide on the validation rows (argmax) and score them (definitions in so8t_lib.core.metrics)."""
    return scored(rows, model.decide(*requests_and_contexts(rows), batch_size=batch_size))


# ----- the loop -----------------------------------------------------------------------------------
class Trainer(RunCheckpoints):
    def __init__(self, config: SO8TConfig, resume: bool = False,
                 on_log: Callable[[dict], None] | None = None) -> None:
        self.on_log = on_log
        self.config = config
        self.tcfg = config.training
        self.run_dir = Path(self.tcfg.output_dir)
        self.accelerator = Accelerator(gradient_accumulation_steps=self.tcfg.grad_accum,
                                       mixed_precision=self.tcfg.mixed_precision,
                                       cpu=not torch.cuda.is_available())
        self.main = self.accelerator.is_main_process
        self.state = TrainerState()
        self._stop = SignalFlag()
        self._last_save = time.monotonic()
        self.boundary = StepBoundary()  # what an error inside a step saves
        self._lock = RunLock(self.run_dir) if self.main else None  # before anything reads or writes the folder
        if self._lock is not None:  # a trainer dropped without run() lets go when it is collected
            weakref.finalize(self, self._lock.release)
        try:
            self._setup(resume)
        except BaseException:
            self.release_lock()
            raise

    def _setup(self, resume: bool) -> None:
        """The model, the data, both optimizers, the frozen-state cache and the head's warm start; on resume, the state
        saved in last/."""
        config = self.config
        if resume:
            self._check_resumable()
        elif self.main:
            check_fresh(self.run_dir)
        torch.manual_seed(self.tcfg.seed)
        random.seed(self.tcfg.seed)
        np.random.seed(self.tcfg.seed)
        clock = time.perf_counter()
        # where the minutes before the first step go (logged as the run's "setup" record): on a CPU they are
        # a large part of make demo
        self.setup_seconds: dict[str, float] = {}
        # a resume continues on the run's own tokenizer and tiny base, whatever the corpus holds today
        self.model = SO8TModel.for_resume(self.run_dir / LAST_DIR, config.model) if resume \
            else SO8TModel.from_config(config.model)
        if self.tcfg.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.model.to(self.accelerator.device)
        (self.opt_task, self.sched_task), (self.opt_safety, self.sched_safety) = build_optimizers(self.model, config)
        train, val = training_tables(self.tcfg.data_dir, self.tcfg.train_max_rows, self.tcfg.eval_max_rows,
                                     self.tcfg.data_seed)
        self.train_rows, self.val_rows = table_rows(train), table_rows(val)
        check_one_batch(len(self.train_rows), self.tcfg.batch_size, self.accelerator.num_processes, self.tcfg.data_dir)
        check_metric_measurable(self.tcfg.early_stopping.metric, self.val_rows, self.tcfg.data_dir)
        check_prompts_fit(self.model, self.val_rows, self.tcfg.max_length, self.tcfg.data_dir)
        self.data_fingerprint = data_fingerprint(self.train_rows, self.val_rows)  # a resume must find the same rows
        self.collate = SafetyCollator(self.model.tokenizer, self.tcfg.max_length, self.model.system_prompt,
                                      self.tcfg.max_target_tokens)
        self.lm_head = self.model.causal_lm.get_output_embeddings()
        # token counts for group_by_length (what the collator pads to), computed once per run
        self.row_lengths = [len(self.collate.encode(row)[0]) for row in self.train_rows] \
            if self.tcfg.group_by_length else None
        self.setup_seconds["model_and_data_s"] = time.perf_counter() - clock
        self.split, self.frozen = None, None
        if self.tcfg.freeze_below:
            check_frozen_below(self.model, self.tcfg.freeze_below, config.loss.pet.layers)
            if self.tcfg.cache_frozen_states:
                self.split = self.model.split(self.tcfg.freeze_below)
                clock = time.perf_counter()
                self.frozen = FrozenStates.build(self.model, self.split, self.train_rows + self.val_rows, self.collate,
                                                 self.tcfg.eval_batch_size, progress=self.main)
                self.setup_seconds["frozen_states_s"] = time.perf_counter() - clock  # a cache hit: seconds
        if self.tcfg.head_warm_start and not resume:
            clock = time.perf_counter()
            accuracy = warm_start_head(self.model, self.train_rows, self.collate, config.loss.class_weight_list(),
                                       self.tcfg.head_warm_start_c, self.tcfg.eval_batch_size, self.frozen, self.split,
                                       self.tcfg.head_warm_start_epochs, seed=self.tcfg.seed)
            if self.main:
                print(f"SafetyHeadB starts from a probe fitted on the frozen states (training-row accuracy {accuracy:.3f})",
                      file=sys.stderr)
            self.setup_seconds["head_warm_start_s"] = time.perf_counter() - clock
        self.ddp_model, self.opt_task, self.opt_safety = self.accelerator.prepare(
            self.model, self.opt_task, self.opt_safety
        )
        if resume:
            self._load_last()

    def release_lock(self) -> None:
        """Let another trainer into the run folder (the kernel does it too when this process dies)."""
        if self._lock is not None:
            self._lock.release()

    def log(self, record: dict) -> None:
        if self.main:
            with (self.run_dir / RUN_METRICS_FILE).open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if self.on_log is not None:
                try:  # a live plot must never stop a training run
                    self.on_log(record)
                except Exception as exc:  # noqa: BLE001
                    warnings.warn(f"on_log callback failed and is switched off: {exc!r}", stacklevel=2)
                    self.on_log = None

    # --- one optimizer step ----------------------------------------------------------------------
    def _next_rows(self) -> list[dict]:
        """This process's rows of the next micro-batch, continuing the epoch's fixed order."""
        if self.state.batch_in_epoch >= self._batches_per_epoch():
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
        rows = self.batch_rows(self.state.epoch, self.state.batch_in_epoch)
        self.state.batch_in_epoch += 1
        return rows

    def _batches_per_epoch(self) -> int:
        return len(self.train_rows) // (self.tcfg.batch_size * self.accelerator.num_processes)  # >= 1: setup checked

    def batch_rows(self, epoch: int, batch_in_epoch: int) -> list[dict]:
        """This process's rows of one micro-batch of the run's data order: a pure function of (seed, epoch,
        index), which is what makes resuming exact and lets a benchmark look a step's rows up afterwards."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        order = epoch_order(len(self.train_rows), self.tcfg.seed, epoch) if self.row_lengths is None else \
            length_grouped_order(self.row_lengths, self.tcfg.batch_size, self.tcfg.group_by_length, self.tcfg.seed,
                                 epoch)
        start = batch_in_epoch * self.tcfg.batch_size * world + rank * self.tcfg.batch_size
        return [self.train_rows[i] for i in order[start : start + self.tcfg.batch_size]]

    def train_step(self) -> dict:
        progress = self.state.step / self.tcfg.max_steps
        safety_frozen = self.tcfg.freeze_safety_at is not None and progress >= self.tcfg.freeze_safety_at
        totals: dict[str, float] = {}
        n_tokens = 0
        self.ddp_model.train()
        if safety_frozen and self.model.safety_head.standardizer is not None:
            self.model.safety_head.standardizer.eval()  # frozen too: the decisions read its statistics
        for _ in range(self.tcfg.grad_accum):
            rows = self._next_rows()
            batch = {k: v.to(self.accelerator.device) for k, v in self.collate(rows).items()}
            n_tokens += int(batch["attention_mask"].sum())
            states = None if self.frozen is None else \
                self.frozen.batch(rows, batch["input_ids"].shape[1]).to(self.accelerator.device)
            with self.accelerator.accumulate(self.ddp_model):
                out = self.ddp_model(batch["input_ids"], batch["attention_mask"],
                                     decision_positions=batch["decision_positions"], return_lm_logits=False,
                                     output_hidden_states=self.config.loss.pet.enabled, states=states,
                                     split=self.split)
                parts = composite_loss(out, batch["lm_labels"], batch["safety_labels"], batch["attention_mask"],
                                       self.config.loss, progress, lm_head=self.lm_head,
                                       lm_positions_per_row=self.tcfg.lm_positions_per_row)
                self.accelerator.backward(parts.total)  # it divides by grad_accum: the mean loss's gradient
            for key, value in parts.as_floats().items():
                totals[key] = totals.get(key, 0.0) + value / self.tcfg.grad_accum
        if safety_frozen:  # its gradients are computed (DDP expects each parameter's) but neither clipped nor used
            for group in self.opt_safety.param_groups:
                for param in group["params"]:
                    param.grad = None
        sides = (self.opt_task,) if safety_frozen else (self.opt_task, self.opt_safety)
        params = [p for g in sides for pg in g.param_groups for p in pg["params"]]
        grad_norm = self.accelerator.clip_grad_norm_(params, self.tcfg.max_grad_norm)
        if not (math.isfinite(totals["loss"]) and math.isfinite(float(grad_norm))):  # before NaN reaches a weight
            raise TrainingDiverged(f"step {self.state.step + 1}: loss {totals['loss']}, gradient norm {float(grad_norm)}: "
                                   "the run diverged; lower the learning rates or check the loss weights and the data")
        rates = {"lr_task": self.opt_task.param_groups[0]["lr"],  # the rates this step uses: the schedulers'
                 "lr_safety": self.opt_safety.param_groups[0]["lr"]}  # get_last_lr() after step() is the next one's
        self.opt_task.step()
        self.sched_task.step()
        if not safety_frozen:
            self.opt_safety.step()
            self.sched_safety.step()
        self.opt_task.zero_grad(set_to_none=True)
        self.opt_safety.zero_grad(set_to_none=True)
        if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):  # an overflowing update
            raise TrainingDiverged(f"step {self.state.step + 1}: the update made weights that are not finite numbers: "
                                   "the run diverged; lower the learning rates", weights_usable=False)
        self.state.step += 1
        totals.update(grad_norm=float(grad_norm), tokens=n_tokens * self.accelerator.num_processes,
                      world_size=self.accelerator.num_processes,
                      **rates, safety_frozen=safety_frozen)
        return totals

    def evaluate(self, select: bool = True) -> dict:
        """Score the val sample; with ``select`` the score competes for ``best/`` and counts for early stopping,
        without it it is only logged (the warm start's reference). A selecting one clears ``eval_pending``."""
        if self.frozen is None:
            report = val_metrics(self.model, self.val_rows, self.tcfg.eval_batch_size)
        else:  # the same decisions from the cached lower layers (only the layers above run)
            report = scored(self.val_rows, decide_from_states(self.model, self.split, self.frozen, self.val_rows,
                                                              self.collate, self.tcfg.eval_batch_size))
        metric_name = self.tcfg.early_stopping.metric
        value = select_metric(report, metric_name)
        if select and value is None:  # it would never improve: no best/, and early stopping after `patience` evals
            raise ValueError(f"training.early_stopping.metric {metric_name} cannot be measured on the val rows "
                             f"({len(self.val_rows)} rows; e.g. refuse_recall needs gold REFUSE rows): choose "
                             "another metric or add such rows to val")
        improved = select and value is not None and (
            self.state.best_metric is None or value > self.state.best_metric + self.tcfg.early_stopping.min_delta
        )
        after = replace(self.state, evals_without_improvement=self.state.evals_without_improvement + 1,
                        eval_pending=False)
        if improved:  # the state names a best step only once best/ holds it
            after = replace(self.state, best_metric=value, best_step=self.state.step, evals_without_improvement=0,
                            eval_pending=False)
            self.save(BEST_DIR, state=after)
        headline = {k: report.get(k) for k in ("safety_score", "refuse_recall", "macro_f1", "accuracy",
                                              "dangerous_compliance", "escalate_precision", "allow_precision")}
        self.log({"step": self.state.step, "kind": "eval" if select else "eval_reference", "metric": metric_name,
                  "value": value, "improved": improved, **headline})
        if select:  # done: the evaluation's outcome enters the state all at once
            after.stopped_early |= after.evals_without_improvement >= self.tcfg.early_stopping.patience
            self.state = after
        return {"value": value, "improved": improved}

    # --- the loop --------------------------------------------------------------------------------
    def run(self) -> Path:
        try:
            return self._run()
        finally:  # however the run ends, before its loop too: a notebook keeps a failed trainer alive
            self.release_lock()

    def _run(self) -> Path:
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / RUN_CONFIG_FILE, self.config.to_yaml())  # a kill never leaves it empty
        previous = self._stop.install()
        try:
            bar = tqdm(total=self.tcfg.max_steps, initial=self.state.step, desc="training", unit="step",
                       disable=not self.main, dynamic_ncols=True)
            tokens, clock = 0, time.perf_counter()
            val_text = "-"
            if self.state.step == 0:
                self.log({"step": 0, "kind": "setup", **{k: round(v, 1) for k, v in self.setup_seconds.items()}})
            if self.state.step == 0 and self.tcfg.head_warm_start:
                # the warm-started head is already a fitted probe: log its score as the reference the steps must beat
                val_text = f"{self.evaluate(select=False)['value'] or 0:.3f}"
        except BaseException:  # the loop's own handlers below are not reached: put the signal handlers back here
            self._stop.restore(previous)
            raise
        try:
            if self.state.eval_pending:  # the evaluation of the saved step failed before the resume: it comes first
                val_text = _shown(self.evaluate()["value"])
                self.save(LAST_DIR)
            while self.state.step < self.tcfg.max_steps and not self.state.stopped_early:
                self.boundary.enter(self.state, self.model)
                parts = self.train_step()
                evaluating = self.state.step % self.tcfg.eval_every == 0 or self.state.step == self.tcfg.max_steps
                # part of the step: an error before its evaluation has finished saves it pending, done first on resume
                self.state.eval_pending = evaluating
                self.boundary.leave()
                tokens += parts["tokens"]
                if self.state.step % self.tcfg.log_every == 0 or self.state.step == self.tcfg.max_steps:
                    elapsed = time.perf_counter() - clock
                    self.log({"step": self.state.step, "kind": "train", **parts,
                              "tokens_per_s": tokens / elapsed if elapsed > 0 else None})
                    tokens, clock = 0, time.perf_counter()
                if evaluating:
                    val_text = _shown(self.evaluate()["value"])
                bar.set_postfix(loss=f"{parts['loss']:.3f}", safety=f"{parts['safety']:.3f}",
                                pet=f"{parts['pet']:.3f}", **{f"val_{self.tcfg.early_stopping.metric}": val_text})
                bar.update(1)
                # agreed by every process (one all-reduce), or one saves at a barrier while another trains on
                signum, timed = agreed_max(self.accelerator, self._stop.signum or 0,
                                           time.monotonic() - self._last_save >= self.tcfg.autosave_minutes * 60)
                due = (self.tcfg.save_every_steps and self.state.step % self.tcfg.save_every_steps == 0) or timed
                if due or self.state.step == self.tcfg.max_steps or self.state.stopped_early:
                    self.save(LAST_DIR)
                if signum:
                    self._stop.signum = signum  # a process the signal has not reached yet exits the same way
                    raise StopRequested()
        except StopRequested:
            bar.close()
            self.save(LAST_DIR)
            print(f"\nstopped by signal {self._stop.signum} at step {self.state.step}; saved {self.run_dir / 'last'}. "
                  f"Continue with --resume.", file=sys.stderr)
            raise SystemExit(128 + int(self._stop.signum)) from None
        except TrainingDiverged as exc:
            bar.close()
            if exc.weights_usable:
                self._emergency_save()
            elif self.main:  # the weights are what diverged: last/ keeps the last step saved before
                print(f"\nthe run diverged at step {self.state.step + 1 if self.boundary.inside else self.state.step}; "
                      f"its weights are not saved ({self.run_dir / LAST_DIR} keeps the last step saved before, if any)",
                      file=sys.stderr)
            raise
        except Exception:
            bar.close()
            self._emergency_save()
            raise
        finally:
            self._stop.restore(previous)
        bar.close()
        return self.run_dir


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def run_config(config: str | Path, gate_order: str, pet: bool, max_steps: int, seed: int, output_dir: str | Path,
               overrides: list[str] | tuple[str, ...] = ()) -> SO8TConfig:
    """The config of one sweep run (notebook 01): the run's parameters become overrides of ``config``.

    The seed drives both the data order and the model init (gates, head), so paired runs of different
    gate orders share everything else; ``overrides`` come last and win (one string is one override)."""
    if not isinstance(pet, bool):  # bool("false") is True: a string would silently turn PET on
        raise TypeError(f"run_config: pet must be True or False, got {pet!r}")
    overrides = [overrides] if isinstance(overrides, str) else overrides
    return load_config(config, [
        f"model.gates.order={gate_order}", f"loss.pet.enabled={str(pet).lower()}",
        f"training.max_steps={max_steps}", f"training.seed={seed}", f"model.seed={seed}",
        f"training.output_dir={Path(output_dir) / 'run'}", *overrides])


def train(config: SO8TConfig, resume: bool = False, on_log: Callable[[dict], None] | None = None,
          after_training: Callable[[Path], object] | None = None) -> Path:
    """Train as the config says; returns the run folder (``training.output_dir``).

    ``on_log`` receives every record written to ``metrics.jsonl`` (main process only), e.g.
    ``workbench.plots.LiveCurves`` for loss curves that update in a notebook while it trains.
    ``after_training(run_dir)`` runs on the main process once the model and optimizers are freed:
    the pipeline passes the temperature calibration there (``so8t_lib.workbench.pipeline.train_and_calibrate``),
    which keeps training independent of evaluation.
    """
    trainer = Trainer(config, resume=resume, on_log=on_log)
    run_dir, is_main = trainer.run(), trainer.main
    del trainer  # free the model and optimizer states before the next step loads the best checkpoint
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if is_main and after_training is not None:
        after_training(run_dir)
    return run_dir
