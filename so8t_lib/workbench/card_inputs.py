"""The result files ``so8t card`` reads, checked before anything is written: each must hold the keys the card
and its figures read, and the evaluation must be of the model the config names, so a card never prints one
model's numbers under another's name.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePath

from ..core.config import ModelConfig, TrainingConfig
from . import card_sections


class CardInputError(ValueError):
    """A result file the card cannot be built from, named with its key: the card is not written around a hole."""


WRITTEN_BY = {"evaluation": "so8t evaluate ... --out", "quantization": "python benchmarks/gguf_decisions.py",
              "ablation": "notebook 02, ablation.write_report", "follow-up ablation": "notebook 02, ablation.write_report",
              "head refit": "python benchmarks/head_refit.py",
              "operating points": "python benchmarks/operating_point.py",
              "seed ensemble": "python benchmarks/seed_ensemble.py"}


def _need(node, keys: str, path: Path, kind: str, where: str = "") -> None:
    """``node`` (at ``where`` in the file) is an object holding each of ``keys`` (space-separated), else
    CardInputError naming the file and the key."""
    if not isinstance(node, dict):
        problem = f"'{where.rstrip('.')}' is not an object" if where else "holds no JSON object"
    elif missing := [key for key in keys.split() if key not in node]:
        problem = f"has no key '{where}{missing[0]}'"
    else:
        return
    raise CardInputError(f"{path}: {problem}; write it again ({WRITTEN_BY.get(kind, kind)}) or name another file")


def _items(node, path: Path, kind: str, where: str) -> list[tuple[str, object]]:
    """The (dotted name, value) of each member of an object or list at ``where``, else CardInputError."""
    if isinstance(node, (dict, list)):
        return [(f"{where}.{k}.", v) for k, v in (node.items() if isinstance(node, dict) else enumerate(node))]
    raise CardInputError(f"{path}: '{where}' is neither an object nor a list; write it again "
                         f"({WRITTEN_BY.get(kind, kind)}) or name another file")


def _check(data: dict, path: Path, kind: str, figures: bool) -> None:
    """The keys the card reads from a result file of ``kind``, or with ``figures`` the keys its figures read."""
    if kind == "evaluation":
        _need(data, "datasets", path, kind)
        _need(data["datasets"], "", path, kind, "datasets.")
        reports = _items(data["datasets"], path, kind, "datasets")
        if figures and reports:
            name = figure_dataset(data["datasets"])
            _need(data["datasets"][name], "confusion_matrix labels", path, kind, f"datasets.{name}.")
        names = ""  # the baseline columns: the first data set's baselines, which every other one must have
        for where, rep in [] if figures else reports:
            _need(rep, "n", path, kind, where)
            if rep.get("baselines"):
                names = names or " ".join(map(str, rep["baselines"]))
                _need(rep["baselines"], names, path, kind, f"{where}baselines.")
    elif kind == "quantization":
        _need(data, "results", path, kind)
        for where, row in _items(data["results"], path, kind, "results"):
            _need(row, "backend agreement_with_fp32 decide_p50_ms" + (" size_mib macro_f1" if figures else ""), path,
                  kind, where)
    elif kind == "ablation" and figures:
        for where, row in _items(data.get("table") or [], path, kind, "table"):
            _need(row, "gate_order metric mean ci_low ci_high", path, kind, where)
    elif kind == "ablation":
        _need(data, "finding", path, kind)
    elif kind == "head refit":
        for where, rung in _items(data.get("rungs") or {}, path, kind, "rungs"):
            for head in ("exported_head", "refitted_head") if "refitted_head" in rung else ():
                _need(rung, head, path, kind, where)
                _need(rung[head], "agreement_with_fp32", path, kind, f"{where}{head}.")
    elif kind == "operating points":
        for where, recipe in _items(data.get("recipes") or {}, path, kind, "recipes"):
            for at, point in _items(recipe.get("targets") or {}, path, kind, f"{where}targets"):
                if point.get("reachable") and point.get("test"):
                    _need(point, "threshold", path, kind, at)
                    _need(point["test"], "dangerous_compliance over_refusal_incl_escalate escalation_rate", path,
                          kind, f"{at}test.")
    elif kind == "seed ensemble":
        for where, run in _items(data.get("runs") or {}, path, kind, "runs"):
            _need(run, "" if where == f"runs.{card_sections.ENSEMBLE_RUN}." else "argmax", path, kind, where)


def _load(path: Path, kind: str = "", figures: bool = False) -> dict | None:
    """A result file's object (None when there is none), checked for valid JSON and for the keys the card reads:
    a broken file stops the card with its name and key, before any figure or card is written."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardInputError(f"{path}: not readable JSON ({exc}); write it again ({WRITTEN_BY.get(kind, kind)}) "
                             "or name another file") from None
    _need(data, "", path, kind)
    _check(data, path, kind, figures)
    return data



def figure_dataset(datasets: dict) -> str:
    """The data set the card's evaluation figures show: the test split when it was scored (evaluations list val
    first, whose rows the temperature was fitted on), else the first one."""
    return "test" if "test" in datasets else next(iter(datasets))


def config_model(model: dict, training: dict) -> tuple[str, str]:
    """The config's model name and run folder, with the defaults ``so8t train`` fills in where it names none."""
    return (str(model.get("name") or ModelConfig.model_fields["name"].default),
            str(training.get("output_dir") or TrainingConfig.model_fields["output_dir"].default))


def names_model(evaluated: str, name: str, output_dir: str) -> bool:
    """Whether an evaluation's ``model`` (the checkpoint folder ``so8t evaluate`` resolved, e.g.
    ``checkpoints/so8t-demo/best``, or an exported ``<name>-<quant>.gguf``) is the config's model: a folder on its
    path is the run folder or carries the model's name."""
    path = PurePath(evaluated)
    if {name, PurePath(output_dir).name} & set(path.parts):
        return True
    return path.suffix == ".gguf" and path.stem.startswith(f"{name}-")


def check_model(evaluation: dict | None, eval_json: Path, model: dict, training: dict) -> None:
    """CardInputError when the evaluation names a model other than the config's (a file written before
    evaluations recorded their model is taken as it is)."""
    if not evaluation or "model" not in evaluation:
        return
    evaluated = evaluation["model"]
    name, output_dir = config_model(model, training)
    if isinstance(evaluated, str) and names_model(evaluated, name, output_dir):
        return
    raise CardInputError(f"{eval_json}: evaluates {evaluated!r}, not {name} (the config's model, trained into "
                         f"{output_dir}), so the card would print its numbers as {name}'s; name an evaluation of "
                         f"{name} with --eval (so8t evaluate --model {output_dir} --out experiments/eval/{name}.json), "
                         "or the config that model was trained with")
