"""How safe a checkpoint is, on which data, with what uncertainty, and how fast it decides.

    python -m so8t_lib.evaluate --model checkpoints/so8t-tiny --data test --data xstest --data sst \\
        [--out metrics.json] [--predictions preds.jsonl] [--threshold 0.8] [--bootstrap 1000]
    python -m so8t_lib.evaluate --model checkpoints/so8t-tiny --calibrate     # fit the temperature on val
    python -m so8t_lib.evaluate --model checkpoints/so8t-tiny --latency [--out latency.json]

``--model`` is a checkpoint folder or a run folder (its ``best/``). ``--data`` is a corpus split
(``train``, ``val``, ``test``), a public benchmark by name (``xstest``, ``sst``), or any JSONL/CSV
file the data loader accepts (benchmark files are recognised by their columns). Decisions are the
head's argmax by default; ``--threshold t`` applies the runtime rule of SAFETY_POLICY.md instead
(REFUSE or ALLOW only when that class is the most likely and at least t, else ESCALATE).

Every metric is defined in ``so8t_lib.metrics`` (see ``safety_report``) and in the README.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checkpoint import atomic_write_text
from .config import LABELS
from .data import NOT_ALLOW, load_any
from .metrics import expected_calibration_error, safety_report, threshold_decisions, threshold_sweep
from .model import SO8TModel, resolve_checkpoint
from .profiling import PeakMemory

HEADLINE = ["safety_score", "macro_f1", "accuracy", "refuse_recall", "escalate_precision", "allow_precision",
            "dangerous_compliance", "over_refusal", "over_refusal_incl_escalate", "unsafe_f1_strict",
            "unsafe_f1_loose", "not_allowed_rate", "escalation_rate"]
# What each public benchmark measures (the other metrics are in the JSON but say little there:
# XSTest has no gold REFUSE or ESCALATE rows, SimpleSafetyTests only gold REFUSE rows).
BENCHMARK_HEADLINES = {
    "xstest": ["over_refusal", "over_refusal_incl_escalate", "not_allowed_rate_unsafe", "escalation_rate",
               "unsafe_f1_strict", "unsafe_f1_loose"],
    "sst": ["refuse_recall", "not_allowed_rate", "dangerous_compliance", "escalation_rate"],
}
TEMPERATURE_RANGE = (0.25, 10.0)
SWEEP_THRESHOLDS = [round(0.5 + 0.01 * i, 2) for i in range(50)]  # 0.50 ... 0.99


# ----- deciding -------------------------------------------------------------------------------------
def load_decider(path: str | Path):
    """An SO8TModel for a checkpoint or run folder, a GGUFBackend for a .gguf file: both have
    ``decide(requests, contexts, batch_size, progress)``."""
    if str(path).endswith(".gguf"):
        from .gguf_backend import GGUFBackend

        return GGUFBackend(path)
    return SO8TModel.load(path)


def table_contexts(table: pd.DataFrame) -> list[str | None]:
    """The context column with empty cells as None (how decide() expects "no context")."""
    return [c if isinstance(c, str) and c.strip() else None for c in table["context"]]


def predict(model, table: pd.DataFrame, batch_size: int = 32, progress: bool = True,
            threshold: float | None = None) -> tuple[np.ndarray, list[str]]:
    """Probabilities (N, 3) (temperature-scaled) and decisions for every row of a loaded table:
    argmax, or the runtime threshold rule when ``threshold`` is given."""
    probs = model.decide(list(table["user_request"]), table_contexts(table), batch_size=batch_size,
                         progress=progress).numpy()
    if threshold is None:
        return probs, [LABELS[i] for i in probs.argmax(-1)]
    return probs, list(threshold_decisions(probs, threshold))


def evaluate_table(model: SO8TModel, table: pd.DataFrame, batch_size: int = 32, bootstrap: int = 0,
                   progress: bool = True, threshold: float | None = None) -> dict:
    """The full safety report of ``model`` on ``table`` (per-language and per-category included)."""
    probs, pred = predict(model, table, batch_size, progress, threshold)
    return report_from_predictions(table, probs, pred, bootstrap)


def report_from_predictions(table: pd.DataFrame, probs: np.ndarray, pred: list[str], bootstrap: int = 0) -> dict:
    report = safety_report(list(table["label"]), pred, probs=probs, langs=list(table["lang"]),
                           categories=list(table["category"]), bootstrap=bootstrap)
    report["not_allowed_rate_unsafe"] = (report.get("not_allowed_rate_by_gold") or {}).get(NOT_ALLOW)
    sources = set(table["source"]) if "source" in table else set()
    report["headline"] = BENCHMARK_HEADLINES.get(sources.pop(), HEADLINE) if len(sources) == 1 else HEADLINE
    three_class = np.array([label != NOT_ALLOW for label in table["label"]])
    if three_class.any():
        sweep = threshold_sweep(probs[three_class], list(table["label"][three_class]), SWEEP_THRESHOLDS)
        report["threshold_sweep"] = json.loads(sweep.to_json(orient="records"))
    else:
        report["threshold_sweep"] = None
    return report


# ----- calibration ----------------------------------------------------------------------------------
def fit_temperature(logits: np.ndarray, gold_idx: np.ndarray, max_iter: int = 200) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on labelled rows.

    Optimised over log T (LBFGS), so T stays positive; a model that is already calibrated
    gets T close to 1, an overconfident one T > 1.
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(gold_idx), dtype=torch.long)
    if z.ndim != 2 or y.shape != (z.shape[0],) or z.shape[0] == 0:
        raise ValueError(f"need logits (N, K) and labels (N,) with N > 0, got {tuple(z.shape)} and {tuple(y.shape)}")
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    # When every row is already right the NLL keeps falling as T -> 0; bound T so a small, easy val
    # split cannot make the head 20x sharper (and the threshold rule unable to escalate).
    return float(log_t.detach().clamp(math.log(TEMPERATURE_RANGE[0]), math.log(TEMPERATURE_RANGE[1])).exp())


def calibrate(model: SO8TModel, table: pd.DataFrame, batch_size: int = 32, progress: bool = True) -> dict:
    """Fit SafetyHeadB's temperature on ``table`` (the val split) and set it on the model."""
    table = table[table["label"] != NOT_ALLOW]
    gold = np.array([LABELS.index(label) for label in table["label"]])
    logits = model.decide(list(table["user_request"]), table_contexts(table), batch_size=batch_size,
                          progress=progress, return_logits=True).numpy().astype(np.float64)
    probs = torch.softmax(torch.as_tensor(logits), dim=-1).numpy()
    temperature = fit_temperature(logits, gold)
    with torch.no_grad():
        model.safety_head.temperature.fill_(temperature)
    scaled = torch.softmax(torch.as_tensor(logits) / temperature, dim=-1).numpy()
    return {"temperature": temperature, "rows": int(len(table)),
            "ece_before": expected_calibration_error(probs, gold),
            "ece_after": expected_calibration_error(scaled, gold)}


