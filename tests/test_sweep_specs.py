"""Sweep specs: a value that would fail a run later, write outside the runs root or overwrite a summary
column is refused when the spec loads, naming the file and the key (``so8t sweep``: exit 2)."""

import nbformat
import pytest

from so8t_lib.cli import sweep as cli
from so8t_lib.core.config import ConfigError
from so8t_lib.workbench import sweep, sweep_spec


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 1\nseed = 0\noutput_dir = '.'\noverrides = []\nm = {}\nlr = 0.1\n"
                                          "tag = None\nstatus = run = day = None", metadata={"tags": ["parameters"]})]
    nbformat.write(nb, tmp_path / "nb.ipynb")
    (tmp_path / "notjson.ipynb").write_text("not json")
    return tmp_path


@pytest.mark.parametrize("text, message", [
    ("name: ../ablation\nnotebook: nb.ipynb\n", "name '../ablation' must be one folder name"),
    ("name: /tmp/elsewhere\nnotebook: nb.ipynb\n", "must be one folder name"),
    ("name: .\nnotebook: nb.ipynb\n", r"not '\.' or '\.\.'"),
    ("name: {a: 1}\nnotebook: nb.ipynb\n", "must be one folder name"),
    ("name: a\nnotebook: [nb.ipynb]\n", "notebook must be one path"),
    ("name: a\nnotebook: notjson.ipynb\n", "notjson.ipynb is not a Jupyter notebook"),
    ("name: a\nnotebook: nb.ipynb\nparams: [1, 2]\n", "params must be a mapping"),
    ("name: a\nnotebook: nb.ipynb\nparams: {seed: 7}\n", "'seed' is set by the sweep"),
    ("name: a\nnotebook: nb.ipynb\nparams: {output_dir: /etc}\n", "'output_dir' is set by the sweep"),
    ("name: a\nnotebook: nb.ipynb\nparams: {day: 2024-01-01}\n", "params day: datetime.date"),
    ("name: a\nnotebook: nb.ipynb\nparams: {x: 5}\ngrid: {x: [1]}\n", "x is in both params and grid"),
    ("name: a\nnotebook: nb.ipynb\ngrid: [x]\n", "grid must be a mapping"),
    ("name: a\nnotebook: nb.ipynb\ngrid: {day: [2024-01-01]}\n", "grid day: datetime.date"),
    ("name: a\nnotebook: nb.ipynb\ngrid: {x: [0, 0]}\n", "grid x lists 0 twice"),
    ("name: a\nnotebook: nb.ipynb\ngrid: {status: [ok]}\n", "overwrite summary.csv's own 'status'"),
    ("name: a\nnotebook: nb.ipynb\ngrid: {run: [r1]}\n", "overwrite summary.csv's own 'run'"),
    ("name: a\nnotebook: nb.ipynb\ngrid: {1: [a]}\n", "grid key 1 is not a parameter name"),
    ("name: a\nnotebook: nb.ipynb\ngrid: {gate_ordr: [a, b]}\n", r"\['gate_ordr'\] is not parameter\(s\) of nb.ipynb"),
    ("name: a\nnotebook: nb.ipynb\nparams: {x: 1, y: 2}\n", r"\['y'\] is not parameter\(s\).*assigns \['day'"),
    ("name: a\nnotebook: nb.ipynb\nseeds: []\n", "seeds must be a non-empty list"),
    ("name: a\nnotebook: nb.ipynb\nseeds: [true, false]\n", "seeds must be"),
    ("name: a\nnotebook: nb.ipynb\nseeds: [99999999999999999999999]\n", "seeds must be"),
    ("name: a\nnotebook: nb.ipynb\nseeds: [0, 0]\n", "seeds lists 0 twice"),
    ("name: a\nnotebook: nb.ipynb\nkernel: [python3]\n", "kernel must be one kernel name"),
    ("name: a\nnotebook: nb.ipynb\ntimeout_s: soon\n", "timeout_s must be a number"),
    ("name: a\nnotebook: nb.ipynb\ntimeout_s: -5\n", "timeout_s must be a number"),
])
def test_a_malformed_spec_is_refused_with_its_file_and_key(folder, capsys, text, message):
    """Each of these used to give a traceback, run anyway (seeds [] became [0], params seed was replaced) or
    write elsewhere (name '../ablation' replaced experiments/ablation/summary.csv)."""
    (folder / "spec.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        sweep.load_spec(folder / "spec.yaml")
    assert cli.main([str(folder / "spec.yaml"), "--runs-root", str(folder / "runs")]) == 2
    assert capsys.readouterr().err.startswith(f"so8t sweep: {folder / 'spec.yaml'}: ")
    assert sorted(p.name for p in folder.iterdir()) == ["nb.ipynb", "notjson.ipynb", "spec.yaml"]  # nothing written


def test_a_spec_built_in_python_cannot_name_a_folder_outside_the_runs_root(folder):
    spec = sweep.SweepSpec(name="../escaped", notebook=folder / "nb.ipynb")
    with pytest.raises(ConfigError, match="must be one folder name"):
        sweep.run_sweep(spec, runs_root=folder / "runs")
    assert not (folder / "escaped").exists() and not (folder / "runs").exists()


def test_a_notebook_without_a_python_parameters_cell_is_refused(folder):
    """papermill would add the sweep's values in a cell of their own that nothing reads."""
    nb = nbformat.read(folder / "nb.ipynb", as_version=4)
    nb.cells[0].metadata = {}
    nbformat.write(nb, folder / "untagged.ipynb")
    (folder / "spec.yaml").write_text("name: a\nnotebook: untagged.ipynb\n")
    with pytest.raises(ConfigError, match="untagged.ipynb has no Python cell tagged 'parameters'"):
        sweep.load_spec(folder / "spec.yaml")
    nb.cells[0] = nbformat.v4.new_code_cell("x = = 1", metadata={"tags": ["parameters"]})
    nbformat.write(nb, folder / "broken.ipynb")
    (folder / "spec.yaml").write_text("name: a\nnotebook: broken.ipynb\n")
    with pytest.raises(ConfigError, match=r"broken.ipynb's parameters cell is not Python \(invalid syntax, line 1\)"):
        sweep.load_spec(folder / "spec.yaml")


def test_the_parameters_cell_is_read_as_python_assigns_it(folder):
    """Assignments inside if/try, unpacking, walrus and IPython magics count; an item or attribute set does not,
    nor an annotation without a value, nor what a def or class assigns. A notebook without seed (which the sweep sets for every run) is refused."""
    code = ("%matplotlib inline\nif True:\n    x = 1\nelse:\n    x = 2\ntry:\n    lr = 0.1\nexcept Exception:\n"
            "    pass\na, (b, *c) = 1, (2, 3)\ncfg = {}\ncfg['depth'] = 1\nn: int\nseed = 0\noutput_dir = '.'\n"
            "def helper():\n    inner = 1\nclass Holder:\n    field = 2\nif (steps := 3):\n    pass")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(code, metadata={"tags": ["parameters"]})]
    nbformat.write(nb, folder / "forms.ipynb")
    declared = sweep_spec.declared_parameters(folder / "forms.ipynb")
    assert declared == {"x", "lr", "a", "b", "c", "cfg", "seed", "output_dir", "steps"}  # not inner, not field
    nb.cells = [nbformat.v4.new_code_cell("x = 1\noutput_dir = '.'", metadata={"tags": ["parameters"]})]
    nbformat.write(nb, folder / "seedless.ipynb")
    (folder / "spec.yaml").write_text("name: a\nnotebook: seedless.ipynb\nparams: {x: 2}\n")
    with pytest.raises(ConfigError, match=r"\['seed'\] is not parameter\(s\) of seedless.ipynb"):
        sweep.load_spec(folder / "spec.yaml")


def test_well_formed_values_load(folder):
    (folder / "spec.yaml").write_text("name: a-b.c_1\nnotebook: nb.ipynb\nparams: {overrides: ['k=v'], m: {a: [1]}}\n"
                                      "grid: {lr: [1, 0.5], tag: [null, '2024-01-01']}\nseeds: [0, 4294967295]\n"
                                      "timeout_s: 30\n")
    spec = sweep.load_spec(folder / "spec.yaml")
    assert spec.name == "a-b.c_1" and len(spec.runs()) == 8 and spec.timeout_s == 30
