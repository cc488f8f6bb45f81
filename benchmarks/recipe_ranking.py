"""Compare recipes by how they rank requests, not only by their argmax decisions, from committed predictions.

    python benchmarks/recipe_ranking.py --baseline so8t-demo experiments/eval/so8t-demo.preds.jsonl \
        experiments/eval/so8t-focus.preds.jsonl experiments/eval/so8t-depths.preds.jsonl \
        [--out benchmarks/results/recipe_ranking.json] [--figure docs/figures/recipe_ranking.png]

Seconds; no model runs. Two recipes can order the requests alike and differ at argmax only because their class
biases differ. Per data set (the test split also on its short rows and the rest), from each ``so8t evaluate
--predictions`` file: the argmax decisions' dangerous compliance, the AUROC of 1 - p(ALLOW) (``not_allow_auroc``), and the dangerous compliance of the rule
"ALLOW iff p(ALLOW) >= t" with t set to block 30% / 50% of the safe rows (``so8t_lib.eval.ranking``, which says
when that rule is the runtime's), each against the baseline's with a paired bootstrap 95% interval of the
difference (the same resamples for both). On a corpus split the bootstrap resamples whole request families (each
holds about ten variants of one request; ``eval/report.family_members``), as the evaluation's own intervals do:
the family of a row comes from its id (``eval.predictions.family_of_id``, as every benchmark that reads predictions
files finds it), so predictions of an earlier corpus build, whose rows other splits hold now, need no lookup. The
public sets resample rows (their ``family`` is a prompt type). ``resampled`` says, per subset, which unit was
drawn and how many there are. Then the threshold set on the test split's safe rows (in-sample
there; the public sets never saw it) applied to every data set (``at_test_threshold_*``, with whether the
runtime's rule reaches it). On a public set, ``by_type`` gives the share not allowed per prompt type (XSTest's
``type``, SimpleSafetyTests' harm area), joined from the set itself by row id. The figure draws harmful requests
let through against safe ones blocked.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.metrics import dangerous_compliance_rate  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.core.schema import ALLOW  # noqa: E402
from so8t_lib.data.benchmarks import BENCHMARKS, load_any  # noqa: E402
from so8t_lib.data.tables import is_short_family  # noqa: E402
from so8t_lib.eval.evaluate import not_allowed_by_type  # noqa: E402
from so8t_lib.eval.predictions import PREDICTIONS_SUFFIX as SUFFIX  # noqa: E402
from so8t_lib.eval.predictions import family_of_id, is_corpus_dataset, read_predictions  # noqa: E402
from so8t_lib.eval.ranking import (  # noqa: E402
    BLOCKING_BUDGETS,
    RUNTIME_RULE_MIN_THRESHOLD,
    allow_threshold_for_blocking,
    ranking_report,
    rule_at_threshold,
)
from so8t_lib.eval.report import family_members, resample_indices  # noqa: E402


def subsets(keys: list[tuple[str, str]], short_ids: set[str]) -> dict[str, list[int]]:
    """Row positions per reported subset: each data set, and the test split's short rows and the rest apart."""
    parts: dict[str, list[int]] = {}
    for position, (dataset, row_id) in enumerate(keys):
        parts.setdefault(dataset, []).append(position)
        if dataset == "test":
            parts.setdefault("test_short" if row_id in short_ids else "test_other", []).append(position)
    return parts


def paired_interval(gold: np.ndarray, p_model: np.ndarray, p_base: np.ndarray, resamples: int,
                    seed: int, members: list[np.ndarray] | None = None) -> dict[str, list[float] | None]:
    """95% percentile intervals of model minus baseline for each ranking metric, both scored on the same resamples:
    of whole families with ``members`` (``family_members``: every row of a drawn family kept), else of rows."""
    rng = np.random.default_rng(seed)
    diffs: dict[str, list[float]] = {}
    for _ in range(resamples):
        take = resample_indices(rng, len(gold), members)
        model, base = ranking_report(p_model[take], gold[take]), ranking_report(p_base[take], gold[take])
        for key, value in model.items():
            if value is not None and base[key] is not None:
                diffs.setdefault(key, []).append(value - base[key])
    return {key: {"interval": [round(float(np.percentile(v, 2.5)), 4), round(float(np.percentile(v, 97.5)), 4)],
                  "resamples_defined": len(v)} for key, v in diffs.items()}


def at_threshold(gold: np.ndarray, p_allow: np.ndarray, threshold: float) -> dict[str, float | bool | None]:
    """What the rule "ALLOW iff p(ALLOW) >= threshold" does to a data set's safe and harmful rows."""
    blocked, allowed = rule_at_threshold(p_allow, gold, threshold)
    return {"threshold": round(threshold, 4), "runtime_rule_reaches": threshold >= RUNTIME_RULE_MIN_THRESHOLD,
            "safe_blocked": None if blocked is None else round(blocked, 4),
            "harmful_allowed": None if allowed is None else round(allowed, 4)}


