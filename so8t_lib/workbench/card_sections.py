"""The model card's prose that depends on what was trained and measured: the base model and its licence, the
recipe, the intervals the evaluation drew, and the limits. Each sentence is built from the config the run used, so a card for the tiny preset and a
card for the Gemma default never borrow each other's claims.
"""

from __future__ import annotations

from pathlib import Path

from ..model.pretrained import GGUF_BASES


def _layers(items: list | str | None) -> str:
    if not items or isinstance(items, str):  # None, [] or "all"
        return "every layer"
    items = sorted(items)
    contiguous = items == list(range(items[0], items[-1] + 1))
    return f"layers {items[0]}-{items[-1]}" if contiguous and len(items) > 2 else "layers " + ", ".join(map(str, items))


def base_section(model: dict) -> list[str]:
    """What the base is, how big, and under which terms it may be used."""
    preset = model.get("preset", "?")
    lines = ["## Base model"]
    if preset == "tiny":
        tiny = model.get("tiny", {})
        lines.append(f"Preset `tiny`: a randomly initialised {tiny.get('architecture', 'qwen2')}-shaped network (hidden "
                     f"{tiny.get('hidden_size', '?')}, {tiny.get('num_hidden_layers', '?')} layers) with trained "
                     "embeddings. It has no pretrained knowledge: its numbers show the workbench measuring and say "
                     "nothing about a pretrained model.")
    elif preset in GGUF_BASES:
        base = GGUF_BASES[preset]
        lines.append(f"Preset `{preset}`: Google's pretrained Gemma 3 270M base (268 M parameters, 18 layers, hidden "
                     f"640), installed from the PyPI package `{base.package.replace('_', '-')}` as a Q4_K_M GGUF file "
                     f"and dequantized once into an HF folder under `$SO8T_CACHE` (`{model.get('dtype', 'float32')}` "
                     "in training). TaskHeadA is Gemma's own LM head; SafetyHeadB is new.")
        lines += ["", f"**Licence.** The base and every model derived from it, this one and its GGUF files included, "
                      f"are under the {base.license}. The workbench's code is not."]
    else:
        lines.append(f"Preset `{preset}` (`{model.get('pretrained_path') or preset}`): see docs/training.md for how it "
                     "is loaded; this card was not measured on a run of it here.")
    return lines


def head_phrase(head: dict) -> str:
    """What SafetyHeadB reads and how it pools, in the card's words: ``read_layers`` index hidden states (i =
    layer i-1's output), none means the final-norm state."""
    read = head.get("read_layers") or []
    where = ("the final-norm states" if not read else
             "the output of layer" + ("s " if len(read) > 1 else " ") + ", ".join(str(i - 1) for i in read))
    units = head.get("hidden_units") or 0
    if head.get("pooling") == "max":
        return f"SafetyHeadB reading {where}: a {units}-unit hidden layer on every prompt token, max-pooled"
    shape = f"a {units}-unit hidden layer" if units else "linear"
    return f"SafetyHeadB ({shape}) on {where}, {head.get('pooling', 'last')}-pooled"


DEFAULT_CONFIG = "configs/training.yaml"  # what `so8t demo` (`make demo`) trains


def measured_here(model: dict) -> bool:
    """Whether the workbench trained and measured this preset itself (on 2 CPU cores): the tiny preset and the
    GGUF bases; another preset's card states no such thing."""
    return model.get("preset") == "tiny" or model.get("preset") in GGUF_BASES


def train_command(config_path: str | Path | None) -> str:
    """The command that trains the run the card describes, from the config file it was read from."""
    if config_path is None:
        return "`so8t train --config` with the config the run was trained with"
    shown = Path(config_path)
    if shown.is_absolute() and shown.resolve().is_relative_to(Path.cwd().resolve()):  # --run /home/.../run: the
        shown = shown.resolve().relative_to(Path.cwd().resolve())  # card is read elsewhere, relative to the project
    command = f"`so8t train --config {shown.as_posix()}`"
    same = Path(config_path).resolve() == Path(DEFAULT_CONFIG).resolve()
    return f"`make demo` (`so8t demo`), or {command}" if same else command


