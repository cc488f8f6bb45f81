"""The runtime's threshold rule (SAFETY_POLICY.md), the one place it is written.

The runtime decides with it, and evaluation applies it for ``--threshold`` and the threshold sweep,
so what is measured is what is served.
"""

from __future__ import annotations

import numpy as np

from ..core.schema import ALLOW, ESCALATE, LABELS, REFUSE

THRESHOLD_RANGE = (0.5, 1.0)  # safety_threshold's bounds: from a majority of the probability up to certainty

# the thresholds evaluation sweeps and an operating point is chosen from: 0.50, 0.51, ..., 0.99 (the
# runtime config accepts [0.5, 1.0]; 1.0 would never ALLOW a temperature-scaled decision)
THRESHOLD_GRID: tuple[float, ...] = tuple(round(0.5 + 0.01 * i, 2) for i in range(50))


def threshold_decisions(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Decisions of the runtime rule (SAFETY_POLICY.md) for probs (N, 3) in LABELS order.

    1. p(REFUSE) is the largest and p(REFUSE) >= threshold -> REFUSE;
    2. else p(ALLOW) is the largest and p(ALLOW) >= threshold -> ALLOW;
    3. else ESCALATE.
    "The largest" means strictly larger than both other probabilities: a tie for the
    maximum is a lack of confidence and gives ESCALATE. Returns an array of label strings.
    """
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(LABELS):
        raise ValueError(f"probs must have shape (N, {len(LABELS)}), got {probs.shape}")
    if not np.isfinite(probs).all():
        raise ValueError("probs contain NaN or infinite values")

    def strict_max(k: int) -> np.ndarray:
        others = np.delete(probs, k, axis=1).max(axis=1)
        return (probs[:, k] > others) & (probs[:, k] >= threshold)

    decisions = np.full(probs.shape[0], LABELS[ESCALATE], dtype=object)
    decisions[strict_max(ALLOW)] = LABELS[ALLOW]
    decisions[strict_max(REFUSE)] = LABELS[REFUSE]
    return decisions.astype(str)
