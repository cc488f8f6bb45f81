"""Do several seeds of one recipe decide better together? Each run alone against the mean of their probabilities.

    python benchmarks/seed_ensemble.py experiments/eval/so8t-demo.preds.jsonl \
        experiments/eval/so8t-demo-seed1.preds.jsonl experiments/eval/so8t-demo-seed2.preds.jsonl \
        [--targets 0.05,0.02] [--out benchmarks/results/seed_ensemble.json]

Seconds; no model runs. The files are ``so8t evaluate --predictions`` output of runs that differ only in their
seed, scored on the same rows (val beside test, xstest, sst). The seed moves where a run's argmax boundary falls on
the public sets more than most recipe changes do (docs/benchmarks.md, "Three seeds of the default"); averaging the
members' calibrated probabilities is the plainest way to take that chance out. For each member and for the
average: argmax decisions scored as ``benchmarks/operating_point.py`` scores them (dangerous compliance with its
interval, safe requests not allowed, the public sets' harmful prompts not allowed), the ranking (AUROC of
1 - p(ALLOW)), and the runtime threshold chosen on val for each dangerous-compliance target, scored on the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.paths import project_relative  # noqa: E402
from so8t_lib.core.schema import ALLOW  # noqa: E402
from so8t_lib.eval.operating_point import add_choice_arguments, operating_point, scored  # noqa: E402
from so8t_lib.eval.predictions import PREDICTIONS_SUFFIX, families_by_dataset, read_predictions  # noqa: E402
from so8t_lib.eval.provenance import run_record  # noqa: E402
from so8t_lib.eval.ranking import not_allow_auroc  # noqa: E402
from so8t_lib.eval.served import argmax_decisions  # noqa: E402
from so8t_lib.workbench.card_sections import ENSEMBLE_RUN as ENSEMBLE  # noqa: E402

TARGETS = (0.05, 0.02)


def aligned_members(paths: list[Path]) -> tuple[dict[str, list[str]], dict[str, np.ndarray]]:
    """dataset -> gold labels, and dataset -> probabilities (members, rows, 3), after checking that every file
    holds the same rows with the same gold labels (an error names the first file that does not)."""
    if len(paths) < 2:
        raise SystemExit("an ensemble needs at least two prediction files")
    members = [read_predictions(path) for path in paths]
    reference = members[0]
    for path, rows in zip(paths[1:], members[1:]):
        if rows.keys() != reference.keys():
            missing, extra = len(reference.keys() - rows.keys()), len(rows.keys() - reference.keys())
            raise SystemExit(f"{path}: not the rows of {paths[0]} ({missing} missing, {extra} others); evaluate "
                             f"every member on the same --data sets")
        differs = next((key for key in reference if rows[key][0] != reference[key][0]), None)
        if differs is not None:
            raise SystemExit(f"{path}: gold label of {differs} is {rows[differs][0]!r}, {paths[0]} says "
                             f"{reference[differs][0]!r}; the members were scored on different corpus versions")
    gold: dict[str, list[str]] = {}
    probs: dict[str, list] = {}
    for key, (label, _, _) in reference.items():
        gold.setdefault(key[0], []).append(label)
        probs.setdefault(key[0], []).append([rows[key][1] for rows in members])
    return gold, {name: np.asarray(p, dtype=float).transpose(1, 0, 2) for name, p in probs.items()}


def score_probabilities(gold: dict[str, list[str]], probs: dict[str, np.ndarray], choose_on: str,
                        targets: tuple[float, ...], resamples: int,
                        families: dict[str, list[str] | None] | None = None) -> dict:
    """One member's (or the average's) argmax, ranking and val-chosen operating points; the corpus splits'
    intervals resample ``families`` (``families_by_dataset``)."""
    families = families or {}
    sets = {name: (gold[name], probs[name]) for name in gold if name != choose_on}
    return {
        "argmax": {name: scored(g, np.asarray(argmax_decisions(p)), resamples, families.get(name))
                   for name, (g, p) in sets.items()},
        "auroc": {name: not_allow_auroc(p[:, ALLOW], g) for name, (g, p) in sets.items()},
        "targets": {f"{t:g}": operating_point((gold[choose_on], probs[choose_on]), sets, t, resamples, choose_on,
                                              families)
                    for t in targets},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", type=Path, help="so8t evaluate --predictions files, one per seed")
    add_choice_arguments(parser, TARGETS)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/seed_ensemble.json")
    args = parser.parse_args(argv)
    gold, probs = aligned_members(args.predictions)
    families = families_by_dataset(read_predictions(args.predictions[0]))  # the rows, in the order gold has them
    if args.choose_on not in gold:
        raise SystemExit(f"the files hold no {args.choose_on!r} rows to choose thresholds on (they have "
                         f"{sorted(gold)}); evaluate with --data {args.choose_on} beside the others")
    names = [path.name.removesuffix(PREDICTIONS_SUFFIX) for path in args.predictions]
    if len(set(names)) < len(names):
        raise SystemExit(f"two members share a file name ({sorted(n for n in names if names.count(n) > 1)[0]}); "
                         "the results are keyed by it: rename one")
    result: dict = {"benchmark": "seed_ensemble", **run_record("benchmarks/seed_ensemble.py", args, argv), "members": [project_relative(p) for p in args.predictions],
                    "chosen_on": args.choose_on, "targets": list(args.targets), "runs": {}}
    for index, name in enumerate(names):
        member = {key: p[index] for key, p in probs.items()}
        result["runs"][name] = score_probabilities(gold, member, args.choose_on, args.targets, args.resamples,
                                                       families)
    average = {key: p.mean(axis=0) for key, p in probs.items()}
    result["runs"][ENSEMBLE] = score_probabilities(gold, average, args.choose_on, args.targets, args.resamples,
                                                    families)
    for name, run in result["runs"].items():
        test, xstest, sst = (run["argmax"].get(k) or {} for k in ("test", "xstest", "sst"))
        print(f"{name}: test macro-F1 {test.get('macro_f1')}, dangerous compliance {test.get('dangerous_compliance')}; "
              f"XSTest safe not allowed {xstest.get('over_refusal_incl_escalate')}, unsafe not allowed "
              f"{xstest.get('not_allowed_rate_unsafe')}, AUROC {run['auroc'].get('xstest')}; SST not allowed "
              f"{sst.get('not_allowed_rate')}")
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
