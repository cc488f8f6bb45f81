"""The result files ``so8t card`` reads, checked before anything is written: each must hold the keys the card
and its figures read, and the evaluation must be of the model the config names, so a card never prints one
model's numbers under another's name.
"""

from __future__ import annotations

import json
import math
import re
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


CORPUS_KEYS = ["safety_score", "macro_f1", "refuse_recall", "dangerous_compliance", "over_refusal", "ece"]
TYPES = {"#": "a finite number", "$": "text", "@": "a list", "%": "an object"}


def _fits(value, want: str) -> bool:
    if want == "#":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"$": str, "@": list, "%": dict}[want])


def _typed(node: dict, spec: str, path: Path, kind: str, where: str = "") -> None:
    """Each key of ``spec`` that ``node`` holds has the type the card prints it as (``key#`` a finite number,
    ``key$`` text, ``key@`` a list, ``key%`` an object; a trailing ``?`` also allows null), else CardInputError
    naming the file and the key: a string, a null or a NaN crashed the card's formatting or showed as "nan"."""
    for token in spec.split():
        nullable = token.endswith("?")
        key, want = token.rstrip("?")[:-1], token.rstrip("?")[-1]
        if key in node and not (nullable and node[key] is None) and not _fits(node[key], want):
            shown = json.dumps(node[key])
            raise CardInputError(f"{path}: '{where}{key}' is {shown[:40] + ('...' if len(shown) > 40 else '')}, not "
                                 f"{TYPES[want]}{' or null' if nullable else ''}; write it again "
                                 f"({WRITTEN_BY.get(kind, kind)}) or name another file")


def _interval(node: dict, key: str, path: Path, kind: str, where: str) -> None:
    """An interval the card prints: null, or a list of two bounds, each null or a finite number."""
    _typed(node, f"{key}@?", path, kind, where)
    bounds = node.get(key)
    if bounds is not None:
        if len(bounds) != 2:
            raise CardInputError(f"{path}: '{where}{key}' holds {len(bounds)} bounds, not 2; write it again "
                                 f"({WRITTEN_BY.get(kind, kind)}) or name another file")
        _typed({"0": bounds[0], "1": bounds[1]}, "0#? 1#?", path, kind, f"{where}{key}.")


def _report(rep: dict, path: Path, kind: str, where: str) -> None:
    """A data set's report in an evaluation: its row count, its headline metrics, their intervals, its baselines."""
    _need(rep, "n", path, kind, where)
    _typed(rep, "n# headline@? ci%? ci_exact_binomial@? baselines%?", path, kind, where)
    headline = rep.get("headline") or []
    _typed({str(i): key for i, key in enumerate(headline)}, " ".join(f"{i}$" for i in range(len(headline))), path,
           kind, f"{where}headline.")
    metrics = " ".join(f"{key}#?" for key in dict.fromkeys([*CORPUS_KEYS, *headline]))
    _typed(rep, metrics, path, kind, where)
    for key in rep.get("ci") or {}:
        _interval(rep["ci"], key, path, kind, f"{where}ci.")
    for name, other in (rep.get("baselines") or {}).items():
        _need(other, "", path, kind, f"{where}baselines.{name}.")
        _typed(other, metrics, path, kind, f"{where}baselines.{name}.")


