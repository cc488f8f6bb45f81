"""Evaluation decides as the runtime serves: exact ties, non-finite probabilities and the text the model reads."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from so8t_lib.cli import evaluate as evaluate_cli
from so8t_lib.data.tables import load_split
from so8t_lib.eval import calibration, evaluate, quant_compare
from so8t_lib.eval.served import argmax_decisions, safe_argmax

TIES = np.array([[0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.45, 0.10, 0.45]])


class ScriptedDecider:
    """Returns the given probability rows in turn (cycling), and records the text it was asked to decide."""

    model_version = "scripted@1"

    def __init__(self, rows: np.ndarray):
        self.safety_head = SimpleNamespace(temperature=torch.tensor(1.0))
        self.rows = np.asarray(rows, dtype=float)
        self.requests: list[str] = []
        self.contexts: list[str | None] = []

    def decide(self, requests, contexts=None, batch_size=32, progress=False, **_):
        self.requests += list(requests)
        self.contexts += list(contexts if contexts is not None else [None] * len(requests))
        picks = np.arange(len(requests)) % len(self.rows)
        return torch.tensor(self.rows[picks], dtype=torch.float64)

    def generate(self, request, context=None, max_tokens=128, temperature=0.0):
        return "ok"


def _rows(n: int) -> pd.DataFrame:
    return load_split("test").head(n).reset_index(drop=True)


def _refuse_rows(tmp_path: Path, n: int, name: str = "refuse", skip: int = 0) -> Path:
    """A JSONL file of ``n`` gold-REFUSE rows of the test split (after the first ``skip``)."""
    path = tmp_path / f"{name}.jsonl"
    table = load_split("test")
    refuse = table[table["label"] == "REFUSE"].iloc[skip:skip + n]
    refuse.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


@pytest.fixture
def scripted_cli(monkeypatch):
    """``so8t evaluate`` with a ScriptedDecider standing in for the checkpoint; returns a setter for its rows."""
    holder: dict = {}

    def use(rows) -> ScriptedDecider:
        holder["decider"] = ScriptedDecider(np.asarray(rows, dtype=float))
        return holder["decider"]

    monkeypatch.setattr(evaluate_cli, "resolve_checkpoint", lambda path: Path(path))
    monkeypatch.setattr(evaluate_cli, "load_decider", lambda path: holder["decider"])
    return use


# ----- exact ties go to the safer class --------------------------------------------------------------------------
def test_exact_ties_go_to_the_safer_class():
    assert argmax_decisions(TIES) == ["REFUSE", "ESCALATE", "ESCALATE"]
    assert list(safe_argmax(np.array([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]]))) == [0, 2]  # no tie: plain argmax


def test_predict_breaks_ties_toward_the_safer_class():
    _, decisions = evaluate.predict(ScriptedDecider(TIES), _rows(3), progress=False)
    assert decisions == ["REFUSE", "ESCALATE", "ESCALATE"]


def test_baselines_break_ties_toward_the_safer_class(monkeypatch, tmp_path):
    class Tied:  # a fitted baseline that cannot tell the classes apart
        classes_ = np.array(["ALLOW", "ESCALATE", "REFUSE"])

        def predict_proba(self, texts):
            return np.full((len(texts), 3), 1 / 3)

    path = tmp_path / "three.jsonl"
    _rows(3).to_json(path, orient="records", lines=True, force_ascii=False)
    results, _ = evaluate.evaluate_datasets(ScriptedDecider(TIES), [str(path)], bootstrap=0, progress=False,
                                            baselines={"tied": Tied()})
    report = results["datasets"]["three"]["baselines"]["tied"]
    assert report["escalation_rate"] == 1.0  # every tie escalated, none allowed


def test_the_quantization_ladder_breaks_ties_toward_the_safer_class(monkeypatch, tmp_path):
    path = _refuse_rows(tmp_path, 3)
    _fake_ladder(monkeypatch, ScriptedDecider(np.array([[0.5, 0.5, 0.0]])))
    frame = quant_compare.compare("unused", [], data=str(path), generate_tokens=0)
    assert frame.loc[0, "dangerous_compliance"] == 0.0  # [0.5, 0.5, 0] is REFUSE, not ALLOW


def _fake_ladder(monkeypatch, decider) -> None:
    """quant_compare.compare with ``decider`` as the fp32 model and no timing, measured in this process (a fresh
    one would not see the stand-ins)."""
    monkeypatch.setattr(quant_compare, "run_isolated", lambda fn, *args: fn(*args))
    monkeypatch.setattr(quant_compare, "resolve_checkpoint", lambda path: Path(path))
    monkeypatch.setattr(quant_compare.SO8TModel, "load", staticmethod(lambda *a, **k: decider))
    monkeypatch.setattr(quant_compare, "_size_mib", lambda name, path: None)
    monkeypatch.setattr(quant_compare, "measure_latency", lambda *a, **k: {"results": [
        {"p50_ms": 1.0, "p95_ms": 1.0, "requests_per_s": 1.0, "peak_rss_mb": 1.0}]})


# ----- non-finite probabilities fail closed ----------------------------------------------------------------------
BROKEN = np.array([[np.nan, np.nan, np.nan], [0.2, 0.7, 0.1], [np.inf, 0.0, 0.0], [0.9, 0.05, 0.05]])


def _strict_json(line: str):
    def no_constant(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(line, parse_constant=no_constant)


def test_non_finite_rows_are_escalated_counted_and_printed(scripted_cli, tmp_path, capsys):
    """argmax of a NaN row is ALLOW; then safety_report raised on the NaN after every data set was decided."""
    path, out, preds = _refuse_rows(tmp_path, 8), tmp_path / "out.json", tmp_path / "preds.jsonl"
    scripted_cli(BROKEN)
    results = evaluate_cli.main(["--model", "fake", "--data", str(path), "--bootstrap", "20", "--out", str(out),
                                 "--predictions", str(preds)])
    report = results["datasets"]["refuse"]
    assert report["non_finite_rows"] == 4
    assert report["pred_counts"] == {"ALLOW": 2, "REFUSE": 2, "ESCALATE": 4}
    assert report["dangerous_compliance"] == pytest.approx(2 / 8)  # only the finite ALLOW rows
    assert "4 row(s) with probabilities that are not finite" in capsys.readouterr().out
    _strict_json(out.read_text(encoding="utf-8"))
    lines = [_strict_json(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    assert [line["probabilities"] is None for line in lines] == [True, False, True, False] * 2
    assert all(line["decision"] == "ESCALATE" for line in lines if line["probabilities"] is None)


def test_the_threshold_rule_and_its_choice_escalate_non_finite_rows(scripted_cli, tmp_path):
    path, val = _refuse_rows(tmp_path, 8), _refuse_rows(tmp_path, 4, "choose", skip=8)
    scripted_cli(BROKEN)
    results = evaluate_cli.main(["--model", "fake", "--data", str(path), "--bootstrap", "0", "--max-dangerous",
                                 "0.5", "--threshold-data", str(val)])
    assert results["threshold_choice"]["non_finite_rows"] == 2
    assert results["datasets"]["refuse"]["pred_counts"]["ESCALATE"] >= 4


def test_a_broken_rung_of_the_ladder_escalates_instead_of_allowing(monkeypatch, tmp_path):
    """A GGUF file whose probabilities are NaN read as "dangerous compliance 0.25" instead of as broken."""
    _fake_ladder(monkeypatch, ScriptedDecider(np.array([[np.nan, np.nan, np.nan], [np.nan, 0.5, 0.5],
                                                        [np.inf, 0.0, 0.0], [0.1, 0.8, 0.1]])))
    frame = quant_compare.compare("unused", [], data=str(_refuse_rows(tmp_path, 4)), generate_tokens=0)
    assert frame.loc[0, "dangerous_compliance"] == 0.0
    assert frame.loc[0, "non_finite_rows"] == 3


def test_a_row_past_a_backends_context_is_escalated_and_left_out_of_its_timings(monkeypatch, tmp_path):
    """The ladder called ``decide`` on every row at once: one request longer than a backend's context stopped the
    whole comparison (and the latency runs would have stopped on it too)."""
    from so8t_lib.model.prompts import PromptTooLong

    path = _refuse_rows(tmp_path, 6)
    table = pd.read_json(path, lines=True)
    table.loc[2, "request"] = "long " * 50
    table.to_json(path, orient="records", lines=True, force_ascii=False)

    class Limited(ScriptedDecider):
        def decide(self, requests, contexts=None, batch_size=32, progress=False, **_):
            if any(len(r) > 200 for r in requests):
                raise PromptTooLong("prompt of 251 tokens, past the model's context of 200")
            return super().decide(requests, contexts)

    _fake_ladder(monkeypatch, Limited(np.array([[0.1, 0.8, 0.1]])))
    timed = []
    monkeypatch.setattr(quant_compare, "measure_latency", lambda decider, requests, *a, **k: timed.append(
        list(requests)) or {"results": [{"p50_ms": 1.0, "p95_ms": 1.0, "requests_per_s": 1.0, "peak_rss_mb": 1.0}]})
    frame = quant_compare.compare("unused", [], data=str(path), generate_tokens=0)
    assert frame.loc[0, "model_error_rows"] == 1 and frame.loc[0, "non_finite_rows"] == 0
    assert frame.loc[0, "dangerous_compliance"] == 0.0  # the five decided rows are REFUSE, the long one ESCALATE
    assert len(timed) == 2 and all(len(requests) == 5 and table.loc[2, "request"] not in requests
                                   for requests in timed)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_temperature_is_not_fitted_on_non_finite_logits(bad):
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]] * 4)
    logits[5, 1] = bad
    with pytest.raises(ValueError, match="1 of 12 rows have logits that are not finite"):
        calibration.fit_temperature(logits, np.array([0, 1, 2] * 4))


def test_a_temperature_that_is_not_finite_is_never_stored(monkeypatch, tmp_path):
    """fit_temperature returned NaN for one inf logit and calibrate_checkpoint wrote it into the adapter file."""
    from safetensors.torch import save_file

    folder = tmp_path / "ckpt"
    folder.mkdir()
    adapter = folder / calibration.ADAPTER_FILE
    save_file({"safety_head.temperature": torch.tensor(1.5)}, str(adapter))
    before = adapter.read_bytes()

    class Logits(ScriptedDecider):
        def decide(self, requests, contexts=None, batch_size=32, progress=False, return_logits=False):
            return super().decide(requests, contexts)

    monkeypatch.setattr(calibration, "resolve_checkpoint", lambda path: Path(path))
    monkeypatch.setattr(calibration.SO8TModel, "load", staticmethod(lambda *a, **k: Logits(
        np.array([[np.inf, 0.0, 0.0], [1.0, 2.0, 0.5], [0.0, 1.0, 3.0]]))))
    path = tmp_path / "rows.jsonl"  # two rows of each class: calibration refuses fewer classes before deciding
    load_split("test").groupby("label").head(2).to_json(path, orient="records", lines=True, force_ascii=False)
    with pytest.raises(ValueError, match="not finite"):
        calibration.calibrate_checkpoint(folder, path, progress=False)
    monkeypatch.setattr(calibration, "fit_temperature", lambda logits, gold: float("nan"))
    monkeypatch.setattr(calibration.SO8TModel, "load", staticmethod(lambda *a, **k: Logits(
        np.array([[1.0, 0.0, 0.0], [1.0, 2.0, 0.5], [0.0, 1.0, 3.0]]))))
    with pytest.raises(ValueError, match="not a finite number > 0 in float32.s range; nothing was stored"):
        calibration.calibrate_checkpoint(folder, path, progress=False)
    assert adapter.read_bytes() == before


# ----- the model reads the runtime's text ------------------------------------------------------------------------
WIDTH_ROWS = ("ask-en-011-fullwidth", "ask-ja-001-alt1", "ask-ja-001-mixed_width", "ask-ja-001-context")


def _width_table() -> pd.DataFrame:
    """Test-split rows the runtime's cleaning changes (full-width Latin, '？', half-width katakana, a full-width
    context) and one the table keeps but the runtime refuses (nothing left after removing invisible characters)."""
    table = load_split("test")
    table = table[table["id"].isin(WIDTH_ROWS)].reset_index(drop=True)
    hollow = table.iloc[[0]].assign(id="hollow", user_request="\u200b\u2060\u200b", context="")
    return pd.concat([table, hollow], ignore_index=True)


def _runtime_agent(tmp_path: Path, decider):
    from so8t_lib.serve.config import RuntimeConfig
    from so8t_lib.serve.runtime import Agent

    config = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "inference": {"safety_threshold": 0.8, "generate_responses": False},
        "logging": {"audit_log": str(tmp_path / "logs" / "audit.jsonl")},
        "escalation": {"queue_db": str(tmp_path / "logs" / "escalations.sqlite"), "enable_notifications": False},
    })
    return Agent(config, decider=decider)


def test_predict_hands_the_model_what_the_runtime_hands_it(tmp_path):
    """so8t evaluate decided the raw table text while the runtime decides NFKC-cleaned text: 916 of the 2,670 test
    rows differ (full-width Latin, '？', half-width katakana), so the numbers described inputs never served."""
    table = _width_table()
    assert any("Ｈｏｗ" in r for r in table["user_request"]) and any("ｶﾒﾗ" in r for r in table["user_request"])
    evaluated, served = ScriptedDecider(np.array([[0.05, 0.9, 0.05]])), ScriptedDecider(np.array([[0.05, 0.9, 0.05]]))
    _, decisions = evaluate.predict(evaluated, table, progress=False)
    with _runtime_agent(tmp_path, served) as agent:
        results = [agent.run_agent(c or None, r) for r, c in zip(table["user_request"], table["context"])]
    assert evaluated.requests == served.requests and evaluated.contexts == served.contexts
    assert len(served.requests) == len(table) - 1  # the hollow row reaches neither model
    assert "How do I get into someone else's car" in evaluated.requests[0] and "カメラ" in evaluated.requests[2]
    assert decisions == [r["decision"] for r in results] == ["REFUSE"] * 4 + ["ESCALATE"]
    assert "invalid input" in results[-1]["error"]


def test_the_report_counts_rows_the_runtime_refuses(tmp_path):
    from so8t_lib.eval.evaluate import format_report

    path = tmp_path / "width.jsonl"
    _width_table().to_json(path, orient="records", lines=True, force_ascii=False)
    results, lines = evaluate.evaluate_datasets(ScriptedDecider(np.array([[0.9, 0.05, 0.05]])), [str(path)],
                                                bootstrap=0, progress=False)
    report = results["datasets"]["width"]
    assert report["invalid_input_rows"] == 1 and report["non_finite_rows"] == 0
    assert report["pred_counts"] == {"ALLOW": 4, "REFUSE": 0, "ESCALATE": 1}
    assert "1 row(s) the runtime refuses as invalid input" in format_report(report)
    hollow = _strict_json(lines[-1])
    assert hollow["probabilities"] is None and "user_request is empty" in hollow["invalid_input"]


def test_every_evaluation_path_hands_the_model_the_runtime_text(monkeypatch, tmp_path):
    """Calibration, the quantization ladder, the head refit's teacher and --latency read the runtime's text too."""
    from so8t_lib.eval import quant_refit
    from so8t_lib.eval.served import model_inputs

    table = _width_table()
    path = tmp_path / "width.jsonl"
    table.to_json(path, orient="records", lines=True, force_ascii=False)
    expected = model_inputs(table)
    assert expected.requests != list(table["user_request"])[:4]

    class Logits(ScriptedDecider):
        def decide(self, requests, contexts=None, batch_size=32, progress=False, return_logits=False):
            return super().decide(requests, contexts)

    calibrated = Logits(np.array([[0.1, 2.0, 0.1]]))
    calibration.calibrate(calibrated, table, progress=False)
    assert calibrated.requests == expected.requests and calibrated.contexts == expected.contexts

    laddered = ScriptedDecider(np.array([[0.1, 0.8, 0.1]]))
    _fake_ladder(monkeypatch, laddered)
    frame = quant_compare.compare("unused", [], data=str(path), generate_tokens=0)
    assert laddered.requests == expected.requests and frame.loc[0, "invalid_input_rows"] == 1

    teacher, refitted = ScriptedDecider(np.array([[0.1, 0.8, 0.1]])), {}
    monkeypatch.setattr(quant_refit, "load_split", lambda split, data_dir: table)
    monkeypatch.setattr(quant_refit, "refit_gguf", lambda path, requests, contexts, target, progress, provenance:
                        refitted.update(requests=requests, contexts=contexts) or
                        {"refitted": False, "holdout_agreement_exported_head": 1.0,
                         "holdout_agreement_by_pull": {0.5: 1.0}, "rows": len(requests)})
    rung = tmp_path / "x-q8_0.gguf"
    rung.write_bytes(b"gguf")
    quant_refit.refit_rungs("unused", {"q8_0": rung}, rows=10, progress=False, teacher=teacher)
    assert teacher.requests == refitted["requests"] == expected.requests
    assert refitted["contexts"] == expected.contexts

    timed: list[list[str]] = []
    monkeypatch.setattr(evaluate_cli, "resolve_checkpoint", lambda p: Path(p))
    monkeypatch.setattr(evaluate_cli, "load_decider", lambda p: ScriptedDecider(np.array([[0.1, 0.8, 0.1]])))
    monkeypatch.setattr(evaluate_cli, "measure_latency", lambda model, requests, sizes, **_: timed.append(requests) or
                        {"results": []})
    evaluate_cli.main(["--model", "fake", "--latency", "--data", str(path)])
    assert timed == [expected.requests]


# ----- every table is read before the first decision ------------------------------------------------------------
def _bad_table(tmp_path: Path) -> Path:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"user_request": "Where is the travel policy?", "label": "MAYBE"}\n', encoding="utf-8")
    return path


def test_a_bad_data_entry_is_refused_before_anything_is_decided(scripted_cli, tmp_path, monkeypatch, capsys):
    """A bad last --data entry was read only after every earlier data set had been decided, and --out (written at
    the end) got nothing; with --calibrate the checkpoint had already been changed. The data layer's message ends
    the command with exit 2, not a traceback."""
    def refused(argv: list[str], message: str) -> None:
        with pytest.raises(SystemExit) as exited:
            evaluate_cli.main(argv)
        assert exited.value.code == 2 and message in capsys.readouterr().err

    decider = scripted_cli(np.array([[0.1, 0.8, 0.1]]))
    good, bad, out = _refuse_rows(tmp_path, 4), _bad_table(tmp_path), tmp_path / "out.json"
    refused(["--model", "fake", "--data", str(good), "--data", str(bad), "--out", str(out)],
            "bad.jsonl:1: field 'label'")
    assert decider.requests == [] and not out.exists()

    calibrated: list = []
    monkeypatch.setattr(evaluate_cli, "calibrate_checkpoint", lambda *a, **k: calibrated.append(a))
    refused(["--model", "fake", "--calibrate", "--calibration-data", str(good), "--data", str(bad)], "bad.jsonl")
    refused(["--model", "fake", "--max-dangerous", "0.1", "--threshold-data", str(bad), "--data", str(good)],
            "bad.jsonl")
    assert calibrated == [] and decider.requests == []


def test_threshold_data_without_harmful_rows_is_refused_before_deciding(scripted_cli, tmp_path):
    decider = scripted_cli(np.array([[0.1, 0.8, 0.1]]))
    table = load_split("test")
    safe = tmp_path / "safe.jsonl"
    table[table["label"] == "ALLOW"].head(3).to_json(safe, orient="records", lines=True, force_ascii=False)
    with pytest.raises(SystemExit, match="no REFUSE request"):
        evaluate_cli.main(["--model", "fake", "--max-dangerous", "0.1", "--threshold-data", str(safe),
                           "--data", str(_refuse_rows(tmp_path, 3))])
    assert decider.requests == []


# ----- no report on the rows a threshold or a temperature was fitted on ---------------------------------------
@pytest.mark.parametrize("argv, option, count", [
    (["--max-dangerous", "0.1", "--threshold-data", "val:600", "--data", "val"], "--threshold-data val:600", 600),
    (["--calibrate", "--calibration-data", "test", "--data", "test"], "--calibration-data test", 2670),
    (["--calibrate", "--calibration-data", "test:40", "--data", "xstest", "--data", "test"],
     "--calibration-data test:40", 40),
])
def test_reporting_on_the_rows_fitted_on_is_refused_by_id(scripted_cli, monkeypatch, capsys, argv, option, count):
    """The guard compared names (val:600 and val passed), and --calibrate fitted the temperature on the very rows
    it then reported on with no guard at all."""
    decider = scripted_cli(np.array([[0.1, 0.8, 0.1]]))
    calibrated: list = []
    monkeypatch.setattr(evaluate_cli, "calibrate_checkpoint", lambda *a, **k: calibrated.append(a))
    with pytest.raises(SystemExit) as exit_:
        evaluate_cli.main(["--model", "fake", "--bootstrap", "0", *argv])
    assert exit_.value.code == 2
    assert f"{option} shares {count} row(s) with --data" in capsys.readouterr().err
    assert decider.requests == [] and calibrated == []


def test_other_rows_of_the_same_file_name_may_be_reported(scripted_cli, tmp_path):
    """Two files named val.jsonl in different folders hold different rows: the ids, not the names, decide."""
    table = load_split("test")
    choose, report = tmp_path / "a" / "val.jsonl", tmp_path / "b" / "val.jsonl"
    for path, part in ((choose, table.head(40)), (report, table.tail(40))):
        path.parent.mkdir()
        part.to_json(path, orient="records", lines=True, force_ascii=False)
    scripted_cli(np.array([[0.1, 0.8, 0.1]]))
    results = evaluate_cli.main(["--model", "fake", "--bootstrap", "0", "--max-dangerous", "0.5",
                                 "--threshold-data", str(choose), "--data", str(report)])
    assert results["datasets"]["val"]["n"] == 40


def test_id_less_files_are_told_apart_by_what_they_ask_and_copies_under_new_ids_are_not(scripted_cli, tmp_path,
                                                                                        capsys):
    """Rows without ids are named ``<stem>:<line>``: two different id-less ``val.csv`` files shared every id and
    were refused, while the same rows copied under new ids passed. What the rows ask decides now."""
    table = load_split("test")[["user_request", "context", "label", "category"]]
    choose, report, copy = tmp_path / "a" / "val.csv", tmp_path / "b" / "val.csv", tmp_path / "copy.csv"
    for path, part in ((choose, table.head(30)), (report, table.tail(30)), (copy, table.head(30))):
        path.parent.mkdir(exist_ok=True)
        part.to_csv(path, index=False)
    scripted_cli(np.array([[0.1, 0.8, 0.1]]))
    results = evaluate_cli.main(["--model", "fake", "--bootstrap", "0", "--max-dangerous", "0.5",
                                 "--threshold-data", str(choose), "--data", str(report)])
    assert results["datasets"]["val"]["n"] == 30
    with pytest.raises(SystemExit) as exit_:
        evaluate_cli.main(["--model", "fake", "--bootstrap", "0", "--max-dangerous", "0.5",
                           "--threshold-data", str(choose), "--data", str(copy)])
    assert exit_.value.code == 2 and f"--threshold-data {choose} shares 30 row(s)" in capsys.readouterr().err
