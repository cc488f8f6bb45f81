"""A SafetyHeadB refitted to a quantized file's own states, so that its decisions follow the fp32 model's.

Quantizing the body moves the pooled state SafetyHeadB reads by a few percent (2% at Q8_0, 10% at Q4_K_M on
the Gemma default), and because many requests sit near the head's boundary that moves 4-25% of its decisions
(docs/benchmarks.md). The error is partly systematic (the same shift for similar requests), and a head that
reads the quantized states can absorb that part. So the head of a quantized file is distilled again:
the fp32 model decides a sample of training rows (its probabilities are the targets), the file computes its
own states for the same rows, and a copy of the head, started from the exported one and pulled towards it by
an L2 penalty, is fitted to reproduce the fp32 probabilities from the file's states. The strength of the pull
is chosen on a held-out part of those rows by agreement with fp32; where no strength beats the exported head
there, the file keeps it. Only training rows are used; test rows only score (``benchmarks/gguf_decisions.py``).
This module holds the fit and the rewrite of the file's head keys; ``so8t_lib.eval.quant_refit`` runs the
fp32 model and the file on the rows (``so8t export --refit-head``).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..model.heads import SafetyHeadB
from .gguf_file import open_gguf
from .gguf_meta import REFIT_KEY, GGUFError
from .gguf_rewrite import rewrite_gguf
from .gguf_writer import HEAD_KEY_PREFIX, add_head_keys

PULL_GRID: tuple[float, ...] = (1.0, 0.1, 0.01, 1e-3, 1e-4)  # strongest first: a tie keeps the head nearer the export
HOLDOUT_SHARE = 0.25
MIN_ROWS = 40  # below it the held-out part is too small to choose a pull on
LBFGS_ITERATIONS = 200


def _agreement(head: SafetyHeadB, states: torch.Tensor, teacher: torch.Tensor) -> float:
    with torch.no_grad():
        return float((head(states).argmax(-1) == teacher.argmax(-1)).float().mean())


def check_refittable(head: SafetyHeadB) -> None:
    """ValueError for a head of a kind the refit cannot fit, so that an export can refuse before writing anything."""
    if head.pools_tokens:
        raise ValueError("a max-pooling SafetyHeadB cannot be refitted (its first layer reads token states, which "
                         "the refit does not collect): export without --refit-head")


def _checked(head: SafetyHeadB, states: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    states, teacher = torch.as_tensor(states, dtype=torch.float32), torch.as_tensor(teacher, dtype=torch.float32)
    if head.standardizer is not None:
        raise ValueError("refit a folded head (SafetyHeadB.from_state_dict of an export), not a training head")
    check_refittable(head)
    if states.ndim != 2 or states.shape[1] != head.input_width:
        raise ValueError(f"states must be (rows, {head.input_width}), got {tuple(states.shape)}")
    if teacher.shape != (states.shape[0], head.net[-1].out_features):
        raise ValueError(f"teacher probabilities must be ({states.shape[0]}, {head.net[-1].out_features}), "
                         f"got {tuple(teacher.shape)}")
    if not (torch.isfinite(states).all() and torch.isfinite(teacher).all()):
        raise ValueError("states or teacher probabilities contain NaN or infinite values")
    if (teacher < 0).any() or not torch.allclose(teacher.sum(-1), torch.ones(len(teacher)), atol=1e-3):
        raise ValueError("teacher rows must be probability distributions (non-negative, summing to 1)")
    return states, teacher


def distill_head(head: SafetyHeadB, states: torch.Tensor, teacher: torch.Tensor, pull: float) -> SafetyHeadB:
    """A copy of the folded ``head`` whose probabilities on ``states`` approach ``teacher``'s, with
    ``pull`` times the squared distance from the original parameters added to the cross-entropy.

    The first layer is fitted on standardised features (and folded back), so that one pull means the same
    for every feature whatever its scale in the file's states."""
    states, teacher = _checked(head, states, teacher)
    mean, std = states.mean(0), states.std(0).clamp_min(1e-6)
    student = copy.deepcopy(head).train(False)
    first = next(m for m in student.net if isinstance(m, nn.Linear))
    with torch.no_grad():  # W x + b == (W * std) x~ + (b + W mean), x~ = (x - mean) / std
        first.bias.add_(first.weight @ mean)
        first.weight.mul_(std)
    start = [p.detach().clone() for p in student.parameters()]
    params = list(student.parameters())
    standardized = (states - mean) / std
    optimizer = torch.optim.LBFGS(params, max_iter=LBFGS_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        log_probs = torch.log_softmax(student.net(standardized) / student.temperature, dim=-1)
        loss = -(teacher * log_probs).sum(-1).mean()
        loss = loss + pull * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        first.weight.div_(std)
        first.bias.sub_(first.weight @ mean)
    for p in params:
        p.requires_grad_(False)
    return student.eval()


def refit_head(head: SafetyHeadB, states: torch.Tensor, teacher: torch.Tensor,
               pulls: tuple[float, ...] = PULL_GRID, seed: int = 0) -> tuple[SafetyHeadB, dict]:
    """The pull with the best held-out agreement with ``teacher``, refitted on all rows; ``head`` itself
    where no pull beats it on the held-out rows. Returns the head and a report for the file's metadata."""
    states, teacher = _checked(head, states, teacher)
    n = len(states)
    if n < MIN_ROWS:
        raise ValueError(f"refitting the head needs at least {MIN_ROWS} rows, got {n}")
    order = torch.from_numpy(np.random.default_rng(seed).permutation(n))
    held, fit = order[: int(n * HOLDOUT_SHARE)], order[int(n * HOLDOUT_SHARE):]
    before = _agreement(head, states[held], teacher[held])
    by_pull = {pull: _agreement(distill_head(head, states[fit], teacher[fit], pull), states[held], teacher[held])
               for pull in pulls}
    best = max(by_pull, key=lambda pull: (by_pull[pull], pull))  # a tie goes to the stronger pull
    refitted = by_pull[best] > before
    chosen = distill_head(head, states, teacher, best) if refitted else head
    report = {"rows": n, "holdout_rows": len(held), "holdout_agreement_exported_head": round(before, 4),
              "holdout_agreement_by_pull": {str(p): round(a, 4) for p, a in by_pull.items()},
              "pull": best if refitted else None, "refitted": refitted,
              "agreement_all_rows": round(_agreement(chosen, states, teacher), 4)}
    return chosen, report


def write_head(path: str | Path, head: SafetyHeadB, report: dict) -> Path:
    """Rewrite ``path`` with ``head`` as its SafetyHeadB and ``report`` under ``so8t.head_refit``; tensors and
    every other key as they were, the sha256 sidecar renewed."""

    reader = open_gguf(path)
    state = {k: v for k, v in head.state_dict().items() if k.startswith("net.")}
    if not all(torch.isfinite(v).all() for v in state.values()):  # a refit that blew up: never into a file
        raise GGUFError(f"{path}: the refitted head holds values that are not finite; the file was left as it was")

    def add(writer) -> None:
        add_head_keys(writer, state)
        writer.add_string(REFIT_KEY, json.dumps(report, sort_keys=True))

    return rewrite_gguf(reader, path, drop_key=lambda key: key.startswith(HEAD_KEY_PREFIX) or key == REFIT_KEY,
                        add_keys=add)
