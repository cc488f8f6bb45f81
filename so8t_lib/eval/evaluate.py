"""How safe a checkpoint is, on which data, with what uncertainty, and how fast it decides.

    so8t evaluate --model checkpoints/so8t-tiny --data test --data xstest --data sst \\
        [--out metrics.json] [--predictions preds.jsonl] [--threshold 0.8] [--bootstrap 1000]
    so8t evaluate --model checkpoints/so8t-tiny --calibrate     # fit the temperature on val
    so8t evaluate --model checkpoints/so8t-tiny --latency [--out latency.json]

``--model`` is a checkpoint folder or a run folder (its ``best/``). ``--data`` is a corpus split
(``train``, ``val``, ``test``), a public benchmark by name (``xstest``, ``sst``), or any JSONL/CSV
file the data loader accepts (benchmark files are recognised by their columns). Decisions are the
head's argmax by default; ``--threshold t`` applies the runtime rule of SAFETY_POLICY.md instead
(REFUSE or ALLOW only when that class is the most likely and at least t, else ESCALATE).

Every metric is defined in ``so8t_lib.core.metrics`` and ``so8t_lib.eval.report`` (``safety_report``),
and in docs/evaluation.md. Decisions go through ``so8t_lib.serve.backends``, the runtime's own path, on the
runtime's own text (``so8t_lib.eval.served.model_inputs``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.schema import ALLOW, LABELS, NOT_ALLOW, RUN_METRICS_FILE
from ..data.benchmarks import BENCHMARKS, load_any
from ..data.tables import DataError, rows_digest
from ..serve.backends import load_decider
from ..serve.policy import THRESHOLD_GRID
from .ranking import ranking_report
from .report import safety_report, threshold_sweep
from .served import decide_failing_rows, finite_rows, model_inputs, served_decisions

HEADLINE = ["safety_score", "macro_f1", "accuracy", "refuse_recall", "escalate_precision", "allow_precision",
            "dangerous_compliance", "over_refusal", "over_refusal_incl_escalate", "unsafe_f1_strict",
            "unsafe_f1_loose", "not_allowed_rate", "escalation_rate"]


def table_contexts(table: pd.DataFrame) -> list[str | None]:
    """The context column with empty cells as None (how decide() expects "no context"), uncleaned: for
    callers that want the table's own text; the model is given ``served.model_inputs`` instead."""
    return [c if isinstance(c, str) and c.strip() else None for c in table["context"]]


@dataclass(frozen=True)
class Predicted:
    """A table's probabilities (N, 3), decisions, the rows the runtime refuses as invalid input, and the rows the
    model failed on (``failed``: position -> the error; decided ESCALATE, as the runtime fails closed)."""

    probs: np.ndarray
    decisions: list[str]
    invalid: dict[int, str]
    failed: dict[int, str] = field(default_factory=dict)

    def non_finite(self) -> int:
        """Rows the model answered with NaN or inf: neither refused as input nor failed."""
        return sum(1 for i in np.flatnonzero(~finite_rows(self.probs))
                   if int(i) not in self.invalid and int(i) not in self.failed)


def predict_rows(model, table: pd.DataFrame, batch_size: int = 32, progress: bool = True,
                 threshold: float | None = None) -> Predicted:
    """``predict`` with the invalid-input rows named (their position -> the runtime's reason) and the rows the
    model could not decide (``decide_failing_rows``)."""
    inputs = model_inputs(table)
    probs = np.full((len(table), len(LABELS)), np.nan)
    decided, errors = decide_failing_rows(model, inputs.requests, inputs.contexts, batch_size, progress)
    if inputs.positions:
        probs[inputs.positions] = decided
    failed = {inputs.positions[i]: reason for i, reason in errors.items()}
    return Predicted(probs, served_decisions(probs, threshold), inputs.invalid, failed)


