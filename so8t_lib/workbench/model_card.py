"""MODEL_CARD.md from measured results only: every number in the card is read from a result file
written by a named command, and a missing file is said to be missing, never filled in.

    so8t card [--config configs/training.yaml] [--eval experiments/eval/so8t-demo.json] [--out MODEL_CARD.md]

It also redraws the card's figures from the same files into ``--figures`` (``""`` skips them, and the card then
shows none; it never shows a figures/ folder it did not draw): the evaluation
figures from the test-split report, the quantization ladder from the GGUF benchmark, the ablation
from its table. A fresh clone can therefore regenerate the card and ``figures/`` without a model.

Sources: the config the run was trained with (a committed config file, or a run folder's ``config.yaml``),
``experiments/eval/<name>.json`` (``so8t evaluate --baselines``), the GGUF benchmark
``benchmarks/results/gguf_decisions_<name>.json``, the ablation's ``ablation.json`` (notebook 02), an
evaluation of the same recipe on the previous corpus when there is one, and the corpus splits.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ..data.tables import load_split, rows_digest
from . import card_sections, plots
from .card_inputs import CORPUS_KEYS, _load, check_model, figure_dataset
from .card_inputs import CardInputError as CardInputError

RUNTIME_CONFIGS = ("configs/basic.yaml", "configs/production.yaml")  # the configs the card's routing sentence names


def runtime_routers(configs: tuple[str | Path, ...] = RUNTIME_CONFIGS) -> dict[str, str | None]:
    """Each runtime config that exists -> its ``escalation.router`` (None: keywords alone), read as plain YAML."""
    import yaml

    routers: dict[str, str | None] = {}
    for config in configs:
        path = Path(config)
        if path.is_file():
            escalation = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("escalation") or {}
            routers[str(config)] = escalation.get("router") or None
    return routers


def _fmt(report: dict, key: str) -> str:
    """The value with its interval, marked "exact binomial" where the evaluation replaced a collapsed bootstrap
    interval by Clopper-Pearson (``ci_exact_binomial``): the caption calls the rest bootstrap intervals."""
    value = report.get(key)
    if value is None:
        return "n/a"
    interval = (report.get("ci") or {}).get(key)
    if not interval or None in interval:
        return f"{value:.3f}"
    exact = " exact binomial" if key in (report.get("ci_exact_binomial") or []) else ""
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]{exact}"


CARD_FIGURES = (*plots.EVALUATION_FIGURES, "quant_ladder.png", "gate_ablation.png")


FIGURE_GROUPS = {"datasets": plots.EVALUATION_FIGURES, "results": ("quant_ladder.png",), "table": ("gate_ablation.png",)}


def _figure_sources(eval_json: Path, quant_json: Path, ablation_json: Path) -> dict[str, dict]:
    """The checked result file behind each group of figures (keyed as ``FIGURE_GROUPS``) that has data to draw."""
    files = {"datasets": _load(Path(eval_json), "evaluation", figures=True),
             "results": _load(Path(quant_json), "quantization", figures=True),
             "table": _load(Path(ablation_json), "ablation", figures=True)}
    return {key: data for key, data in files.items() if data and data.get(key)}


def figure_files(eval_json: Path, quant_json: Path, ablation_json: Path, figures_dir: Path) -> list[Path]:
    """The files ``write_figures`` draws, named without drawing: the card is built (and its files checked)
    before any figure is written."""
    return [Path(figures_dir) / name for key in _figure_sources(eval_json, quant_json, ablation_json)
            for name in FIGURE_GROUPS[key]]


def write_figures(eval_json: Path, quant_json: Path, ablation_json: Path, figures_dir: Path) -> list[Path]:
    """Redraw every figure whose result file exists, all drawn before the first is saved; returns the files written."""
    sources = _figure_sources(eval_json, quant_json, ablation_json)
    drawn: dict[str, object] = {}
    if "datasets" in sources:
        name = figure_dataset(sources["datasets"]["datasets"])
        drawn.update(plots.evaluation_figures(sources["datasets"]["datasets"][name], name))
    if "results" in sources:
        quant = sources["results"]
        drawn["quant_ladder.png"] = plots.quant_ladder_figure(
            pd.DataFrame(quant["results"]), f"quantization ladder on {quant.get('data', '?')} ({quant.get('device', 'cpu')})")
    if "table" in sources:
        table = pd.DataFrame(sources["table"]["table"])
        drawn["gate_ablation.png"] = plots.ablation_figure(table, list(dict.fromkeys(table["metric"])))
    written = []
    for file, fig in drawn.items():
        written += plots.save_figure(fig, Path(figures_dir) / file)
    return written


def sweep_summary(result_json: str | Path, result: dict) -> str:
    """The sweep summary a reader can open: notebook 02's copy beside the result file when there is one (the
    sweep's own folder under experiments/runs/ is git-ignored), else the path the analysis recorded."""
    beside = Path(result_json).parent / "summary.csv"
    return str(beside) if beside.is_file() else result.get("summary_csv", "?")


