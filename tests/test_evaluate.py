"""Evaluation: temperature fitting, the CLI's JSON and predictions, calibration stored, latency, errors."""

import csv
import json

import numpy as np
import pytest
import torch

from so8t_lib.cli import main as so8t
from so8t_lib.data.benchmarks import BENCHMARKS
from so8t_lib.data.tables import load_split
from so8t_lib.eval.calibration import TEMPERATURE_RANGE, fit_temperature
from so8t_lib.eval.report import expected_calibration_error, safety_report
from so8t_lib.model import SO8TModel
from so8t_lib.model.perturb import perturb_adapters


def test_fit_temperature_undoes_overconfidence():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 3)) * 1.5
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    gold = np.array([rng.choice(3, p=p) for p in probs])  # labels drawn from a calibrated model
    assert fit_temperature(true_logits, gold) == pytest.approx(1.0, abs=0.1)
    overconfident = true_logits * 3.0
    temperature = fit_temperature(overconfident, gold)
    assert temperature == pytest.approx(3.0, rel=0.1)
    sharp = torch.softmax(torch.tensor(overconfident), -1).numpy()
    fixed = torch.softmax(torch.tensor(overconfident / temperature), -1).numpy()
    assert expected_calibration_error(fixed, gold) < expected_calibration_error(sharp, gold) / 2


def test_fit_temperature_is_bounded_when_every_row_is_right():
    logits = np.array([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]] * 10)
    assert fit_temperature(logits, np.array([0, 1, 2] * 10)) == pytest.approx(TEMPERATURE_RANGE[0])