def calibrate_checkpoint(path: str | Path, data: str | Path = "val", batch_size: int = 32,
                         progress: bool = True) -> dict:
    """Fit the temperature on ``data`` and store it in the checkpoint: only the temperature entry of
    ``adapter.safetensors`` changes (temporary file, then rename), and the manifest is renewed; every
    other file (a training run's trainer_state.pt too) stays as it was."""
    from safetensors.torch import load_file, save_file

    from .checkpoint import write_manifest

    folder = resolve_checkpoint(path)
    model = SO8TModel.load(folder)
    result = calibrate(model, load_any(data), batch_size, progress)
    adapter = folder / "adapter.safetensors"
    state = load_file(str(adapter))
    state["safety_head.temperature"] = torch.tensor(result["temperature"], dtype=state["safety_head.temperature"].dtype)
    tmp = adapter.with_name(adapter.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "1"})
    os.replace(tmp, adapter)
    write_manifest(folder)
    return {**result, "checkpoint": str(folder), "data": str(data)}


# ----- latency --------------------------------------------------------------------------------------
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


# ----- reporting ------------------------------------------------------------------------------------
def _num(value) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def format_report(report: dict, title: str = "") -> str:
    """Headline metrics (with bootstrap intervals when present), confusion matrix, per language."""
    lines = [title] if title else []
    ci = report.get("ci") or {}
    for name in report.get("headline") or HEADLINE:
        if report.get(name) is None and name not in ci:
            continue  # undefined on this data
        interval = ci.get(name)
        extra = f"   95% CI [{interval[0]:.3f}, {interval[1]:.3f}]" if interval and None not in interval else ""
        lines.append(f"  {name:<28s}{_num(report.get(name))}{extra}")
    if report.get("ece") is not None:
        lines.append(f"  {'ece':<28s}{_num(report['ece'])}")
    labels = report["labels"]
    if sum(map(sum, report["confusion_matrix"])):
        lines.append("  confusion (rows gold, columns decided): " + " ".join(f"{label:>9s}" for label in labels))
        for label, row in zip(labels, report["confusion_matrix"]):
            if sum(row):
                lines.append(f"  {'':<30s}{label:>9s} " + " ".join(f"{v:9d}" for v in row))
    by_lang = report.get("by_lang") or {}
    if len(by_lang) > 1:
        for lang, part in by_lang.items():
            lines.append(f"  lang {lang}: n={part['n']:4d} accuracy {_num(part['accuracy'])} macro_f1 "
                         f"{_num(part['macro_f1'])} dangerous_compliance {_num(part['dangerous_compliance'])}")
    return "\n".join(lines)