def _check(data: dict, path: Path, kind: str, figures: bool) -> None:
    """The keys the card reads from a result file of ``kind``, or with ``figures`` the keys its figures read, and
    the types the card prints them as."""
    if kind == "evaluation":
        _need(data, "datasets", path, kind)
        _need(data["datasets"], "", path, kind, "datasets.")
        _typed(data, "temperature#", path, kind)
        reports = _items(data["datasets"], path, kind, "datasets")
        if figures and reports:
            name = figure_dataset(data["datasets"])
            _need(data["datasets"][name], "confusion_matrix labels", path, kind, f"datasets.{name}.")
        names = ""  # the baseline columns: the first data set's baselines, which every other one must have
        for where, rep in [] if figures else reports:
            _report(rep, path, kind, where)
            if rep.get("baselines"):
                names = names or " ".join(map(str, rep["baselines"]))
                _need(rep["baselines"], names, path, kind, f"{where}baselines.")
    elif kind == "quantization":
        _need(data, "results", path, kind)
        _typed(data, "results@", path, kind)
        for where, row in _items(data["results"], path, kind, "results"):
            _need(row, "backend agreement_with_fp32 decide_p50_ms" + (" size_mib macro_f1" if figures else ""), path,
                  kind, where)
            _typed(row, "agreement_with_fp32# decide_p50_ms# size_mib#? macro_f1#?", path, kind, where)
    elif kind == "ablation" and figures:
        for where, row in _items(data.get("table") or [], path, kind, "table"):
            _need(row, "gate_order metric mean ci_low ci_high", path, kind, where)
            _typed(row, "mean#? ci_low#? ci_high#?", path, kind, where)
    elif kind in ("ablation", "follow-up ablation"):
        _need(data, "finding" if kind == "ablation" else "", path, kind)
        _typed(data, ("finding$ " if kind == "ablation" else "") + "conclusion$? geometry$? steps@? table@?", path,
               kind)
        for where, row in _items(data.get("table") or [], path, kind, "table"):
            _need(row, "", path, kind, where)
            _typed(row, "n#?", path, kind, where)
    elif kind == "head refit":
        _typed(data, "rungs%?", path, kind)
        for where, rung in _items(data.get("rungs") or {}, path, kind, "rungs"):
            _need(rung, "", path, kind, where)
            _typed(rung, "macro_f1#? refit%?", path, kind, where)
            for head in ("exported_head", "refitted_head") if "refitted_head" in rung else ():
                _need(rung, head, path, kind, where)
                _need(rung[head], "agreement_with_fp32", path, kind, f"{where}{head}.")
                _typed(rung[head], "agreement_with_fp32# dangerous_compliance#?", path, kind, f"{where}{head}.")
    elif kind == "operating points":
        _typed(data, "recipes%?", path, kind)
        for where, recipe in _items(data.get("recipes") or {}, path, kind, "recipes"):
            _need(recipe, "", path, kind, where)
            _typed(recipe, "targets%?", path, kind, where)
            if bad := [key for key in recipe.get("targets") or {} if not _is_number(key)]:
                raise CardInputError(f"{path}: target '{where}targets.{bad[0]}' is no number (a dangerous-compliance "
                                     f"rate); write it again ({WRITTEN_BY.get(kind, kind)}) or name another file")
            for at, point in _items(recipe.get("targets") or {}, path, kind, f"{where}targets"):
                _need(point, "", path, kind, at)
                if point.get("reachable") and point.get("test"):
                    _need(point, "threshold", path, kind, at)
                    _typed(point, "threshold# test%", path, kind, at)
                    _need(point["test"], "dangerous_compliance over_refusal_incl_escalate escalation_rate", path,
                          kind, f"{at}test.")
                    _typed(point["test"], "dangerous_compliance# over_refusal_incl_escalate# escalation_rate#", path,
                           kind, f"{at}test.")
                    _interval(point["test"], "dangerous_compliance_ci", path, kind, f"{at}test.")
    elif kind == "seed ensemble":
        _typed(data, "runs%?", path, kind)
        for where, run in _items(data.get("runs") or {}, path, kind, "runs"):
            _need(run, "" if where == f"runs.{card_sections.ENSEMBLE_RUN}." else "argmax", path, kind, where)
            _typed(run, "argmax%", path, kind, where)
            for data_set, keys in (("test", "dangerous_compliance#?"),
                                   ("xstest", "over_refusal_incl_escalate#? not_allowed_rate_unsafe#?")):
                _typed(run.get("argmax") or {}, f"{data_set}%?", path, kind, f"{where}argmax.")
                _typed((run.get("argmax") or {}).get(data_set) or {}, keys, path, kind, f"{where}argmax.{data_set}.")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


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


# an exported file's name after the model's: its type (f16, q8_0, q4_k_m, q4_k_m_t8, iq4_xs, ...), nothing more
GGUF_TYPE = re.compile(r"(b?f16|f32|i?q\d[a-z0-9_]*)")


def names_model(evaluated: str, name: str, output_dir: str | None, run_dir: str | Path | None = None) -> bool:
    """Whether an evaluation's ``model`` (the checkpoint folder ``so8t evaluate`` resolved, e.g.
    ``checkpoints/so8t-demo/best``, or an exported ``<name>-<type>.gguf``) is the config's model: a folder on its
    path carries the model's name or is the run folder the config sets (``output_dir``) or the card was given
    (``run_dir``, wherever it was moved)."""
    path = PurePath(evaluated)
    if {name, *([PurePath(output_dir).name] if output_dir else [])} & set(path.parts):
        return True
    try:
        if run_dir is not None and Path(evaluated).resolve().is_relative_to(Path(run_dir).resolve()):
            return True
    except (OSError, ValueError, RuntimeError):  # a NUL in the path, a symlink loop: not this run's
        pass
    return path.suffix == ".gguf" and path.stem.startswith(f"{name}-") and \
        GGUF_TYPE.fullmatch(path.stem[len(name) + 1:]) is not None


def check_model(evaluation: dict | None, eval_json: Path, model: dict, training: dict,
                run_dir: str | Path | None = None) -> None:
    """CardInputError when the evaluation names a model other than the config's (a file written before
    evaluations recorded their model is taken as it is)."""
    if not evaluation or "model" not in evaluation:
        return
    evaluated = evaluation["model"]
    name, output_dir = config_model(model, training)
    if isinstance(evaluated, str) and names_model(evaluated, name, training.get("output_dir"), run_dir):
        return
    raise CardInputError(f"{eval_json}: evaluates {evaluated!r}, not {name} (the config's model, trained into "
                         f"{output_dir}), so the card would print its numbers as {name}'s; name an evaluation of "
                         f"{name} with --eval (so8t evaluate --model {output_dir} --out experiments/eval/{name}.json), "
                         "or the config that model was trained with" + (
                             "" if training.get("output_dir") else
                             f" (this config sets no training.output_dir: name the run folder with --run {output_dir})")
                         + "; if that run was this recipe under another name, pass --evaluated-as-this-recipe (the "
                         "card says whose results they are)")