def recipe_section(model: dict, training: dict, loss: dict, config_path: str | Path | None = None) -> list[str]:
    """How the run was trained, in the config's own numbers; ``config_path`` names the training command."""
    lora, gates, head = model.get("lora", {}), model.get("gates", {}), model.get("head", {})
    frozen = training.get("freeze_below") or 0
    parts = [f"LoRA r={lora.get('r', '?')} on {_layers(lora.get('layers'))}",
             f"SO(8) gates (order `{gates.get('order', '?')}`) on {_layers(gates.get('layers'))}",
             head_phrase(head)]
    if frozen:
        parts.append(f"layers 0-{frozen - 1} frozen" + (" with their output cached once per row"
                                                         if training.get("cache_frozen_states") else ""))
    if training.get("head_warm_start"):
        parts.append("SafetyHeadB warm-started by " + (
            f"{training.get('head_warm_start_epochs', '?')} epochs of AdamW on the frozen token states"
            if head.get("pooling") == "max" else "a logistic-regression probe on the frozen states"))
    pet = loss.get("pet", {})
    sample = training.get("train_max_rows")
    lines = ["## Training",
             "; ".join(parts) + f". PET {'on' if pet.get('enabled') else 'off'}"
             + (f" (weight {pet.get('weight')})" if pet.get("enabled") else "")
             + f"; decision-loss weight alpha {loss.get('alpha', '?')}; task lr "
             f"{training.get('task_optimizer', {}).get('lr', '?')}, safety lr "
             f"{training.get('safety_optimizer', {}).get('lr', '?')} (two optimizers); "
             f"{training.get('max_steps', '?')} steps of batch {training.get('batch_size', '?')}"
             + (f" on a stratified sample of {sample} training rows" if sample else " drawn from the whole training split")
             + f"; early stopping on `{training.get('early_stopping', {}).get('metric', '?')}`"
             + (", 2 CPU cores" if measured_here(model) else "") + f". Command: {train_command(config_path)}."]
    return lines


ENSEMBLE_RUN = "mean of the members"  # benchmarks/seed_ensemble.py's name for the averaged run


def seed_spread(seeds: dict | None, source: str) -> str:
    """"over N seeds (file), test dangerous compliance ran a-b, ...", from benchmarks/seed_ensemble.py's result;
    "one seed" when there is none, so the card never states a spread no file holds."""
    runs = [r["argmax"] for name, r in ((seeds or {}).get("runs") or {}).items() if name != ENSEMBLE_RUN]
    if len(runs) < 2:
        return "one seed"
    parts = []
    for data, key, what in (("test", "dangerous_compliance", "test dangerous compliance"),
                            ("xstest", "over_refusal_incl_escalate", "XSTest's safe prompts not allowed"),
                            ("xstest", "not_allowed_rate_unsafe", "its unsafe ones")):
        values = [r[data][key] for r in runs if (r.get(data) or {}).get(key) is not None]
        if values:
            parts.append(f"{what} {min(values):.2f}-{max(values):.2f}")
    return f"one seed here; over {len(runs)} seeds (`{source}`), " + ", ".join(parts)


def has_intervals(report: dict) -> bool:
    """Whether a data set's report has intervals to claim: resamples drawn (a count above 0; a file written with
    --bootstrap -5 recorded -5) and at least one interval in ``ci``."""
    resamples = report.get("ci_resamples")
    return isinstance(resamples, int) and resamples > 0 and any(
        interval and None not in interval for interval in (report.get("ci") or {}).values())


def intervals_phrase(datasets: dict) -> str:
    """How the intervals were resampled, per data set: whole request families where the evaluation resampled them
    (``ci_resampling``), rows elsewhere; a result file written before that key resampled rows. Data sets with
    exact binomial intervals (``ci_exact_binomial``) are named, so those are not read as bootstrap intervals."""
    with_ci = {name: rep for name, rep in datasets.items() if has_intervals(rep)}
    if not with_ci:
        off = all(rep.get("ci_resamples") in (0, None) for rep in datasets.values())
        return "no intervals (evaluated with --bootstrap 0)" if off else "no intervals (the result file holds none)"
    resamples = sorted({rep["ci_resamples"] for rep in with_ci.values()})
    families = [f"{name} ({rep.get('ci_resampled_units', '?')} families)" for name, rep in with_ci.items()
                if rep.get("ci_resampling") == "families"]
    rows = [name for name, rep in with_ci.items() if rep.get("ci_resampling", "rows") != "families"]
    ways = ([f"whole request families on {', '.join(families)}"] if families else []) + \
        ([f"rows on {', '.join(rows)}"] if rows else [])
    exact = [name for name, rep in with_ci.items() if rep.get("ci_exact_binomial")]
    return (f"95% bootstrap intervals ({'/'.join(map(str, resamples))} resamples) resampling "
            + " and ".join(ways) + ("" if not exact else
                                    f"; on {', '.join(exact)} a rate at exactly 0 or 1, whose bootstrap interval "
                                    "collapses to a point, has the exact binomial (Clopper-Pearson) interval over the "
                                    "same units instead, marked \"exact binomial\""))