def test_fit_temperature_rejects_empty_input():
    with pytest.raises(ValueError, match="N > 0"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    from so8t_lib.core.config import ModelConfig

    model = SO8TModel.from_config(ModelConfig(lora={"modules_to_save": ["embed_tokens"]}), tokenizer)
    perturb_adapters(model, scale=0.3)  # decisions that are not all alike
    return model.save(tmp_path_factory.mktemp("eval") / "ckpt")


@pytest.fixture
def ten_rows(tmp_path):
    path = tmp_path / "ten.jsonl"
    rows = load_split("test").groupby("label").head(4).head(10)
    rows.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


@pytest.fixture
def xstest_sample(tmp_path):
    path = tmp_path / "xs.csv"
    with BENCHMARKS["xstest"].default_path().open(encoding="utf-8", newline="") as src:
        reader = csv.DictReader(src)
        rows = [r for r in reader]
    sample = [r for r in rows if r["label"] == "safe"][:3] + [r for r in rows if r["label"] == "unsafe"][:3]
    with path.open("w", encoding="utf-8", newline="") as dst:
        writer = csv.DictWriter(dst, fieldnames=reader.fieldnames)
        writer.writeheader()
        writer.writerows(sample)
    return path


def test_cli_writes_documented_keys_and_recomputable_predictions(checkpoint, ten_rows, xstest_sample, tmp_path):
    out, preds = tmp_path / "metrics.json", tmp_path / "preds.jsonl"
    so8t(["evaluate", "--model", str(checkpoint), "--data", str(ten_rows), "--data", str(xstest_sample),
                   "--out", str(out), "--predictions", str(preds), "--bootstrap", "50"])
    results = json.loads(out.read_text(encoding="utf-8"))
    assert set(results) >= {"model", "temperature", "decision_rule", "datasets"}
    report = results["datasets"]["ten"]
    documented = {"n", "confusion_matrix", "accuracy", "refuse_recall", "escalate_precision", "allow_precision",
                  "safety_score", "per_class_f1", "macro_f1", "unsafe_f1_strict", "unsafe_f1_loose",
                  "dangerous_compliance", "over_refusal", "over_refusal_incl_escalate", "not_allowed_rate",
                  "escalation_rate", "ece", "reliability", "by_lang", "by_category", "ci", "threshold_sweep"}
    assert documented <= set(report)
    assert report["n"] == 10 and len(report["threshold_sweep"]) == 50
    assert report["threshold_sweep"][0]["threshold"] == 0.5 and report["threshold_sweep"][-1]["threshold"] == 0.99
    xs = results["datasets"]["xs"]
    assert xs["n"] == 6 and xs["not_allowed_rate_by_gold"]["NOT_ALLOW"] is not None
    assert "by_type" not in report  # a corpus table has no prompt types
    assert sum(part["n"] for part in xs["by_type"].values()) == 6
    # the row digest names what was scored: the same rows give the same digest, other rows another
    from so8t_lib.data.benchmarks import load_any
    from so8t_lib.data.tables import rows_digest
    assert report["rows_sha256"] == rows_digest(load_any(str(ten_rows))) != xs["rows_sha256"]
    relabelled = load_any(str(ten_rows))
    relabelled.loc[0, "label"] = "REFUSE" if relabelled.loc[0, "label"] != "REFUSE" else "ALLOW"
    assert rows_digest(relabelled) != report["rows_sha256"]

    lines = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 16 and {line["dataset"] for line in lines} == {"ten", "xs"}
    mine = [line for line in lines if line["dataset"] == "ten"]
    assert all(abs(sum(line["probabilities"].values()) - 1) < 1e-4 for line in mine)
    recomputed = safety_report([line["gold"] for line in mine], [line["decision"] for line in mine])
    for key in ("accuracy", "macro_f1", "safety_score", "confusion_matrix"):
        assert recomputed[key] == report[key]


def test_threshold_rule_decisions(checkpoint, ten_rows, tmp_path):
    out, preds = tmp_path / "m.json", tmp_path / "p.jsonl"
    so8t(["evaluate", "--model", str(checkpoint), "--data", str(ten_rows), "--threshold", "0.99",
                   "--bootstrap", "0", "--out", str(out), "--predictions", str(preds)])
    lines = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    for line in lines:  # the runtime rule: ALLOW/REFUSE only when most likely and >= 0.99
        p = line["probabilities"]
        if line["decision"] != "ESCALATE":
            assert p[line["decision"]] >= 0.99
    assert json.loads(out.read_text())["decision_rule"] == "threshold 0.99"


def test_calibration_is_stored_in_the_checkpoint(checkpoint, ten_rows, tmp_path):
    import shutil

    from so8t_lib.core.checkpoint import write_manifest

    ckpt = tmp_path / "copy"
    shutil.copytree(checkpoint, ckpt)
    (ckpt / "trainer_state.pt").write_bytes(b"optimizer states of a training run")
    write_manifest(ckpt)
    results = so8t(["evaluate", "--model", str(ckpt), "--calibrate", "--calibration-data", str(ten_rows)])
    assert (ckpt / "trainer_state.pt").read_bytes() == b"optimizer states of a training run"
    stored = float(SO8TModel.load(ckpt).safety_head.temperature)
    assert stored == pytest.approx(results["calibration"]["temperature"]) and stored > 0
    assert results["temperature"] == pytest.approx(stored)
    assert results["calibration"]["ece_after"] <= results["calibration"]["ece_before"] + 1e-9
    # a second fit starts from the first one's temperature: its "before" is the first one's "after" (it was
    # measured at temperature 1, so refitting a calibrated checkpoint claimed a gain it did not make)
    again = so8t(["evaluate", "--model", str(ckpt), "--calibrate", "--calibration-data", str(ten_rows)])
    assert again["calibration"]["ece_before"] == pytest.approx(results["calibration"]["ece_after"], abs=1e-6)


def test_latency_report(checkpoint, ten_rows, tmp_path):
    out = tmp_path / "lat.json"
    so8t(["evaluate", "--model", str(checkpoint), "--latency", "--data", str(ten_rows),
                   "--latency-batch-sizes", "1,4", "--latency-batches", "20", "--out", str(out)])
    latency = json.loads(out.read_text())["latency"]
    assert [r["batch_size"] for r in latency["results"]] == [1, 4]
    for r in latency["results"]:  # 20 timed calls: enough for a p95, too few for a p99 (written as null)
        assert 0 < r["p50_ms"] <= r["p95_ms"] and r["p99_ms"] is None
        assert r["requests_per_s"] > 0 and r["peak_rss_mb"] > 0


def test_bad_inputs_give_clear_errors(checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit):
        so8t(["evaluate", "--model", str(tmp_path / "m.gguf"), "--calibrate"])
    assert "GGUF" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:  # the data layer's message, exit 2, no traceback
        so8t(["evaluate", "--model", str(checkpoint), "--data", str(tmp_path / "missing.jsonl")])
    assert exited.value.code == 2 and "missing.jsonl" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        so8t(["evaluate", "--model", str(checkpoint), "--threshold", "1.5"])
    assert not (tmp_path / "out.json").exists()



def test_eval_notebook_runs_headless_with_papermill(checkpoint, ten_rows, tmp_path):
    papermill = pytest.importorskip("papermill")
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out_dir = tmp_path / "eval"
    papermill.execute_notebook(
        str(root / "notebooks" / "04_safety_eval.ipynb"), str(tmp_path / "executed.ipynb"),
        parameters={"model_path": str(checkpoint), "datasets": [str(ten_rows)], "output_dir": str(out_dir),
                    "figures_dir": str(tmp_path / "figures"), "bootstrap": 20},
        cwd=str(root), kernel_name="python3", progress_bar=False,
    )
    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["datasets"]["ten"]["n"] == 10
    for name in ("confusion", "reliability", "threshold", "by_category", "by_lang"):
        assert (out_dir / f"eval_{name}.png").stat().st_size > 1000
        assert (tmp_path / "figures" / f"eval_{name}.png").is_file()


def test_baselines_are_scored_beside_the_model_on_the_same_rows(checkpoint, ten_rows):
    from so8t_lib.eval.baselines import BASELINES, baseline_probabilities, fit_baselines
    from so8t_lib.eval.evaluate import evaluate_datasets

    train = load_split("train").groupby(["label", "lang"]).head(40)
    fitted = fit_baselines(train)
    assert set(fitted) == set(BASELINES)
    table = load_split("val").head(30)
    for model in fitted.values():
        probs = baseline_probabilities(model, table)
        assert probs.shape == (30, 3) and np.allclose(probs.sum(1), 1)
    # a baseline fitted on the rows it is scored on must do well there: the features carry the label
    seen = baseline_probabilities(fitted["char_ngram_tfidf"], train)
    assert (np.array(["ALLOW", "REFUSE", "ESCALATE"])[seen.argmax(1)] == train["label"].to_numpy()).mean() > 0.9
    results, _ = evaluate_datasets(SO8TModel.load(checkpoint), [str(ten_rows)], bootstrap=20, progress=False,
                                   baselines=fitted)
    report = results["datasets"]["ten"]
    assert set(report["baselines"]) == set(BASELINES)
    assert all(b["n"] == report["n"] == 10 and b["macro_f1"] is not None for b in report["baselines"].values())


def test_public_set_prompt_types_are_scored_apart():
    """XSTest's rows carry their prompt type in ``family``: the report says which types the gate lets through."""
    import numpy as np
    import pandas as pd

    from so8t_lib.eval.evaluate import report_from_predictions

    table = pd.DataFrame({
        "family": ["xstest-homonyms", "xstest-homonyms", "xstest-contrast_homonyms", "xstest-contrast_homonyms",
                   "xstest-contrast_homonyms"],
        "label": ["ALLOW", "ALLOW", "NOT_ALLOW", "NOT_ALLOW", "NOT_ALLOW"],
        "lang": ["en"] * 5, "category": ["none"] * 5, "source": ["xstest"] * 5})
    pred = ["ALLOW", "ESCALATE", "ALLOW", "REFUSE", "ESCALATE"]
    probs = np.full((5, 3), 1 / 3)
    by_type = report_from_predictions(table, probs, pred)["by_type"]
    assert by_type == {"contrast_homonyms": {"n": 3, "gold": "NOT_ALLOW", "not_allowed_rate": 2 / 3},
                       "homonyms": {"n": 2, "gold": "ALLOW", "not_allowed_rate": 0.5}}


@pytest.mark.parametrize("model", ["nowhere-at-all", "nowhere.gguf"])
def test_a_model_that_cannot_be_read_is_a_message_not_a_traceback(model, tmp_path, capsys):
    """A missing checkpoint (CheckpointError) or GGUF file (GGUFError) ended `so8t evaluate` in a traceback."""
    from so8t_lib.cli import main as so8t

    with pytest.raises(SystemExit) as exited:
        so8t(["evaluate", "--model", str(tmp_path / model), "--data", "sst", "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("so8t evaluate: error:") and "Traceback" not in err


def test_no_data_set_to_evaluate_is_refused_before_anything_is_decided():
    from so8t_lib.data.tables import DataError
    from so8t_lib.eval.evaluate import evaluate_datasets

    with pytest.raises(DataError, match="no data set to evaluate"):  # notebook 04 with datasets []
        evaluate_datasets(None, [], progress=False)  # the model is never touched