def blocking_curve(gold: np.ndarray, p_allow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Share of safe rows blocked and of harmful rows let through, for every threshold on p(ALLOW)."""
    points = [rule_at_threshold(p_allow, gold, t) for t in np.unique(np.concatenate([[0.0, 1.0 + 1e-9], p_allow]))]
    return np.array([b for b, _ in points], dtype=float), np.array([a for _, a in points], dtype=float)


def draw(result: dict, series: dict, path: Path) -> None:
    from so8t_lib.workbench.plots import plt, save_figure

    panels = [name for name in ("test", "test_short", "xstest") if name in result["baseline_subsets"]]
    if not panels:
        return
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
    for ax, subset in zip(axes[0], panels):
        for recipe, by_subset in series.items():
            blocked, through = blocking_curve(*by_subset[subset])
            ax.step(blocked, through, where="post", label=recipe)
        for budget in BLOCKING_BUDGETS:
            ax.axvline(budget, color="grey", lw=0.6, ls=":")
        ax.set(title=subset.replace("_", " "), xlabel="safe requests not allowed", xlim=(0, 1), ylim=(0, 1))
    axes[0][0].set_ylabel("harmful requests allowed")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("ALLOW iff p(ALLOW) >= t, every t: lower is better")
    fig.tight_layout()
    save_figure(fig, path)


def prompt_types(dataset: str, ids: list[str]) -> pd.DataFrame | None:
    """A public set's prompt type (its ``family``) per row id, None for the corpus splits: predictions carry only
    ids, so the types come from the set itself (``<set>-unknown`` for an id it does not hold)."""
    if dataset not in BENCHMARKS:
        return None
    table = load_any(dataset)
    family = dict(zip(table["id"], table["family"]))
    return pd.DataFrame({"family": [family.get(row_id, f"{dataset}-unknown") for row_id in ids]})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="so8t evaluate --predictions files")
    parser.add_argument("--baseline", required=True, help="the recipe the others are compared with (file stem)")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--skip", action="append", default=[],
                        help="a data set left out of every file, e.g. val where only some files hold it (repeatable)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/recipe_ranking.json")
    parser.add_argument("--figure", default=str(ROOT / "docs/figures/recipe_ranking.png"), help="'' draws none")
    args = parser.parse_args(argv)

    recipes = {path.name.removesuffix(SUFFIX): {key: row for key, row in read_predictions(path).items()
                                                if key[0] not in args.skip} for path in args.predictions}
    if args.baseline not in recipes:
        raise SystemExit(f"--baseline {args.baseline!r} is none of {sorted(recipes)} (the file names without {SUFFIX})")
    keys = sorted(recipes[args.baseline])
    for name, rows in recipes.items():
        if sorted(rows) != keys:
            raise SystemExit(f"{name} scored other rows than {args.baseline}: compare predictions of the same data")
        if any(rows[k][0] != recipes[args.baseline][k][0] for k in keys):
            raise SystemExit(f"{name} and {args.baseline} disagree on gold labels: predictions of different data")
    # a row id starts with its family (the seed id), so the short rows and the families the intervals resample are
    # known from the id alone, whichever corpus build wrote the predictions
    short_ids = {row_id for dataset, row_id in keys if dataset == "test" and is_short_family(row_id)}
    positions = subsets(keys, short_ids)
    # what each subset's bootstrap draws: whole families on a corpus split, rows elsewhere (None)
    members = {subset: family_members([family_of_id(keys[i][1]) for i in rows], len(rows))
               if is_corpus_dataset(keys[rows[0]][0]) else None for subset, rows in positions.items()}
    gold = np.array([recipes[args.baseline][k][0] for k in keys])
    types = {subset: prompt_types(subset, [keys[i][1] for i in rows]) for subset, rows in positions.items()}
    p_allow = {name: np.array([rows[k][1][ALLOW] for k in keys]) for name, rows in recipes.items()}
    decisions = {name: np.array([rows[k][2] for k in keys]) for name, rows in recipes.items()}
    result: dict = {"baseline": args.baseline, "resamples": args.resamples,
                    "files": [project_relative(p) for p in args.predictions],
                    "baseline_subsets": {s: len(rows) for s, rows in positions.items()},
                    "resampled": {s: {"unit": "rows", "n": len(rows)} if members[s] is None
                                  else {"unit": "families", "n": len(members[s])} for s, rows in positions.items()},
                    "recipes": {}}
    series: dict = {}
    for index, (name, p) in enumerate(tqdm(p_allow.items(), desc="recipes")):
        result["recipes"][name], series[name] = {}, {}
        # the operator's way: the threshold set on the own test split, then applied to every data set (None without safe rows there)
        test_thresholds = {b: allow_threshold_for_blocking(p[positions["test"]], gold[positions["test"]], b)
                           for b in BLOCKING_BUDGETS} if "test" in positions else {}
        for subset, rows in positions.items():
            g = gold[rows]
            argmax_dc = dangerous_compliance_rate(g, decisions[name][rows])  # what the eval files report, per subset
            cell = {"n": len(rows), "argmax_dangerous_compliance": None if argmax_dc is None else round(argmax_dc, 4),
                    **{k: None if v is None else round(v, 4) for k, v in ranking_report(p[rows], g).items()}}
            for budget, threshold in test_thresholds.items():
                if threshold is not None:  # None: no safe rows in the test split
                    cell[f"at_test_threshold_{budget:.2f}"] = at_threshold(g, p[rows], threshold)
            if types[subset] is not None:
                cell["by_type"] = not_allowed_by_type(types[subset].assign(label=g), list(decisions[name][rows]),
                                                      subset)
            if name != args.baseline:
                cell["minus_baseline_95ci"] = paired_interval(g, p[rows], p_allow[args.baseline][rows],
                                                              args.resamples, seed=index, members=members[subset])
            result["recipes"][name][subset] = cell
            series[name][subset] = (g, p[rows])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    if args.figure:
        draw(result, series, Path(args.figure))
    for name, cells in result["recipes"].items():
        print(name + ": " + "; ".join(f"{s} AUROC {c['not_allow_auroc']}" for s, c in cells.items()))
    return result


if __name__ == "__main__":
    main()
