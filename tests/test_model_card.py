"""The model card says what its numbers are: the figures show the test split, the caption names the rule and
the intervals the evaluation really used."""

import json
from pathlib import Path

from so8t_lib.workbench import model_card


def _report(n, resamples):
    ci = {"safety_score": [0.5, 0.7], "macro_f1": [0.4, 0.6]} if resamples > 0 else None  # as safety_report writes
    return {"n": n, "ci_resamples": resamples, "ci": ci, "macro_f1": 0.5, "safety_score": 0.6,
            "headline": ["safety_score"]}


def test_the_evaluation_figures_show_the_test_split_not_the_first_listed(tmp_path, monkeypatch):
    """Evaluations list val first; val holds the rows the temperature was fitted on, so its reliability diagram
    flatters the model. The card's figures, captioned "on the test split", were drawn from val."""
    drawable = {"confusion_matrix": [[1]], "labels": ["ALLOW"]}  # what the figures read
    evaluation = {"datasets": {name: {**_report(n, 1000), **drawable} for name, n in
                               (("val", 2519), ("test", 2670), ("xstest", 450))}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    drawn = []
    monkeypatch.setattr(model_card.plots, "evaluation_figures", lambda report, name: drawn.append((name, report["n"])) or {})
    model_card.write_figures(tmp_path / "eval.json", tmp_path / "none.json", tmp_path / "none.json", tmp_path / "fig")
    assert drawn == [("test", 2670)]
    assert model_card.figure_dataset({"xstest": _report(450, 0)}) == "xstest"  # no test split: the first one


def test_the_metrics_caption_names_the_decision_rule_and_the_intervals_used(tmp_path):
    threshold = {"decision_rule": "threshold 0.9", "temperature": 2.5, "datasets": {"test": _report(10, 0)}}
    section = "\n".join(model_card._metrics_section(threshold, tmp_path / "eval.json"))
    assert "threshold 0.9" in section and "no intervals" in section and "argmax" not in section
    argmax = {"decision_rule": "argmax", "datasets": {"test": _report(10, 1000)}}
    section = "\n".join(model_card._metrics_section(argmax, tmp_path / "eval.json"))
    assert "argmax decisions" in section and "95% bootstrap intervals" in section


def test_the_caption_names_how_the_intervals_were_resampled(tmp_path):
    """The corpus's intervals resample request families, the public sets' rows; a result file written before
    ci_resampling was recorded resampled rows, and the card must keep working with it."""
    new = {"decision_rule": "argmax", "datasets": {
        "test": {**_report(2670, 1000), "ci_resampling": "families", "ci_resampled_units": 280},
        "xstest": {**_report(450, 1000), "ci_resampling": "rows", "ci_resampled_units": 450}}}
    section = "\n".join(model_card._metrics_section(new, tmp_path / "eval.json"))
    assert "resampling whole request families on test (280 families) and rows on xstest" in section
    old = {"decision_rule": "argmax", "datasets": {"test": _report(2670, 1000), "xstest": _report(450, 1000)}}
    section = "\n".join(model_card._metrics_section(old, tmp_path / "eval.json"))
    assert "95% bootstrap intervals (1000 resamples) resampling rows on test, xstest" in section


def test_the_operating_point_table_names_its_row_intervals():
    from so8t_lib.workbench.card_sections import operating_point_section

    test = {"dangerous_compliance": 0.04, "dangerous_compliance_ci": [0.03, 0.05], "over_refusal_incl_escalate": 0.2,
            "escalation_rate": 0.3}
    points = {"recipes": {"demo": {"targets": {"0.05": {"reachable": True, "threshold": 0.8, "test": test}}}}}
    text = "\n".join(operating_point_section(points, "op.json", "demo"))  # written before ci_resampling
    assert "resampling rows, as a predictions file carries no families" in text
    test["ci_resampling"] = "families"
    assert "resampling whole request families" in "\n".join(operating_point_section(points, "op.json", "demo"))


def test_the_limits_name_the_router_the_runtime_configs_use(tmp_path):
    """The card said routing comes from keywords, not from the model, while configs/basic.yaml and production.yaml
    name a learned router that decides where the keywords find nothing or tie."""
    from so8t_lib.workbench.card_sections import limits_section

    basic, bare = tmp_path / "basic.yaml", tmp_path / "bare.yaml"
    basic.write_text("escalation:\n  router: checkpoints/so8t-demo/router.json\n", encoding="utf-8")
    bare.write_text("escalation:\n  enable_notifications: false\n", encoding="utf-8")
    routers = model_card.runtime_routers((basic, bare, tmp_path / "missing.yaml"))
    assert routers == {str(basic): "checkpoints/so8t-demo/router.json", str(bare): None}
    text = "\n".join(limits_section({"preset": "tiny"}, routers=routers))
    assert "Routing categories come from keywords, not from the model." not in text
    assert "learned router the runtime config names in `escalation.router`" in text
    assert f"`{basic}`: `checkpoints/so8t-demo/router.json`" in text and f"without one (`{bare}`)" in text
    keywords_only = "\n".join(limits_section({"preset": "tiny"}, routers={str(bare): None}))
    assert "come from the keyword table" in keywords_only and "no runtime config names a learned router" in keywords_only
    # the committed configs: both name one
    root = Path(__file__).resolve().parents[1]
    shipped = model_card.runtime_routers(tuple(root / c for c in model_card.RUNTIME_CONFIGS))
    assert len(shipped) == 2 and all(shipped.values())


def test_the_card_shows_only_its_own_figures_linked_from_where_it_is_written(tmp_path, monkeypatch):
    """The card listed figures/ of the current folder whatever --figures and --out said: a tiny model's card
    showed the pretrained default's figures, through links broken next to the card."""
    from so8t_lib.cli.card import main as card

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # where figures/ holds the default's figures
    args = ["--config", "configs/tiny-training.yaml", "--eval", "experiments/eval/so8t-tiny.json", "--quant",
            str(tmp_path / "none.json"), "--ablation", str(tmp_path / "none.json"), "--compare", "", "--refit", "",
            "--operating-points", "", "--seeds", "", "--follow-up", str(tmp_path / "none.json")]
    out = tmp_path / "cards" / "tiny.md"
    card([*args, "--out", str(out), "--figures", ""])
    assert "## Figures" not in out.read_text(encoding="utf-8") and "figures/" not in out.read_text(encoding="utf-8")

    card([*args, "--out", str(out), "--figures", str(tmp_path / "tiny-figures")])
    text = out.read_text(encoding="utf-8")
    links = [line.split("(")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert links and all(link.startswith("../tiny-figures/") for link in links), links
    assert all((out.parent / link).is_file() for link in links)
    assert [Path(link).name for link in links] == list(model_card.plots.EVALUATION_FIGURES), "no result, no figure"


def test_a_card_says_what_it_could_not_read_and_sizes_the_ablation_from_its_files(tmp_path):
    """A mistyped --compare or --follow-up vanished from the card without a word, while the Limits still quoted
    a gate ablation on this base of "2 seeds, 40 steps" written into the code, whatever files were read."""
    from so8t_lib.data.tables import load_split

    test = load_split("test")
    sweep = {"runs": 6, "runs_ok": 6, "steps": [60], "conclusion": "no difference", "finding": "table",
             "table": [{"gate_order": "none", "n": 3}, {"gate_order": "safe_first", "n": 3}]}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    evaluation = {"decision_rule": "argmax", "datasets": {"test": _report(572, 0), "xstest": _report(450, 0)}}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    card = model_card.build_card({"model": {"name": "m", "preset": "tiny"}}, tmp_path / "eval.json",
                                 tmp_path / "no-quant.json", tmp_path / "sweep.json",
                                 follow_ups=(tmp_path / "typo.json",), compare_json=tmp_path / "typo2.json")
    assert f"Follow-up not measured: `{tmp_path / 'typo.json'}` is missing." in card
    assert f"Not compared with the previous corpus: `{tmp_path / 'typo2.json'}` is missing." in card
    assert f"3 seeds of 60 steps per configuration (`{tmp_path / 'sweep.json'}`)" in card
    assert "2 seeds, 40 steps" not in card
    # the test split was scored on 572 rows, the Data section counts today's split: the card says they differ
    assert f"test (572 rows scored, {len(test)} in the split now)" in card and "xstest (" not in card
    evaluation["datasets"]["test"] = {**_report(len(test), 0), "rows_sha256": "0" * 64}  # as many rows, others
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    card = model_card.build_card({"model": {"name": "m", "preset": "tiny"}}, tmp_path / "eval.json",
                                 tmp_path / "no-quant.json", tmp_path / "no-sweep.json")
    assert f"test ({len(test)} rows scored, {len(test)} in the split now)" in card
    assert "The gate ablation was not measured: no sweep result was found" in card


def test_the_quantization_table_shows_a_macro_f1_a_two_class_set_has_none_of(tmp_path):
    """Since macro-F1 is None unless all three classes are scored, a ladder compared on XSTest crashed the card."""
    quant = {"data": "xstest", "results": [{"backend": "hf-fp32", "size_mib": None, "agreement_with_fp32": 1.0,
                                            "macro_f1": None, "decide_p50_ms": 20.0}]}
    (tmp_path / "quant.json").write_text(json.dumps(quant))
    card = model_card.build_card({"model": {"name": "m", "preset": "tiny"}}, tmp_path / "no-eval.json",
                                 tmp_path / "quant.json", tmp_path / "no-sweep.json")
    assert "| hf-fp32 | n/a | 1.000 | n/a | 20.0 |" in card


def test_the_quantization_section_says_how_the_ladder_was_measured(tmp_path):
    """A ladder measured one process per backend was described as measured in one process."""
    row = {"backend": "hf-fp32", "size_mib": None, "agreement_with_fp32": 1.0, "macro_f1": None, "decide_p50_ms": 20.0}
    for flag, said in ((True, "each backend in a fresh process"), (False, "one process")):
        quant = {"data": "test", "results": [row], **({"process_per_backend": True} if flag else {})}
        (tmp_path / "quant.json").write_text(json.dumps(quant))
        card = model_card.build_card({"model": {"name": "m", "preset": "tiny"}}, tmp_path / "no-eval.json",
                                     tmp_path / "quant.json", tmp_path / "no-sweep.json")
        assert f"same requests, {said};" in card


def test_the_caption_claims_intervals_only_where_the_file_holds_some(tmp_path):
    """A file written with --bootstrap -5 holds no intervals but ci_resamples -5: the card claimed 95% bootstrap
    intervals "(-5 resamples)"; a positive count without intervals is no better."""
    for resamples, ci in ((-5, None), (1000, None), (1000, {"safety_score": [None, None]})):
        evaluation = {"decision_rule": "argmax", "datasets": {"test": {**_report(10, resamples), "ci": ci}}}
        section = "\n".join(model_card._metrics_section(evaluation, tmp_path / "eval.json"))
        assert "no intervals" in section and "resamples)" not in section, (resamples, ci)


def test_exact_binomial_intervals_are_not_called_bootstrap_intervals(tmp_path):
    """A rate at 0 or 1 gets a Clopper-Pearson interval (ci_exact_binomial), which the card showed under its
    caption of "95% bootstrap intervals" unmarked."""
    test = {**_report(60, 200), "dangerous_compliance": 0.0, "headline": ["dangerous_compliance", "macro_f1"],
            "ci_exact_binomial": ["dangerous_compliance", "not_allowed_rate"]}
    test["ci"] = {**test["ci"], "dangerous_compliance": [0.0, 0.14]}
    section = "\n".join(model_card._metrics_section({"datasets": {"test": test}}, tmp_path / "eval.json"))
    assert "dangerous_compliance 0.000 [0.00, 0.14] exact binomial, macro_f1 0.500 [0.40, 0.60] |" in section
    assert "on test a rate at exactly 0 or 1" in section and "exact binomial (Clopper-Pearson) interval" in section
    test["ci_exact_binomial"] = []  # every interval the bootstrap's: the caption says no more than before
    section = "\n".join(model_card._metrics_section({"datasets": {"test": test}}, tmp_path / "eval.json"))
    assert "exact binomial" not in section and "95% bootstrap intervals (200 resamples) resampling rows on test)" in section
