"""so8t evaluate at its edges: one-class calibration data, a row the model fails on, collapsed intervals, bad
--data and output paths, the model measured, a threshold the runtime refuses, and macro-F1 on one class."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from so8t_lib.cli import evaluate as evaluate_cli
from so8t_lib.core.paths import CORPUS_DIR
from so8t_lib.data.tables import load_split
from so8t_lib.eval import calibration, evaluate
from so8t_lib.eval.exact_intervals import clopper_pearson
from so8t_lib.eval.report import safety_report

TOO_LONG = "x"  # a request the scripted model cannot take (as the GGUF backend cannot take one over its n_ctx)


class Decider:
    """Returns ``row`` for every request, records what it decided, and raises for a request holding TOO_LONG *
    1000 (a whole batch with it fails, as GGUFDecider's pass does)."""

    model_version = "scripted@2"

    def __init__(self, row=(0.1, 0.8, 0.1)):
        self.safety_head = SimpleNamespace(temperature=torch.tensor(1.0))
        self.row = np.asarray(row, dtype=float)
        self.calls: list[int] = []

    def decide(self, requests, contexts=None, batch_size=32, progress=False, return_logits=False, **_):
        self.calls.append(len(requests))
        if any(TOO_LONG * 1000 in r for r in requests):
            raise RuntimeError("a prompt has more tokens than n_ctx")
        return torch.tensor(np.tile(self.row, (len(requests), 1)), dtype=torch.float64)


@pytest.fixture
def cli(monkeypatch):
    """``so8t evaluate`` with a Decider standing in for the model; returns it."""
    decider = Decider()
    monkeypatch.setattr(evaluate_cli, "resolve_checkpoint", lambda path: Path(path))
    monkeypatch.setattr(evaluate_cli, "load_decider", lambda path: decider)
    return decider


def _write(tmp_path: Path, table: pd.DataFrame, name: str = "rows") -> Path:
    path = tmp_path / f"{name}.jsonl"
    table.to_json(path, orient="records", lines=True, force_ascii=False)
    return path


def _test_rows(label: str | None = None, n: int = 6) -> pd.DataFrame:
    table = load_split("test")
    return (table if label is None else table[table["label"] == label]).head(n).reset_index(drop=True)


def _refused(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exited:
        evaluate_cli.main(argv)
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    return err


# ----- 1. calibration data of one class -------------------------------------------------------------------------
def test_calibration_on_one_class_is_refused_before_anything_loads(cli, tmp_path, monkeypatch, capsys):
    """--calibration-data sst (REFUSE only) moved the temperature to its bound, stored it, and called it a gain."""
    stored: list = []
    monkeypatch.setattr(evaluate_cli, "calibrate_checkpoint", lambda *a, **k: stored.append(a))
    refuse_only = _write(tmp_path, _test_rows("REFUSE"))
    err = _refused(["--model", "ckpt", "--calibrate", "--calibration-data", str(refuse_only)], capsys)
    assert "ALLOW 0, REFUSE 6, ESCALATE 0" in err and "val" in err
    assert stored == [] and cli.calls == []
    with pytest.raises(calibration.CalibrationDataError, match="ALLOW 0"):  # the library refuses too, unloaded
        calibration.calibrate_checkpoint(tmp_path / "nowhere", refuse_only, progress=False)


def test_calibration_counts_what_the_model_is_shown():
    rows = load_split("test").groupby("label").head(2).reset_index(drop=True)
    assert calibration.check_calibration_rows(rows) == {"ALLOW": 2, "REFUSE": 2, "ESCALATE": 2}
    rows.loc[rows["label"] == "ESCALATE", "user_request"] = "\u200b"  # empty once cleaned: never shown
    with pytest.raises(calibration.CalibrationDataError, match="ESCALATE 0"):
        calibration.check_calibration_rows(rows)


# ----- 2. one row the model fails on ----------------------------------------------------------------------------
def test_a_row_the_model_fails_on_is_escalated_counted_and_named(cli, tmp_path):
    """One over-long request failed the GGUF pass of its batch, and evaluation died with a traceback."""
    table = _test_rows(n=5)
    table.loc[2, "user_request"] = TOO_LONG * 1000
    out, preds = tmp_path / "m.json", tmp_path / "p.jsonl"
    results = evaluate_cli.main(["--model", "ckpt", "--data", str(_write(tmp_path, table)), "--bootstrap", "0",
                                 "--batch-size", "2", "--out", str(out), "--predictions", str(preds)])
    report = results["datasets"]["rows"]
    assert report["model_error_rows"] == 1 and report["non_finite_rows"] == 0
    assert list(report["model_errors"]) == [table.loc[2, "id"]]
    lines = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    assert [line["decision"] for line in lines] == ["REFUSE", "REFUSE", "ESCALATE", "REFUSE", "REFUSE"]
    assert "n_ctx" in lines[2]["model_error"] and lines[2]["probabilities"] is None
    assert cli.calls == [5, 2, 2, 1, 1, 1]  # the whole pass, its batches, the failing batch's rows one by one


def test_a_model_that_fails_on_every_row_is_an_error():
    with pytest.raises(RuntimeError, match="n_ctx"):
        evaluate.predict_rows(Decider(), _test_rows(n=2).assign(user_request=TOO_LONG * 1000), progress=False)


# ----- 3. collapsed intervals -----------------------------------------------------------------------------------
def test_a_rate_at_zero_gets_an_exact_interval_over_the_resampled_units():
    """100 REFUSE rows, none let through: the bootstrap printed [0.000, 0.000]."""
    gold, pred = ["REFUSE"] * 100, ["REFUSE"] * 80 + ["ESCALATE"] * 20
    report = safety_report(gold, pred, bootstrap=100)
    assert report["ci"]["dangerous_compliance"] == pytest.approx([0.0, 1 - 0.025 ** (1 / 100)])
    assert report["ci"]["not_allowed_rate"] == pytest.approx([0.025 ** (1 / 100), 1.0])
    assert set(report["ci_exact_binomial"]) == {"dangerous_compliance", "not_allowed_rate"}
    assert report["ci"]["refuse_recall"][0] < 0.8 < report["ci"]["refuse_recall"][1]  # not degenerate: bootstrap
    families = [f"f{i // 10}" for i in range(100)]  # resampled as 10 families: 10 units, a wider interval
    by_family = safety_report(gold, pred, bootstrap=100, families=families)
    assert by_family["ci"]["dangerous_compliance"] == pytest.approx([0.0, clopper_pearson(0, 10)[1]])
    assert safety_report(gold, pred)["ci_exact_binomial"] is None  # no bootstrap, no intervals


def test_clopper_pearson_matches_the_closed_forms():
    assert clopper_pearson(0, 20) == pytest.approx((0.0, 1 - 0.025 ** (1 / 20)))
    assert clopper_pearson(20, 20) == pytest.approx((0.025 ** (1 / 20), 1.0))
    low, high = clopper_pearson(5, 20)
    assert 0.08 < low < 0.25 < high < 0.5


# ----- 4. bad --data, --batch-size 0 ----------------------------------------------------------------------------
@pytest.mark.parametrize("data", ["empty", "missing", "test:0", "duplicate"])
def test_bad_data_is_a_message_with_exit_2(cli, tmp_path, capsys, data):
    if data == "empty":
        data = str(tmp_path / "empty.jsonl")
        Path(data).write_text("", encoding="utf-8")
    elif data == "missing":
        data = str(tmp_path / "missing.jsonl")
    elif data == "duplicate":
        data = str(_write(tmp_path, pd.concat([_test_rows(n=1)] * 2), "dup"))
    assert _refused(["--model", "ckpt", "--data", data], capsys).startswith("so8t evaluate: error:")
    assert cli.calls == []


def test_batch_size_zero_is_refused_by_the_parser(cli, capsys):
    assert "--batch-size" in _refused(["--model", "ckpt", "--batch-size", "0"], capsys)


# ----- 5. output paths ------------------------------------------------------------------------------------------
def test_output_paths_are_checked_before_any_model_loads(cli, tmp_path, capsys, monkeypatch):
    loaded: list = []
    monkeypatch.setattr(evaluate_cli, "load_decider", lambda path: loaded.append(path))
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert "is a folder" in _refused(["--model", "ckpt", "--out", str(folder)], capsys)
    assert "is a folder" in _refused(["--model", "ckpt", "--out", str(tmp_path / "m.json"),
                                      "--predictions", str(folder)], capsys)
    (tmp_path / "file").write_text("", encoding="utf-8")
    assert "is a file" in _refused(["--model", "ckpt", "--out", str(tmp_path / "file" / "m.json")], capsys)
    rows = _write(tmp_path, _test_rows(n=3), "victim")  # the labelled rows: the results would replace them
    before = rows.read_bytes()
    for option in ("--predictions", "--out"):
        said = _refused(["--model", "ckpt", "--data", str(rows), option, str(rows)], capsys)
        assert f"{option} {rows} is the file --data {rows} reads" in said
    assert "is the file --calibration-data" in _refused(
        ["--model", "ckpt", "--calibrate", "--calibration-data", str(rows), "--out", str(rows)], capsys)
    split = str(CORPUS_DIR / "test.jsonl")  # what is scored when no --data is given
    assert "is the file --data test reads" in _refused(["--model", "ckpt", "--predictions", split], capsys)
    assert rows.read_bytes() == before and loaded == []


# ----- 6. the model measured ------------------------------------------------------------------------------------
def test_results_name_the_model_version(cli, tmp_path):
    results = evaluate_cli.main(["--model", "ckpt", "--data", str(_write(tmp_path, _test_rows(n=3))),
                                 "--bootstrap", "0"])
    assert results["model_version"] == "scripted@2" and "model_sha256" not in results


# ----- 7. a threshold the runtime refuses ------------------------------------------------------------------------
def test_a_threshold_below_the_runtime_range_is_refused(cli, capsys):
    assert "expected a number from 0.5 to 1.0" in _refused(["--model", "ckpt", "--threshold", "0.3"], capsys)
    assert cli.calls == []


# ----- 8. invalid input is not a broken model --------------------------------------------------------------------
def test_threshold_choice_counts_invalid_input_as_invalid_input(cli, tmp_path):
    val = load_split("test").groupby("label").head(3).reset_index(drop=True)
    val.loc[0, "user_request"] = "a" * 5600  # longer than the runtime's limit
    results = evaluate_cli.main(["--model", "ckpt", "--max-dangerous", "0.5", "--threshold-data",
                                 str(_write(tmp_path, val, "val")), "--data",
                                 str(_write(tmp_path, load_split("val").head(3), "other")), "--bootstrap", "0"])
    choice = results["threshold_choice"]
    assert choice["invalid_input_rows"] == 1 and choice["non_finite_rows"] == 0 and choice["model_error_rows"] == 0


# ----- 9. macro-F1 on one class ---------------------------------------------------------------------------------
def test_macro_f1_is_null_unless_every_gold_class_has_rows():
    one_class = safety_report(["REFUSE"] * 10, ["REFUSE"] * 8 + ["ALLOW"] * 2, bootstrap=20)
    assert one_class["macro_f1"] is None and one_class["ci"]["macro_f1"] == [None, None]
    three = safety_report(["ALLOW", "REFUSE", "ESCALATE"] * 3, ["ALLOW", "REFUSE", "REFUSE"] * 3)
    assert three["macro_f1"] is not None


# ----- 10. a negative number of resamples -------------------------------------------------------------------------
def test_a_negative_bootstrap_is_refused_before_anything_loads(cli, capsys):
    """--bootstrap -5 ran, recorded ci_resamples -5 beside no intervals, and the card then claimed "(-5 resamples)"
    intervals."""
    assert "--bootstrap: expected a whole number, 0 or more, got '-5'" in _refused(
        ["--model", "ckpt", "--bootstrap", "-5"], capsys)
    assert "got '2.5'" in _refused(["--model", "ckpt", "--bootstrap", "2.5"], capsys)
    assert cli.calls == []
    with pytest.raises(ValueError, match="bootstrap"):  # the library refuses too
        safety_report(["ALLOW"], ["ALLOW"], bootstrap=-5)


def test_one_data_set_or_rung_given_bare_is_one_not_its_letters():
    """A notebook parameter given with papermill's -p arrives as one string: load_tables("val") read the files
    'v', 'a' and 'l', and rung_names("Q8_0") made four rungs."""
    from so8t_lib.export.quantize import rung_names

    assert list(evaluate.load_tables("val")) == ["val"]
    assert rung_names("Q8_0") == ["Q8_0"] and rung_names("q8_0, F16") == ["Q8_0", "F16"]
