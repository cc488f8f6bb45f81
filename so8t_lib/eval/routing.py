"""How often a request reaches the right reviewer: the keyword table, the learned router and the two together
(what the runtime uses) against the corpus's ``category`` of each REFUSE and ESCALATE row.

The corpus's rows come in families (one seed, its variants), and a family is routed right or wrong together far
more often than not; the intervals therefore resample families, not rows, so they are not narrower than the data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from ..core.schema import ROUTE_CATEGORIES
from ..serve.categories import categorize, keyword_scores
from ..serve.router import LearnedRouter, combine_routes, router_text
from ..serve.urgency import is_urgent, urgent_route

ROUTED_LABELS = ("ESCALATE", "REFUSE")
METHODS = ("keywords", "learned", "keywords_then_learned")


def _predictions(router: LearnedRouter, table: pd.DataFrame) -> dict[str, list[str]]:
    contexts = [c if isinstance(c, str) else None for c in table["context"]]
    requests = list(table["user_request"])
    hits = [keyword_scores(r, c) for r, c in zip(requests, contexts)]
    urgent = [is_urgent(r, c) for r, c in zip(requests, contexts)]
    keywords = [categorize(r, c) for r, c in zip(requests, contexts)]
    keywords = [urgent_route(route, h) if u else route  # as the runtime routes without a router
                for route, h, u in zip(keywords, hits, urgent)]
    scores = router.scores([router_text(r, c) for r, c in zip(requests, contexts)])
    learned = [router.classes[i] for i in scores.argmax(axis=1)]
    combined = [combine_routes(h, dict(zip(router.classes, row))) for h, row in zip(hits, scores)]
    combined = [urgent_route(route, h) if u else route  # as the runtime routes an emergency
                for route, h, u in zip(combined, hits, urgent)]
    ties = [max(h.values()) > 0 and sum(v == max(h.values()) for v in h.values()) > 1 for h in hits]
    return {**dict(zip(METHODS, (keywords, learned, combined))), "keyword_ties": ties}


def family_bootstrap(correct: np.ndarray, families: Sequence[str], resamples: int, seed: int = 0
                     ) -> tuple[float | None, float | None]:
    """95% percentile interval of the accuracy, resampling whole families with replacement."""
    if resamples < 1 or not len(correct):
        return None, None
    names, index = np.unique(np.asarray(families), return_inverse=True)
    hits = np.bincount(index, weights=correct.astype(float), minlength=len(names))
    sizes = np.bincount(index, minlength=len(names)).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(names), size=(resamples, len(names)))
    values = hits[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    low, high = np.percentile(values, [2.5, 97.5])
    return round(float(low), 4), round(float(high), 4)


def score_routing(router: LearnedRouter, table: pd.DataFrame, resamples: int = 1000,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Accuracy of each method per gold label (with family intervals), per gold category, and the combined
    method's confusion matrix for ESCALATE rows (rows: the gold route, columns: where it went). A public
    benchmark's rows carry a placeholder category, not a route anyone chose: they are not scored here."""
    gold_routes = table["split"] != "benchmark" if "split" in table else True
    table = table[table["label"].isin(ROUTED_LABELS) & table["category"].isin(ROUTE_CATEGORIES) & gold_routes]
    out: dict = {"rows": int(len(table))}
    for label in ROUTED_LABELS:
        part = table[table["label"] == label].reset_index(drop=True)
        if progress:
            progress(f"{label}: {len(part)} rows")
        if part.empty:
            continue
        preds = _predictions(router, part)
        ties = preds.pop("keyword_ties")
        gold = np.asarray(part["category"])
        entry: dict = {"rows": int(len(part)), "families": int(part["family"].nunique()),
                       "keyword_ties": int(sum(ties))}  # rows where two desks had the most keyword hits
        for method, pred in preds.items():
            correct = np.asarray(pred) == gold
            entry[method] = {"accuracy": round(float(correct.mean()), 4),
                             "ci95": family_bootstrap(correct, list(part["family"]), resamples),
                             "by_category": {c: round(float(correct[gold == c].mean()), 4)
                                             for c in ROUTE_CATEGORIES if (gold == c).any()}}
        combined = np.asarray(preds["keywords_then_learned"])
        entry["confusion_keywords_then_learned"] = {
            "order": list(ROUTE_CATEGORIES),
            "matrix": [[int(((gold == g) & (combined == p)).sum()) for p in ROUTE_CATEGORIES]
                       for g in ROUTE_CATEGORIES]}
        out[label] = entry
    return out


def urgency_counts(table: pd.DataFrame) -> dict:
    """How many rows of each label (and route) the emergency screen marks: its false alarms are the ALLOW rows."""
    marked = [is_urgent(r, c if isinstance(c, str) else None) for r, c in zip(table["user_request"], table["context"])]
    table = table.assign(urgent=marked)
    return {label: {"rows": int(len(part)), "marked": int(part["urgent"].sum()),
                    "marked_by_category": {str(k): int(v) for k, v in
                                           part[part["urgent"]]["category"].value_counts().items()}}
            for label, part in table.groupby("label")}


def format_routing(name: str, result: dict) -> str:
    """A few readable lines per data set."""
    lines = [f"{name}: {result['rows']} REFUSE/ESCALATE rows with a gold route"
             + ("" if result["rows"] else " (a public benchmark has none: only the emergency screen is counted)")]
    if "urgency" in result:
        lines.append("  emergency screen marked " + ", ".join(f"{v['marked']} of {v['rows']} {label}"
                                                              for label, v in result["urgency"].items()))
    for label in ROUTED_LABELS:
        if label not in result:
            continue
        entry = result[label]
        cells = ", ".join(f"{m} {entry[m]['accuracy']:.3f} [{entry[m]['ci95'][0]:.2f}, {entry[m]['ci95'][1]:.2f}]"
                          for m in METHODS)
        lines.append(f"  {label} ({entry['rows']} rows, {entry['families']} families): {cells}")
    return "\n".join(lines)
