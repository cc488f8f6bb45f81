"""One decision pass on the model's thread, and what happens when it fails.

A batch mixes clients. When its pass fails or times out, its requests are decided again one by one, shortest
first, within one more ``decision_timeout_s``: one item that breaks or stalls the model (one client's huge
request) fails closed alone instead of taking the other clients' requests with it. Each pass's limit counts its
own time on the model's thread, not the wait behind other work (``model_worker``). A list longer than
``service.max_batch`` is decided that many at a time, each pass under its own limit, as the HTTP service's micro-
batches are: a Python caller's thousand requests are not one pass under one limit.
"""

from __future__ import annotations

import time

import numpy as np

from ..core.schema import LABELS
from .model_worker import DECIDE, ModelWorker


def probabilities(worker: ModelWorker, decider, requests: list[str], contexts: list[str | None],
                  timeout: float) -> np.ndarray:
    """The decider's probabilities, checked: ValueError for any shape, sign or sum a distribution cannot have."""
    probs = worker.call(lambda: decider.decide(requests, contexts), DECIDE, timeout)
    probs = np.asarray(probs.detach().cpu().numpy() if hasattr(probs, "detach") else probs, dtype=float)
    expected = (len(requests), len(LABELS))
    problem = (f"of shape {probs.shape}, not {expected}" if probs.shape != expected
               else "that are not finite (NaN or inf)" if not np.isfinite(probs).all()
               else "below 0" if (probs < 0).any()
               else "that do not sum to 1" if not np.allclose(probs.sum(-1), 1.0, atol=1e-3) else None)
    if problem is not None:
        raise ValueError(f"unreadable model output: probabilities {problem}")
    return probs


def decide_all(worker: ModelWorker, decider, requests: list[str], contexts: list[str | None], limit: float,
               chunk: int | None = None) -> list:
    """One entry per request: a row of probabilities or the reason it could not be decided; ``chunk`` requests a
    pass at most (None: all in one)."""
    if chunk and len(requests) > chunk:
        return [entry for start in range(0, len(requests), chunk)
                for entry in decide_all(worker, decider, requests[start:start + chunk],
                                        contexts[start:start + chunk], limit)]
    try:
        return list(probabilities(worker, decider, requests, contexts, limit))
    except TimeoutError as exc:
        if len(requests) == 1:
            return [f"timeout after {limit}s ({exc})"]
    except Exception as exc:  # noqa: BLE001 - fail closed on anything
        if len(requests) == 1:
            return [f"model error: {type(exc).__name__}: {exc}"]
    out: list = [None] * len(requests)
    deadline = time.monotonic() + limit  # the requests of a failed batch share one more limit
    by_length = sorted(range(len(requests)), key=lambda i: len(requests[i]) + len(contexts[i] or ""))
    for index in by_length:  # the short ones first: a long request that stalls the model cannot starve them
        left = deadline - time.monotonic()
        if left <= 0:
            out[index] = f"timeout: its batch failed and the {limit}s to decide its requests one by one ran out"
            continue
        try:
            out[index] = probabilities(worker, decider, [requests[index]], [contexts[index]], left)[0]
        except TimeoutError as exc:
            out[index] = f"timeout deciding its failed batch's requests one by one ({exc})"
        except Exception as exc:  # noqa: BLE001
            out[index] = f"model error: {type(exc).__name__}: {exc}"
    return out


__all__ = ["decide_all", "probabilities"]
