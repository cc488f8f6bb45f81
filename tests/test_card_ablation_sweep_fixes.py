"""Review mends for so8t card, the gate ablation's statistics and so8t sweep: each test is a case a user hit."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from so8t_lib.cli.card import main as card
from so8t_lib.core.config import read_config_mapping
from so8t_lib.workbench import model_card

ROOT = Path(__file__).resolve().parents[1]
NO_EXTRAS = ["--compare", "", "--refit", "", "--operating-points", "", "--seeds", "", "--figures", ""]


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the committed configs and results


def test_a_card_refuses_an_evaluation_of_another_model(tmp_path, capsys, in_repo):
    """`so8t card --config configs/tiny-training.yaml` printed the Gemma default's evaluation under the title
    "so8t-tiny": nothing checked that the result file was of the config's model."""
    out = tmp_path / "CARD.md"
    with pytest.raises(SystemExit) as exited:
        card(["--config", "configs/tiny-training.yaml", "--eval", "experiments/eval/so8t-demo.json", *NO_EXTRAS,
              "--out", str(out)])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and not out.exists()
    assert "experiments/eval/so8t-demo.json: evaluates 'checkpoints/so8t-demo/best', not so8t-tiny" in err
    # left out, --eval is the config's own model's evaluation; the documented tiny command still works
    card(["--config", "configs/tiny-training.yaml", *NO_EXTRAS, "--out", str(out)])
    text = out.read_text(encoding="utf-8")
    assert text.startswith("# Model card: so8t-tiny") and "`experiments/eval/so8t-tiny.json`" in text
    assert "Not measured for `so8t-tiny`" not in text  # --operating-points "": no section at all
    card(["--config", "configs/tiny-training.yaml", "--eval", "experiments/eval/so8t-tiny.json", "--quant",
          "benchmarks/results/gguf_decisions_cpu.json", *NO_EXTRAS, "--out", str(out)])
    assert "Command: `so8t train --config configs/tiny-training.yaml`." in out.read_text(encoding="utf-8")


def test_the_model_match_reads_run_folders_names_and_exported_files():
    from so8t_lib.workbench.card_inputs import names_model

    for evaluated in ("checkpoints/so8t-demo/best", "/abs/checkpoints/so8t-demo/last", "dist/so8t-demo-q4_k_m.gguf"):
        assert names_model(evaluated, "so8t-demo", "checkpoints/so8t-demo"), evaluated
    for evaluated in ("checkpoints/so8t-demo-seed1/best", "checkpoints/so8t-tiny/best", "dist/so8t-tiny-q8_0.gguf"):
        assert not names_model(evaluated, "so8t-demo", "checkpoints/so8t-demo"), evaluated
    assert names_model("runs/elsewhere/best", "so8t-demo", "runs/elsewhere")  # trained into another output_dir
    # another model whose file name starts with this one's: a type (q8_0, q4_k_m_t8) must follow, nothing else
    for evaluated, name in (("dist/so8t-demo-seed1-q4_k_m.gguf", "so8t-demo"),
                            ("dist/so8t-focus-depths-q4_k_m.gguf", "so8t-focus")):
        assert not names_model(evaluated, name, None), evaluated
    assert names_model("dist/so8t-focus-q4_k_m_t8.gguf", "so8t-focus", None)
    # a config that sets no output_dir: the tiny default's folder is not its own
    assert not names_model("checkpoints/so8t-tiny/best", "so8t-qwen2.5-7b", None)
    # a run folder moved since it was trained, named with --run: its own evaluations are taken
    assert names_model("/tmp/archive-2026-12/best", "so8t-tiny", "checkpoints/so8t-tiny", "/tmp/archive-2026-12")
    assert not names_model("/tmp/archive\x00/best", "so8t-tiny", "checkpoints/so8t-tiny", "/tmp/archive")  # no crash


def test_a_run_of_this_recipe_under_another_name_is_taken_when_said_and_the_card_says_so(tmp_path, capsys, in_repo):
    """The mean-head recipe's committed evaluation was made while it was the default (so8t-demo): refused, with no
    way to make its card."""
    out = tmp_path / "CARD.md"
    args = ["--config", "configs/gemma3-270m.yaml", "--eval", "experiments/eval/so8t-demo-mean-head.json",
            "--quant", "benchmarks/results/gguf_decisions_so8t-demo-mean-head.json", *NO_EXTRAS, "--out", str(out)]
    with pytest.raises(SystemExit):
        card(args)
    assert "pass --evaluated-as-this-recipe" in capsys.readouterr().err and not out.exists()
    card([*args, "--evaluated-as-this-recipe"])
    assert "results below are of `checkpoints/so8t-demo/best`: a run of this recipe" in out.read_text(encoding="utf-8")