def _dataset_key(name) -> str:
    return Path(str(name)).stem


def _prediction_lines(name: str, table: pd.DataFrame, probs: np.ndarray, pred: list[str]) -> list[str]:
    lines = []
    for row_no, (row_id, gold, decision, p) in enumerate(zip(table["id"], table["label"], pred, probs)):
        lines.append(json.dumps({
            "dataset": name, "id": str(row_id) if row_id is not None and str(row_id) not in ("", "nan") else row_no,
            "gold": gold,
            "decision": decision, "probabilities": {label: round(float(v), 6) for label, v in zip(LABELS, p)},
        }, ensure_ascii=False))
    return lines


def read_run_log(run_dir: str | Path) -> list[dict]:
    """A training run's metrics.jsonl as a list of dicts (train and eval lines)."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_metrics(run_dir: str | Path, data: str = "test", batch_size: int = 32) -> dict:
    """One run's numbers for a sweep's summary: the best checkpoint's headline metrics and ECE on
    ``data``, the best validation value of the early-stopping metric, and the steps trained."""
    log = read_run_log(run_dir)
    report = evaluate_table(SO8TModel.load(run_dir), load_any(data), batch_size, bootstrap=0, progress=False)
    evals = [e["value"] for e in log if e["kind"] == "eval" and e["value"] is not None]
    return {**{k: report[k] for k in HEADLINE}, "ece": report["ece"], "best_val": max(evals, default=None),
            "steps": log[-1]["step"] if log else 0}


def evaluate_datasets(model, names: list[str], batch_size: int = 32, bootstrap: int = 1000,
                      threshold: float | None = None, progress: bool = True) -> tuple[dict, list[str]]:
    """Score ``model`` on each data set (split name, xstest, sst or file): ({"decision_rule",
    "datasets": {name: report}}, one JSON prediction line per row). The CLI and notebook 04 use this."""
    results: dict = {"decision_rule": "argmax" if threshold is None else f"threshold {threshold}", "datasets": {}}
    lines: list[str] = []
    for name in names:
        table = load_any(name)
        probs, pred = predict(model, table, batch_size, progress, threshold)
        report = report_from_predictions(table, probs, pred, bootstrap)
        report["source"] = str(name)
        results["datasets"][_dataset_key(name)] = report
        lines += _prediction_lines(_dataset_key(name), table, probs, pred)
    return results, lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder or run folder")
    parser.add_argument("--data", action="append", help="split name, xstest, sst, or a file (repeatable; default test)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--predictions", help="write one JSON line per row: dataset, id, gold, decision, probabilities")
    parser.add_argument("--threshold", type=float, help="decide by the runtime rule at this safety_threshold")
    parser.add_argument("--bootstrap", type=int, default=1000, help="resamples for the 95%% intervals (0: off)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--calibrate", action="store_true",
                        help="fit the temperature on --calibration-data and store it in the checkpoint first")
    parser.add_argument("--calibration-data", default="val")
    parser.add_argument("--latency", action="store_true", help="measure decision latency instead of metrics")
    parser.add_argument("--latency-batch-sizes", default="1,8,32")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        parser.error(f"--threshold must be in [0, 1], got {args.threshold}")
    if args.latency and (args.predictions or args.threshold is not None):
        parser.error("--latency measures speed only; --predictions and --threshold belong to a metrics run")
    if args.calibrate and args.predictions and not args.data:
        parser.error("--predictions needs --data (which rows to decide)")
    if args.data and len({_dataset_key(d) for d in args.data}) < len(args.data):
        parser.error("two --data entries have the same name; give them different file names")
    try:
        sizes = [int(s) for s in args.latency_batch_sizes.split(",")]
        assert sizes and all(s > 0 for s in sizes)
    except (ValueError, AssertionError):
        parser.error(f"--latency-batch-sizes must be positive integers separated by commas, got {args.latency_batch_sizes!r}")
    is_gguf = str(args.model).endswith(".gguf")
    if is_gguf and args.calibrate:
        parser.error("--calibrate works on checkpoint folders; the GGUF carries the temperature of its checkpoint "
                     "(calibrate the checkpoint, then export again)")

    results: dict = {"model": str(args.model if is_gguf else resolve_checkpoint(args.model))}
    if args.calibrate:
        results["calibration"] = calibrate_checkpoint(args.model, args.calibration_data, args.batch_size)
        c = results["calibration"]
        print(f"temperature {c['temperature']:.3f} fitted on {c['data']} ({c['rows']} rows): "
              f"ECE {c['ece_before']:.3f} -> {c['ece_after']:.3f}; stored in {c['checkpoint']}")
    model = load_decider(args.model)
    results["temperature"] = float(model.safety_head.temperature)
    results["backend"] = "gguf" if is_gguf else "hf"

    if args.latency:
        requests = list(load_any((args.data or ["test"])[0])["user_request"])
        if not requests:
            parser.error("the --data file for --latency has no rows")
        results["latency"] = measure_latency(model, requests, sizes)
        for r in results["latency"]["results"]:
            print(f"batch {r['batch_size']:3d}: p50 {r['p50_ms']:8.1f} ms  p95 {r['p95_ms']:8.1f} ms  "
                  f"p99 {r['p99_ms']:8.1f} ms  {r['requests_per_s']:7.1f} requests/s  peak RSS {r['peak_rss_mb']:.0f} MB")
    elif not args.calibrate or args.data:
        scored, prediction_lines = evaluate_datasets(model, args.data or ["test"], args.batch_size, args.bootstrap,
                                                     args.threshold)
        results.update(scored)
        for report in results["datasets"].values():
            print(format_report(report, f"\n{report['source']} ({report['n']} rows, decisions: {results['decision_rule']})"))
        if args.predictions:
            atomic_write_text(Path(args.predictions), "".join(line + "\n" for line in prediction_lines))
            print(f"\npredictions: {args.predictions}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(results, indent=1, ensure_ascii=False))
        print(f"results: {args.out}", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