def predict(model, table: pd.DataFrame, batch_size: int = 32, progress: bool = True,
            threshold: float | None = None) -> tuple[np.ndarray, list[str]]:
    """Probabilities (N, 3) (temperature-scaled) and decisions for every row of a loaded table, decided on the text
    the runtime gives the model (``served.model_inputs``: NFKC, invisible characters out, stripped): argmax (an
    exact tie goes to the safer class, ``served.safe_argmax``), or the runtime threshold rule when ``threshold`` is
    given. A row the runtime refuses as invalid input is not shown to the model: NaN probabilities, ESCALATE, as
    the runtime answers it. A row whose probabilities are not finite keeps them (the caller can see the model is
    broken) and is decided ESCALATE, as the runtime fails closed on it (``served.served_decisions``)."""
    predicted = predict_rows(model, table, batch_size, progress, threshold)
    return predicted.probs, predicted.decisions


def evaluate_table(model, table: pd.DataFrame, batch_size: int = 32, bootstrap: int = 0,
                   progress: bool = True, threshold: float | None = None) -> dict:
    """The full safety report of ``model`` on ``table`` (per-language and per-category included)."""
    predicted = predict_rows(model, table, batch_size, progress, threshold)
    return report_from_predictions(table, predicted.probs, predicted.decisions, bootstrap, predicted.invalid,
                                   predicted.failed)


def report_from_predictions(table: pd.DataFrame, probs: np.ndarray, pred: list[str], bootstrap: int = 0,
                            invalid: Mapping[int, str] | None = None, failed: Mapping[int, str] | None = None) -> dict:
    """``safety_report`` of the decisions plus what needs the table: the headline for its source, prompt types of a
    public set, the ranking by p(ALLOW) and the threshold sweep. Rows without finite probabilities are counted:
    ``invalid_input_rows`` (``invalid``: positions the runtime refuses, never shown to the model) and
    ``non_finite_rows`` (the model's NaN or inf); the ranking and calibration leave them out, the sweep decides
    them ESCALATE. ``failed`` (positions the model raised on, alone too) are ``model_error_rows``, named by id under
    ``model_errors``."""
    probs = np.asarray(probs, dtype=float)
    finite = finite_rows(probs)
    report = safety_report(list(table["label"]), pred, probs=probs, langs=list(table["lang"]),
                           categories=list(table["category"]), bootstrap=bootstrap,
                           families=resampling_families(table))
    invalid, failed = invalid or {}, failed or {}
    report["invalid_input_rows"] = len(invalid)
    report["model_error_rows"] = len(failed)
    report["model_errors"] = {_row_id(table, i): reason for i, reason in sorted(failed.items())}
    unfinished = set(invalid) | set(failed)  # rows the model gave no numbers for: counted apart
    report["non_finite_rows"] = int(sum(1 for i in np.flatnonzero(~finite) if int(i) not in unfinished))
    report["not_allowed_rate_unsafe"] = (report.get("not_allowed_rate_by_gold") or {}).get(NOT_ALLOW)
    sources = set(table["source"]) if "source" in table else set()
    source = sources.pop() if len(sources) == 1 else None
    report["headline"] = list(BENCHMARKS[source].headline) if source in BENCHMARKS else HEADLINE
    if source in BENCHMARKS:
        report["by_type"] = not_allowed_by_type(table, pred, source)
    report["ranking"] = ranking_report(probs[finite, ALLOW], list(table["label"][finite]))
    three_class = np.array([label != NOT_ALLOW for label in table["label"]])
    if three_class.any():
        sweep = threshold_sweep(probs[three_class], list(table["label"][three_class]), THRESHOLD_GRID)
        report["threshold_sweep"] = json.loads(sweep.to_json(orient="records"))
    else:
        report["threshold_sweep"] = None
    return report


def resampling_families(table: pd.DataFrame) -> list[str] | None:
    """What the bootstrap resamples whole (``safety_report``'s ``families``): the ``family`` column of a corpus-style
    table (the variants of one seed request), a blank cell being a family of its own row; None (rows) for a table
    without one, or from a public set, whose ``family`` holds a prompt type or harm area, not near-copies."""
    if "family" not in table or ("source" in table and set(map(str, table["source"])) & set(BENCHMARKS)):
        return None
    return [str(f) if isinstance(f, str) and f.strip() else f"\x00row {i}" for i, f in enumerate(table["family"])]