def test_a_card_of_another_recipe_names_its_own_command_and_base(tmp_path, in_repo):
    """A card for configs/qwen2.5-7b-qlora.yaml said "A 270 M base ... on 2 CPU cores" and named
    `so8t train --config configs/training.yaml` as its command, whatever --config was."""
    out = tmp_path / "CARD.md"
    card(["--config", "configs/qwen2.5-7b-qlora.yaml", *NO_EXTRAS, "--out", str(out)])
    text = out.read_text(encoding="utf-8")
    assert "270 M" not in text and "2 CPU cores" not in text and "configs/training.yaml" not in text
    assert "Command: `so8t train --config configs/qwen2.5-7b-qlora.yaml`." in text
    assert "A `qwen2.5-7b` base, which the workbench did not train and measure itself" in text
    assert "Not measured: `experiments/eval/so8t-qwen2.5-7b.json` is missing" in text  # not the default's numbers
    card(["--config", "configs/training.yaml", *NO_EXTRAS, "--out", str(out)])  # the default keeps its words
    text = out.read_text(encoding="utf-8")
    assert "Command: `make demo` (`so8t demo`), or `so8t train --config configs/training.yaml`." in text
    assert "- A 270 M base, its SafetyHeadB fitted in minutes on 2 CPU cores" in text


def test_build_card_without_a_config_file_names_no_command_of_its_own(tmp_path):
    text = model_card.build_card({"model": {"name": "m", "preset": "tiny"}}, tmp_path / "e.json",
                                 tmp_path / "q.json", tmp_path / "a.json")
    assert "Command: `so8t train --config` with the config the run was trained with." in text
    (tmp_path / "e.json").write_text(json.dumps({"model": "checkpoints/other/best", "datasets": {}}))
    with pytest.raises(model_card.CardInputError, match="evaluates 'checkpoints/other/best', not m "):
        model_card.build_card({"model": {"name": "m"}}, tmp_path / "e.json", tmp_path / "q.json", tmp_path / "a.json")


def _summary(rows):
    import pandas as pd

    return pd.DataFrame(rows, columns=["run", "status", "gate_order", "pet", "seed", "metric.macro_f1"])


def test_a_sweep_without_a_non_commutative_order_draws_no_conclusion_about_one():
    """With only commuting beside none, the conclusion said "Non-commutative gating (safe_first, cmd_first) made
    no measurable difference", quoting commuting's p as theirs."""
    from so8t_lib.workbench import ablation

    rows = [[f"n{i}", "ok", "none", True, i, 0.50 + 0.01 * i] for i in range(5)] + \
           [[f"c{i}", "ok", "commuting", True, i, 0.52 + 0.013 * i * (-1) ** i] for i in range(5)]
    text = ablation.conclusion(ablation.analyze(_summary(rows), ["macro_f1"]))
    assert text.startswith("No non-commutative order (safe_first, cmd_first) was compared")
    assert "gate_order=commuting only" in text and "made no measurable difference" not in text
    rows += [[f"s{i}", "ok", "safe_first", True, i, 0.51 + 0.01 * i] for i in range(5)]  # one is: it is judged
    assert "Non-commutative gating (safe_first) made no measurable difference" in ablation.conclusion(
        ablation.analyze(_summary(rows), ["macro_f1"]))


