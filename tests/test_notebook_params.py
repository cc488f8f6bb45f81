"""A notebook parameter given with papermill's ``-p`` arrives as a string unless it reads as True/False, None or
a number: ``-p pet false`` was the truthy "false" (PET silently on), ``-p models dist/x.gguf`` a list of
characters. Each notebook's first cell after the parameters passes its flags, lists and counts through
``so8t_lib.workbench.notebook_params``; the library functions they reach refuse a flag that is no bool."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
from papermill.cli import _resolve_type  # how papermill -p turns the command line's text into a value

from so8t_lib.workbench.notebook_params import (
    ParameterError,
    as_count,
    as_flag,
    as_input_file,
    as_list,
    as_out_dir,
)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHECKS = {"as_flag", "as_list", "as_count"}


@pytest.mark.parametrize("text, expected", [("True", True), ("false", False), ("FALSE", False), ("no", False),
                                            ("Off", False), ("0", False), ("yes", True), ("on", True), ("1", True)])
def test_a_flag_given_with_p_means_what_it_says(text, expected):
    assert as_flag("pet", _resolve_type(text)) is expected


@pytest.mark.parametrize("value", ["maybe", "", 2, 1.0, None, []])
def test_a_flag_that_is_neither_on_nor_off_is_refused_by_name(value):
    with pytest.raises(ParameterError, match="parameter include_tests is an on/off flag"):
        as_flag("include_tests", value)


def test_one_string_is_a_list_of_one_item_and_other_types_are_refused_by_name():
    assert as_list("models", _resolve_type("dist/so8t-demo-q4_k_m.gguf")) == ["dist/so8t-demo-q4_k_m.gguf"]
    assert as_list("datasets", ["test", "sst"]) == ["test", "sst"] and as_list("quants", ()) == []
    assert as_list("quants", _resolve_type("None"), none_is_empty=True) == []  # 08's quants, 05's models
    for value in (3, None, {"a": 1}):
        with pytest.raises(ParameterError, match="parameter logs is a list"):
            as_list("logs", value)


def test_a_count_is_a_whole_number_from_its_lowest():
    assert as_count("bootstrap", 20) == 20 and as_count("bootstrap", "0") == 0
    for value in (-5, 1.5, True, "many", None):
        with pytest.raises(ParameterError, match="parameter bootstrap is a whole number, 0 or more"):
            as_count("bootstrap", value)
    with pytest.raises(ParameterError, match="1 or more"):
        as_count("bootstrap", 0, 1)


def _cells(path: Path, checks_named: set[str] = CHECKS) -> tuple[dict, list[ast.stmt]]:
    """The parameters' defaults, and the statements of the first cell after them that check parameters."""
    nb = nbformat.read(path, as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    defaults: dict = {}
    exec(nb.cells[at].source, defaults)  # literals only (tests/test_notebooks.py)
    first = next(c for c in nb.cells[at + 1:] if c.cell_type == "code")
    checks = [node for node in ast.parse(first.source).body
              if (isinstance(node, ast.ImportFrom) and node.module == "so8t_lib.workbench.notebook_params")
              or (isinstance(node, ast.Assign | ast.Expr | ast.If) and any(
                  isinstance(call, ast.Call) and getattr(call.func, "id", None) in checks_named
                  for call in ast.walk(node)))]
    return {k: v for k, v in defaults.items() if not k.startswith("__")}, checks


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_reads_p_flags_and_one_item_lists_as_meant(path):
    """Every flag given as ``-p name false`` is off and every list given as ``-p name x`` is ["x"] once the
    notebook's first cell has checked them (run here on their own, without the work the cell goes on to do)."""
    defaults, checks = _cells(path)
    given = {name: _resolve_type("false" if isinstance(v, bool) else "x")
             for name, v in defaults.items() if isinstance(v, bool | list)}
    namespace = {**defaults, **given}
    exec(compile(ast.Module(checks, []), str(path), "exec"), namespace)
    assert {name: namespace[name] for name in given} == {
        name: False if isinstance(defaults[name], bool) else ["x"] for name in given}
    if "bootstrap" in defaults:  # a negative count stops the notebook before the training or scoring before it
        with pytest.raises(ParameterError, match="parameter bootstrap"):
            exec(compile(ast.Module(checks, []), str(path), "exec"), {**defaults, "bootstrap": -5})


NEEDED_LISTS = {"logs", "datasets", "metrics", "requests"}  # an empty one ran to a report, table or figure of nothing


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if NEEDED_LISTS & set(_cells(p)[0])], ids=lambda p: p.name)
def test_an_empty_list_of_what_the_notebook_reads_is_refused_by_name(path):
    """`logs []` wrote a compliance report "verified (0 chains)" and let 08 take labels from the queue with no log
    verified; `datasets []`, `metrics []` and `requests []` ran to an empty table or a misleading error."""
    defaults, checks = _cells(path)
    for name in NEEDED_LISTS & set(defaults):
        with pytest.raises(ParameterError, match=f"parameter {name} needs at least 1 item"):
            exec(compile(ast.Module(checks, []), str(path), "exec"), {**defaults, name: []})


