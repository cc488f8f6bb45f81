"""Starting SafetyHeadB where a linear probe would end: the pretrained base already separates the decisions.

A linear probe (logistic regression) on the base's pooled states is the classic strong baseline for a
frozen pretrained model, and it is convex: fitting it takes seconds where gradient steps on a CPU take
minutes. ``warm_start_head`` fits it on the training rows' decision states (the standardiser's statistics
from the same states) and copies it into the linear head, so the joint training of LoRA, gates and head
starts from the probe instead of from noise. Off by default; the pretrained recipe turns it on.
"""

from __future__ import annotations

import numpy as np
import torch

from ..core.schema import LABELS
from ..model.so8t import SO8TModel
from .collate import SafetyCollator


@torch.no_grad()
def decision_states(model: SO8TModel, rows: list[dict], collate: SafetyCollator, batch_size: int = 32,
                    frozen=None, split=None, progress: bool = True) -> np.ndarray:
    """The pooled decision state (N, hidden) of every row, through the cached lower layers when given."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["user_request"]) + len(rows[i].get("context") or ""))
    chunks, done = [], []
    try:
        starts = tqdm(range(0, len(rows), batch_size), desc="probe states for SafetyHeadB's warm start",
                      unit="batch", disable=not progress)
        for start in starts:  # similar lengths share a batch: little padding
            done += order[start:start + batch_size]
            part = [rows[i] for i in order[start:start + batch_size]]
            batch = collate(part)
            states = None if frozen is None else frozen.batch(part, batch["input_ids"].shape[1]).to(device)
            out = model(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                        decision_positions=batch["decision_positions"].to(device), return_lm_logits=False,
                        states=states, split=split)
            chunks.append(out.pooled.double().cpu().numpy())
    finally:
        model.train(was_training)
    states = np.empty((len(rows), chunks[0].shape[1]))
    states[done] = np.concatenate(chunks)
    return states


def warm_start_head(model: SO8TModel, rows: list[dict], collate: SafetyCollator, class_weights: list[float],
                    regularization: float = 0.3, batch_size: int = 32, frozen=None, split=None) -> float:
    """Fit a multinomial logistic regression on the standardised decision states of ``rows`` and load it into
    SafetyHeadB (linear heads only); returns its accuracy on those rows."""
    from sklearn.linear_model import LogisticRegression

    head = model.safety_head
    linears = [m for m in head.net if isinstance(m, torch.nn.Linear)]
    if len(linears) != 1:
        raise ValueError("a warm start needs a linear SafetyHeadB (model.head.hidden_units: 0)")
    states = decision_states(model, rows, collate, batch_size, frozen, split)
    mean, sq_mean = states.mean(0), np.square(states).mean(0)
    scaled = (states - mean) / np.sqrt(np.clip(sq_mean - mean**2, 0, None) + 1e-5)
    labels = np.array([LABELS.index(r["label"]) for r in rows])
    weights = np.asarray(class_weights)[labels]
    probe = LogisticRegression(C=regularization, max_iter=2000).fit(scaled, labels, sample_weight=weights)
    coef = np.zeros((len(LABELS), states.shape[1]))
    bias = np.zeros(len(LABELS))
    coef[probe.classes_], bias[probe.classes_] = probe.coef_, probe.intercept_
    with torch.no_grad():
        if head.standardizer is not None:
            head.standardizer.mean.copy_(torch.from_numpy(mean))
            head.standardizer.sq_mean.copy_(torch.from_numpy(sq_mean))
            head.standardizer.count.fill_(len(rows))
        else:  # no standardiser: fold the scaling into the weights
            scale = 1 / np.sqrt(np.clip(sq_mean - mean**2, 0, None) + 1e-5)
            bias = bias - coef @ (mean * scale)
            coef = coef * scale
        linears[0].weight.copy_(torch.from_numpy(coef).to(linears[0].weight.dtype))
        linears[0].bias.copy_(torch.from_numpy(bias).to(linears[0].bias.dtype))
    return float(probe.score(scaled, labels))