@pytest.mark.parametrize(("kind", "text", "said"), [
    ("evaluation", '{"datasets": {"test": {"n": 10, "macro_f1": "0.8"}}}', "'datasets.test.macro_f1' is \"0.8\", not"),
    ("evaluation", '{"datasets": {"test": {"n": 10, "macro_f1": NaN}}}', "'datasets.test.macro_f1' is NaN, not"),
    ("evaluation", '{"datasets": {"test": {"n": null}}}', "'datasets.test.n' is null, not a finite number"),
    ("evaluation", '{"datasets": {"test": {"n": 9, "ci": {"ece": [NaN, 0.7]}}}}', "'datasets.test.ci.ece.0' is NaN"),
    ("evaluation", '{"temperature": null, "datasets": {}}', "'temperature' is null"),
    ("evaluation", '{"datasets": {"test": {"n": 9, "headline": [["ece"]]}}}', "'datasets.test.headline.0' is [\"ece\"]"),
    ("quantization", '{"results": [{"backend": "q4", "agreement_with_fp32": null, "decide_p50_ms": 3}]}',
     "'results.0.agreement_with_fp32' is null, not a finite number;"),
    ("quantization", '{"results": [{"backend": "q4", "agreement_with_fp32": 1, "decide_p50_ms": Infinity}]}',
     "'results.0.decide_p50_ms' is Infinity"),
    ("ablation", '{"finding": null}', "'finding' is null, not text"),
    ("follow-up ablation", '{"steps": 40, "conclusion": "x"}', "'steps' is 40, not a list or null"),
    ("operating points", '{"recipes": {"m": {"targets": {"0.05": {"reachable": true, "threshold": "0.5", "test": '
                         '{"dangerous_compliance": 0.1, "over_refusal_incl_escalate": 0.1, "escalation_rate": 0.1}}}}}}',
     "'recipes.m.targets.0.05.threshold' is \"0.5\""),
    ("operating points", '{"recipes": {"m": {"targets": {"five": {}}}}}', "target 'recipes.m.targets.five' is no number"),
    ("seed ensemble", '{"runs": {"a": {"argmax": {"test": {"dangerous_compliance": "low"}}}}}',
     "'runs.a.argmax.test.dangerous_compliance' is \"low\""),
])
def test_a_value_the_card_cannot_print_is_named_with_its_key(tmp_path, kind, text, said):
    """A key present with a string, a null or a NaN crashed the card with a traceback (exit 1), or printed "nan"."""
    (tmp_path / "r.json").write_text(text, encoding="utf-8")
    with pytest.raises(model_card.CardInputError, match="write it again") as refused:
        model_card._load(tmp_path / "r.json", kind)
    assert said in str(refused.value) and str(tmp_path / "r.json") in str(refused.value)


def test_the_card_command_refuses_a_null_value_with_exit_2_and_writes_nothing(tmp_path, capsys, in_repo):
    (tmp_path / "q.json").write_text('{"results": [{"backend": "q4", "agreement_with_fp32": null, '
                                     '"decide_p50_ms": 3.0}]}', encoding="utf-8")
    with pytest.raises(SystemExit) as exited:
        card(["--config", "configs/tiny-training.yaml", "--quant", str(tmp_path / "q.json"), *NO_EXTRAS,
              "--out", str(tmp_path / "CARD.md")])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in err and not (tmp_path / "CARD.md").exists()
    assert "'results.0.agreement_with_fp32' is null" in err


def test_a_difference_without_spread_names_its_sign_flip_p_and_shows_no_interval():
    """The same difference on every seed: the finding said "[+0.010, +0.010], paired t p = 0.062", though that
    p is the exact sign-flip test's (a t-test needs a spread) and the interval is no interval."""
    from so8t_lib.workbench import ablation

    rows = [[f"n{i}", "ok", "none", True, i, 0.5 + i / 100] for i in range(5)] + \
           [[f"s{i}", "ok", "safe_first", True, i, 0.51 + i / 100] for i in range(5)]
    text = ablation.finding(ablation.analyze(_summary(rows), ["macro_f1"]), "macro_f1")
    assert "difference +0.010 on every seed (interval n/a), exact sign-flip p = 0.062 (Holm 0.062)" in text
    assert "paired t p" not in text and "[+0.010, +0.010]" not in text
    rows[5:] = [[f"s{i}", "ok", "safe_first", True, i, 0.5 + i / 100 + 0.01 * (-1) ** i] for i in range(5)]
    text = ablation.finding(ablation.analyze(_summary(rows), ["macro_f1"]), "macro_f1")
    assert "paired t p =" in text and "sign-flip" not in text  # a spread: the t-test and its interval


def test_one_paired_seed_is_said_to_allow_no_test():
    """With one seed per configuration the conclusion said "the summary has no baseline runs on the same seeds",
    though the baseline ran on that seed: one pair allows no test."""
    from so8t_lib.workbench import ablation

    table = ablation.analyze(_summary([["a", "ok", "none", True, 0, 0.5], ["b", "ok", "safe_first", True, 0, 0.6]]),
                             ["macro_f1"])
    text = ablation.conclusion(table)
    assert "1 paired seed (n=1)" in text and "no baseline runs" not in text
    assert ablation.finding(table, "macro_f1") == ("gate_order=safe_first, pet=True: macro_f1 0.600 vs baseline, "
                                                   "difference +0.100 on 1 paired seed: n=1, no test possible.")
    other_seeds = _summary([["a", "ok", "none", True, 0, 0.5], ["b", "ok", "safe_first", True, 1, 0.6]])
    assert "no baseline runs on the same seeds" in ablation.conclusion(ablation.analyze(other_seeds, ["macro_f1"]))
    mixed = _summary([["a0", "ok", "none", True, 0, 0.5], ["a1", "ok", "none", True, 1, 0.52],
                      ["a2", "ok", "none", True, 2, 0.49], ["c0", "ok", "commuting", True, 0, 0.51],
                      ["c1", "ok", "commuting", True, 1, 0.5], ["c2", "ok", "commuting", True, 2, 0.5],
                      ["s0", "ok", "safe_first", True, 0, 0.6]])  # safe_first ran on one seed only
    text = ablation.conclusion(ablation.analyze(mixed, ["macro_f1"]))
    assert "No paired test of safe_first was possible: each has 1 paired seed" in text and "says nothing" not in text


