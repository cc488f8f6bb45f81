"""PET regularisation and the composite SO8T loss.

    L = L_task + alpha L_safety + beta L_rationale + gamma(p) L_PET + delta L_dangerous

- L_task:      next-token CE on the answer tokens of ALLOW examples (prompt masked).
- L_rationale: next-token CE on the rationale tokens of REFUSE / ESCALATE examples.
- L_safety:    class-weighted CE of SafetyHeadB (REFUSE weighted highest by default).
- L_PET:       mean squared second difference of hidden states along the sequence.
- L_dangerous: mean p(ALLOW) on REFUSE-labelled examples (the error that matters most).

Defaults (configs and ``so8t_lib.core.config.LossConfig``): alpha 1.0, beta 0.5, delta 0.5,
PET weight 0.1 with gamma(p) = 0.01 / 0.1 / 1.0 x weight for p < 0.3 / < 0.7 / else,
class weights ALLOW 1.0, REFUSE 2.0, ESCALATE 1.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..core.config import LossConfig, PETConfig
from ..core.schema import ALLOW, REFUSE
from .collate import IGNORE_INDEX


def pet_loss(hidden_states: torch.Tensor | Sequence[torch.Tensor], attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over layers of the mean, over valid triplets, of ||h_t - 2 h_{t+1} + h_{t+2}||^2 / D.

    A triplet is valid when all three positions are real tokens, so padding never
    contributes. Dividing by the hidden size D keeps one weight meaningful across
    model sizes. Zero exactly when every valid run of states is linear in t.
    """
    layers = [hidden_states] if isinstance(hidden_states, torch.Tensor) else list(hidden_states)
    if not layers:
        raise ValueError("pet_loss needs at least one layer of hidden states")
    mask = attention_mask.bool()
    valid = (mask[:, :-2] & mask[:, 1:-1] & mask[:, 2:]).float()
    n_valid = valid.sum()
    total = layers[0].new_zeros((), dtype=torch.float32)
    if n_valid == 0:
        return total
    for h in layers:
        h = h.float()
        second = h[:, :-2] - 2 * h[:, 1:-1] + h[:, 2:]
        per_triplet = second.pow(2).mean(-1)
        total = total + (per_triplet * valid).sum() / n_valid
    return total / len(layers)


def pet_weight(progress: float, cfg: PETConfig) -> float:
    """gamma(p): the PET weight at training progress p in [0, 1] (0 when PET is off)."""
    if not cfg.enabled:
        return 0.0
    p = min(max(float(progress), 0.0), 1.0)
    for until, multiplier in cfg.schedule:
        if p < until:
            return cfg.weight * multiplier
    return cfg.weight * cfg.schedule[-1][1]


def sample_positions(valid: torch.Tensor, per_row: int) -> torch.Tensor:
    """Keep at most ``per_row`` of each row's valid positions, chosen uniformly at random (torch's global RNG,
    which the trainer saves, so a resumed run draws the same ones)."""
    scores = torch.rand(valid.shape, device=valid.device).masked_fill(~valid, -1.0)
    kept = torch.zeros_like(valid)
    k = min(per_row, valid.shape[1])
    top = scores.topk(k, dim=1).indices
    kept.scatter_(1, top, True)
    return kept & valid


def _target_ce(states: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, lm_head=None,
               positions_per_row: int | None = None) -> torch.Tensor:
    """Token-mean next-token CE over the selected rows' target tokens (0 when there are none).

    ``states`` are LM logits (B, T, V), or final hidden states (B, T, D) with ``lm_head``:
    then the head runs only at target positions, which saves most of its compute and the
    (B, T, V) logits tensor (large for a 152k or 262k vocabulary). With ``positions_per_row`` the mean
    is over a random sample of at most that many of each row's target positions: a row counts with
    min(N, its targets), so rows with N or more weigh equally, however long. That is another
    quantity than the token mean, which weighs a row by its length, not an estimate of it.
    """
    shifted_labels = labels[:, 1:]
    valid = (shifted_labels != IGNORE_INDEX) & rows[:, None]
    if positions_per_row is not None:
        valid = sample_positions(valid, positions_per_row)
    if not valid.any():
        return states.new_zeros((), dtype=torch.float32)
    selected = states[:, :-1][valid]
    logits = lm_head(selected) if lm_head is not None else selected
    return F.cross_entropy(logits.float(), shifted_labels[valid])


