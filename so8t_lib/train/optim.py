"""The dual policy's optimizers and the pieces that make a resumed run continue exactly: learning-rate
schedules, the epoch's data order, and the RNG states."""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from ..core.config import ConfigError, OptimizerConfig, SO8TConfig
from ..model.so8t import SO8TModel


def lr_multiplier(cfg: OptimizerConfig, total_steps: int):
    """Linear warm-up, then constant, linear or cosine decay towards ``min_lr_ratio``, reached at step
    ``total_steps``; steps run from 0 to total_steps - 1, so the last one is one decay step above it. Kept so (not
    shifted to land on it) because every committed run and result was trained on this schedule."""

    def factor(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        shape = 1 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape

    return factor


def build_optimizers(model: SO8TModel, config: SO8TConfig):
    """The two optimizers of the dual policy and their schedulers."""
    groups = model.named_parameter_groups()
    result = []
    for side, opt_cfg in (("task", config.training.task_optimizer), ("safety", config.training.safety_optimizer)):
        params = [p for _, p in groups[side] if p.requires_grad]
        if not params:
            raise ConfigError(f"the {side} side has no trainable parameters (the task side trains LoRA and the gates' "
                              "R_cmd, the safety side R_safe and SafetyHeadB): give model.lora.layers or "
                              "model.gates.layers some layers")
        optimizer = torch.optim.AdamW(params, lr=opt_cfg.lr, betas=opt_cfg.betas, weight_decay=opt_cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(opt_cfg, config.training.max_steps))
        result.append((optimizer, scheduler))
    return result


def check_one_batch(n_rows: int, batch_size: int, world: int, data_dir: str) -> None:
    """ConfigError, before anything is written, when the training rows cannot fill one batch: found at the first
    step, the run had written its config.yaml and log, and left a folder it could neither start over nor resume."""
    if n_rows < batch_size * world:
        processes = f" x {world} processes" if world > 1 else ""
        raise ConfigError(f"{data_dir}: {n_rows} training row(s) cannot fill one batch of {batch_size * world} "
                          f"(training.batch_size {batch_size}{processes}): raise training.train_max_rows, lower "
                          "training.batch_size, or add rows to train.jsonl")


def epoch_order(n_rows: int, seed: int, epoch: int) -> list[int]:
    """The data order of one epoch: a permutation that depends only on (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_rows, generator=generator).tolist()


def length_grouped_order(lengths: list[int], batch_size: int, window_batches: int, seed: int, epoch: int) -> list[int]:
    """The epoch's order with rows of similar length in one batch, so a padded batch wastes little.

    The permutation of ``epoch_order`` is cut into windows of ``window_batches`` batches; each window is sorted by
    length and cut into batches, and the full batches are shuffled as wholes (again depending only on seed and
    epoch, so a resumed run continues exactly). A last, incomplete batch stays at the end, where the trainer's
    fixed stride never reaches it, as it never reaches the tail of a plain permutation.
    """
    if batch_size < 1 or window_batches < 1:
        raise ValueError(f"batch_size ({batch_size}) and window_batches ({window_batches}) must be at least 1")
    order = epoch_order(len(lengths), seed, epoch)
    window = batch_size * window_batches
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    full = [b for b in batches if len(b) == batch_size]
    tail = [i for b in batches if len(b) < batch_size for i in b]
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch + 50_000)
    return [i for b in torch.randperm(len(full), generator=generator).tolist() for i in full[b]] + tail


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v)
                       for k, v in np.random.get_state(legacy=False).items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    np.random.set_state({k: (v.numpy() if isinstance(v, torch.Tensor) else v) for k, v in state["numpy"].items()})
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
