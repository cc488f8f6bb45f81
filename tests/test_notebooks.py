"""Every notebook keeps the conventions: a literal-only parameters cell, a markdown header that says
how to run it headless, the project kernel, no stored outputs, tiny parameters for nbval. (Every
notebook runs end to end under nbval in `make test`; see tests/prepare_notebooks.py.)"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_conventions(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and "papermill" in nb.cells[0].source
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    for node in ast.parse(params[0].source).body:  # literals only: papermill overrides them
        assert isinstance(node, ast.Assign) and len(node.targets) == 1
        ast.literal_eval(node.value)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    assert nb.metadata.kernelspec.name == "so8t", "the kernel make registers (Makefile, venv)"
    assert "enter_project_root()" in nb.cells[2].source, "paths are taken from the project root"


def test_notebooks_are_committed_stripped_and_each_has_tiny_parameters_for_nbval():
    result = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", *map(str, NOTEBOOKS)],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"run 'make strip': {result.stdout}{result.stderr}"
    import yaml

    params = yaml.safe_load((ROOT / "tests" / "notebook_params.yaml").read_text(encoding="utf-8"))
    assert sorted(params) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:  # only names the notebook declares: papermill would warn and inject them anyway
        declared = nbformat.read(path, as_version=4)
        source = next(c.source for c in declared.cells if "parameters" in c.metadata.get("tags", []))
        names = {node.targets[0].id for node in ast.parse(source).body}
        assert set(params[path.name]) <= names, f"{path.name}: {set(params[path.name]) - names} not parameters"


def test_stakeholder_app_decides_when_clicked(tmp_path, tokenizer):
    """The page shows the decision the runtime returned and recorded, not just the three label names (they
    are always on the page, as the bars' labels), and a request the gate cannot take fails closed, visibly."""
    pytest.importorskip("ipywidgets")
    import re

    from so8t_lib.core.config import ModelConfig
    from so8t_lib.core.schema import LABELS
    from so8t_lib.model import SO8TModel
    from so8t_lib.workbench.stakeholder_app import build_app

    ckpt = SO8TModel.from_config(ModelConfig(), tokenizer).save(tmp_path / "ckpt")
    app = build_app([str(ckpt)], threshold=0.8, log_dir=tmp_path / "logs")
    app.example_buttons[1].click()  # the Japanese prompt-injection example
    shown, result = app.result_html.value, app.last_result
    records = [json.loads(line) for line in (tmp_path / "logs" / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records[-1]["request_id"] == result["request_id"] and records[-1]["decision"] == result["decision"]
    assert re.findall(r'data-decision="(\w+)"', shown) == [result["decision"]]
    assert re.search(rf'so8t-decision"[^>]*>{result["decision"]}<', shown)
    bars = dict(re.findall(r'data-label="(\w+)" data-value="([0-9.e-]+)"', shown))
    assert {k: float(v) for k, v in bars.items()} == result["probabilities"] and list(bars) == list(LABELS)
    assert ("so8t-route" in shown) == (result["decision"] == "ESCALATE")
    assert "prompt_injection" in shown and app.context_box.value == "情報システム部への問い合わせ"
    app.request_box.value = "x" * 5000  # too long: the gate fails closed, and says so
    app.decide_button.click()
    assert app.last_result["decision"] == "ESCALATE" and 'data-decision="ESCALATE"' in app.result_html.value
    assert "failed closed" in app.result_html.value and "direct manager" in app.result_html.value
    assert (tmp_path / "logs" / "audit.jsonl").read_text(encoding="utf-8").count('"test":true') == 2


def test_model_card_names_missing_results_and_quotes_present_ones(tmp_path):
    from so8t_lib.cli import main as so8t

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text((ROOT / "configs" / "tiny-training.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    test = {"n": 10, "headline": ["safety_score"], "safety_score": 0.5, "macro_f1": 0.4, "refuse_recall": 0.3,
            "dangerous_compliance": 0.2, "over_refusal": 0.1, "ece": 0.05, "ci": {"macro_f1": [0.35, 0.45]},
            "baselines": {"char_ngram_tfidf": {"safety_score": 0.6, "macro_f1": 0.7, "refuse_recall": 0.8}}}
    (tmp_path / "eval.json").write_text(json.dumps({"temperature": 2.0, "model": "checkpoints/so8t-tiny/best",
                                                   "datasets": {"test": test}}))
    (tmp_path / "v1.json").write_text(json.dumps({"model": "old", "datasets": {"test": {**test, "macro_f1": 0.3}}}))
    out = tmp_path / "CARD.md"
    common = ["--eval", str(tmp_path / "eval.json"), "--quant", str(tmp_path / "none.json"), "--seeds", "",
              "--ablation", str(tmp_path / "none2.json"), "--out", str(out), "--figures", ""]
    so8t(["card", "--run", str(run), "--compare", str(tmp_path / "v1.json"), *common])
    card = out.read_text(encoding="utf-8")
    assert "macro_f1 0.400 [0.35, 0.45]" in card and "dangerous_compliance 0.200" in card
    assert "Not measured" in card and "Not run yet" in card and "no evidence either way" in card
    assert "| test | macro_f1 | 0.400 | 0.700 |" in card  # the keyword yardstick on the same rows
    assert "| test | macro_f1 | 0.300 [0.35, 0.45] | 0.400 [0.35, 0.45] |" in card  # the previous corpus, same n
    # with row digests, only the same rows are compared row for row; a reshuffled split is named as such
    (tmp_path / "eval.json").write_text(json.dumps({"temperature": 2.0, "model": "checkpoints/so8t-tiny/best", "datasets": {
        "test": {**test, "rows_sha256": "a"}, "xstest": {**test, "rows_sha256": "x"}}}))
    (tmp_path / "v1.json").write_text(json.dumps({"model": "checkpoints/so8t-tiny/best", "datasets": {  # the same path, retrained since
        "test": {**test, "macro_f1": 0.3, "rows_sha256": "b"}, "xstest": {**test, "macro_f1": 0.2, "rows_sha256": "x"}}}))
    so8t(["card", "--run", str(run), "--compare", str(tmp_path / "v1.json"), "--compare-label", "corpus v0", *common])
    card = out.read_text(encoding="utf-8")
    assert "(model `old`)" not in card and "same path `checkpoints/so8t-tiny/best`, which held the corpus v0 run" in card
    assert "## Beside an earlier run: corpus v0" in card and "| xstest | macro_f1 | 0.200 [0.35, 0.45] |" in card
    assert "| test | macro_f1 |" not in card.split("## Beside an earlier run")[1]
    assert "different rows" in card and "test macro_f1 0.300 [0.35, 0.45] (n=10) vs 0.400" in card
    assert "random" in card and "Gemma" not in card  # the tiny preset's card claims nothing about Gemma

    quant = {"rows": 40, "data": "test", "results": [
        {"backend": "hf-fp32", "size_mib": None, "agreement_with_fp32": 1.0, "macro_f1": 0.5, "decide_p50_ms": 9.0},
        {"backend": "Q8_0", "size_mib": 278.0, "agreement_with_fp32": 0.9, "macro_f1": 0.5, "decide_p50_ms": 8.0}]}
    (tmp_path / "quant.json").write_text(json.dumps(quant))
    common[common.index(str(tmp_path / "none.json"))] = str(tmp_path / "quant.json")
    (tmp_path / "eval.json").write_text(json.dumps({"temperature": 2.0, "model": "checkpoints/so8t-demo/best",
                                                   "datasets": {"test": test}}))  # the default's own evaluation
    so8t(["card", "--config", str(ROOT / "configs" / "training.yaml"), "--compare", "", *common])
    card = out.read_text(encoding="utf-8")  # the default: the pretrained Gemma base, its licence, its recipe
    assert "Gemma terms of use" in card and "layers 0-8 frozen" in card and "corpus v1" not in card
    assert "SafetyHeadB reading the output of layer 8: a 256-unit hidden layer on every prompt token" in card
    assert "| hf-fp32 | n/a | 1.000 |" in card and "| Q8_0 | 278.0 | 0.900 |" in card and "sample of 40 rows" in card
    assert "Head refit does not apply" in card  # a max head has no pooled state to refit on
    assert "(one seed):" in card  # no seed-ensemble result given: no spread claimed
    seeds = {"runs": {name: {"argmax": {"test": {"dangerous_compliance": dc},
                                        "xstest": {"over_refusal_incl_escalate": safe, "not_allowed_rate_unsafe": 0.5}}}
                      for name, dc, safe in (("a", 0.09, 0.2), ("b", 0.13, 0.3), ("mean of the members", 0.01, 0.0))}}
    (tmp_path / "seeds.json").write_text(json.dumps(seeds))
    so8t(["card", "--config", str(ROOT / "configs" / "training.yaml"), "--compare", "", *common,
          "--seeds", str(tmp_path / "seeds.json")])
    card = out.read_text(encoding="utf-8")  # the spread read from the file, the averaged run left out
    assert "over 2 seeds" in card and "test dangerous compliance 0.09-0.13" in card
    assert "XSTest's safe prompts not allowed 0.20-0.30, its unsafe ones 0.50-0.50" in card
    mean_recipe = str(ROOT / "configs" / "gemma3-270m.yaml")  # the mean-pooled head the refit serves
    (tmp_path / "eval.json").write_text(json.dumps({"temperature": 2.0, "model": "checkpoints/so8t-mean/best",
                                                   "datasets": {"test": test}}))  # that recipe's own evaluation
    so8t(["card", "--config", mean_recipe, "--compare", "", *common])
    card = out.read_text(encoding="utf-8")
    assert "layers 0-11 frozen" in card and "SafetyHeadB (linear) on the final-norm states, mean-pooled" in card
    assert "Head refit not measured" in card or "refitted to each file's own states" in card

    # the head refit: before and after per file, and a refit measured on another training is named as such
    refit = {"test_rows": 40, "refit_rows": 100, "rungs": {
        "fp32": {"agreement_with_fp32": 1.0, "macro_f1": 0.45, "dangerous_compliance": 0.2},
        "q8_0": {"exported_head": {"agreement_with_fp32": 0.9, "macro_f1": 0.5, "dangerous_compliance": 0.3},
                 "refitted_head": {"agreement_with_fp32": 0.95, "macro_f1": 0.5, "dangerous_compliance": None},
                 "refit": {"pull": 0.001}}}}
    (tmp_path / "refit.json").write_text(json.dumps(refit))
    so8t(["card", "--config", mean_recipe, "--compare", "",
          "--refit", str(tmp_path / "refit.json"), *common])
    card = out.read_text(encoding="utf-8")
    assert "| Q8_0 | 0.900 | 0.950 | 0.300 | n/a | 0.001 |" in card
    assert "another training of this recipe (fp32 macro-F1 0.450 on its sample, against 0.500" in card
    refit["rungs"]["fp32"]["macro_f1"] = 0.5
    (tmp_path / "refit.json").write_text(json.dumps(refit))
    so8t(["card", "--config", mean_recipe, "--compare", "",
          "--refit", str(tmp_path / "refit.json"), *common])
    assert "another training" not in out.read_text(encoding="utf-8")
    so8t(["card", "--config", mean_recipe, "--compare", "",
          "--refit", str(tmp_path / "missing.json"), *common])
    assert "Head refit not measured: `" in out.read_text(encoding="utf-8")

    # operating points: the named recipe's entry (default the default's own evaluation), else said to be missing
    points = {"recipes": {"so8t-demo": {"chosen_on": "val", "rows_chosen_on": 90, "file": "p.preds.jsonl",
                                              "targets": {"0.05": {"reachable": True, "threshold": 0.57, "test": {
                                                  "dangerous_compliance": 0.083, "dangerous_compliance_ci": [0.06, 0.11],
                                                  "over_refusal_incl_escalate": 0.526, "escalation_rate": 0.503}},
                                                  "0.01": {"reachable": False, "why": "no threshold"}}}}}
    (tmp_path / "points.json").write_text(json.dumps(points))
    (tmp_path / "eval.json").write_text(json.dumps({"temperature": 2.0, "model": "checkpoints/so8t-demo/best",
                                                   "datasets": {"test": test}}))
    so8t(["card", "--config", str(ROOT / "configs" / "training.yaml"), "--compare", "",
          "--operating-points", str(tmp_path / "points.json"), *common])
    card = out.read_text(encoding="utf-8")
    assert "| 0.05 | 0.57 | 0.083 [0.06, 0.11] | 0.526 | 0.503 |" in card and "| 0.01 | unreachable |" in card
    assert "chosen on val (90 rows)" in card and "At 0.05 the test split lets more through" in card
    (tmp_path / "eval.json").write_text(json.dumps({"temperature": 2.0, "model": "checkpoints/so8t-tiny/best",
                                                   "datasets": {"test": test}}))  # each card its own model's
    so8t(["card", "--run", str(run), "--compare", "", "--operating-points", str(tmp_path / "points.json"),
          "--operating-points-recipe", "so8t-tiny", *common])
    assert "Not measured for `so8t-tiny`" in out.read_text(encoding="utf-8")

    follow_up = {"runs_ok": 4, "runs": 4, "steps": [40], "summary_csv": "s.csv", "baseline": "none",
                 "conclusion": "Gates made no measurable difference here.", "geometry": ""}
    (tmp_path / "follow.json").write_text(json.dumps(follow_up))
    so8t(["card", "--run", str(run), "--compare", "", "--follow-up", str(tmp_path / "follow.json"), *common])
    card = out.read_text(encoding="utf-8")
    assert "(4 runs of 40 steps, sweep summary `s.csv`, baseline `none`): Gates made no measurable" in card
    (tmp_path / "summary.csv").write_text("run\n")  # notebook 02's copy beside the result: the file a reader can open
    so8t(["card", "--run", str(run), "--compare", "", "--follow-up", str(tmp_path / "follow.json"), *common])
    assert f"sweep summary `{tmp_path / 'summary.csv'}`, baseline" in out.read_text(encoding="utf-8")


def test_model_card_names_a_config_it_cannot_read_and_writes_nothing(tmp_path, capsys):
    from so8t_lib.cli import main as so8t

    (tmp_path / "list.yaml").write_text("- 1\n", encoding="utf-8")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_bytes(b"\x97\xff not yaml")
    out = tmp_path / "CARD.md"
    common = ["--eval", str(tmp_path / "none.json"), "--out", str(out), "--figures", ""]
    for args, said in ((["--config", str(tmp_path / "list.yaml")], "list.yaml: the top level must be a mapping"),
                       (["--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
                       (["--run", str(tmp_path / "run")], "config.yaml: not UTF-8 text")):
        with pytest.raises(SystemExit) as exit_info:
            so8t(["card", *args, *common])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and said in err and "Traceback" not in err, err
    assert not out.exists()


def test_model_card_redraws_its_figures_from_the_committed_results(tmp_path):
    import pandas as pd

    from so8t_lib.workbench import ablation
    from so8t_lib.workbench.model_card import write_figures

    rows = [{"gate_order": o, "pet": p, "seed": s, "status": "ok", "metric.macro_f1": 0.5 + 0.01 * s}
            for o in ("safe_first", "none") for p in (True, False) for s in range(3)]
    table = ablation.analyze(pd.DataFrame(rows), ["macro_f1"])
    (tmp_path / "ablation.json").write_text(json.dumps({"table": json.loads(table.to_json(orient="records"))}))
    written = write_figures(ROOT / "experiments" / "eval" / "so8t-tiny.json",
                            ROOT / "benchmarks" / "results" / "gguf_decisions_cpu.json",
                            tmp_path / "ablation.json", tmp_path / "figures")
    assert sorted(p.name for p in written) == sorted(["eval_confusion.png", "eval_reliability.png", "eval_threshold.png", "eval_by_category.png", "eval_by_lang.png",
                "quant_ladder.png", "gate_ablation.png"])
    assert all(p.stat().st_size > 5000 for p in written)
    assert write_figures(tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json", tmp_path / "none") == []
