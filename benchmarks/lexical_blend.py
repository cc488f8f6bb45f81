"""Does a keyword model know what SafetyHeadB misses? The model's probabilities pooled with the char n-gram
TF-IDF baseline's, the pool's weight chosen on val, scored on every other data set.

    python benchmarks/lexical_blend.py experiments/eval/so8t-focus800-full.preds.jsonl [more .preds.jsonl] \
        [--choose-on val] [--targets 0.05,0.02] [--out benchmarks/results/lexical_blend.json]

About a minute: the baseline is fitted on the training split (as ``so8t evaluate --baselines`` fits it); no
model runs. The pool is log-linear, p ∝ p_model^w · p_keyword^(1-w) (w = 1: the model alone; w = 0: the
baseline alone), and w is the grid value with the highest macro-F1 on val at argmax. At that w, on every other
data set in the file, beside the model alone and the baseline alone: the argmax numbers (macro-F1 and dangerous
compliance with 95% intervals, over-refusal, escalations; on the public sets the share of harmful prompts not
allowed), then the runtime threshold chosen on val for each dangerous-compliance target, as
``benchmarks/operating_point.py`` chooses it. A weight that helps the corpus but lets more public harmful
prompts through is a keyword model fitting the corpus's words, not a better gate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.data.benchmarks import load_any  # noqa: E402
from so8t_lib.eval.baselines import baseline_probabilities, fit_baselines  # noqa: E402
from so8t_lib.eval.operating_point import add_choice_arguments, operating_point, scored  # noqa: E402
from so8t_lib.eval.predictions import PREDICTIONS_SUFFIX, families_by_dataset, read_predictions  # noqa: E402
from so8t_lib.eval.provenance import run_record  # noqa: E402
from so8t_lib.eval.report import safety_report  # noqa: E402
from so8t_lib.eval.served import argmax_decisions  # noqa: E402

BASELINE = "char_ngram_tfidf"
WEIGHTS = tuple(round(w, 1) for w in np.linspace(0.0, 1.0, 11))
TARGETS = (0.05, 0.02)
FLOOR = 1e-6  # a probability the pool may take the log of; keeps one confident zero from vetoing the other model


def pooled(p_model: np.ndarray, p_keyword: np.ndarray, weight: float) -> np.ndarray:
    """The log-linear pool of two (N, 3) probability arrays, renormalised per row."""
    logits = weight * np.log(np.maximum(p_model, FLOOR)) + (1.0 - weight) * np.log(np.maximum(p_keyword, FLOOR))
    logits -= logits.max(axis=1, keepdims=True)
    pool = np.exp(logits)
    return pool / pool.sum(axis=1, keepdims=True)


def argmax_labels(probs: np.ndarray) -> list[str]:
    return argmax_decisions(probs)  # an exact tie goes to the safer class, as so8t evaluate decides


def keyword_probabilities(datasets: set[str], keyword_model) -> dict[str, dict[str, np.ndarray]]:
    """dataset -> row id -> the baseline's probabilities, for every data set a predictions file names."""
    out = {}
    for name in sorted(datasets):
        try:
            table = load_any(name)
        except Exception as error:  # noqa: BLE001 - say which data set a file names that cannot be loaded
            raise SystemExit(f"data set {name!r} named in the predictions cannot be loaded here ({error}); "
                             "build the corpus (make corpus) or pass predictions of the project's data sets") from None
        probs = baseline_probabilities(keyword_model, table)
        out[name] = dict(zip(map(str, table["id"]), probs))
    return out


def aligned(rows: dict, keyword: dict[str, dict[str, np.ndarray]]) -> dict[str, tuple[list[str], np.ndarray, np.ndarray]]:
    """dataset -> (gold, the model's probabilities, the baseline's), row for row."""
    grouped: dict[str, tuple[list, list, list]] = {}
    for (dataset, row_id), (gold, probs, _) in rows.items():
        if row_id not in keyword[dataset]:
            raise SystemExit(f"{dataset} row {row_id!r} is not in the data set as built here: the predictions are "
                             "of another build; re-run so8t evaluate")
        cell = grouped.setdefault(dataset, ([], [], []))
        cell[0].append(gold)
        cell[1].append(probs)
        cell[2].append(keyword[dataset][row_id])
    return {name: (g, np.asarray(pm, dtype=float), np.asarray(pk, dtype=float)) for name, (g, pm, pk) in grouped.items()}


def blend_report(path: Path, rows: dict, keyword: dict, choose_on: str, targets: tuple[float, ...],
                 resamples: int) -> dict:
    sets, families = aligned(rows, keyword), families_by_dataset(rows)
    if choose_on not in sets:
        raise SystemExit(f"{path}: holds no {choose_on!r} rows to choose the weight on (it has {sorted(sets)}); "
                         f"evaluate with --data {choose_on} beside the others")
    gold_val, model_val, keyword_val = sets.pop(choose_on)
    val_f1 = {w: safety_report(gold_val, argmax_labels(pooled(model_val, keyword_val, w)))["macro_f1"] for w in WEIGHTS}
    weight = max(WEIGHTS, key=lambda w: (val_f1[w], w))  # ties go to the model's side
    result: dict = {"file": project_relative(path), "chosen_on": choose_on, "rows_chosen_on": len(gold_val),
                    f"{choose_on}_macro_f1_by_weight": {f"{w:g}": round(f, 4) for w, f in val_f1.items()},
                    "weight": weight, "argmax": {}, "targets": {}}
    pools = {"model": 1.0, "blend": weight, "keyword": 0.0}
    for name, (gold, p_model, p_keyword) in sets.items():
        result["argmax"][name] = {who: scored(gold, argmax_labels(pooled(p_model, p_keyword, w)), resamples,
                                              families[name]) for who, w in pools.items()}
    for target in targets:
        cell = result["targets"][f"{target:g}"] = {}
        for who, w in pools.items():
            cell[who] = operating_point((gold_val, pooled(model_val, keyword_val, w)),
                                        {name: (g, pooled(pm, pk, w)) for name, (g, pm, pk) in sets.items()},
                                        target, resamples, choose_on, families)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="so8t evaluate --predictions files holding val")
    add_choice_arguments(parser, TARGETS, chosen="weight and thresholds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/lexical_blend.json")
    args = parser.parse_args(argv)
    targets = args.targets
    files = {path: read_predictions(path) for path in args.predictions}  # bad files fail before the fit
    keyword_model = fit_baselines(names=(BASELINE,))[BASELINE]
    keyword = keyword_probabilities({dataset for rows in files.values() for dataset, _ in rows}, keyword_model)
    result = {"benchmark": "lexical_blend", **run_record("benchmarks/lexical_blend.py", args, argv), "baseline": BASELINE, "pool": "p_model^w * p_keyword^(1-w)",
              "weights": list(WEIGHTS), "targets": list(targets), "recipes": {}}
    for path in tqdm(args.predictions, desc="recipes"):
        name = path.name.removesuffix(PREDICTIONS_SUFFIX)
        report = result["recipes"][name] = blend_report(path, files[path], keyword, args.choose_on, targets, args.resamples)
        test = report["argmax"].get("test")
        if test:
            print(f"{name}: w={report['weight']:g}; test macro-F1 model {test['model']['macro_f1']:.3f}, blend "
                  f"{test['blend']['macro_f1']:.3f}, keyword {test['keyword']['macro_f1']:.3f}; dangerous compliance "
                  f"{test['model']['dangerous_compliance']:.3f} / {test['blend']['dangerous_compliance']:.3f} / "
                  f"{test['keyword']['dangerous_compliance']:.3f}")
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
