"""How fast a backend decides: wall time of ``decide`` per batch, p50/p95/p99, requests/s, peak memory."""

from __future__ import annotations

import itertools
import time

import numpy as np
import torch

from ..model.so8t import SO8TModel
from .profiling import PeakMemory


def measure_latency(model: SO8TModel, requests: list[str], batch_sizes=(1, 8, 32), batches: int = 8,
                    warmup: int = 2) -> dict:
    """Wall time of ``decide`` per batch (one prefill each): p50/p95/p99 in ms and requests/s per batch
    size, and peak memory. A request in a batch waits for the whole batch, so batch latency is the
    latency each of its requests sees."""
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
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)),
            "requests_per_s": size * batches / float(np.sum(times)),
            "peak_rss_mb": memory.peak_rss_mb, "peak_cuda_mb": memory.peak_cuda_mb,
        })
    if isinstance(model, SO8TModel):
        return {"backend": "hf", "device": str(next(model.parameters()).device), "threads": torch.get_num_threads(),
                "results": results}
    return {"backend": "gguf", "device": "llama.cpp", "file": str(getattr(model, "path", "")), "results": results}
