"""The quantization ladder side by side: fp32 HF vs each GGUF file of the same checkpoint.

For every backend, each in a fresh process of its own and on the same requests: file size, load time, decision
latency p50/p95 (one request per call), throughput at batch 32, peak RSS, generation tokens/s (GGUF), agreement
of decisions with the fp32 model, and the safety metrics on the data. Every backend reads the runtime's text
(``served.model_inputs``), and decisions are served ones
(``served.served_decisions``): a row whose probabilities are not finite is ESCALATE and counted in
``non_finite_rows``, so a broken file reads as broken, not as one that allows; a row a backend raises on (one
longer than its context) is ESCALATE, counted in ``model_error_rows`` and left out of its timings. Used by
``notebooks/03_quantization.ipynb`` and ``benchmarks/gguf_decisions.py``. Lives in eval: it scores backends (serve) against each other.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from ..core.checkpoint import resolve_checkpoint
from ..core.paths import project_relative
from ..core.schema import ADAPTER_FILE, BASE_DIR
from ..data.benchmarks import load_any
from ..data.tables import stratified_sample
from ..export.gguf_meta import GGUFError, read_metadata
from ..model.so8t import SO8TModel
from .latency import measure_latency
from .profiling import run_isolated
from .report import safety_report
from .served import decide_failing_rows, finite_rows, model_inputs, served_decisions


def state_closeness(reference: np.ndarray, states: np.ndarray) -> dict[str, float]:
    """How far a quantized file's decision states (rows) are from the fp32 model's: cosine and relative error."""
    cos = (reference * states).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(states, axis=1))
    rel = np.linalg.norm(states - reference, axis=1) / np.linalg.norm(reference, axis=1)
    return {"cosine_mean": round(float(cos.mean()), 5), "cosine_min": round(float(cos.min()), 5),
            "relative_error_mean": round(float(rel.mean()), 5)}


def fp32_decision_reference(checkpoint: str | Path, rows: int, seed: int = 0):
    """What the quantization benchmarks score every file against: a stratified sample of the test split, the
    fp32 checkpoint's pooled decision states on it, and ``decide(states) -> label indices`` with its head.
    Returns ``(model, records, gold, reference_states, decide)``."""
    import torch

    from ..data.tables import load_split, requests_and_contexts

    records = stratified_sample(load_split("test"), rows, seed=seed).to_dict("records")
    model = SO8TModel.load(checkpoint, load_in_4bit=False, dtype="float32")
    reference = model.decision_states(*requests_and_contexts(records), 16, progress=True).numpy()

    def decide(states: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model.safety_head(torch.from_numpy(states)).argmax(-1).numpy()

    return model, records, [r["label"] for r in records], reference, decide


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _size_mib(name: str, path: Path) -> float | None:
    """A GGUF file's size; a checkpoint's base plus adapters, or None when its base lives outside it (a
    pretrained base in the cache: the checkpoint folder alone would read as a few kilobytes)."""
    if name != "hf-fp32":
        return path.stat().st_size / 2**20
    if not (path / BASE_DIR).is_dir():
        return None
    return (_dir_size(path / BASE_DIR) + (path / ADAPTER_FILE).stat().st_size) / 2**20


def same_model_version(version: str, checkpoint: Path, gguf_files: list[Path]) -> None:
    """GGUFError unless every file's ``so8t.model_version`` is the checkpoint's ``version``: a file another
    export left in dist (another model) was scored as a rung of this checkpoint, its disagreement read as
    quantization error."""
    other = {path: read_metadata(path)["so8t.model_version"] for path in gguf_files}
    other = {path: found for path, found in other.items() if found != version}
    if other:
        said = "; ".join(f"{path} is {found}" for path, found in other.items())
        raise GGUFError(f"not exported from {checkpoint} ({version}): {said}. Compare files with the checkpoint they "
                        f"were exported from, or export this one again (so8t export {checkpoint} --quant ...)")


def measure_backend(name: str, path: Path, requests: list[str], contexts: list[str | None], others: list[Path],
                    latency_requests: int, throughput_requests: int, generate_tokens: int) -> dict:
    """Load one backend, decide every request, time it and sample its memory; ``compare`` runs this in a fresh
    process per backend (``run_isolated``). ``others``: the GGUF files the fp32 checkpoint must have exported
    (``same_model_version``, checked once it is loaded). Returns what the parent scores and tabulates."""
    import psutil

    from ..serve.gguf_backend import GGUFBackend

    rss_before_load_mb = psutil.Process().memory_info().rss / 2**20  # the interpreter and libraries, no model
    start = time.perf_counter()
    decider = SO8TModel.load(path, load_in_4bit=False, dtype="float32") if name == "hf-fp32" else GGUFBackend(path)
    load_s = time.perf_counter() - start
    if name == "hf-fp32" and others:
        same_model_version(decider.model_version, path, others)
    decided, failed = decide_failing_rows(decider, requests, contexts, batch_size=32, progress=False)
    timed = [i for i in range(len(requests)) if i not in failed]  # rows it raised on cannot be timed
    timed_requests = [requests[i] for i in timed]
    single = measure_latency(decider, timed_requests, (1,), batches=latency_requests)["results"][0]
    batched = measure_latency(decider, timed_requests, (32,), batches=max(1, throughput_requests // 32))["results"][0]
    tokens_per_s = None
    if name != "hf-fp32" and generate_tokens:
        start = time.perf_counter()
        text = decider.generate(requests[timed[0]], contexts[timed[0]], max_tokens=generate_tokens)
        elapsed = time.perf_counter() - start
        n_tokens = len(decider.embedder.tokenize(text.encode("utf-8"), add_bos=False)) if text else 0
        tokens_per_s = n_tokens / elapsed if elapsed > 0 else None
    return {"load_s": load_s, "decided": np.asarray(decided), "failed": dict(failed), "single": single,
            "batched": batched, "rss_before_load_mb": rss_before_load_mb, "generation_tokens_per_s": tokens_per_s}


def compare(checkpoint: str | Path, gguf_files: list[str | Path], data: str = "test", latency_requests: int = 32,
            throughput_requests: int = 128, generate_tokens: int = 32, max_rows: int | None = None) -> pd.DataFrame:
    """One row per backend (``hf-fp32`` first, then each GGUF file), columns as the module says; ``max_rows``
    scores a stratified sample of the data (a 270M base on a CPU: every backend on every row takes long).
    Each backend is loaded, decided and timed in its own fresh process (``measure_backend`` under
    ``run_isolated``), so ``peak_rss_mb`` (the peak during the batch-32 run) compares across rows; in one process
    every GGUF rung's peak also held the fp32 model's freed pages (Q4_K_M 2,023 MB beside fp32's 1,482).
    ``rss_before_load_mb`` is that process before its model: the interpreter and libraries.
    Every file must have been exported from ``checkpoint`` (its ``so8t.model_version``); GGUFError otherwise,
    once the checkpoint is loaded and before any GGUF file is."""
    table = load_any(data)
    if max_rows and len(table) > max_rows:
        table = (stratified_sample(table, max_rows, seed=0) if {"label", "lang"} <= set(table.columns)
                 else table.sample(max_rows, random_state=0).sort_index())
    inputs = model_inputs(table)  # the runtime's text; a row it refuses as invalid input is ESCALATE, undecided
    requests, contexts = inputs.requests, inputs.contexts
    if not requests:
        raise ValueError(f"{data}: none of its {len(table)} rows is valid input (the runtime would refuse each), so "
                         "there is nothing to compare the backends on; check the file's request column")
    gold = list(table["label"])
    rows = []
    reference = None
    backends: list[tuple[str, Path]] = [("hf-fp32", resolve_checkpoint(checkpoint))]
    backends += [(Path(f).stem.rsplit("-", 1)[-1].upper(), Path(f)) for f in gguf_files]
    others = [file for _, file in backends[1:]]
    for name, path in tqdm(backends, desc="backends", unit="backend"):
        measured = run_isolated(measure_backend, name, path, requests, contexts, others if name == "hf-fp32" else [],
                                latency_requests, throughput_requests, generate_tokens)
        failed, single, batched = measured["failed"], measured["single"], measured["batched"]
        probs = np.full((len(table), 3), np.nan)
        probs[inputs.positions] = measured["decided"]
        pred = np.asarray(served_decisions(probs))  # a broken rung's NaN rows: ESCALATE, as served, and counted
        if reference is None:
            reference = pred
        report = safety_report(gold, list(pred))
        rows.append({
            "backend": name, "file": project_relative(path),
            "size_mib": _size_mib(name, path),
            "load_s": measured["load_s"], "decide_p50_ms": single["p50_ms"], "decide_p95_ms": single["p95_ms"],
            "requests_per_s_batch32": batched["requests_per_s"], "peak_rss_mb": batched["peak_rss_mb"],
            "rss_before_load_mb": measured["rss_before_load_mb"],
            "agreement_with_fp32": float((pred == reference).mean()),
            "non_finite_rows": int((~finite_rows(probs)).sum()) - len(inputs.invalid) - len(failed),
            "model_error_rows": len(failed),
            "invalid_input_rows": len(inputs.invalid),
            "macro_f1": report["macro_f1"], "safety_score": report["safety_score"],
            "dangerous_compliance": report["dangerous_compliance"], "over_refusal": report["over_refusal"],
            "generation_tokens_per_s": measured["generation_tokens_per_s"],
        })
    frame = pd.DataFrame(rows)
    base = frame.iloc[0]
    frame["decide_p50_ratio_vs_fp32"] = frame["decide_p50_ms"] / base["decide_p50_ms"]
    frame["throughput_ratio_vs_fp32"] = frame["requests_per_s_batch32"] / base["requests_per_s_batch32"]
    return frame
