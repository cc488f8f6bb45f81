"""figures/ belongs to `so8t card` (drawn from the committed result files): run as documented on a tiny
checkpoint, notebooks 03 and 04 replaced the README's and the model card's figures with an untrained
model's, under titles that did not say whose numbers they were."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from so8t_lib.workbench import plots

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("notebook", ["03_quantization.ipynb", "04_safety_eval.ipynb"])
def test_the_notebooks_leave_figures_alone_by_default(notebook):
    nb = nbformat.read(ROOT / "notebooks" / notebook, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", []))
    params: dict = {}
    exec(cell.source, {}, params)  # literals only (tests/test_notebooks.py checks that)
    assert params["figures_dir"] == "", "by default a notebook writes its figures to its output_dir only"


def test_the_evaluation_figures_name_the_model_when_told_it():
    report = json.loads((ROOT / "experiments" / "eval" / "so8t-tiny.json").read_text(encoding="utf-8"))
    report = report["datasets"]["test"]
    named = plots.evaluation_figures(report, "test", "so8t-tiny")
    titles = {file: fig.axes[0].get_title() for file, fig in named.items()}
    assert set(titles) == set(plots.EVALUATION_FIGURES)
    assert all(title.startswith("so8t-tiny\n") for title in titles.values()), titles
    plain = plots.evaluation_figures(report, "test")  # so8t card's committed figures keep their titles
    assert plain["eval_confusion.png"].axes[0].get_title() == "test: confusion"
    for fig in [*named.values(), *plain.values()]:
        plots.plt.close(fig)