def not_allowed_by_type(table: pd.DataFrame, pred: list[str], source: str) -> dict[str, dict]:
    """A public set's prompt types (XSTest's ``type``, SimpleSafetyTests' harm area) -> rows, gold and the
    share not allowed: which kinds of prompt the gate lets through or over-blocks, not only how many."""
    prefix = f"{source}-"
    out: dict[str, dict] = {}
    for family, gold, decision in zip(table["family"], table["label"], pred):
        kind = str(family).removeprefix(prefix) or "unknown"
        entry = out.setdefault(kind, {"n": 0, "gold": gold, "not_allowed": 0})
        entry["n"] += 1
        entry["not_allowed"] += decision != LABELS[ALLOW]
    return {kind: {"n": e["n"], "gold": e["gold"], "not_allowed_rate": e["not_allowed"] / e["n"]}
            for kind, e in sorted(out.items())}


def _num(value) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def format_report(report: dict, title: str = "") -> str:
    """Headline metrics (with bootstrap intervals when present), confusion matrix, per language."""
    lines = [title] if title else []
    if report.get("invalid_input_rows"):
        lines.append(f"  {report['invalid_input_rows']} row(s) the runtime refuses as invalid input (too long, empty "
                     "after cleaning): decided ESCALATE without the model, as the runtime answers them")
    if report.get("model_error_rows"):
        lines.append(f"  {report['model_error_rows']} row(s) the model failed on, alone too (e.g. longer than the "
                     "GGUF context): decided ESCALATE, as the runtime fails closed: "
                     + ", ".join(list(report.get("model_errors") or {})[:5]))
    if report.get("non_finite_rows"):
        lines.append(f"  {report['non_finite_rows']} row(s) with probabilities that are not finite (NaN or inf): "
                     "decided ESCALATE, as the runtime fails closed; the model is broken on them")
    ci = report.get("ci") or {}
    if ci:
        lines.append(f"  95% intervals: {report.get('ci_resamples')} bootstrap resamples of "
                     f"{report.get('ci_resampled_units', report.get('n'))} {report.get('ci_resampling', 'rows')}")
    for name in report.get("headline") or HEADLINE:
        if report.get(name) is None and name not in ci:
            continue  # undefined on this data
        interval = ci.get(name)
        extra = f"   95% CI [{interval[0]:.3f}, {interval[1]:.3f}]" if interval and None not in interval else ""
        if extra and name in (report.get("ci_exact_binomial") or []):  # the bootstrap collapses at 0 or 1
            extra += " exact binomial"
        lines.append(f"  {name:<28s}{_num(report.get(name))}{extra}")
    if report.get("ece") is not None:
        lines.append(f"  {'ece':<28s}{_num(report['ece'])}")
    ranking = {k: v for k, v in (report.get("ranking") or {}).items() if v is not None}
    if ranking:
        lines.append("  ranking by p(ALLOW): " + ", ".join(
            f"{k.replace('dangerous_compliance_at_blocking_', 'dangerous compliance at safe blocked ')} {v:.3f}"
            for k, v in ranking.items()))
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
    for kind, part in (report.get("by_type") or {}).items():
        lines.append(f"  type {kind:<30s} n={part['n']:4d} gold {part['gold']:<9s} not allowed "
                     f"{part['not_allowed_rate']:.3f}")
    return "\n".join(lines)


def dataset_key(name: str | Path) -> str:
    """The name a data set goes by in results: a split or benchmark name, or a file's stem."""
    return Path(str(name)).stem


def _row_id(table: pd.DataFrame, row_no: int) -> str | int:
    """A row's id as results name it: its ``id``, or its position when it has none."""
    row_id = table["id"].iloc[row_no]
    return str(row_id) if row_id is not None and str(row_id) not in ("", "nan") else row_no


def _prediction_lines(name: str, table: pd.DataFrame, predicted: Predicted) -> list[str]:
    lines = []
    rows = zip(table["label"], predicted.decisions, predicted.probs)
    for row_no, (gold, decision, p) in enumerate(rows):
        line = {  # no probabilities for a row without finite ones: NaN is not JSON
            "dataset": name, "id": _row_id(table, row_no),
            "gold": gold, "decision": decision,
            "probabilities": {label: round(float(v), 6) for label, v in zip(LABELS, p)} if np.isfinite(p).all()
            else None,
        }
        if row_no in predicted.invalid:
            line["invalid_input"] = predicted.invalid[row_no]
        if row_no in predicted.failed:
            line["model_error"] = predicted.failed[row_no]
        lines.append(json.dumps(line, ensure_ascii=False))
    return lines