def figure_section(figures: Sequence[Path], card_path: Path) -> list[str]:
    """Only this card's own figures (another model's in a figures/ folder that happens to be there would be
    shown as this model's), in the card's order, each linked from where the card is written."""
    by_name = {Path(f).name: Path(f) for f in figures}
    shown = [by_name[name] for name in CARD_FIGURES if name in by_name]
    if not shown:
        return []
    base = Path(card_path).absolute().parent
    links = [Path(os.path.relpath(Path(f).absolute(), base)).as_posix() for f in shown]
    return ["", "## Figures", ""] + [f"![{f.stem}]({link})" for f, link in zip(shown, links)]


FOLLOW_UP_ABLATIONS = ("experiments/ablation/random_init/ablation.json",
                       "experiments/ablation/random_init_order/ablation.json",
                       "experiments/ablation/gemma/ablation.json")  # the pretrained default (gate_ablation_gemma.yaml)


def _metrics_caption(evaluation: dict) -> str:
    """What the numbers are: the decision rule and the intervals the evaluation actually used."""
    rule = evaluation.get("decision_rule", "argmax")
    rule = "argmax decisions" if rule == "argmax" else f"decisions by the serving rule, {rule}"
    intervals = card_sections.intervals_phrase(evaluation.get("datasets", {}))
    return f"{rule}, temperature {evaluation.get('temperature', 1):.2f}; {intervals}"


def _headline_keys(report: dict) -> list[str]:
    keys = report.get("headline") or []
    return CORPUS_KEYS if "safety_score" in keys or not keys else list(keys)  # the corpus: the safety headline


def _metrics_section(evaluation: dict | None, eval_json: Path,
                     splits: dict[str, pd.DataFrame] | None = None) -> list[str]:
    """The evaluation's headline numbers per data set; a corpus split scored on other rows than the split the Data
    section counts (an evaluation of an earlier corpus build) is said to be, beside the table."""
    lines = ["## Metrics"]
    if not evaluation:
        return lines + [f"Not measured: `{eval_json}` is missing (run `so8t evaluate ... --out {eval_json}`)."]
    lines += [f"From `{eval_json}` ({_metrics_caption(evaluation)}):", "", "| data | rows | numbers |", "|---|---|---|"]
    other_rows = []
    for name, rep in evaluation.get("datasets", {}).items():
        shown = ", ".join(f"{k} {_fmt(rep, k)}" for k in _headline_keys(rep) if rep.get(k) is not None)
        lines.append(f"| {name} | {rep['n']} | {shown} |")
        if name in (splits or {}) and not same_rows(rep, {"n": len(splits[name]), "rows_sha256": rows_digest(splits[name])}):
            other_rows.append(f"{name} ({rep['n']} rows scored, {len(splits[name])} in the split now)")
    if other_rows:
        lines += ["", f"Scored on other rows than today's corpus splits hold: {', '.join(other_rows)}; `{eval_json}` "
                      "evaluated an earlier corpus build, so these numbers are of its rows (run `so8t evaluate` again "
                      "for today's)."]
    with_baselines = {n: r for n, r in evaluation.get("datasets", {}).items() if r.get("baselines")}
    if with_baselines:
        names = list(next(iter(with_baselines.values()))["baselines"])
        lines += ["", "Beside keyword yardsticks fitted on the corpus train split and scored on the same rows "
                      "(`so8t evaluate --baselines`):", "",
                  "| data | metric | this model | " + " | ".join(names) + " |", "|---|---|---|" + "---|" * len(names)]
        for data, rep in with_baselines.items():
            for key in _headline_keys(rep)[:3]:
                if rep.get(key) is None:
                    continue
                others = [rep["baselines"][b].get(key) for b in names]
                lines.append(f"| {data} | {key} | {rep[key]:.3f} | "
                             + " | ".join("n/a" if v is None else f"{v:.3f}" for v in others) + " |")
    return lines


def same_rows(report: dict, other: dict) -> bool:
    """Whether two reports scored the same rows: by their row digests (``rows_sha256``), or by row count for
    result files written before evaluations recorded one."""
    if report.get("rows_sha256") and other.get("rows_sha256"):
        return report["rows_sha256"] == other["rows_sha256"]
    return report.get("n") is not None and report.get("n") == other.get("n")