def routing_sentence(routers: dict[str, str | None] | None) -> str:
    """Where an escalation's route comes from, as the runtime configs (file -> ``escalation.router``) set it: the
    keyword table first, then the learned router a config names where the keywords find nothing or tie."""
    named = {config: router for config, router in (routers or {}).items() if router}
    if not named:
        return ("- Routing categories come from the keyword table (`so8t_lib/serve/categories.py`), not from the "
                "model: no runtime config names a learned router (`escalation.router`).")
    which = "; ".join(f"`{config}`: `{router}`" for config, router in named.items())
    alone = [f"`{config}`" for config, router in (routers or {}).items() if not router]
    return ("- Routing categories do not come from the model: the keyword table (`so8t_lib/serve/categories.py`) "
            "picks the route, and where it finds no keyword or a tie, the learned router the runtime config names "
            f"in `escalation.router` does (a character n-gram TF-IDF logistic regression fitted on the corpus, `so8t router "
            f"fit`; {which}). A config without one" + (f" ({', '.join(alone)})" if alone else "")
            + ", or whose router file cannot be read, routes by keywords alone.")


def limits_section(model: dict, seeds: dict | None = None, seeds_source: str = "",
                   routers: dict[str, str | None] | None = None, sweeps: dict[str, dict] | None = None) -> list[str]:
    """What the numbers above do not show; ``seeds`` is the seed-ensemble benchmark's result, when there is one,
    ``routers`` each runtime config's ``escalation.router`` (``routing_sentence``), ``sweeps`` the gate ablation
    results the card quotes (path -> ablation.json), whose seeds and steps say how small an effect they could see."""
    lines = ["## Limits"]
    if model.get("preset") == "tiny":
        lines.append("- Measured on a tiny random-init model on CPU; nothing here transfers to a pretrained model "
                     "without re-measuring.")
    elif model.get("preset") in GGUF_BASES:
        lines.append(f"- A 270 M base, its SafetyHeadB fitted in minutes on 2 CPU cores "
                     f"({seed_spread(seeds, seeds_source)}): it is the workbench's honest small default, not a gate "
                     "to deploy. Compare it with the keyword baselines above, and the public sets with the corpus, "
                     "before trusting any number.")
    else:
        lines.append(f"- A `{model.get('preset', '?')}` base, which the workbench did not train and measure itself "
                     f"({seed_spread(seeds, seeds_source)}): the numbers above are only what the named result files "
                     "hold. Compare it with the keyword baselines above, and the public sets with the corpus, before "
                     "trusting any number.")
    lines += ["- The corpus is generated from hand-written seeds; real traffic will differ.",
              "- The threshold rule trades dangerous compliance for escalations; choose the threshold on val data "
              "from your own traffic.",
              ablation_sentence(sweeps or {}), routing_sentence(routers), ""]
    return lines


def ablation_sentence(sweeps: dict[str, dict]) -> str:
    """How much the quoted gate ablations measured, from their own files: each configuration's seeds (the largest
    ``n`` of its table) and training steps."""
    if not sweeps:
        return "- The gate ablation was not measured: no sweep result was found, so nothing here says whether gating helps."
    sizes: dict[tuple, list[str]] = {}
    for path, result in sweeps.items():
        seeds = max((row.get("n") or 0 for row in result.get("table") or []), default=0) or "?"
        steps = ", ".join(map(str, result.get("steps") or [])) or "?"
        sizes.setdefault((seeds, steps), []).append(f"`{path}`")
    parts = [f"{seeds} seeds of {steps} steps per configuration ({', '.join(paths)})"
             for (seeds, steps), paths in sizes.items()]
    return "- The gate ablation's sweeps are small, so they can only rule out large effects: " + "; ".join(parts) + "."