def dangerous_compliance(safety_logits: torch.Tensor, safety_labels: torch.Tensor) -> torch.Tensor:
    """Mean p(ALLOW) over REFUSE-labelled rows (0 when the batch has none)."""
    refuse = safety_labels == REFUSE
    if not refuse.any():
        return safety_logits.new_zeros((), dtype=torch.float32)
    return torch.softmax(safety_logits[refuse].float(), dim=-1)[:, ALLOW].mean()


@dataclass
class LossParts:
    total: torch.Tensor
    task: torch.Tensor
    safety: torch.Tensor
    rationale: torch.Tensor
    pet: torch.Tensor
    dangerous: torch.Tensor
    pet_weight: float

    def as_floats(self) -> dict[str, float]:
        """Detached numbers for logs and progress bars."""
        return {
            "loss": float(self.total.detach()),
            "task": float(self.task.detach()),
            "safety": float(self.safety.detach()),
            "rationale": float(self.rationale.detach()),
            "pet": float(self.pet.detach()),
            "dangerous": float(self.dangerous.detach()),
            "pet_weight": self.pet_weight,
        }


def composite_loss(
    output,
    lm_labels: torch.Tensor,
    safety_labels: torch.Tensor,
    attention_mask: torch.Tensor,
    cfg: LossConfig,
    progress: float,
    lm_head=None,
    lm_positions_per_row: int | None = None,
) -> LossParts:
    """The SO8T loss from one forward (an ``SO8TOutput``); ``progress`` in [0, 1] drives gamma(p).

    Give ``lm_head`` (and run the forward with ``return_lm_logits=False``) to compute the LM
    terms at target positions only; the result is the same. ``lm_positions_per_row`` samples them
    (a per-row capped mean, see ``_target_ce``).
    """
    allow_rows = safety_labels == ALLOW
    sample = lm_positions_per_row
    if output.logits is not None:
        task = _target_ce(output.logits, lm_labels, allow_rows, positions_per_row=sample)
        rationale = _target_ce(output.logits, lm_labels, ~allow_rows, positions_per_row=sample)
    elif lm_head is not None and output.last_hidden is not None:
        task = _target_ce(output.last_hidden, lm_labels, allow_rows, lm_head, sample)
        rationale = _target_ce(output.last_hidden, lm_labels, ~allow_rows, lm_head, sample)
    else:
        raise ValueError("composite_loss needs LM logits, or final hidden states and lm_head")
    weights = torch.tensor(cfg.class_weight_list(), device=output.safety_logits.device)
    safety = F.cross_entropy(output.safety_logits.float(), safety_labels, weight=weights)
    dangerous = dangerous_compliance(output.safety_logits, safety_labels)
    gamma = pet_weight(progress, cfg.pet)
    if gamma > 0:
        if output.hidden_states is None:
            raise ValueError("PET is on but the forward ran without output_hidden_states=True")
        offset = getattr(output, "hidden_offset", 0)  # a pass from layer k holds states k, k+1, ...
        try:
            states = [output.hidden_states[i - offset if i >= 0 else i] for i in cfg.pet.layers]
        except IndexError:
            n = len(output.hidden_states) + offset
            raise ValueError(f"loss.pet.layers {list(cfg.pet.layers)}: this model has {n} hidden states (indices 0 to "
                             f"{n - 1}, or -1 down to -{n})") from None
        pet = pet_loss(states, attention_mask)
    else:
        pet = safety.new_zeros(())
    total = task + cfg.alpha * safety + cfg.beta * rationale + gamma * pet + cfg.delta * dangerous
    return LossParts(total, task, safety, rationale, pet, dangerous, gamma)
