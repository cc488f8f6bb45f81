"""MODEL_CARD.md from measured results only: every number in the card is read from a result file
written by a named command, and a missing file is said to be missing, never filled in.

    so8t card [--run checkpoints/so8t-tiny] [--out MODEL_CARD.md] [--figures figures]

It also redraws the card's figures from the same files (``--figures ""`` skips them): the evaluation
figures from the test-split report, the quantization ladder from the GGUF benchmark, the ablation
from its table. A fresh clone can therefore regenerate the card and ``figures/`` without a model.

Sources: the run's ``config.yaml``, ``experiments/eval/<name>.json`` (``so8t evaluate``),
``benchmarks/results/gguf_decisions_cpu.json``, the ablation's ``ablation.json`` (notebook 02) and the
corpus statistics (``so8t corpus stats``).
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from ..data.tables import load_split
from . import plots


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _fmt(report: dict, key: str) -> str:
    value = report.get(key)
    if value is None:
        return "n/a"
    interval = (report.get("ci") or {}).get(key)
    return f"{value:.3f} [{interval[0]:.2f}, {interval[1]:.2f}]" if interval and None not in interval else f"{value:.3f}"


CARD_FIGURES = (*plots.EVALUATION_FIGURES, "quant_ladder.png", "gate_ablation.png")


def write_figures(eval_json: Path, quant_json: Path, ablation_json: Path, figures_dir: Path) -> list[Path]:
    """Redraw every figure whose result file exists; returns the files written."""
    import pandas as pd

    evaluation, quant, ablation = _load(eval_json), _load(quant_json), _load(ablation_json)
    drawn: dict[str, object] = {}
    if evaluation and evaluation.get("datasets"):
        name, report = next(iter(evaluation["datasets"].items()))  # the first data set: the test split
        drawn.update(plots.evaluation_figures(report, name))
    if quant and quant.get("results"):
        drawn["quant_ladder.png"] = plots.quant_ladder_figure(
            pd.DataFrame(quant["results"]), f"quantization ladder on {quant.get('data', '?')} ({quant.get('device', 'cpu')})")
    if ablation and ablation.get("table"):
        table = pd.DataFrame(ablation["table"])
        drawn["gate_ablation.png"] = plots.ablation_figure(table, list(dict.fromkeys(table["metric"])))
    written = []
    for file, fig in drawn.items():
        written += plots.save_figure(fig, Path(figures_dir) / file)
    return written


FOLLOW_UP_ABLATIONS = ("experiments/ablation/random_init/ablation.json",
                       "experiments/ablation/random_init_order/ablation.json")


def build_card(run: Path, eval_json: Path, quant_json: Path, ablation_json: Path,
               baseline_json: Path = Path("benchmarks/results/bow_baseline.json"),
               follow_ups: tuple[Path, ...] = ()) -> str:
    """The card's markdown; ``follow_ups`` are further ablation results (other sweeps of the same
    question) quoted by their conclusion and geometry, each only if its file exists."""
    config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) if (run / "config.yaml").is_file() else {}
    model, training = config.get("model", {}), config.get("training", {})
    evaluation, quant, ablation = _load(eval_json), _load(quant_json), _load(ablation_json)
    splits = {s: load_split(s) for s in ("train", "val", "test")}
    lines = [
        f"# Model card: {model.get('name', run.name)}", "",
        "## Intended use",
        "A safety gate for an employee-facing assistant: for each request it decides ALLOW (the assistant "
        "answers), REFUSE (declined with a reason) or ESCALATE (a person with the right role decides), under "
        "`shared/SAFETY_POLICY.md`. Serve it through `so8t runtime` (threshold rule, fail-closed, audit "
        "log), never as a bare classifier. Not for decisions about people, and not a replacement for the "
        "escalation path.", "",
        "## Scale this card was measured at",
        f"Preset `{model.get('preset', '?')}`: a randomly initialised Qwen2-shaped model (hidden "
        f"{model.get('tiny', {}).get('hidden_size', '?')}, {model.get('tiny', {}).get('num_hidden_layers', '?')} layers) "
        f"with LoRA r={model.get('lora', {}).get('r', '?')} and trained embeddings, "
        f"{training.get('max_steps', '?')} steps on 2 CPU cores. It has no pretrained knowledge. Its numbers show "
        "the workbench measuring; they say nothing about Qwen2.5-7B, which has not been trained here.", "",
        "## Data",
        f"`data/so8t_safety` (data card: `data/README.md`): train {len(splits['train'])}, val {len(splits['val'])}, "
        f"test {len(splits['test'])} rows, Japanese and English, split by request family. XSTest and "
        "SimpleSafetyTests are used for evaluation only.", "",
        "## Training",
        f"Gate order `{model.get('gates', {}).get('order', '?')}`; PET "
        f"{'on' if config.get('loss', {}).get('pet', {}).get('enabled') else 'off'}; task lr "
        f"{training.get('task_optimizer', {}).get('lr', '?')}, safety lr {training.get('safety_optimizer', {}).get('lr', '?')}; "
        f"early stopping on `{training.get('early_stopping', {}).get('metric', '?')}`. Command: "
        "`so8t train --config configs/training.yaml` (or `make demo`).", "",
        "## Metrics",
    ]
    if evaluation:
        lines.append(f"From `{eval_json}` (argmax decisions, temperature {evaluation.get('temperature', 1):.2f}; "
                     "95% bootstrap intervals):")
        lines.append("")
        lines.append("| data | rows | numbers |")
        lines.append("|---|---|---|")
        for name, rep in evaluation.get("datasets", {}).items():
            keys = rep.get("headline") or []
            if "safety_score" in keys or not keys:  # the corpus: the safety headline, not every metric
                keys = ["safety_score", "macro_f1", "refuse_recall", "dangerous_compliance", "over_refusal", "ece"]
            shown = ", ".join(f"{k} {_fmt(rep, k)}" for k in keys if rep.get(k) is not None)
            lines.append(f"| {name} | {rep['n']} | {shown} |")
    else:
        lines.append(f"Not measured: `{eval_json}` is missing (run `so8t evaluate ... --out {eval_json}`).")
    baseline = _load(baseline_json)
    if baseline and evaluation and "test" in evaluation.get("datasets", {}):
        ours, bow = evaluation["datasets"]["test"]["macro_f1"], baseline["results"]["test"]["macro_f1"]
        lines += ["", f"Yardstick (`python benchmarks/bow_baseline.py`): a bag-of-tokens logistic regression scores "
                      f"test macro-F1 {bow:.3f} against this model's {ours:.3f}"
                      + (": the model does not beat keyword spotting." if ours <= bow else ".")]
    lines += ["", "## Quantization"]
    if quant:
        lines += ["From `benchmarks/gguf_decisions.py` (same requests, one process):", "",
                  "| backend | MiB | agreement with fp32 | macro-F1 | decide p50 ms |", "|---|---|---|---|---|"]
        for r in quant["results"]:
            lines.append(f"| {r['backend']} | {r['size_mib']:.1f} | {r['agreement_with_fp32']:.3f} | "
                         f"{r['macro_f1']:.3f} | {r['decide_p50_ms']:.1f} |")
    else:
        lines.append(f"Not measured: `{quant_json}` is missing (`python benchmarks/gguf_decisions.py`).")
    lines += ["", "## Gate ablation"]
    if ablation:
        if ablation.get("runs"):
            steps = ", ".join(map(str, ablation.get("steps") or [])) or "?"
            lines += ["", f"{ablation.get('runs_ok', '?')} of {ablation['runs']} training runs finished "
                          f"(the tiny preset, {steps} steps each; sweep summary `{ablation.get('summary_csv', '?')}`)."]
        if ablation.get("conclusion"):
            lines += ["", f"**Finding.** {ablation['conclusion']}", ""]
        if ablation.get("geometry"):
            lines += ["**Why.** " + ablation["geometry"].replace("\n", " "), ""]
        lines += [f"Per configuration, from `{ablation_json}` (`notebooks/02_gate_ablation.ipynb`):", "", "```",
                  ablation["finding"], "```"]
        for path in follow_ups:
            more = _load(Path(path))
            if more and more.get("conclusion"):
                lines += ["", f"Follow-up, `{path}` (sweep summary `{more.get('summary_csv', '?')}`, baseline "
                              f"`{more.get('baseline', 'none')}`): {more['conclusion']}",
                          "", more.get("geometry", "").replace("\n", " ")]
    else:
        lines.append(f"Not run yet: `{ablation_json}` is missing (`so8t sweep experiments/gate_ablation.yaml`, "
                     "then notebook 02). Until then there is no evidence either way that non-commutative gating helps.")
    figures = [f for f in CARD_FIGURES if (Path("figures") / f).is_file()]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f[:-4]}](figures/{f})" for f in figures]
    lines += ["", "## Limits",
              "- Measured on a tiny random-init model on CPU; nothing here transfers to a 7B model without re-measuring.",
              "- The corpus is generated from hand-written seeds; real traffic will differ. Japanese rows score worse than English ones.",
              "- The threshold rule trades dangerous compliance for escalations: at 0.8 the tiny model escalates most requests.",
              "- Routing categories come from keywords, not from the model.", ""]
    return "\n".join(lines)
