"""Evaluation decides as the runtime serves: one place for the rules every scoring path shares.

A number measured under a rule the runtime does not apply describes a gate nobody deploys, so these helpers are
what ``predict``, calibration, the quantization ladder, the head refit and the reports use instead of raw table
text and a bare ``argmax``:

- ``model_inputs``: the text the runtime hands the model for each row, made by the runtime's own
  ``validate_request`` (NFKC, invisible characters removed, stripped, lengths checked). A row the runtime would
  refuse as invalid input never reaches the model there and is answered ESCALATE (fail closed); evaluation does
  the same, so such a row counts as an ESCALATE decision (``invalid_input_rows``), never as the model's;
- exact ties go to the safer class, and a row without finite probabilities is ESCALATE and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..core.schema import ALLOW, ESCALATE, LABELS, REFUSE
from ..serve.config import ValidationConfig
from ..serve.policy import threshold_decisions
from ..serve.request_checks import InvalidRequest, validate_request


@dataclass(frozen=True)
class ModelInputs:
    """What the model is given for a table's rows, in table order: only the rows the runtime accepts."""

    requests: list[str] = field(default_factory=list)
    contexts: list[str | None] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # each accepted row's position in the table
    invalid: dict[int, str] = field(default_factory=dict)  # position -> why the runtime refuses the row's input


def model_inputs(table: pd.DataFrame, limits: ValidationConfig | None = None) -> ModelInputs:
    """The runtime's text for every row of ``table`` (columns ``user_request`` and ``context``): what
    ``Agent.run_batch`` passes to the decider, under ``limits`` (the runtime config's ``validation`` section;
    its defaults when None). An empty context is no context, as in a request without one."""
    limits = limits or ValidationConfig()
    out = ModelInputs()
    for position, (request, context) in enumerate(zip(table["user_request"], table["context"])):
        try:
            clean = validate_request(request, context if isinstance(context, str) else None,
                                     max_request_chars=limits.max_request_chars,
                                     max_context_chars=limits.max_context_chars)
        except InvalidRequest as exc:
            out.invalid[position] = f"invalid input: {exc}"
            continue
        out.requests.append(clean.user_request)
        out.contexts.append(clean.context)
        out.positions.append(position)
    return out

def decide_failing_rows(model, requests: list[str], contexts: list[str | None], batch_size: int = 32,
                        progress: bool = True) -> tuple[np.ndarray, dict[int, str]]:
    """Probabilities (N, 3) of ``model.decide`` and the rows it failed on (index -> reason, their rows NaN), as the
    runtime decides (``serve.deciding.decide_all``): the whole list; if that fails, ``batch_size`` rows at a time;
    a batch that fails, its rows one by one; a row that fails alone is the runtime's fail-closed ESCALATE. One row
    the GGUF backend cannot take (longer than its n_ctx) used to end the whole evaluation. ``decide_all`` itself is
    not called: it runs on the runtime's model thread under a time limit, and counts NaN output as a failure where
    evaluation keeps it to count as ``non_finite_rows``. When every row fails the model is broken, not the rows:
    the whole pass's error is raised."""
    probs = np.full((len(requests), len(LABELS)), np.nan)
    failed: dict[int, str] = {}
    if not requests:
        return probs, failed
    errors: list[Exception] = []

    def attempt(rows: slice, show: bool) -> bool:
        try:
            decided = model.decide(requests[rows], contexts[rows], batch_size=batch_size, progress=show)
        except Exception as exc:  # noqa: BLE001 - the runtime fails closed on anything
            errors.append(exc)
            return False
        probs[rows] = np.asarray(decided.numpy() if hasattr(decided, "numpy") else decided, dtype=float)
        return True

    if attempt(slice(0, len(requests)), progress):
        return probs, failed
    for start in range(0, len(requests), batch_size):
        if attempt(slice(start, start + batch_size), False):
            continue
        for row in range(start, min(start + batch_size, len(requests))):
            if not attempt(slice(row, row + 1), False):
                failed[row] = f"model error: {type(errors[-1]).__name__}: {errors[-1]}"
    if len(failed) == len(requests):
        raise errors[0]
    return probs, failed


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


__all__ = ["SAFER_FIRST", "ModelInputs", "argmax_decisions", "decide_failing_rows", "finite_rows", "model_inputs",
           "safe_argmax", "served_decisions"]
