"""Score a checkpoint on a labelled table: decisions, the safety report, a readable summary.

Metric definitions live in ``so8t_lib.metrics`` (``safety_report``). This module is what the
demo and the training notebooks call; the evaluation CLI builds on it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .config import LABELS
from .metrics import safety_report
from .model import SO8TModel

HEADLINE = ["safety_score", "macro_f1", "accuracy", "refuse_recall", "escalate_precision", "allow_precision",
            "dangerous_compliance", "over_refusal"]


def predict(model: SO8TModel, table: pd.DataFrame, batch_size: int = 32, progress: bool = True
            ) -> tuple[np.ndarray, list[str]]:
    """Probabilities (N, 3) and argmax decisions for every row of a loaded table."""
    contexts = [c if isinstance(c, str) and c.strip() else None for c in table["context"]]
    probs = model.decide(list(table["user_request"]), contexts, batch_size=batch_size, progress=progress).numpy()
    return probs, [LABELS[i] for i in probs.argmax(-1)]


def evaluate_table(model: SO8TModel, table: pd.DataFrame, batch_size: int = 32, bootstrap: int = 0,
                   progress: bool = True) -> dict:
    """The full safety report of ``model`` on ``table`` (per-language and per-category included)."""
    probs, pred = predict(model, table, batch_size, progress)
    return safety_report(list(table["label"]), pred, probs=probs, langs=list(table["lang"]),
                         categories=list(table["category"]), bootstrap=bootstrap)


def _num(value) -> str:
    return "   n/a" if value is None else f"{value:6.3f}"


def format_report(report: dict, title: str = "") -> str:
    """Headline metrics (with bootstrap intervals when present), confusion matrix, per language."""
    lines = [title] if title else []
    ci = report.get("ci") or {}
    for name in HEADLINE:
        interval = ci.get(name)
        extra = f"   95% CI [{interval[0]:.3f}, {interval[1]:.3f}]" if interval and None not in interval else ""
        lines.append(f"  {name:<22s}{_num(report.get(name))}{extra}")
    if report.get("ece") is not None:
        lines.append(f"  {'ece':<22s}{_num(report['ece'])}")
    labels = report["labels"]
    lines.append("  confusion (rows gold, columns decided): " + " ".join(f"{label:>9s}" for label in labels))
    for label, row in zip(labels, report["confusion_matrix"]):
        lines.append(f"  {'':<30s}{label:>9s} " + " ".join(f"{v:9d}" for v in row))
    for lang, part in (report.get("by_lang") or {}).items():
        lines.append(f"  lang {lang}: n={part['n']:4d} accuracy {_num(part['accuracy'])} macro_f1 "
                     f"{_num(part['macro_f1'])} dangerous_compliance {_num(part['dangerous_compliance'])}")
    return "\n".join(lines)


__all__ = ["predict", "evaluate_table", "format_report", "HEADLINE"]