def _comparison_section(evaluation: dict | None, compare: dict | None, compare_json: Path | None,
                        compare_label: str) -> list[str]:
    """An earlier run of the recipe (another corpus, or other settings): compared row for row only where both scored the same rows
    (a new corpus reshuffles its splits, so its test split is other rows; the public sets are not)."""
    if compare_json is not None and not compare:
        return ["", f"Not compared with {compare_label}: `{compare_json}` is missing."]
    if not (evaluation and compare):
        return []
    old_model, new_model = compare.get("model", "?"), evaluation.get("model", "?")
    where = (f"the same path `{new_model}`, which held the {compare_label} run when that file was written"
             if old_model == new_model else f"model `{old_model}`")
    lines = ["", f"## Beside an earlier run: {compare_label}",
             f"`{compare_json}` ({where}) against this model (`{new_model}`), on the data sets both scored row "
             "for row:", "",
             f"| data | metric | {compare_label} | this model |", "|---|---|---|---|"]
    other_rows = []
    for data, rep in evaluation.get("datasets", {}).items():
        old = compare.get("datasets", {}).get(data)
        if not old:
            continue
        keys = [k for k in _headline_keys(rep)[:4] if rep.get(k) is not None and old.get(k) is not None]
        if not same_rows(rep, old):
            other_rows += [f"{data} {k} {_fmt(old, k)} (n={old.get('n')}) vs {_fmt(rep, k)} (n={rep.get('n')})"
                           for k in keys[:2]]
            continue
        lines += [f"| {data} | {key} | {_fmt(old, key)} | {_fmt(rep, key)} |" for key in keys]
    if other_rows:
        lines += ["", "Scored on different rows (each model on its own corpus's split), so not comparable row for "
                      "row: " + "; ".join(other_rows) + "."]
    return lines


