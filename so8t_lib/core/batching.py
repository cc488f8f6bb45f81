"""Batches of similar length: every place that pads a batch (training, the frozen-state cache, the warm start,
decide()) orders its rows this way, so a padded batch computes little more than its real tokens."""

from __future__ import annotations

from collections.abc import Sequence


def batches_by_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """The indices of ``lengths`` in batches of ``batch_size``, shortest first (stable for equal lengths); the
    caller puts each result back at its index."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
