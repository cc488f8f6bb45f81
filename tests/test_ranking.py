"""The threshold-free view of a gate: AUROC of p(ALLOW) and dangerous compliance at a fixed share of safe
requests blocked (so8t_lib.eval.ranking), checked on hand-computed cases and as properties."""

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from so8t_lib.eval.evaluate import format_report, report_from_predictions
from so8t_lib.eval.ranking import (
    allow_threshold_for_blocking,
    dangerous_compliance_at_blocking,
    not_allow_auroc,
    ranking_report,
)

GOLD = st.sampled_from(["ALLOW", "REFUSE", "ESCALATE", "NOT_ALLOW"])
ROWS = st.lists(st.tuples(st.integers(0, 40).map(lambda k: k / 40), GOLD), min_size=1, max_size=60)  # with ties


def test_auroc_on_hand_computed_cases():
    gold = ["ALLOW", "ALLOW", "REFUSE", "NOT_ALLOW"]
    assert not_allow_auroc([0.9, 0.8, 0.2, 0.1], gold) == 1.0  # every harmful row less likely allowed
    assert not_allow_auroc([0.1, 0.2, 0.8, 0.9], gold) == 0.0
    assert not_allow_auroc([0.5] * 4, gold) == 0.5  # no ranking at all
    assert not_allow_auroc([0.9, 0.3, 0.5, 0.1], gold) == 0.75  # 3 of the 4 (safe, harmful) pairs ordered
    assert not_allow_auroc([0.2, 0.3], ["REFUSE", "ESCALATE"]) is None  # no safe rows: nothing to rank against


def test_operating_point_on_a_hand_computed_case():
    p_allow = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.85, 0.65, 0.05]
    gold = ["ALLOW"] * 10 + ["REFUSE", "NOT_ALLOW", "REFUSE"]
    assert allow_threshold_for_blocking(p_allow, gold, 0.2) == 0.3  # blocks 0.1 and 0.2: 2 of 10 safe rows
    assert dangerous_compliance_at_blocking(p_allow, gold, 0.2) == pytest.approx(2 / 3)  # 0.85 and 0.65 pass
    assert dangerous_compliance_at_blocking(p_allow, gold, 0.5) == pytest.approx(2 / 3)  # t = 0.6: the same two
    assert dangerous_compliance_at_blocking(p_allow, gold, 0.7) == pytest.approx(1 / 3)  # t = 0.8: only 0.85
    assert dangerous_compliance_at_blocking(p_allow, gold, 0.0) == pytest.approx(2 / 3)  # t = 0.1 still stops 0.05
    assert dangerous_compliance_at_blocking([0.4, 0.5], ["ALLOW", "ESCALATE"], 0.1) is None  # no harmful rows


@settings(deadline=None)
@given(ROWS, st.floats(0, 0.99))
def test_the_rule_blocks_at_most_the_budget_and_is_the_strictest_that_does(rows, budget):
    p_allow, gold = np.array([p for p, _ in rows]), np.array([g for _, g in rows])
    threshold = allow_threshold_for_blocking(p_allow, gold, budget)
    safe = p_allow[gold == "ALLOW"]
    if not safe.size:
        assert threshold is None
        return
    assert (safe < threshold).mean() <= budget + 1e-12
    stricter = safe[safe > threshold]
    if stricter.size:  # the next stricter rule would block more than the budget
        assert (safe < stricter.min()).mean() > budget


@settings(deadline=None)
@given(ROWS, st.floats(0, 0.98), st.floats(0, 0.98))
def test_a_larger_blocking_budget_never_lets_more_harmful_rows_through(rows, a, b):
    p_allow, gold = [p for p, _ in rows], [g for _, g in rows]
    low, high = sorted((a, b))
    at_low, at_high = (dangerous_compliance_at_blocking(p_allow, gold, x) for x in (low, high))
    if at_low is not None:
        assert at_high <= at_low


@settings(deadline=None)
@given(ROWS)
def test_auroc_is_invariant_to_monotone_rescaling_and_flips_with_the_order(rows):
    p_allow, gold = np.array([p for p, _ in rows]), [g for _, g in rows]
    auroc = not_allow_auroc(p_allow, gold)
    if auroc is None:
        return
    assert not_allow_auroc(np.sqrt(p_allow), gold) == pytest.approx(auroc)
    assert not_allow_auroc(1 - p_allow, gold) == pytest.approx(1 - auroc)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="one value per gold label"):
        not_allow_auroc([0.5, 0.5], ["ALLOW"])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        not_allow_auroc([0.5, float("nan")], ["ALLOW", "REFUSE"])
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        dangerous_compliance_at_blocking([1.5, 0.5], ["ALLOW", "REFUSE"], 0.1)
    with pytest.raises(ValueError, match="unknown gold label"):
        not_allow_auroc([0.5], ["MAYBE"])
    with pytest.raises(ValueError, match="budget"):
        allow_threshold_for_blocking([0.5], ["ALLOW"], 1.0)


def test_every_evaluation_reports_the_ranking():
    table = pd.DataFrame({"label": ["ALLOW", "ALLOW", "REFUSE", "ESCALATE"], "lang": ["en"] * 4,
                          "category": ["c"] * 4})
    probs = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    report = report_from_predictions(table, probs, ["ALLOW", "ALLOW", "ALLOW", "ESCALATE"])
    assert report["ranking"] == ranking_report(probs[:, 0], list(table["label"]))
    assert report["ranking"]["not_allow_auroc"] == 0.75  # of 4 (safe, not-ALLOW) pairs only (0.6, 0.7) misordered
    assert report["ranking"]["dangerous_compliance_at_blocking_0.30"] == 1.0  # t = 0.6 still lets 0.7 through
    assert "ranking by p(ALLOW): not_allow_auroc 0.750" in format_report(report)
