"""The operating point: the smallest runtime threshold that keeps dangerous compliance under a target,
chosen on one set of rows (so8t_lib.eval.operating_point, so8t evaluate --max-dangerous)."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from so8t_lib.core.metrics import dangerous_compliance_rate
from so8t_lib.core.schema import LABELS
from so8t_lib.eval.operating_point import TargetUnreachable, choose_threshold
from so8t_lib.serve.policy import THRESHOLD_GRID, threshold_decisions


def _normalised(draw_probs: list[list[float]]) -> np.ndarray:
    probs = np.asarray(draw_probs, dtype=float) + 1e-3
    return probs / probs.sum(axis=1, keepdims=True)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.lists(st.floats(0, 1), min_size=3, max_size=3), st.sampled_from(LABELS)),
                min_size=1, max_size=40),
       st.floats(0, 1))
def test_the_chosen_threshold_meets_the_target_and_no_smaller_one_does(rows, target):
    probs = _normalised([p for p, _ in rows])
    gold = [g for _, g in rows]
    if "REFUSE" not in gold:
        with pytest.raises(ValueError, match="no REFUSE"):
            choose_threshold(probs, gold, target)
        return
    try:
        choice = choose_threshold(probs, gold, target)
    except TargetUnreachable:  # then no grid threshold meets it, checked directly
        assert all(dangerous_compliance_rate(gold, threshold_decisions(probs, t)) > target for t in THRESHOLD_GRID)
        return
    t = choice["threshold"]
    rate = dangerous_compliance_rate(gold, threshold_decisions(probs, t))
    assert rate <= target + 1e-12 and choice["at_threshold"]["dangerous_compliance"] == pytest.approx(rate)
    smaller = [g for g in THRESHOLD_GRID if g < t]
    assert all(dangerous_compliance_rate(gold, threshold_decisions(probs, g)) > target for g in smaller)


def test_raising_the_threshold_never_lets_more_harm_through():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet([1, 1, 1], size=300)
    gold = list(rng.choice(LABELS, size=300))
    rates = [dangerous_compliance_rate(gold, threshold_decisions(probs, t)) for t in THRESHOLD_GRID]
    assert all(a >= b for a, b in zip(rates, rates[1:])) and rates[0] > rates[-1]


def test_unreachable_target_names_the_best_rate():
    probs = np.array([[0.999, 0.0005, 0.0005], [0.1, 0.8, 0.1]])  # a confident ALLOW on a harmful request
    with pytest.raises(TargetUnreachable, match=r"lowest is 0\.500 at 0\.50"):
        choose_threshold(probs, ["REFUSE", "REFUSE"], 0.05)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        choose_threshold(probs, ["REFUSE", "REFUSE"], 1.5)


def test_benchmark_rows_without_three_way_labels_are_left_out():
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.2, 0.7, 0.1]])
    choice = choose_threshold(probs, ["NOT_ALLOW", "REFUSE", "ALLOW"], 0.0)
    assert choice["rows"] == 2 and choice["threshold"] == 0.5
    with pytest.raises(ValueError, match="no REFUSE"):
        choose_threshold(probs[:1], ["NOT_ALLOW"], 0.0)
    with pytest.raises(ValueError, match="2 probability rows for 3 gold labels"):
        choose_threshold(probs[:2], ["NOT_ALLOW", "REFUSE", "ALLOW"], 0.0)


def test_cli_chooses_on_one_split_and_reports_another(tmp_path, tokenizer):
    from so8t_lib.cli import main as so8t
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.data.tables import load_split
    from so8t_lib.model import SO8TModel
    from so8t_lib.model.perturb import perturb_adapters

    model = SO8TModel.from_config(ModelConfig(), tokenizer)
    perturb_adapters(model, scale=0.3)
    ckpt = model.save(tmp_path / "ckpt")
    choose, report = tmp_path / "choose.jsonl", tmp_path / "report.jsonl"
    rows = load_split("val").groupby("label").head(8)
    rows.to_json(choose, orient="records", lines=True, force_ascii=False)
    load_split("test").groupby("label").head(4).to_json(report, orient="records", lines=True, force_ascii=False)
    out, preds = tmp_path / "m.json", tmp_path / "p.jsonl"
    results = so8t(["evaluate", "--model", str(ckpt), "--data", str(report), "--max-dangerous", "1.0",
                    "--threshold-data", str(choose), "--bootstrap", "0", "--out", str(out),
                    "--predictions", str(preds)])
    choice = results["threshold_choice"]
    assert choice["threshold"] == 0.5 and choice["rows"] == len(rows) and choice["data"] == str(choose)
    assert json.loads(out.read_text())["decision_rule"] == "threshold 0.5"
    for line in map(json.loads, preds.read_text(encoding="utf-8").splitlines()):
        p = np.array([[line["probabilities"][k] for k in LABELS]])
        assert line["decision"] == threshold_decisions(p, 0.5)[0]  # reported at the chosen threshold

    def refused(*args: str) -> str:
        with pytest.raises(SystemExit) as stop:
            so8t(["evaluate", "--model", str(ckpt), "--out", str(tmp_path / "never.json"), *args])
        return str(stop.value.code)

    refused("--max-dangerous", "0.1", "--threshold", "0.8")
    refused("--max-dangerous", "2")
    refused("--max-dangerous", "0.1", "--threshold-data", str(report), "--data", str(report))
    harmless = tmp_path / "harmless.jsonl"
    rows[rows["label"] != "REFUSE"].to_json(harmless, orient="records", lines=True, force_ascii=False)
    message = refused("--max-dangerous", "0.05", "--threshold-data", str(harmless), "--data", str(report))
    assert "harmless.jsonl" in message and "no REFUSE request" in message
    assert not (tmp_path / "never.json").exists()


def test_dangerous_compliance_targets_parse_from_the_command_line_or_say_what_is_wrong():
    import argparse

    from so8t_lib.eval.operating_point import target_shares

    assert target_shares("0.1,0.05,0") == (0.1, 0.05, 0.0)
    for bad in ("", "0.1,abc", "1.5", "-0.01", "0.05,,0.02"):
        with pytest.raises(argparse.ArgumentTypeError, match="shares in \\[0, 1\\]"):
            target_shares(bad)


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_every_corpus_row_s_id_names_its_family(split):
    """The benchmarks take a predictions row's family from its id (predictions carry no family): that is only
    sound while every row the corpus builds is named ``<family>-<variant>``."""
    from so8t_lib.data.tables import load_split
    from so8t_lib.eval.predictions import family_of_id

    table = load_split(split)
    wrong = [(row_id, family) for row_id, family in zip(table["id"], table["family"]) if family_of_id(row_id) != family]
    assert len(table) > 1000 and wrong == []


def test_a_predictions_file_s_corpus_rows_are_resampled_by_the_family_in_their_ids():
    """The benchmarks' intervals resampled rows: each seed request's ~10 near-copies counted as ten pieces of
    evidence, and the README quoted the narrower interval under a heading that says families."""
    from so8t_lib.eval.operating_point import operating_point
    from so8t_lib.eval.predictions import families_by_dataset, family_of_id

    assert family_of_id("ask-en-011-alt1") == "ask-en-011" and family_of_id("brief-ja-002-long_middle") == "brief-ja-002"
    assert family_of_id("harm-en-128-many_shot") == "harm-en-128" and family_of_id("xstest-12") == "xstest-12"
    assert family_of_id("-original") == "-original"  # nothing left of a family: the id is its own
    variants = ("original", "alt1", "typo", "polite")
    rows = {("test", f"fam-{f}-{v}"): ("REFUSE", (0.6, 0.3, 0.1) if f % 3 == 0 else (0.2, 0.7, 0.1), "REFUSE")
            for f in range(30) for v in variants}
    rows.update({("xstest", f"xstest-{i}"): ("ALLOW", (0.9, 0.05, 0.05), "ALLOW") for i in range(20)})
    families = families_by_dataset(rows)
    assert families["xstest"] is None and len(set(families["test"])) == 30 and len(families["test"]) == 120
    sample = families_by_dataset({("test:200", "fam-1-original"): rows[("test", "fam-1-original")]})
    assert sample == {"test:200": ["fam-1"]}  # a sample of a split (--data test:200) is the split's rows
    gold = ["REFUSE"] * 120
    probs = np.array([p for (dataset, _), (_, p, _) in rows.items() if dataset == "test"])
    by_rows = operating_point((gold, probs), {"test": (gold, probs)}, 0.5, 300)["test"]
    by_families = operating_point((gold, probs), {"test": (gold, probs)}, 0.5, 300, families=families)["test"]
    assert by_rows["ci_resampling"] == "rows" and by_families["ci_resampling"] == "families"
    assert by_rows["dangerous_compliance"] == by_families["dangerous_compliance"]
    width = {name: hi - lo for name, (lo, hi) in (("rows", by_rows["dangerous_compliance_ci"]),
                                                  ("families", by_families["dangerous_compliance_ci"]))}
    assert width["families"] > 1.5 * width["rows"]  # four near-copies per family, decided alike
