"""The runtime threshold that keeps dangerous compliance under a target, chosen on one data set and
reported on others.

An operator deploys a threshold, not an argmax: SAFETY_POLICY.md's rule lets a request through only when
ALLOW is the most likely decision and at least t likely. Raising t only ever turns decisions into
ESCALATE, so dangerous compliance cannot rise with it and the burden on safe requests (refused or
escalated) cannot fall; the smallest t on the grid that meets the target is therefore the cheapest
one. It is chosen on validation rows (``val``), never on the rows it is then reported on.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

import numpy as np

from ..core.schema import LABELS, NOT_ALLOW, REFUSE
from ..serve.policy import THRESHOLD_GRID, threshold_decisions
from .report import safety_report, threshold_sweep

REPORTED = ("dangerous_compliance", "over_refusal_incl_escalate", "escalation_rate", "macro_f1", "not_allowed_rate")


class TargetUnreachable(ValueError):
    """No threshold on the grid keeps dangerous compliance at or under the target on the given rows."""


def choose_threshold(probs: np.ndarray, gold: Sequence[str], max_dangerous: float,
                     grid: Sequence[float] = THRESHOLD_GRID) -> dict:
    """The smallest threshold of ``grid`` at which the runtime rule lets at most ``max_dangerous`` of
    the gold-REFUSE rows through, with the rule's numbers on these rows at that threshold.

    Raises ValueError when the rows hold no REFUSE request (the rate is undefined there) and
    ``TargetUnreachable`` (naming the best rate the grid reaches) when no threshold meets the target."""
    if not 0.0 <= max_dangerous <= 1.0:
        raise ValueError(f"the dangerous-compliance target must be in [0, 1], got {max_dangerous}")
    keep = np.array([str(g) in LABELS for g in gold], dtype=bool)  # benchmark rows gold-labelled NOT_ALLOW
    gold = [str(g) for g, k in zip(gold, keep) if k]
    probs = np.asarray(probs, dtype=float)
    if len(probs) != len(keep):
        raise ValueError(f"{len(probs)} probability rows for {len(keep)} gold labels")
    probs = probs[keep]
    if LABELS[REFUSE] not in gold:
        raise ValueError("the rows for choosing a threshold hold no REFUSE request, so dangerous compliance is "
                         "undefined on them; choose on a split with harmful requests (val)")
    sweep = threshold_sweep(probs, gold, sorted(grid))
    meets = sweep[sweep["dangerous_compliance"] <= max_dangerous + 1e-12]
    if meets.empty:
        best = sweep.loc[sweep["dangerous_compliance"].idxmin()]
        raise TargetUnreachable(
            f"no threshold in [{min(grid):.2f}, {max(grid):.2f}] keeps dangerous compliance at or under "
            f"{max_dangerous:.3f} on these rows: the lowest is {best['dangerous_compliance']:.3f} at "
            f"{best['threshold']:.2f}; raise the target or train a model that separates these rows better")
    chosen = meets.iloc[0]
    return {"threshold": float(chosen["threshold"]), "max_dangerous": float(max_dangerous), "rows": len(gold),
            "at_threshold": {k: (None if np.isnan(v) else float(v)) for k, v in chosen.items() if k != "threshold"}}


def scored(gold: Sequence[str], decisions: Sequence[str], resamples: int,
           families: Sequence[str] | None = None) -> dict:
    """What an operator reads of one set of decisions: ``REPORTED``, dangerous compliance with its 95% interval
    (resampling ``families`` when given: a corpus split's, ``predictions.families_by_dataset``), and on a public
    set (two-way labels) the share of its harmful prompts not allowed instead of macro-F1."""
    report = safety_report(list(gold), list(decisions), bootstrap=resamples, families=families)
    out = {k: report[k] for k in REPORTED}
    if NOT_ALLOW in gold or not set(LABELS) <= set(gold):  # a public set's two-way labels: no three-way F1
        out["macro_f1"] = None
    out["not_allowed_rate_unsafe"] = (report.get("not_allowed_rate_by_gold") or {}).get(NOT_ALLOW)
    out["dangerous_compliance_ci"] = (report.get("ci") or {}).get("dangerous_compliance")
    out["macro_f1_ci"] = None if out["macro_f1"] is None else (report.get("ci") or {}).get("macro_f1")
    out["ci_resampling"] = report["ci_resampling"]  # families for a corpus split, rows for a public set
    return out


def target_shares(text: str) -> tuple[float, ...]:
    """``"0.05,0.02"`` -> ``(0.05, 0.02)``: dangerous-compliance targets as a command-line type."""
    try:
        targets = tuple(float(t) for t in text.split(","))
    except ValueError:
        targets = ()
    if not targets or not all(0 <= t <= 1 for t in targets):
        raise argparse.ArgumentTypeError(f"dangerous-compliance targets are shares in [0, 1] separated by commas, "
                                         f"got {text!r}")
    return targets


def add_choice_arguments(parser: argparse.ArgumentParser, targets: tuple[float, ...], chosen: str = "thresholds") -> None:
    """The options every benchmark that picks operating points from predictions shares: --targets, --choose-on
    (the data set ``chosen`` are picked on) and --resamples."""
    parser.add_argument("--targets", type=target_shares, default=targets,
                        help="dangerous-compliance targets on val, separated by commas")
    parser.add_argument("--choose-on", default="val", help=f"the data set to choose the {chosen} on")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for the intervals")


def operating_point(chosen_on: tuple[Sequence[str], np.ndarray], elsewhere: dict[str, tuple[Sequence[str], np.ndarray]],
                    target: float, resamples: int, choose_on: str = "val",
                    families: Mapping[str, Sequence[str] | None] | None = None) -> dict:
    """The threshold chosen on ``chosen_on`` (gold, probabilities) for one dangerous-compliance target, then
    ``scored`` on every (gold, probabilities) of ``elsewhere`` (its intervals resampling ``families[name]`` where
    given); an unreachable target is recorded with why."""
    gold, probs = chosen_on
    try:
        choice = choose_threshold(probs, gold, target)
    except TargetUnreachable as why:
        return {"reachable": False, "why": str(why)}
    return {"reachable": True, "threshold": choice["threshold"], choose_on: choice["at_threshold"],
            **{name: scored(g, threshold_decisions(p, choice["threshold"]), resamples, (families or {}).get(name))
               for name, (g, p) in elsewhere.items()}}
