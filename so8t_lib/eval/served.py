"""Evaluation decides as the runtime serves: one place for the rules every scoring path shares.

A number measured under a rule the runtime does not apply describes a gate nobody deploys, so these helpers are
what ``predict``, the baselines, the quantization ladder and the reports call instead of a bare ``argmax``.
"""

from __future__ import annotations

import numpy as np

from ..core.schema import ALLOW, ESCALATE, LABELS, REFUSE

# the order exact ties are broken in: a gate that cannot tell two classes apart must not pick the one that lets
# the request through (ESCALATE, then REFUSE, then ALLOW)
SAFER_FIRST: tuple[int, ...] = (ESCALATE, REFUSE, ALLOW)


def safe_argmax(probs: np.ndarray) -> np.ndarray:
    """Index of the largest probability per row of ``probs`` (N, 3); an exact tie goes to the safer class.

    ``np.argmax`` returns the first maximum, and ALLOW is column 0, so [0.5, 0.5, 0] read as ALLOW."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(LABELS):
        raise ValueError(f"probabilities must have shape (N, {len(LABELS)}), got {probs.shape}")
    order = np.asarray(SAFER_FIRST)
    return order[probs[:, order].argmax(axis=1)]


def argmax_decisions(probs: np.ndarray) -> list[str]:
    """Label strings of ``safe_argmax``."""
    return [LABELS[i] for i in safe_argmax(probs)]


__all__ = ["SAFER_FIRST", "argmax_decisions", "safe_argmax"]
