"""Bootstrap intervals resample what is independent: whole request families on the corpus, rows elsewhere."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from so8t_lib.eval.evaluate import report_from_predictions, resampling_families
from so8t_lib.eval.report import safety_report

FAMILIES, SIZE, RESAMPLES = 20, 10, 400
ALLOWED = np.array([k % 4 == 0 for k in range(FAMILIES)])  # 5 of 20 families let through, every variant alike


def _families_of_identical_rows() -> tuple[list[str], list[str], list[str]]:
    """Gold REFUSE everywhere; a family is decided ALLOW on all its rows or on none (family names sort as k)."""
    families = [f"fam-{k:02d}" for k in range(FAMILIES) for _ in range(SIZE)]
    pred = ["ALLOW" if ALLOWED[k] else "REFUSE" for k in range(FAMILIES) for _ in range(SIZE)]
    return ["REFUSE"] * (FAMILIES * SIZE), pred, families


def test_family_interval_is_wider_than_the_row_interval_and_matches_a_direct_computation():
    gold, pred, families = _families_of_identical_rows()
    by_rows = safety_report(gold, pred, bootstrap=RESAMPLES)
    by_families = safety_report(gold, pred, bootstrap=RESAMPLES, families=families)
    assert (by_rows["ci_resampling"], by_rows["ci_resampled_units"]) == ("rows", FAMILIES * SIZE)
    assert (by_families["ci_resampling"], by_families["ci_resampled_units"]) == ("families", FAMILIES)
    assert by_rows["dangerous_compliance"] == by_families["dangerous_compliance"] == pytest.approx(0.25)
    low_r, high_r = by_rows["ci"]["dangerous_compliance"]
    low_f, high_f = by_families["ci"]["dangerous_compliance"]
    assert high_f - low_f > 1.5 * (high_r - low_r)  # 20 pieces of evidence, not 200
    # by hand: each resample draws 20 families (in name order) with one seeded generator; all rows share the
    # family's decision, so dangerous compliance is the share of drawn families that were let through
    rng = np.random.default_rng(0)
    direct = [ALLOWED[rng.integers(0, FAMILIES, FAMILIES)].mean() for _ in range(RESAMPLES)]
    assert [low_f, high_f] == pytest.approx(list(np.percentile(direct, [2.5, 97.5])))


def test_two_models_on_the_same_families_get_paired_resamples():
    """The seed is fixed: a model compared with itself has the same interval, resample for resample."""
    gold, pred, families = _families_of_identical_rows()
    first = safety_report(gold, pred, bootstrap=50, families=families)
    second = safety_report(gold, pred, bootstrap=50, families=list(families))
    assert first["ci"] == second["ci"]


def test_singleton_families_are_rows_and_public_sets_resample_rows():
    gold, pred, _ = _families_of_identical_rows()
    singletons = safety_report(gold, pred, bootstrap=30, families=[f"r{i}" for i in range(len(gold))])
    assert singletons["ci"] == safety_report(gold, pred, bootstrap=30)["ci"]
    assert singletons["ci_resampling"] == "rows"
    corpus = pd.DataFrame({"family": ["a", "a", "b", ""], "source": ["test.jsonl"] * 4})
    assert resampling_families(corpus)[:3] == ["a", "a", "b"] and len(set(resampling_families(corpus))) == 3
    # XSTest's and SimpleSafetyTests' family column holds a prompt type or harm area, not near-copies
    assert resampling_families(corpus.assign(source="xstest")) is None
    assert resampling_families(corpus.drop(columns="family")) is None


def test_the_report_of_a_corpus_table_resamples_its_families():
    gold, pred, families = _families_of_identical_rows()
    table = pd.DataFrame({"label": gold, "lang": "en", "category": "general", "family": families,
                          "source": "test.jsonl"})
    probs = np.where(np.array(pred)[:, None] == "ALLOW", [0.9, 0.05, 0.05], [0.05, 0.9, 0.05])
    report = report_from_predictions(table, probs, pred, bootstrap=RESAMPLES)
    assert report["ci_resampling"] == "families" and report["ci_resampled_units"] == FAMILIES
    direct = safety_report(gold, pred, bootstrap=RESAMPLES, families=families)["ci"]
    assert report["ci"] == direct