def build_card(config: dict, eval_json: Path, quant_json: Path, ablation_json: Path,
               follow_ups: tuple[Path, ...] = (), compare_json: Path | None = None,
               compare_label: str = "the previous corpus", refit_json: Path | None = None,
               points_json: Path | None = None, points_recipe: str | None = None,
               seeds_json: Path | None = None, runtime_configs: tuple[str | Path, ...] = RUNTIME_CONFIGS,
               figures: Sequence[Path] = (), card_path: Path = Path("MODEL_CARD.md"),
               config_path: str | Path | None = None, run_dir: str | Path | None = None,
               other_name: bool = False) -> str:
    """The card's markdown for the run trained with ``config`` (a config mapping); ``follow_ups`` are further
    ablation results quoted by their conclusion and geometry, ``compare_json`` an evaluation of the same
    recipe trained on another corpus (``compare_label``), ``refit_json`` the head-refit benchmark,
    ``points_json`` the operating-point benchmark (its entry ``points_recipe``, default the model's name),
    ``seeds_json`` the seed-ensemble benchmark (the spread between seeds); each only if given and its file exists.
    ``runtime_configs`` are the serving configs whose escalation routing the limits name. ``figures``: the files
    ``write_figures`` drew for this card (none: no figure section), linked relative to ``card_path``'s folder;
    ``config_path``, the file ``config`` was read from, is the training command the card names. An evaluation of
    another model than the config's (or its ``run_dir``) is refused (CardInputError), unless ``other_name`` says it
    is this recipe's run under another name, which the card then says."""
    model, training = config.get("model", {}), config.get("training", {})
    evaluation = _load(Path(eval_json), "evaluation")
    try:
        check_model(evaluation, Path(eval_json), model, training, run_dir)
        other_name = False  # the evaluation names this model after all: the card says nothing of another name
    except CardInputError:
        if not other_name:
            raise
    whose = [f"The results below are of `{evaluation.get('model')}`: a run of this recipe under another name.", ""] \
        if other_name and evaluation else []
    quant = _load(Path(quant_json), "quantization")
    ablation, compare = _load(Path(ablation_json), "ablation"), _load(Path(compare_json), "evaluation") if compare_json else None
    more_sweeps = {str(path): _load(Path(path), "follow-up ablation") for path in follow_ups}
    seeds = _load(Path(seeds_json), "seed ensemble") if seeds_json else None
    splits = {s: load_split(s) for s in ("train", "val", "test")}
    lines = [
        f"# Model card: {model.get('name', '?')}", "", *whose,
        "## Intended use",
        "A safety gate for an employee-facing assistant: for each request it decides ALLOW (the assistant "
        "answers), REFUSE (declined with a reason) or ESCALATE (a person with the right role decides), under "
        "`shared/SAFETY_POLICY.md`. Serve it through `so8t runtime` or `so8t serve` (threshold rule, fail-closed, "
        "audit log), never as a bare classifier. Not for decisions about people, and not a replacement for the "
        "escalation path.", "",
        *card_sections.base_section(model), "",
        "## Data",
        f"`data/so8t_safety` (data card: `data/README.md`): train {len(splits['train'])}, val {len(splits['val'])}, "
        f"test {len(splits['test'])} rows, Japanese and English, split by request family. XSTest and "
        "SimpleSafetyTests are used for evaluation only.", "",
        *card_sections.recipe_section(model, training, config.get("loss", {}), config_path), "",
        *_metrics_section(evaluation, eval_json, splits),
        *_comparison_section(evaluation, compare, compare_json, compare_label),
    ]
    lines += ["", "## Quantization"]
    if quant:
        sample = f"a stratified sample of {quant['rows']} rows of " if quant.get("rows") else ""
        processes = "each backend in a fresh process" if quant.get("process_per_backend") else "one process"
        lines += [f"From `benchmarks/gguf_decisions.py` ({sample}`{quant.get('data', 'test')}`, same requests, "
                  f"{processes}; timings depend on the machine's load, agreement and macro-F1 do not):", "",
                  "| backend | MiB | agreement with fp32 | macro-F1 | decide p50 ms |", "|---|---|---|---|---|"]
        for r in quant["results"]:
            size = "n/a" if r.get("size_mib") is None else f"{r['size_mib']:.1f}"  # None: the base lives in the cache
            f1 = "n/a" if r.get("macro_f1") is None else f"{r['macro_f1']:.3f}"  # None: not all three classes scored
            lines.append(f"| {r['backend']} | {size} | {r['agreement_with_fp32']:.3f} | {f1} | "
                         f"{r['decide_p50_ms']:.1f} |")
        if model.get("head", {}).get("pooling") == "max":
            lines += ["", "Head refit does not apply: this SafetyHeadB max-pools its hidden layer over token "
                          "states, and `so8t export --refit-head` refits a head on pooled states."]
        elif refit_json is not None:
            fp32 = next((r["macro_f1"] for r in quant["results"] if r["backend"] == "hf-fp32"), None)
            lines += card_sections.refit_section(_load(Path(refit_json), "head refit"), str(refit_json), fp32)
    else:
        lines.append(f"Not measured: `{quant_json}` is missing (`python benchmarks/gguf_decisions.py`).")
    if points_json is not None:
        lines += ["", *card_sections.operating_point_section(_load(Path(points_json), "operating points"), str(points_json),
                                                              points_recipe or model.get("name", "?"))]
    lines += ["", "## Gate ablation"]
    if ablation:
        if ablation.get("runs"):
            steps = ", ".join(map(str, ablation.get("steps") or [])) or "?"
            lines += ["", f"{ablation.get('runs_ok', '?')} of {ablation['runs']} training runs finished "
                          f"(the tiny preset, {steps} steps each; sweep summary `{sweep_summary(ablation_json, ablation)}`)."]
        if ablation.get("conclusion"):
            lines += ["", f"**Finding.** {ablation['conclusion']}", ""]
        if ablation.get("geometry"):
            lines += ["**Why.** " + ablation["geometry"].replace("\n", " "), ""]
        lines += [f"Per configuration, from `{ablation_json}` (`notebooks/02_gate_ablation.ipynb`):", "", "```",
                  ablation["finding"], "```"]
    else:
        lines.append(f"Not run yet: `{ablation_json}` is missing (`so8t sweep experiments/gate_ablation.yaml`, "
                     "then notebook 02). Until then there is no evidence either way that non-commutative gating helps.")
    for path, more in more_sweeps.items():
        if not more:
            lines += ["", f"Follow-up not measured: `{path}` is missing."]
        elif more.get("conclusion"):
            steps = ", ".join(map(str, more.get("steps") or [])) or "?"
            lines += ["", f"Follow-up, `{path}` ({more.get('runs_ok', '?')} runs of {steps} steps, sweep summary "
                          f"`{sweep_summary(path, more)}`, baseline `{more.get('baseline', 'none')}`): "
                          f"{more['conclusion']}",
                      "", (more.get("geometry") or "").replace("\n", " ")]
    lines += figure_section(figures, card_path)
    sweeps = {str(path): result for path, result in ((ablation_json, ablation), *more_sweeps.items())
              if result and result.get("runs")}
    lines += ["", *card_sections.limits_section(model, seeds, str(seeds_json), runtime_routers(runtime_configs),
                                                sweeps)]
    return "\n".join(lines)
