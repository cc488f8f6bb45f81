"""How fast a backend decides: wall time of ``decide`` per batch, p50/p95/p99, requests/s, peak memory."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import torch

from ..model.so8t import SO8TModel
from .profiling import PeakMemory

DEFAULT_BATCHES = 100  # timed calls per batch size: enough for a p99 (see min_calls_for)


def min_calls_for(percentile: float) -> int:
    """Timed calls a percentile needs before it is reported: at least one call must lie above it, so
    ceil(100 / (100 - p)) (20 for p95, 100 for p99). With fewer, np.percentile only interpolates towards the
    slowest call: from 8 calls 'p99' was the largest of 8 and 'p95' nearly so."""
    return math.ceil(100 / (100 - percentile) - 1e-9)


def _percentile(ms: np.ndarray, p: float) -> float | None:
    """The p-th percentile of the timed calls, or None (JSON null) when there are too few for a tail percentile
    (the median of any number of calls is reported)."""
    return float(np.percentile(ms, p)) if p <= 50 or ms.size >= min_calls_for(p) else None


def backend_of(model) -> dict:
    """Which backend decided, named from the decider itself (an unknown one by its class name, not as llama.cpp)."""
    if isinstance(model, SO8TModel):
        return {"backend": "hf", "device": str(next(model.parameters()).device), "threads": torch.get_num_threads()}
    from ..serve.gguf_backend import GGUFBackend

    if isinstance(model, GGUFBackend):
        kwargs = getattr(model, "_kwargs", {})
        layers = kwargs.get("n_gpu_layers", 0)
        offload = "all layers" if layers < 0 else f"{layers} layers"  # load_decider asks for -1: every layer
        return {"backend": "gguf", "device": "llama.cpp cpu" if not layers else f"llama.cpp gpu ({offload})",
                "threads": kwargs.get("n_threads"), "file": str(model.path)}
    return {"backend": type(model).__name__, "device": None, "threads": None}


def measure_latency(model: SO8TModel, requests: list[str], batch_sizes=(1, 8, 32), batches: int = DEFAULT_BATCHES,
                    warmup: int = 2) -> dict:
    """Wall time of ``decide`` per batch (one prefill each): p50/p95/p99 in ms and requests/s per batch
    size, and peak memory. A request in a batch waits for the whole batch, so batch latency is the
    latency each of its requests sees. A percentile is null when ``batches`` is below ``min_calls_for`` it."""
    if batches < 1:
        raise ValueError(f"batches must be at least 1 timed call per batch size, got {batches}")
    results = []
    for size in batch_sizes:
        pool = itertools.cycle(requests)
        chunks = [[next(pool) for _ in range(size)] for _ in range(warmup + batches)]
        with PeakMemory() as memory:
            for chunk in chunks[:warmup]:
                model.decide(chunk, batch_size=size)
            times = []
            for chunk in chunks[warmup:]:
                start = time.perf_counter()
                model.decide(chunk, batch_size=size)
                times.append(time.perf_counter() - start)
        ms = np.array(times) * 1000
        results.append({
            "batch_size": size, "batches": batches,
            "p50_ms": _percentile(ms, 50), "p95_ms": _percentile(ms, 95), "p99_ms": _percentile(ms, 99),
            "requests_per_s": size * batches / float(np.sum(times)),
            "rss_before_mb": memory.start_rss_mb, "peak_rss_mb": memory.peak_rss_mb,
            "peak_cuda_mb": memory.peak_cuda_mb,
        })
    return {**backend_of(model), "results": results}
