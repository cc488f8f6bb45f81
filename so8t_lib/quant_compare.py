"""The quantization ladder side by side: fp32 HF vs each GGUF file of the same checkpoint.

For every backend, in one process and on the same requests: file size, load time, decision
latency p50/p95 (one request per call), throughput at batch 32, generation tokens/s (GGUF), agreement
of decisions with the fp32 model, and the safety metrics on the data. Used by
``notebooks/03_quantization.ipynb`` and ``benchmarks/gguf_decisions.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from .config import LABELS
from .data import load_any
from .metrics import safety_report
from .model import SO8TModel, resolve_checkpoint


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _latency(decider, requests: list[str], n: int) -> tuple[float, float]:
    times = []
    for request in requests[:n]:
        start = time.perf_counter()
        decider.decide([request], batch_size=1)
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 95))


def _throughput(decider, requests: list[str], batch_size: int = 32) -> float:
    start = time.perf_counter()
    decider.decide(requests, batch_size=batch_size)
    return len(requests) / (time.perf_counter() - start)


def compare(checkpoint: str | Path, gguf_files: list[str | Path], data: str = "test", latency_requests: int = 32,
            throughput_requests: int = 128, generate_tokens: int = 32) -> pd.DataFrame:
    """One row per backend (``hf-fp32`` first, then each GGUF file), columns as the module says."""
    from .gguf_backend import GGUFBackend

    table = load_any(data)
    requests = list(table["user_request"])
    contexts = [c if isinstance(c, str) and c.strip() else None for c in table["context"]]
    gold = list(table["label"])
    rows = []
    reference = None
    backends: list[tuple[str, Path]] = [("hf-fp32", resolve_checkpoint(checkpoint))]
    backends += [(Path(f).stem.rsplit("-", 1)[-1].upper(), Path(f)) for f in gguf_files]
    for name, path in tqdm(backends, desc="backends", unit="backend"):
        start = time.perf_counter()
        decider = SO8TModel.load(path, load_in_4bit=False, dtype="float32") if name == "hf-fp32" else GGUFBackend(path)
        load_s = time.perf_counter() - start
        probs = decider.decide(requests, contexts, batch_size=32).numpy()
        pred = probs.argmax(-1)
        if reference is None:
            reference = pred
        report = safety_report(gold, [LABELS[i] for i in pred])
        p50, p95 = _latency(decider, requests, latency_requests)
        row = {
            "backend": name, "file": str(path),
            "size_mib": (_dir_size(path / "base") + (path / "adapter.safetensors").stat().st_size) / 2**20
            if name == "hf-fp32" and (path / "base").is_dir() else path.stat().st_size / 2**20,
            "load_s": load_s, "decide_p50_ms": p50, "decide_p95_ms": p95,
            "requests_per_s_batch32": _throughput(decider, requests[:throughput_requests]),
            "agreement_with_fp32": float((pred == reference).mean()),
            "macro_f1": report["macro_f1"], "safety_score": report["safety_score"],
            "dangerous_compliance": report["dangerous_compliance"], "over_refusal": report["over_refusal"],
            "generation_tokens_per_s": None,
        }
        if name != "hf-fp32" and generate_tokens:
            start = time.perf_counter()
            text = decider.generate(requests[0], contexts[0], max_tokens=generate_tokens)
            elapsed = time.perf_counter() - start
            n_tokens = len(decider.embedder.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0
            row["generation_tokens_per_s"] = n_tokens / elapsed if elapsed > 0 else None
        rows.append(row)
        del decider
    frame = pd.DataFrame(rows)
    base = frame.iloc[0]
    frame["decide_p50_ratio_vs_fp32"] = frame["decide_p50_ms"] / base["decide_p50_ms"]
    frame["throughput_ratio_vs_fp32"] = frame["requests_per_s_batch32"] / base["requests_per_s_batch32"]
    return frame
