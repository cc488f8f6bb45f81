"""so8t card on a broken result file: exit 2 with the file and the key named, and nothing written. It redrew
every figure and then ended in a traceback (invalid JSON, an ablation.json without "finding")."""

import json
from pathlib import Path

import pytest

from so8t_lib.cli.card import main as card
from so8t_lib.workbench import model_card

ROOT = Path(__file__).resolve().parents[1]


def _refused(tmp_path, capsys, *args: str) -> str:
    """Run the card with ``args`` over the committed results; returns stderr after checking nothing was written."""
    with pytest.raises(SystemExit) as exited:
        card(["--config", "configs/tiny-training.yaml", "--compare", "", "--refit", "", "--operating-points", "",
              "--seeds", "", "--follow-up", str(tmp_path / "none.json"), *args,
              "--out", str(tmp_path / "CARD.md"), "--figures", str(tmp_path / "figures")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err
    assert not (tmp_path / "CARD.md").exists() and not (tmp_path / "figures").exists(), "nothing written"
    return err


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
    monkeypatch.chdir(ROOT)  # the committed results the other sources default to


def test_a_result_file_that_is_not_json_is_named_before_any_figure_is_drawn(tmp_path, capsys):
    (tmp_path / "eval.json").write_text('{"datasets": {"test": ', encoding="utf-8")
    err = _refused(tmp_path, capsys, "--eval", str(tmp_path / "eval.json"))
    assert f"{tmp_path / 'eval.json'}: not readable JSON" in err and "so8t evaluate" in err
    (tmp_path / "eval.json").write_text("[1, 2]", encoding="utf-8")
    assert f"{tmp_path / 'eval.json'}: holds no JSON object" in _refused(tmp_path, capsys, "--eval", str(tmp_path / "eval.json"))


def test_an_ablation_without_its_finding_is_named_with_the_key(tmp_path, capsys):
    ablation = json.loads((ROOT / "experiments/ablation/ablation.json").read_text(encoding="utf-8"))
    del ablation["finding"]
    (tmp_path / "ablation.json").write_text(json.dumps(ablation), encoding="utf-8")
    err = _refused(tmp_path, capsys, "--ablation", str(tmp_path / "ablation.json"))
    assert f"{tmp_path / 'ablation.json'}: has no key 'finding'" in err and "notebook 02" in err


def test_nested_keys_the_card_and_its_figures_read_are_named_by_their_place(tmp_path, capsys):
    quant = json.loads((ROOT / "benchmarks/results/gguf_decisions_cpu.json").read_text(encoding="utf-8"))
    del quant["results"][1]["agreement_with_fp32"]
    (tmp_path / "quant.json").write_text(json.dumps(quant), encoding="utf-8")
    err = _refused(tmp_path, capsys, "--quant", str(tmp_path / "quant.json"))
    assert "has no key 'results.1.agreement_with_fp32'" in err
    (tmp_path / "eval.json").write_text(json.dumps({"datasets": {"test": {"n": 3}}}), encoding="utf-8")
    assert "has no key 'datasets.test.confusion_matrix'" in _refused(tmp_path, capsys, "--eval", str(tmp_path / "eval.json"))
    (tmp_path / "eval.json").write_text(json.dumps({"datasets": {"test": {"n": 3}, "xstest": {}}}), encoding="utf-8")
    with pytest.raises(model_card.CardInputError, match=r"has no key 'datasets\.xstest\.n'"):  # the card's own reads
        model_card._load(tmp_path / "eval.json", "evaluation")
    points = {"recipes": {"demo": {"targets": {"0.05": {"reachable": True, "test": {"dangerous_compliance": 0.1}}}}}}
    (tmp_path / "points.json").write_text(json.dumps(points), encoding="utf-8")
    with pytest.raises(model_card.CardInputError, match=r"has no key 'recipes\.demo\.targets\.0\.05\.threshold'"):
        model_card._load(tmp_path / "points.json", "operating points")


def test_the_committed_results_pass_the_checks(tmp_path):
    """The card of the committed results is still built (tests/test_notebooks.py checks its content)."""
    names = [f.name for f in model_card.figure_files(ROOT / "experiments/eval/so8t-demo.json",
                                                     ROOT / "benchmarks/results/gguf_decisions_so8t-demo.json",
                                                     ROOT / "experiments/ablation/ablation.json", tmp_path)]
    assert names == list(model_card.CARD_FIGURES) and not any(tmp_path.iterdir())
