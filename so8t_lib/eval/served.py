"""Evaluation decides as the runtime serves: one place for the rules every scoring path shares.

A number measured under a rule the runtime does not apply describes a gate nobody deploys, so these helpers are
what ``predict``, the baselines, the quantization ladder and the reports call instead of a bare ``argmax``: exact
ties go to the safer class, and a row without finite probabilities is ESCALATE (fail closed) and counted.
"""

from __future__ import annotations

import numpy as np

from ..core.schema import ALLOW, ESCALATE, LABELS, REFUSE
from ..serve.policy import threshold_decisions

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


def finite_rows(probs: np.ndarray) -> np.ndarray:
    """Which rows of ``probs`` (N, 3) hold only finite numbers: the rows a decision can be read from."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(LABELS):
        raise ValueError(f"probabilities must have shape (N, {len(LABELS)}), got {probs.shape}")
    return np.isfinite(probs).all(axis=1)


def served_decisions(probs: np.ndarray, threshold: float | None = None) -> list[str]:
    """The decision the runtime serves for each row: argmax (``safe_argmax``) or, with ``threshold``, the policy's
    threshold rule; a row whose probabilities are not all finite is ESCALATE, as the runtime fails closed on it
    (``serve.deciding``). ``argmax`` of a NaN row is column 0, ALLOW: a broken model read as a permissive one."""
    finite = finite_rows(probs)
    decisions = np.full(len(finite), LABELS[ESCALATE], dtype=object)
    if finite.any():
        rows = np.asarray(probs, dtype=float)[finite]
        decisions[finite] = argmax_decisions(rows) if threshold is None else list(threshold_decisions(rows, threshold))
    return [str(d) for d in decisions]


__all__ = ["SAFER_FIRST", "argmax_decisions", "finite_rows", "safe_argmax", "served_decisions"]