def test_an_output_folder_that_is_a_file_and_a_missing_input_are_named_before_any_work(tmp_path):
    (tmp_path / "afile.txt").write_text("x")
    assert as_out_dir("output_dir", tmp_path / "new" / "out") == tmp_path / "new" / "out"
    for path in (tmp_path / "afile.txt", tmp_path / "afile.txt" / "run"):
        with pytest.raises(ParameterError, match="parameter output_dir is an output folder, but .*afile.txt is a file"):
            as_out_dir("output_dir", path)
    assert as_input_file("summary_csv", tmp_path / "afile.txt", "run the sweep") == tmp_path / "afile.txt"
    with pytest.raises(ParameterError, match="parameter summary_csv: no file .*nope.csv; run the sweep first"):
        as_input_file("summary_csv", tmp_path / "nope.csv", "run the sweep first")


def test_run_config_refuses_a_pet_flag_that_is_not_a_bool_and_takes_one_override_string():
    from so8t_lib.train import run_config

    config = ROOT / "configs" / "tiny-training.yaml"
    with pytest.raises(TypeError, match="pet must be True or False, got 'false'"):
        run_config(config, "none", "false", 2, 0, "/tmp/unused", [])
    one = run_config(config, "none", False, 2, 0, "/tmp/unused", "training.batch_size=4")
    assert one.training.batch_size == 4 and one.loss.pet.enabled is False


PATH_CHECKS = {"as_out_dir", "as_input_file"}


def _checked_names(checks: list[ast.stmt], function: str) -> list[str]:
    """The parameter names a notebook's first cell passes to ``function`` (its first argument, a literal)."""
    return [call.args[0].value for node in checks for call in ast.walk(node)
            if isinstance(call, ast.Call) and getattr(call.func, "id", None) == function]


# each notebook's output folders and input files, as its first cell must check them (a check dropped fails here)
PATHS_CHECKED = {"00_quickstart": ({"output_dir"}, set()), "01_train_so8t": ({"output_dir"}, set()),
                 "02_gate_ablation": ({"output_dir", "figures_dir"}, {"summary_csv"}),
                 "03_quantization": ({"output_dir", "dist_dir", "figures_dir"}, set()),
                 "04_safety_eval": ({"output_dir", "figures_dir"}, set()), "08_retrain": ({"work"}, set())}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_each_notebook_names_an_output_folder_that_is_a_file_and_a_missing_input_before_any_work(path, tmp_path):
    """Run on the notebook's own first-cell lines: an output parameter given a path under a file, or an input
    file that is not there, stops there by name (not with a bare FileExistsError after the training or export)."""
    defaults, checks = _cells(path, CHECKS | PATH_CHECKS)
    first = next(c for c in nbformat.read(path, as_version=4).cells[1:] if c.cell_type == "code"
                 and "parameters" not in c.metadata.get("tags", []))
    imports = [node for node in ast.parse(first.source).body if isinstance(node, ast.Import | ast.ImportFrom)]
    code = compile(ast.Module(imports + checks, []), str(path), "exec")  # pd.read_csv(as_input_file(...))
    blocking = tmp_path / "a-file"
    blocking.write_text("x", encoding="utf-8")
    outputs, inputs = _checked_names(checks, "as_out_dir"), _checked_names(checks, "as_input_file")
    assert (set(outputs), set(inputs)) == PATHS_CHECKED.get(path.stem, (set(), set()))
    assert set(outputs + inputs) <= set(defaults)
    for name in outputs:
        with pytest.raises(ParameterError, match=f"parameter {name} is an output folder, but .*a-file is a file"):
            exec(code, {**defaults, name: str(blocking / "run")})
    for name in inputs:
        with pytest.raises(ParameterError, match=f"parameter {name}: no file .*missing.csv"):
            exec(code, {**defaults, name: str(tmp_path / "missing.csv")})