@pytest.fixture
def sweep_folder(tmp_path, monkeypatch):
    import nbformat

    monkeypatch.chdir(tmp_path)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1\ny = 2\nseed = 0\noutput_dir = '.'", metadata={"tags": ["parameters"]})]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    return tmp_path


def test_a_run_name_too_long_for_a_folder_is_refused_when_the_spec_loads(sweep_folder, capsys):
    """A grid value of 300 characters passed --dry-run, then the sweep died with OSError (File name too long)."""
    from so8t_lib.cli import sweep as cli

    (sweep_folder / "s.yaml").write_text(f"name: a\nnotebook: nb.ipynb\ngrid: {{y: [1], x: [{'a' * 300}]}}\n")
    assert cli.main(["s.yaml", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "would be a folder name of 315 bytes, over the 255" in err and "shorten grid x's values" in err
    assert not (sweep_folder / "experiments").exists()
    (sweep_folder / "s.yaml").write_text(f"name: a\nnotebook: nb.ipynb\ngrid: {{x: [{'a' * 245}]}}\n")  # 255 bytes
    assert cli.main(["s.yaml", "--dry-run"]) == 0


@pytest.mark.parametrize("workers", ["0", "-3", "two"])
def test_workers_below_one_are_refused(sweep_folder, capsys, workers):
    """--workers 0 and -3 were taken silently and ran one run at a time (exit 0)."""
    from so8t_lib.cli import sweep as cli

    (sweep_folder / "s.yaml").write_text("name: a\nnotebook: nb.ipynb\n")
    with pytest.raises(SystemExit) as exited:
        cli.main(["s.yaml", "--workers", workers, "--dry-run"])
    assert exited.value.code == 2 and "--workers: expected a whole number, 1 or more" in capsys.readouterr().err


@pytest.mark.parametrize(("values", "said"), [("[1, 1.0]", "lists 1 and 1.0, the same number,"),
                                              ("[0.5, 5e-1]", "lists 0.5 twice"), ("[2, 3, 2]", "lists 2 twice")])
def test_a_grid_listing_one_number_twice_is_refused(sweep_folder, values, said):
    """The duplicate check compared JSON text, so x: [1, 1.0] ran one setting twice under two run names."""
    from so8t_lib.core.config import ConfigError
    from so8t_lib.workbench import sweep_spec

    (sweep_folder / "s.yaml").write_text(f"name: a\nnotebook: nb.ipynb\ngrid: {{x: {values}}}\n")
    with pytest.raises(ConfigError, match="grid x " + said.replace(".", r"\.")):
        sweep_spec.load_spec(sweep_folder / "s.yaml")


def test_true_and_false_are_kept_apart_from_one_and_zero(sweep_folder):
    from so8t_lib.workbench import sweep_spec

    (sweep_folder / "s.yaml").write_text("name: a\nnotebook: nb.ipynb\ngrid: {x: [true, 1, false, 0]}\n")
    assert [params["x"] for _, params in sweep_spec.load_spec(sweep_folder / "s.yaml").runs()] == [True, 1, False, 0]


def test_the_other_name_flag_on_an_evaluation_of_this_model_adds_no_such_claim(tmp_path, in_repo):
    """--evaluated-as-this-recipe on the default's own evaluation printed "a run of this recipe under another name"
    above so8t-demo's own numbers."""
    out = tmp_path / "CARD.md"
    card(["--config", "configs/training.yaml", *NO_EXTRAS, "--out", str(out), "--evaluated-as-this-recipe"])
    assert "under another name" not in out.read_text(encoding="utf-8")


def test_a_run_folder_given_by_its_absolute_path_is_named_relative_to_the_project(tmp_path, in_repo):
    """--run $PWD/build/run printed the author's home folder as the card's training command."""
    run = Path("build") / f"card-run-{tmp_path.name}"
    run.mkdir(parents=True)
    try:
        (run / "config.yaml").write_text(yaml.safe_dump(read_config_mapping("configs/training.yaml")))  # as trained
        out = tmp_path / "CARD.md"
        card(["--run", str(run.resolve()), *NO_EXTRAS, "--out", str(out)])
        assert f"Command: `so8t train --config {run.as_posix()}/config.yaml`." in out.read_text(encoding="utf-8")
    finally:
        shutil.rmtree(run)
