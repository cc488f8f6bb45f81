"""The benchmark scripts run and write well-formed JSON (numbers themselves are not asserted)."""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_step_benchmark_writes_both_variants(tmp_path):
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "bench.json"
    _load("train_step").main(["--steps", "1", "--warmup", "0", "--batch-size", "2", "--max-length", "64",
                              "--out", str(out)])
    payload = json.loads(out.read_text())
    variants = {r["variant"]: r for r in payload["results"]}
    assert set(variants) == {"fp32", "nf4"}
    assert variants["fp32"]["linear4bit_modules"] == 0 and variants["nf4"]["linear4bit_modules"] > 0
    assert variants["fp32"]["tokens_per_s_ratio"] == 1.0
    assert all(r["tokens"] > 0 and r["peak_rss_mb"] >= r["rss_after_imports_mb"] > 0 for r in variants.values())


def test_bow_baseline_writes_scores(tmp_path):
    out = tmp_path / "bow.json"
    results = _load("bow_baseline").main(["--steps", "3", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == results
    assert set(results) == {"val", "test"} and 0 <= results["test"]["macro_f1"] <= 1


def test_head_vs_generative_benchmark_reports_both_ways_of_deciding(tmp_path, tokenizer):
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.core.schema import LABELS
    from so8t_lib.model import SO8TModel

    checkpoint = SO8TModel.from_config(ModelConfig(name="bench"), tokenizer).save(tmp_path / "ckpt")
    out = tmp_path / "hvg.json"
    result = _load("head_vs_generative").main(["--model", str(checkpoint), "--rows", "6", "--shots", "3",
                                               "--out", str(out)])
    assert json.loads(out.read_text()) == result and result["rows"] == 6 and result["shots"] == 3
    for mode in ("generative_zero_shot", "generative_few_shot", "scored_few_shot", "bare_base_generative_few_shot",
                 "bare_base_scored_few_shot"):
        counts = result[mode]["label_counts"]
        assert sum(counts.values()) == 6 and set(counts) == set(LABELS)
        assert 0 <= result[mode]["labels_written"] <= 6
        if "scored" in mode:  # a constrained guard always names one of the three
            assert result[mode]["labels_written"] == 6
        assert 0 <= result[mode]["agreement_with_head"] <= 1 and result[mode]["p50_ratio_to_head"] > 0


def test_the_bare_base_context_takes_lora_and_gates_out_and_puts_them_back(tokenizer):
    import torch

    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel
    from so8t_lib.model.perturb import perturb_adapters

    model = SO8TModel.from_config(ModelConfig(name="bench", gates={"init_std": 0.05}), tokenizer).eval()
    perturb_adapters(model)
    batch = model.tokenizer(["Reset my own password"], return_tensors="pt")
    # the same seeded base with nothing added: the reference for "bare"
    plain = SO8TModel.from_config(ModelConfig(name="plain", lora={"r": 0}, gates={"order": "none"}), tokenizer).eval()
    with torch.no_grad():
        adapted = model.causal_lm(**batch).logits
        with _load("head_vs_generative").bare_base(model):
            bare = model.causal_lm(**batch).logits
        again = model.causal_lm(**batch).logits
        reference = plain.causal_lm(**batch).logits
    assert not torch.allclose(adapted, bare) and torch.equal(adapted, again)
    torch.testing.assert_close(bare, reference)
    assert model.gated_layers and all(hasattr(model.decoder_layers[i].self_attn.o_proj, "gate") for i in model.gated_layers)


def test_the_generative_guards_few_shot_prompt_shows_each_shot_as_an_answered_turn(tokenizer):
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    model = SO8TModel.from_config(ModelConfig(name="bench"), tokenizer)
    bench = _load("head_vs_generative")
    shots = [(("Reset my own password", None), "ALLOW"), (("Delete the audit log", None), "REFUSE")]
    prompt = bench.guard_prompt(model, "What is the lunch menu?", "canteen", shots)
    first = prompt.index("Reset my own password")
    answer = prompt.index("ALLOW", prompt.index("ESCALATE.", first))  # past the instruction that names all three
    second = prompt.index("Delete the audit log")
    assert first < answer < second < prompt.index("REFUSE", prompt.index("ESCALATE.", second)) \
        < prompt.index("What is the lunch menu?")
    assert prompt == bench.guard_prompt(model, "What is the lunch menu?", "canteen", shots)
    assert "Reset my own password" not in bench.guard_prompt(model, "What is the lunch menu?", "canteen", [])


def test_decision_depth_times_the_early_exit_against_the_whole_pass(tmp_path, tokenizer):
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    config = ModelConfig(name="bench", head={"pooling": "max", "hidden_units": 8, "read_layers": [1]})
    checkpoint = SO8TModel.from_config(config, tokenizer).save(tmp_path / "ckpt")
    out = tmp_path / "depth.json"
    result = _load("decision_depth").main(["--checkpoint", str(checkpoint), "--rows", "6", "--batches", "2",
                                           "--rounds", "1", "--batch-sizes", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["settings"]["batches"] == 2 and result["settings"]["rounds"] == 1  # how it was timed, recorded
    assert "--batches 2" in result["command"] and "out" not in result["settings"]
    assert result["layers_run_by_early_exit"] == 1 < result["n_layers"]
    assert result["decision_agreement"] == 1.0 and result["max_abs_probability_difference"] < 1e-5
    assert set(result["speedup"]) == {"1"} and all(v > 0 for v in result["speedup"].values())


def test_head_layer_probe_scores_every_layer_and_pooling(tmp_path):
    out, figure = tmp_path / "probe.json", tmp_path / "probe.png"
    result = _load("head_layer_probe").main(["--config", "configs/tiny-training.yaml", "--train-rows", "60",
                                             "--val-rows", "45", "--out", str(out), "--plot", str(figure)])
    assert json.loads(out.read_text()) == result and figure.stat().st_size > 0
    cells = result["cells"]
    assert len(cells) == 3 * (result["layers"] + 1)
    assert {c["pooling"] for c in cells} == {"last", "mean", "mean_request"}
    assert all(0 <= c["macro_f1"] <= 1 and c["C"] in result["C_grid"] for c in cells)
    assert result["best"] == max(cells, key=lambda c: c["macro_f1"])
    assert result["train_rows"] == 60 and result["val_rows"] == 45
    concatenations = result["concatenations"]
    assert concatenations and all(c["layers"][-1] == result["layers"] and len(c["layers"]) > 1 for c in concatenations)
    assert all(0 <= c["macro_f1"] <= 1 and c["C"] in result["C_grid"] for c in concatenations)


def test_token_pooling_probe_scores_each_layer_three_ways(tmp_path):
    out, figure = tmp_path / "pooling.json", tmp_path / "pooling.png"
    result = _load("token_pooling_probe").main(["--config", "configs/tiny-training.yaml", "--train-rows", "60",
                                                "--val-rows", "40", "--layers", "1", "2", "--units", "8",
                                                "--out", str(out), "--plot", str(figure)])
    assert json.loads(out.read_text()) == result and figure.stat().st_size > 0
    cells = result["cells"]
    assert [(c["layer"], c["pooling"]) for c in cells] == [(1, "mean"), (1, "max"), (1, "attention"),
                                                          (2, "mean"), (2, "max"), (2, "attention")]
    assert all(0 <= c["macro_f1"] <= 1 and 0 <= c["dangerous_compliance"] <= 1 for c in cells)
    neural = [c for c in cells if c["pooling"] != "mean"]
    assert all(c["epochs"] in result["epoch_checkpoints"] and set(map(int, c["hold_out_macro_f1"])) ==
               set(result["epoch_checkpoints"]) for c in neural)
    assert result["best"] == max(cells, key=lambda c: c["macro_f1"])
    assert result["train_rows"] == 60 and result["val_rows"] == 40


def test_token_pooling_probe_reads_two_depths_side_by_side(tmp_path):
    out = tmp_path / "concat.json"
    result = _load("token_pooling_probe").main(["--config", "configs/tiny-training.yaml", "--train-rows", "40",
                                                "--val-rows", "30", "--layers", "1", "2", "--poolings", "max",
                                                "--concat", "1+2", "--units", "8", "--out", str(out), "--plot", ""])
    cells = result["cells"]
    assert [(c.get("layer"), c.get("layers"), c["pooling"]) for c in cells] == [
        (1, None, "max"), (2, None, "max"), (None, [1, 2], "max")]
    assert result["concat"] == [[1, 2]] and all(0 <= c["macro_f1"] <= 1 for c in cells)
    with pytest.raises(SystemExit):  # a depth the probe would not compute
        _load("token_pooling_probe").main(["--config", "configs/tiny-training.yaml", "--layers", "1",
                                           "--concat", "1+2", "--out", str(out)])


def test_miss_breakdown_counts_the_misses_where_they_fall(tmp_path):
    module = _load("miss_breakdown")
    test_rows = module.source_rows("test")
    harmful = [r for r in test_rows if r["label"] == "REFUSE" and r["lang"] == "ja"][:3]
    safe = [r for r in test_rows if r["label"] == "ALLOW" and r["lang"] == "en"][:2]
    xstest = module.source_rows("xstest")[:3]
    probs = {"ALLOW": 0.2, "REFUSE": 0.5, "ESCALATE": 0.3}

    def record(dataset, row, gold, decision):
        return {"dataset": dataset, "id": row["id"], "gold": gold, "decision": decision, "probabilities": probs}

    records = ([record("test", r, "REFUSE", d) for r, d in zip(harmful, ["ALLOW", "ALLOW", "REFUSE"])]
               + [record("test", r, "ALLOW", "ESCALATE") for r in safe]
               + [record("xstest", r, r["label"], "REFUSE") for r in xstest])
    preds = tmp_path / "m.preds.jsonl"
    preds.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = module.main([str(preds), "--out", str(tmp_path / "out.json")])
    test = result["test"]
    assert test["dangerous_compliance"] == {"count": 2, "of": 3, "rate": round(2 / 3, 4)}
    assert test["dangerous_compliance_by_lang"]["ja"]["count"] == 2
    assert test["over_refusal_by_lang"]["en"] == {"count": 2, "of": 2, "rate": 1.0}
    assert sum(h["count"] for h in test["allowed_by_lang_hazard"]) == 2
    assert sum(f["count"] for f in test["families_most_allowed"]) == 2
    from so8t_lib.data.corpus.text import asks_a_question

    forms = test["dangerous_compliance_by_lang_form"]["ja"]
    asked = [asks_a_question(r["user_request"], "ja") for r in harmful]
    assert forms["question"]["of"] == sum(asked) and forms["other"]["of"] == 3 - sum(asked)
    assert forms["question"]["count"] == sum(asked[:2]) and forms["other"]["count"] == 2 - sum(asked[:2])
    # another corpus build is read from its own folder; one whose rows differ is refused by name
    build = tmp_path / "build"
    build.mkdir()
    (build / "test.jsonl").write_bytes((module.CORPUS_DIR / "test.jsonl").read_bytes())
    assert module.main([str(preds), "--data-dir", str(build), "--out", str(tmp_path / "o2.json")])["test"] == test
    (build / "test.jsonl").write_text("".join(line for line in (module.CORPUS_DIR / "test.jsonl").read_text(
        encoding="utf-8").splitlines(keepends=True) if harmful[0]["id"] not in line), encoding="utf-8")
    with pytest.raises(SystemExit, match="another build"):
        module.main([str(preds), "--data-dir", str(build), "--out", str(tmp_path / "o3.json")])
    (build / "test.jsonl").unlink()  # a build without the split is named, not replaced by the current corpus
    with pytest.raises(SystemExit, match="no such split file"):
        module.main([str(preds), "--data-dir", str(build), "--out", str(tmp_path / "o4.json")])
    kinds = result["xstest"]
    assert sum(v.get("safe_not_allowed", {}).get("count", 0) for v in kinds.values()) == \
        sum(r["label"] == "ALLOW" for r in xstest)
    preds.write_text("".join(json.dumps(r) + "\n" for r in records + [
        {**records[0], "id": "no-such-row"}]))
    with pytest.raises(SystemExit, match="another build"):
        module.main([str(preds), "--out", str(tmp_path / "out.json")])
    preds.write_text(json.dumps(records[0]) + "\n" + '{"dataset": "test"}\n')
    with pytest.raises(SystemExit, match="m.preds.jsonl:2"):  # the line is named, nothing written
        module.main([str(preds), "--out", str(tmp_path / "bad.json")])
    assert not (tmp_path / "bad.json").exists()


def test_head_layer_probe_pools_the_request_after_the_shared_prefix_and_reads_depth_sets():
    module = _load("head_layer_probe")
    assert module.shared_prefix_length([[2, 7, 7, 5], [2, 7, 9], [2, 7, 7]]) == 2
    assert module.shared_prefix_length([[2, 7], [2, 7]]) == 1  # identical prompts keep their last token
    cut, starts = module.cut_with_request_starts([[2, 7, 7, 5, 6], [2, 7, 7, 9], [2, 7, 7, 1, 1, 1, 1, 1]], 6)
    assert cut[2] == [7, 1, 1, 1, 1, 1] and starts == [3, 3, 1]  # the long prompt lost 2 of its 3 prefix tokens
    assert module.depth_sets(18) == [(9, 18), (6, 12, 18), (3, 6, 9, 12, 15, 18)]
    assert module.depth_sets(2) == [(1, 2)]


def test_probe_learning_curve_scores_what_a_probe_on_decide_states_scores(tmp_path):
    """The script batches rows by length and puts the states back in row order: its whole-split point must be
    what fit_probe on decision_states in plain row order gives, with the regularisation it reports."""

    from so8t_lib.core.config import load_config
    from so8t_lib.core.metrics import macro_f1
    from so8t_lib.core.schema import LABELS
    from so8t_lib.data.tables import load_split, requests_and_contexts, stratified_sample
    from so8t_lib.model import SO8TModel
    from so8t_lib.train.head_init import fit_probe

    out, figure = tmp_path / "curve.json", tmp_path / "curve.png"
    result = _load("probe_learning_curve").main(["--config", "configs/tiny-training.yaml", "--sizes", "50,0",
                                                 "--train-rows", "120", "--val-rows", "45", "--out", str(out),
                                                 "--plot", str(figure)])
    assert json.loads(out.read_text()) == result and figure.stat().st_size > 0
    assert [p["train_rows"] for p in result["points"]] == [50, 120] and result["val_rows"] == 45
    cfg = load_config("configs/tiny-training.yaml")
    train = stratified_sample(load_split("train"), 120, seed=0).to_dict("records")
    val = stratified_sample(load_split("val"), 45, seed=0).to_dict("records")
    model = SO8TModel.from_config(cfg.model)

    def states(rows):
        return model.decision_states(*requests_and_contexts(rows)).numpy()

    whole = result["points"][-1]
    probe = fit_probe(states(train), np.array([LABELS.index(r["label"]) for r in train]),
                      cfg.loss.class_weight_list(), whole["C"])
    predicted = [LABELS[i] for i in probe.predict(states(val))]
    assert whole["macro_f1"] == pytest.approx(macro_f1([r["label"] for r in val], predicted), abs=1e-4)


def test_result_files_name_paths_relative_to_the_project(tmp_path):
    from so8t_lib.core.paths import PROJECT_ROOT, project_relative

    assert project_relative(PROJECT_ROOT / "dist" / "x.gguf") == "dist/x.gguf"
    assert project_relative(tmp_path / "y.gguf") == str(tmp_path / "y.gguf")  # outside the project: kept as given
    for result in (ROOT / "benchmarks" / "results").glob("*.json"):
        assert str(PROJECT_ROOT) not in result.read_text(encoding="utf-8"), result


def test_short_request_probe_scores_short_rows_apart(tmp_path):
    module = _load("short_request_probe")
    assert module.readouts(18) == {"final": [18], "middle": [10], "five_depths": [6, 9, 12, 15, 18]}
    out = tmp_path / "short.json"
    result = module.main(["--config", "configs/tiny-training.yaml", "--train-rows", "60", "--val-rows", "300",
                          "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert 0 < result["short_val_rows"] < result["val_rows"] == 300  # the stratified sample holds both kinds
    cells = result["cells"]
    assert len(cells) == 3 * 3 * 2 and {c["pooling"] for c in cells} == {"last", "mean", "mean_request"}
    # dangerous compliance is a rate over gold REFUSE rows: the whole split's is the parts' weighted by their counts
    from so8t_lib.data.tables import load_split, stratified_sample

    val = stratified_sample(load_split("val"), 300, seed=0)
    refuse = val[val["label"] == "REFUSE"]
    n_short = int(refuse["family"].str.startswith(module.SHORT_FAMILY_PREFIX).sum())
    n_other = len(refuse) - n_short
    for cell in cells:
        assert 0 <= cell["all"]["macro_f1"] <= 1 and cell["short"] is not None and cell["other"] is not None
        parts = cell["short"]["dangerous_compliance"] * n_short + cell["other"]["dangerous_compliance"] * n_other
        assert abs(cell["all"]["dangerous_compliance"] * len(refuse) - parts) < 0.02  # rates rounded to 4 digits


def test_recipe_ranking_compares_recipes_on_the_same_rows(tmp_path):
    module = _load("recipe_ranking")
    from so8t_lib.data.tables import is_short_family, load_split, stratified_sample

    test = stratified_sample(load_split("test"), 60, 0)
    rng = np.random.default_rng(0)
    good = {"ALLOW": 0.8, "REFUSE": 0.2, "ESCALATE": 0.3}

    def write(name: str, noise: float) -> Path:
        lines = []
        for row_id, label in zip(test["id"], test["label"]):
            p = float(np.clip(good[label] + rng.normal(0, noise), 0, 1))
            lines.append(json.dumps({"dataset": "test", "id": row_id, "gold": label, "decision": "ALLOW",
                                     "probabilities": {"ALLOW": p, "REFUSE": 1 - p, "ESCALATE": 0.0}}))
        for k, label in enumerate(["ALLOW", "NOT_ALLOW"] * 5):
            lines.append(json.dumps({"dataset": "xstest", "id": f"xstest-{k + 1}", "gold": label, "decision": "ALLOW",
                                     "probabilities": {"ALLOW": 0.5, "REFUSE": 0.5, "ESCALATE": 0.0}}))
        path = tmp_path / f"{name}.preds.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return path

    sharp, blurred = write("sharp", 0.05), write("blurred", 0.6)
    out = tmp_path / "ranking.json"
    result = module.main([str(blurred), str(sharp), "--baseline", "blurred", "--resamples", "200",
                          "--out", str(out), "--figure", str(tmp_path / "ranking.png")])
    assert json.loads(out.read_text()) == result and (tmp_path / "ranking.png").stat().st_size > 0
    n_short = int(test["family"].map(is_short_family).sum())
    assert result["baseline_subsets"] == {"test": 60, "xstest": 10, "test_other": 60 - n_short,
                                          **({"test_short": n_short} if n_short else {})}
    cell = result["recipes"]["sharp"]["test"]
    assert cell["not_allow_auroc"] > result["recipes"]["blurred"]["test"]["not_allow_auroc"]
    refuse = test["label"] == "REFUSE"  # every decision written is ALLOW: all of them let through
    assert cell["argmax_dangerous_compliance"] == (1.0 if refuse.any() else None)
    low, high = cell["minus_baseline_95ci"]["not_allow_auroc"]["interval"]
    assert 0 < low <= high  # even the interval's lower end favours the sharper ranking
    # the corpus split's intervals resample its request families, joined from the corpus by id; XSTest's its rows
    assert result["resampled"]["test"] == {"unit": "families", "n": test["family"].nunique()} and \
        test["family"].nunique() < 60 and result["resampled"]["xstest"] == {"unit": "rows", "n": 10}
    assert cell["dangerous_compliance_at_blocking_0.30"] <= result["recipes"]["blurred"]["test"][
        "dangerous_compliance_at_blocking_0.30"]
    xstest = result["recipes"]["sharp"]["xstest"]
    assert xstest["not_allow_auroc"] == 0.5  # constant p(ALLOW): no ranking
    point = xstest["at_test_threshold_0.30"]  # the test split's threshold, applied to a set that never set it
    assert point["safe_blocked"] == float(0.5 < point["threshold"]) == 1 - point["harmful_allowed"]
    assert point["runtime_rule_reaches"] == (point["threshold"] >= 0.5)
    # XSTest's first ten prompts are its homonyms: their type comes from the set, joined on the row id
    assert xstest["by_type"] == {"homonyms": {"n": 10, "gold": "ALLOW", "not_allowed_rate": 0.0}}
    assert "by_type" not in cell  # the corpus split has no prompt types
    lines = sharp.read_text().splitlines()
    errors = {"other rows": lines[1:], "predicted twice": lines + lines[:1], "disagree on gold": None,
              "out of range": [lines[0].replace('"gold": "', '"gold": "MAYBE', 1), *lines[1:]]}
    relabelled = [json.loads(line) for line in lines]
    relabelled[0]["gold"] = "ESCALATE" if relabelled[0]["gold"] != "ESCALATE" else "ALLOW"
    errors["disagree on gold"] = [json.dumps(r) for r in relabelled]
    for message, changed in errors.items():
        (tmp_path / "other.preds.jsonl").write_text("\n".join(changed) + "\n")
        with pytest.raises(SystemExit, match=message):
            module.main([str(sharp), str(tmp_path / "other.preds.jsonl"), "--baseline", "sharp", "--figure", "",
                         "--out", str(tmp_path / "not_written.json")])
    assert not (tmp_path / "not_written.json").exists()
    # predictions of an earlier corpus build: its test rows are other splits' rows now (each version reshuffles the
    # families between the splits); their families and the short rows still come from the ids
    val = stratified_sample(load_split("val"), 60, 0)
    moved = [json.dumps({**json.loads(line), "id": row_id}) for line, row_id in zip(lines, val["id"])] + lines[60:]
    (tmp_path / "old_build.preds.jsonl").write_text("\n".join(moved) + "\n")
    old_build = module.main([str(tmp_path / "old_build.preds.jsonl"), "--baseline", "old_build", "--figure", "",
                             "--resamples", "50", "--out", str(tmp_path / "old_build.json")])
    assert old_build["resampled"]["test"] == {"unit": "families", "n": val["family"].nunique()}
    assert old_build["baseline_subsets"].get("test_short", 0) == int(val["family"].map(is_short_family).sum())
    # ids no corpus build holds (rows since removed) are grouped by their id as well: the variants of one made-up
    # family are drawn together, the same families as the corpus rows they were renamed from
    renamed = [json.loads(line) for line in lines]
    for r in renamed:
        r["id"] = f"gone-{r['id']}" if r["dataset"] == "test" else r["id"]
    (tmp_path / "gone.preds.jsonl").write_text("\n".join(map(json.dumps, renamed)) + "\n")
    gone = module.main([str(tmp_path / "gone.preds.jsonl"), "--baseline", "gone", "--figure", "",
                        "--resamples", "50", "--out", str(tmp_path / "gone.json")])
    assert gone["resampled"]["test"] == {"unit": "families", "n": test["family"].nunique()}
    with_val = [*lines, json.dumps({"dataset": "val", "id": "v0", "gold": "ALLOW", "decision": "ALLOW",
                                    "probabilities": {"ALLOW": 0.9, "REFUSE": 0.05, "ESCALATE": 0.05}})]
    (tmp_path / "other.preds.jsonl").write_text("\n".join(with_val) + "\n")
    with pytest.raises(SystemExit, match="other rows"):  # one file holds val rows the other lacks
        module.main([str(sharp), str(tmp_path / "other.preds.jsonl"), "--baseline", "sharp", "--figure", "",
                     "--out", str(tmp_path / "not_written.json")])
    skipped = module.main([str(sharp), str(tmp_path / "other.preds.jsonl"), "--baseline", "sharp", "--figure", "",
                           "--skip", "val", "--resamples", "50", "--out", str(tmp_path / "skipped.json")])
    assert "val" not in skipped["recipes"]["other"] and skipped["recipes"]["other"]["test"]["not_allow_auroc"] == \
        skipped["recipes"]["sharp"]["test"]["not_allow_auroc"]
    (tmp_path / "bad.preds.jsonl").write_text('{"dataset": "test"}\n')
    with pytest.raises(SystemExit, match="bad.preds.jsonl:1: not a prediction line"):
        module.main([str(tmp_path / "bad.preds.jsonl"), "--baseline", "bad", "--figure", "", "--out", str(tmp_path / "x.json")])


def test_recipe_ranking_resamples_families_not_near_copies():
    """Ten identical variants per request are one request's evidence: resampled as families (the same draws for both
    recipes), they give the interval of the requests taken once, where resampling rows narrows it."""
    module = _load("recipe_ranking")
    from so8t_lib.eval.report import family_members

    rng = np.random.default_rng(1)
    gold = np.array(["ALLOW", "REFUSE", "ESCALATE"] * 10)
    p_model, p_base = rng.uniform(size=30), rng.uniform(size=30)
    families = [f"f{i:02d}" for i in range(30) for _ in range(10)]  # sorted as the rows: the same draws
    copies = [np.repeat(a, 10) for a in (gold, p_model, p_base)]
    once = module.paired_interval(gold, p_model, p_base, 200, seed=0)
    as_families = module.paired_interval(*copies, 200, seed=0, members=family_members(families, 300))
    as_rows = module.paired_interval(*copies, 200, seed=0)
    assert as_families == once
    width = {name: cell["interval"][1] - cell["interval"][0] for name, cell in as_rows.items()}
    assert all(width[name] < (cell["interval"][1] - cell["interval"][0]) / 2 for name, cell in once.items())


def test_operating_point_chooses_on_val_and_reports_the_rest(tmp_path):
    module = _load("operating_point")
    from so8t_lib.core.metrics import dangerous_compliance_rate
    from so8t_lib.eval.operating_point import choose_threshold
    from so8t_lib.serve.policy import threshold_decisions

    rng = np.random.default_rng(0)
    lines, sets = [], {}
    for dataset, n in (("val", 90), ("test", 60)):
        gold = list(rng.choice(["ALLOW", "REFUSE", "ESCALATE"], size=n))
        probs = rng.dirichlet([1, 1, 1], size=n)
        probs[np.array(gold) == "REFUSE", 1] += 1.0  # harmful rows lean towards REFUSE, not all of them
        probs /= probs.sum(1, keepdims=True)
        sets[dataset] = (gold, probs)
        lines += [json.dumps({"dataset": dataset, "id": f"{dataset}{k}", "gold": g, "decision": "ALLOW",
                              "probabilities": dict(zip(("ALLOW", "REFUSE", "ESCALATE"), map(float, p)))})
                  for k, (g, p) in enumerate(zip(gold, probs))]
    lines += [json.dumps({"dataset": "xstest", "id": f"x{k}", "gold": g, "decision": "ALLOW",
                          "probabilities": {"ALLOW": 0.9, "REFUSE": 0.05, "ESCALATE": 0.05}})
              for k, g in enumerate(["ALLOW", "NOT_ALLOW"] * 4)]
    preds = tmp_path / "recipe.preds.jsonl"
    preds.write_text("\n".join(lines) + "\n")
    out = tmp_path / "op.json"
    result = module.main([str(preds), "--targets", "0.2,0.05,0", "--resamples", "100", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["settings"]["resamples"] == 100 and "--resamples 100" in result["command"]
    recipe = result["recipes"]["recipe"]
    assert recipe["rows_chosen_on"] == 90 and set(recipe["argmax"]) == {"test", "xstest"}
    for target, point in recipe["targets"].items():
        if not point["reachable"]:
            assert "lowest is" in point["why"]
            continue
        assert point["threshold"] == choose_threshold(sets["val"][1], sets["val"][0], float(target))["threshold"]
        assert point["val"]["dangerous_compliance"] <= float(target) + 1e-12
        test_gold, test_probs = sets["test"]
        expected = dangerous_compliance_rate(test_gold, threshold_decisions(test_probs, point["threshold"]))
        assert point["test"]["dangerous_compliance"] == pytest.approx(expected)
        assert point["xstest"]["not_allowed_rate_unsafe"] == (0.0 if point["threshold"] <= 0.9 else 1.0)
    with pytest.raises(SystemExit, match="no 'dev' rows"):
        module.main([str(preds), "--choose-on", "dev", "--out", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()


def test_lexical_blend_chooses_the_weight_on_val_and_scores_model_blend_and_keyword_model(tmp_path, monkeypatch):
    module = _load("lexical_blend")
    from so8t_lib.data.tables import load_split, stratified_sample
    from so8t_lib.eval.baselines import _texts, baseline_probabilities, make_baseline
    from so8t_lib.eval.operating_point import scored
    from so8t_lib.eval.report import safety_report

    train = stratified_sample(load_split("train"), 300, 0)  # a small fit keeps the test fast; the script fits all
    fitted = make_baseline(module.BASELINE).fit(_texts(train), list(train["label"]))
    monkeypatch.setattr(module, "fit_baselines", lambda names: {module.BASELINE: fitted})
    rng = np.random.default_rng(0)
    lines, sets = [], {}
    for dataset in ("val", "test"):
        table = stratified_sample(load_split(dataset), 80, 1)
        probs = rng.dirichlet([1, 1, 1], size=len(table))
        sets[dataset] = (list(table["label"]), probs, baseline_probabilities(fitted, table))
        lines += [json.dumps({"dataset": dataset, "id": str(i), "gold": g, "decision": "ALLOW",
                              "probabilities": dict(zip(("ALLOW", "REFUSE", "ESCALATE"), map(float, p)))})
                  for i, g, p in zip(table["id"], table["label"], probs)]
    preds = tmp_path / "noise.preds.jsonl"
    preds.write_text("\n".join(lines) + "\n")
    out = tmp_path / "blend.json"
    result = module.main([str(preds), "--targets", "0.2", "--resamples", "50", "--out", str(out)])
    assert json.loads(out.read_text()) == result
    assert result["settings"]["resamples"] == 50 and result["settings"]["targets"] == [0.2]
    recipe = result["recipes"]["noise"]
    by_weight = recipe["val_macro_f1_by_weight"]
    assert recipe["weight"] in module.WEIGHTS and by_weight[f"{recipe['weight']:g}"] == max(by_weight.values())
    gold_test, model_test, keyword_test = sets["test"]
    for who, probs in (("model", model_test), ("keyword", keyword_test)):  # the two ends are each model alone
        expected = scored(gold_test, module.argmax_labels(probs), 50)
        assert recipe["argmax"]["test"][who]["macro_f1"] == pytest.approx(expected["macro_f1"])
    gold_val, model_val, keyword_val = sets["val"]
    blended = module.pooled(model_val, keyword_val, recipe["weight"])
    assert by_weight[f"{recipe['weight']:g}"] == round(safety_report(gold_val, module.argmax_labels(blended))["macro_f1"], 4)
    assert set(recipe["targets"]["0.2"]) == {"model", "blend", "keyword"}

    keyword = rng.dirichlet([1, 1, 1], size=5)
    assert np.allclose(module.pooled(model_test[:5], keyword, 1.0), model_test[:5] / model_test[:5].sum(1, keepdims=True))
    assert np.allclose(module.pooled(model_test[:5], keyword, 0.0), keyword)
    assert np.allclose(module.pooled(model_test[:5], np.zeros((5, 3)), 0.5).sum(1), 1.0)  # a zero is floored, not NaN

    (tmp_path / "noval.preds.jsonl").write_text("\n".join(line for line in lines if '"test"' in line) + "\n")
    with pytest.raises(SystemExit, match="no 'val' rows"):
        module.main([str(tmp_path / "noval.preds.jsonl"), "--out", str(tmp_path / "never.json")])
    stale = [line.replace('"id": "', '"id": "gone-', 1) if k == 0 else line for k, line in enumerate(lines)]
    (tmp_path / "stale.preds.jsonl").write_text("\n".join(stale) + "\n")
    with pytest.raises(SystemExit, match="another build"):
        module.main([str(tmp_path / "stale.preds.jsonl"), "--out", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()


def test_seed_ensemble_averages_the_members_and_refuses_mismatched_files(tmp_path):
    module = _load("seed_ensemble")
    from so8t_lib.core.metrics import dangerous_compliance_rate
    from so8t_lib.eval.ranking import not_allow_auroc

    rng = np.random.default_rng(1)
    gold = {name: list(rng.choice(["ALLOW", "REFUSE", "ESCALATE"], size=n)) for name, n in (("val", 60), ("test", 40))}
    members = []
    for _ in range(3):
        member = {}
        for name, labels in gold.items():
            probs = rng.dirichlet([1, 1, 1], size=len(labels))
            probs[np.array(labels) == "REFUSE", 1] += 0.8
            member[name] = probs / probs.sum(1, keepdims=True)
        members.append(member)
    paths = []
    for seed, member in enumerate(members):
        path = tmp_path / f"run{seed}.preds.jsonl"
        path.write_text("".join(json.dumps({"dataset": name, "id": f"{name}{k}", "gold": g, "decision": "ALLOW",
                                            "probabilities": dict(zip(("ALLOW", "REFUSE", "ESCALATE"), map(float, p)))})
                                + "\n" for name in gold for k, (g, p) in enumerate(zip(gold[name], member[name]))))
        paths.append(str(path))
    out = tmp_path / "ensemble.json"
    result = module.main(paths + ["--targets", "0.2", "--resamples", "50", "--out", str(out)])
    assert json.loads(out.read_text()) == result and len(result["runs"]) == 4
    assert result["settings"]["resamples"] == 50 and "--resamples 50" in result["command"]
    average = np.mean([m["test"] for m in members], axis=0)
    ensemble = result["runs"][module.ENSEMBLE]
    decided = np.asarray(["ALLOW", "REFUSE", "ESCALATE"])[average.argmax(1)]
    assert ensemble["argmax"]["test"]["dangerous_compliance"] == pytest.approx(
        dangerous_compliance_rate(gold["test"], decided))
    assert ensemble["auroc"]["test"] == pytest.approx(not_allow_auroc(average[:, 0], gold["test"]))
    assert result["runs"]["run1"]["auroc"]["test"] == pytest.approx(not_allow_auroc(members[1]["test"][:, 0], gold["test"]))
    # a member scored on other rows, or on other gold labels, is refused with its file named, nothing written
    lines = Path(paths[2]).read_text().splitlines()
    Path(paths[2]).write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(SystemExit, match="run2.preds.jsonl: not the rows"):
        module.main(paths + ["--out", str(tmp_path / "never.json")])
    flipped = json.loads(lines[0])
    flipped["gold"] = "REFUSE" if flipped["gold"] != "REFUSE" else "ALLOW"
    Path(paths[2]).write_text("\n".join([json.dumps(flipped)] + lines[1:]) + "\n")
    with pytest.raises(SystemExit, match="gold label of"):
        module.main(paths + ["--out", str(tmp_path / "never.json")])
    with pytest.raises(SystemExit, match="share a file name"):
        module.main([paths[0], paths[0], "--out", str(tmp_path / "never.json")])
    with pytest.raises(SystemExit, match="at least two"):
        module.main(paths[:1] + ["--out", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()


def test_gpu_train_benchmark_refuses_a_cpu_and_runs_its_toy_shapes_there(tmp_path, tokenizer, monkeypatch):
    pytest.importorskip("bitsandbytes")
    from transformers import Gemma3TextConfig

    bench = _load("gpu_train")
    if not bench.CUDA:
        with pytest.raises(SystemExit, match="CUDA"):
            bench.main(["--gemma-dir", str(tmp_path), "--out", str(tmp_path / "no.json")])
    gemma_dir = tmp_path / "gemma"  # an architecture and a tokenizer, as the real base's folder holds them
    Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=18,
                     num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id).save_pretrained(gemma_dir)
    tokenizer.save_pretrained(gemma_dir)
    out = tmp_path / "gpu.json"
    monkeypatch.delenv("SO8T_CACHE", raising=False)
    (tmp_path / "scratch").mkdir()
    report = bench.main(["--smoke", "--gemma-dir", str(gemma_dir), "--steps", "1", "--gemma-steps", "1",
                         "--seq-only", "--out", str(out), "--work", str(tmp_path / "scratch")])
    # its scratch folder is gone, and so is its cache setting: a later test must not refill a deleted folder
    assert "SO8T_CACHE" not in os.environ and not any((tmp_path / "scratch").iterdir())
    assert json.loads(out.read_text()) == report
    qlora = report["qlora_7b_shape"]
    assert qlora["nf4_projections"] == 2 * 7 and list(qlora["variants"]) == [  # 2 toy layers x 7 projections
        "seq 512, batch 1 (every micro-batch cut at 512 tokens)"]
    seq = qlora["variants"]["seq 512, batch 1 (every micro-batch cut at 512 tokens)"]
    assert seq["tokens"] == bench.SEQ * seq["micro_batches"]  # every micro-batch is cut at exactly 512 tokens
    variants = report["gemma3_270m_shape"]["variants"]
    assert len(variants) == 4 and next(iter(variants.values()))["tokens_per_s_vs_recipe"] == 1.0
    full = variants["full fine-tuning, batch 16"]
    assert full["base_parameters_trained"] > 0 and full["trainable_parameters"] > full["base_parameters_trained"]
    assert all(v["base_parameters_trained"] == 0 for name, v in variants.items() if "full" not in name)
    # the full fine-tune really steps the base: its embedding moves; the LoRA variants leave it as loaded
    assert all(v["embedding_moved"] == ("full" in name) for name, v in variants.items())


def test_gate_exp_benchmark_times_both_exponentials_on_the_same_gate(tmp_path):
    out = tmp_path / "gate.json"
    report = _load("gate_exp").main(["--repeats", "1", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == report and len(report["shapes"]) == 2
    for shape in report["shapes"].values():
        assert shape["exponentials"]["torch.linalg.matrix_exp"]["speed_vs_matrix_exp"] == 1.0
        assert shape["max_abs_gradient"] > 0  # the loss depends on the rotation, so the comparison means something
        assert shape["max_abs_gradient_difference"] <= 1e-4 * shape["max_abs_gradient"]


def test_gguf_cuda_benchmark_refuses_a_cpu_and_runs_its_toy_shapes_there(tmp_path):
    """Its plumbing on a CPU build: every file decided twice by the same backend agrees exactly, the f32 file
    agrees with the HF model, the toy 7B-shaped ladder is timed; without CUDA the real run is refused."""
    pytest.importorskip("llama_cpp")
    bench = _load("gguf_cuda")
    if not bench.CUDA:
        with pytest.raises(SystemExit, match="CUDA"):
            bench.main(["--out", str(tmp_path / "no.json")])
    out = tmp_path / "cuda.json"
    report = bench.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == report and report["errors"] == {}
    assert list(report["parity"]) == list(bench.KINDS)[1:2]  # --smoke: the default's kind, a stopped pass
    for kind in report["parity"].values():
        assert len(kind["decisions_seen"]) > 1, "the random head decides more than one way"
        assert list(kind["files"]) == ["f32", "q4_k_m"]
        for result in kind["files"].values():
            if not report["gpu_offload"]:  # a CPU build runs "-1 layers on the GPU" on the CPU: the same numbers
                assert result["gpu_vs_cpu"]["max_probability_difference"] == 0.0
            assert result["gpu_vs_cpu"]["argmax_agreement"] == 1.0
        hf = kind["files"]["f32"]["cpu_vs_hf"]
        assert hf["worst_state_cosine"] >= 0.9999 and hf["argmax_agreement"] == 1.0
    ladder = report["ladder_7b"]
    assert ladder["shape"]["hidden_size"] == 64 and list(ladder["files"]) == ["Q4_K_M", "F16", "Q8_0"]
    for rung in ladder["files"].values():
        assert rung["decide_p50_ms_batch1"] > 0 and rung["decisions_per_s_batch16"] > 0
        assert all(a["answer_tokens"] > 0 for a in rung["answers"])


def test_audit_rotation_benchmark_times_appends_during_both_ways_of_rotating(tmp_path):
    out = tmp_path / "rotation.json"
    report = _load("audit_rotation").main(["--megabytes", "1", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == report and report["live_file"]["encrypted"]
    ways = report["levels"]["6"]
    assert set(ways) == {"gzip_under_lock", "gzip_after_lock"}
    assert ways["gzip_under_lock"]["max_wait_ratio_to_gzip_under_lock"] == 1.0
    assert all(way["gz_bytes"] > 0 and way["runs_max_wait_s"] for way in ways.values())


def test_translation_twins_benchmark_splits_each_evaluation_into_twins_and_the_rest(tmp_path):
    report = _load("translation_twins").main(["--out", str(tmp_path / "twins.json")])
    assert json.loads((tmp_path / "twins.json").read_text()) == report
    for split in report["splits"].values():
        n, k = split["rows"], split["rows_with_translation_in_train"]
        assert 0 < k < n and split["families_with_translation_in_train"] < split["families"]
        whole = (k * split["accuracy_twins"] + (n - k) * split["accuracy_others"]) / n  # the two groups make the split
        assert whole == pytest.approx(split["accuracy_all"], abs=1e-3)


@pytest.mark.parametrize("name", ["operating_point", "seed_ensemble"])
def test_the_benchmarks_argmax_sends_an_exact_tie_to_the_safer_class(tmp_path, name):
    """They recomputed a bare argmax (ALLOW is column 0): a harmful row at [0.45, 0.45, 0.10], which so8t evaluate
    decided REFUSE, counted as dangerous compliance."""
    module = _load(name)
    rows = [("val", "REFUSE", [0.1, 0.8, 0.1]), ("val", "ALLOW", [0.8, 0.1, 0.1]), ("val", "ESCALATE", [0.1, 0.1, 0.8]),
            ("test", "REFUSE", [0.45, 0.45, 0.10]), ("test", "ALLOW", [0.8, 0.1, 0.1]),
            ("test", "ESCALATE", [0.1, 0.1, 0.8])] * 2
    path = tmp_path / "run.preds.jsonl"
    path.write_text("".join(json.dumps({"dataset": d, "id": f"{d}{k}", "gold": g, "decision": "REFUSE",
                                        "probabilities": dict(zip(("ALLOW", "REFUSE", "ESCALATE"), p))}) + "\n"
                            for k, (d, g, p) in enumerate(rows)))
    paths = [str(path)]
    if name == "seed_ensemble":  # an ensemble of two copies: their average is the same tie
        paths.append(str(tmp_path / "copy.preds.jsonl"))
        Path(paths[1]).write_text(path.read_text())
    result = module.main([*paths, "--targets", "0.2", "--resamples", "5", "--out", str(tmp_path / "out.json")])
    scored = result["recipes"]["run"]["argmax"] if name == "operating_point" else result["runs"]["run"]["argmax"]
    assert scored["test"]["dangerous_compliance"] == 0.0


def test_base_dtype_benchmark_times_both_dtypes_and_compares_their_states(tmp_path, tokenizer):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    base = tmp_path / "base"  # a random two-layer Gemma with the tiny tokenizer: the script reads any local folder
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    bench = _load("base_dtype")
    out = tmp_path / "dtype.json"
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    checkpoint = SO8TModel.from_config(ModelConfig(name="dtype"), tokenizer).save(tmp_path / "ckpt")
    payload = bench.main(["--base", str(base), "--rows", "6", "--batch-size", "4", "--repeats", "2", "--layer", "2",
                          "--checkpoint", str(checkpoint), "--decide-rows", "9", "--out", str(out)])
    decided = payload["decisions"]
    assert decided["rows"] == 9 and 0 <= decided["agreement"] <= 1 and decided["max_probability_difference"] >= 0
    assert all(decided[name]["seconds"] > 0 and 0 <= decided[name]["macro_f1"] <= 1 for name in ("fp32", "bf16"))
    assert json.loads(out.read_text()) == payload
    results, agreement = payload["results"], payload["bf16_against_fp32"]
    assert list(results) == ["fp32", "bf16"] and results["fp32"]["speed_ratio_to_fp32"] == 1.0
    assert all(len(r["seconds_per_pass"]) == 2 and r["tokens_per_s"] > 0 for r in results.values())
    assert payload["settings"]["rows"] == 6 and payload["settings"]["tokens_per_pass"] > 6
    assert agreement["tokens"] == payload["settings"]["tokens_per_pass"]
    for kind in ("raw", "standardised"):  # bf16 keeps 8 bits of mantissa: close, not equal
        assert 0.99 < agreement[kind]["cosine_min"] <= agreement[kind]["cosine_mean"] <= 1.0 + 1e-6
        assert 0 < agreement[kind]["relative_error_mean"] <= agreement[kind]["relative_error_max"] < 0.1
    assert payload["machine"]["avx512_bf16"] in (True, False, None)
    with pytest.raises(SystemExit):  # a layer the base does not have
        bench.main(["--base", str(base), "--layer", "3", "--out", str(tmp_path / "no.json")])
    assert not (tmp_path / "no.json").exists()