def refit_section(refit: dict | None, refit_json: str, fp32_macro_f1: float | None) -> list[str]:
    """The quantized files' agreement with fp32 before and after ``so8t export --refit-head``. The refit
    benchmark may have run on another training of the same recipe (another machine, an earlier corpus); when
    its fp32 macro-F1 differs from the ladder's, the card says so rather than mixing the two runs silently."""
    if not refit:
        return ["", f"Head refit not measured: `{refit_json}` is missing (`python benchmarks/head_refit.py`)."]
    rungs = {name: r for name, r in refit.get("rungs", {}).items() if "refitted_head" in r}
    lines = ["", f"With SafetyHeadB refitted to each file's own states (`so8t export --refit-head`; from "
                 f"`benchmarks/head_refit.py`, {refit.get('test_rows', '?')} test rows score, "
                 f"{refit.get('refit_rows', '?')} training rows fit):", "",
             "| file | agreement with fp32: exported head | refitted head | dangerous compliance: exported | "
             "refitted | pull |", "|---|---|---|---|---|---|"]
    for name, r in rungs.items():
        before, after = r["exported_head"], r["refitted_head"]
        dc = [("n/a" if x.get("dangerous_compliance") is None else f"{x['dangerous_compliance']:.3f}")
              for x in (before, after)]
        pull = r.get("refit", {}).get("pull")
        lines.append(f"| {name.upper()} | {before['agreement_with_fp32']:.3f} | {after['agreement_with_fp32']:.3f} "
                     f"| {dc[0]} | {dc[1]} | {'kept' if pull is None else pull} |")
    own = (refit.get("rungs", {}).get("fp32") or {}).get("macro_f1")
    if own is not None and fp32_macro_f1 is not None and round(own, 3) != round(fp32_macro_f1, 3):
        lines += ["", f"Measured on another training of this recipe (fp32 macro-F1 {own:.3f} on its sample, "
                      f"against {fp32_macro_f1:.3f} above): a run on another machine (CPU training is close, not "
                      "bitwise) or on an earlier corpus; docs/benchmarks.md says which."]
    return lines


def operating_point_section(points: dict | None, points_json: str, name: str) -> list[str]:
    """The runtime thresholds chosen on val for dangerous-compliance targets, and what each costs on the
    test split: the table a deployer sets ``inference.safety_threshold`` from. ``name`` is the recipe's
    entry in the benchmark's file (its predictions file's stem)."""
    lines = ["## Operating points"]
    recipes = (points or {}).get("recipes", {})
    if name not in recipes:
        return lines + [f"Not measured for `{name}`: `{points_json}` holds no such recipe "
                        "(`python benchmarks/operating_point.py`, on predictions that include val)."]
    recipe = recipes[name]
    # a result file written before ci_resampling was recorded resampled rows, as predictions files carry no families
    unit = next((t["test"].get("ci_resampling") for t in recipe.get("targets", {}).values() if t.get("test")), None)
    lines += [f"The runtime rule's threshold chosen on {recipe.get('chosen_on', 'val')} "
              f"({recipe.get('rows_chosen_on', '?')} rows) as `so8t evaluate --max-dangerous d` chooses it, then "
              f"applied to the test split (from `{points_json}`, predictions `{recipe.get('file', '?')}`; 95% "
              "bootstrap intervals resampling " + ("whole request families" if unit == "families" else
                                                   "rows, as a predictions file carries no families: narrower than "
                                                   "intervals over the test split's request families") + "):", "",
              "| target d on val | threshold | test: dangerous compliance | safe requests not allowed | escalated |",
              "|---|---|---|---|---|"]
    over = []  # targets the test split exceeds
    for target, point in recipe.get("targets", {}).items():
        test = point.get("test") or {}
        if not point.get("reachable") or not test:
            lines.append(f"| {target} | unreachable | n/a | n/a | n/a |")
            continue
        ci = test.get("dangerous_compliance_ci") or [None, None]
        interval = f" [{ci[0]:.2f}, {ci[1]:.2f}]" if None not in ci else ""
        lines.append(f"| {target} | {point['threshold']:.2f} | {test['dangerous_compliance']:.3f}{interval} | "
                     f"{test['over_refusal_incl_escalate']:.3f} | {test['escalation_rate']:.3f} |")
        if test["dangerous_compliance"] > float(target):
            over.append(target)
    if over:
        lines += ["", f"At {', '.join(over)} the test split lets more through than the target set on val: choose "
                      "on data like your traffic and keep a margin."]
    return lines