def read_run_log(run_dir: str | Path) -> list[dict]:
    """A training run's metrics.jsonl as a list of dicts (train and eval lines)."""
    path = Path(run_dir) / RUN_METRICS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_metrics(run_dir: str | Path, data: str = "test", batch_size: int = 32) -> dict:
    """One run's numbers for a sweep's summary: the best checkpoint's headline metrics and ECE on
    ``data``, the best validation value of the early-stopping metric, and the steps trained."""
    log = read_run_log(run_dir)
    report = evaluate_table(load_decider(run_dir), load_any(data), batch_size, bootstrap=0, progress=False)
    evals = [e["value"] for e in log if e["kind"] == "eval" and e["value"] is not None]
    return {**{k: report[k] for k in HEADLINE}, "ece": report["ece"], "best_val": max(evals, default=None),
            "steps": log[-1]["step"] if log else 0}


BASELINE_KEYS = ("headline", "n", "macro_f1", "safety_score", "accuracy", "refuse_recall", "dangerous_compliance",
                 "over_refusal", "over_refusal_incl_escalate", "not_allowed_rate", "not_allowed_rate_unsafe",
                 "escalation_rate", "unsafe_f1_strict", "unsafe_f1_loose", "ci", "ci_resampling", "by_type")


def load_tables(names: list[str] | str) -> dict[str, pd.DataFrame]:
    """Every data set loaded and checked before any is decided: a bad last ``--data`` entry used to surface only
    after the model had decided every earlier one (and nothing was written). DataError names the entry."""
    tables: dict[str, pd.DataFrame] = {}
    for name in [names] if isinstance(names, str) else names:  # one name given bare is one data set, not letters
        table = load_any(name)
        if table.empty:
            raise DataError(f"{name}: no rows to evaluate; check the file, or leave it out of --data")
        tables[str(name)] = table
    return tables


def evaluate_datasets(model, names: list[str], batch_size: int = 32, bootstrap: int = 1000,
                      threshold: float | None = None, progress: bool = True,
                      baselines: dict | None = None,
                      tables: Mapping[str, pd.DataFrame] | None = None) -> tuple[dict, list[str]]:
    """Score ``model`` on each data set (split name, xstest, sst or file): ({"decision_rule",
    "datasets": {name: report}}, one JSON prediction line per row). With ``baselines``
    (``baselines.fit_baselines()``) each report also holds theirs under ``baselines``, scored the same way
    on the same rows. Every table is loaded (or taken from ``tables``, keyed by name) before the first is
    decided. The CLI and notebook 04 use this."""
    from .baselines import baseline_probabilities

    names = [names] if isinstance(names, str) else names  # "test" is one data set, not four one-letter files
    if not names:
        raise DataError("no data set to evaluate: name at least one (a split, xstest, sst or a JSONL/CSV file)")
    tables = {**load_tables([n for n in names if str(n) not in (tables or {})]), **(tables or {})}
    results: dict = {"decision_rule": "argmax" if threshold is None else f"threshold {threshold}", "datasets": {}}
    lines: list[str] = []
    for name in names:
        table = tables[str(name)]
        predicted = predict_rows(model, table, batch_size, progress, threshold)
        report = report_from_predictions(table, predicted.probs, predicted.decisions, bootstrap, predicted.invalid,
                                         predicted.failed)
        report["source"] = str(name)
        report["rows_sha256"] = rows_digest(table)
        if baselines:
            report["baselines"] = {}
            for baseline, fitted in baselines.items():
                base_probs = baseline_probabilities(fitted, table)
                base_pred = served_decisions(base_probs, threshold)
                full = report_from_predictions(table, base_probs, base_pred, bootstrap)
                report["baselines"][baseline] = {k: full.get(k) for k in BASELINE_KEYS}
        results["datasets"][dataset_key(name)] = report
        lines += _prediction_lines(dataset_key(name), table, predicted)
    return results, lines
