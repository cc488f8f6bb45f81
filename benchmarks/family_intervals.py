"""The committed default's corpus intervals again, resampling request families instead of rows (no model runs).

    python benchmarks/family_intervals.py [experiments/eval/so8t-demo.preds.jsonl]
                                          [--out benchmarks/results/family_intervals.json]

A corpus split holds each seed request in about ten variants (its family). Resampling rows treats them as ten
independent observations, so the intervals the result files written before ``a3145e0`` carry were about half as
wide as the data allows. This script reads a ``--predictions`` file and the splits it names, and computes the
headline metrics' 95% intervals both ways (1000 resamples, seed 0, ``eval/report.safety_report``) from the very
decisions that were committed, so the README and the model card can quote the wider ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.data.benchmarks import load_any  # noqa: E402
from so8t_lib.eval.evaluate import resampling_families  # noqa: E402
from so8t_lib.eval.report import safety_report  # noqa: E402

METRICS = ("macro_f1", "dangerous_compliance", "over_refusal")
CORPUS_SPLITS = ("val", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("predictions", nargs="?", default="experiments/eval/so8t-demo.preds.jsonl")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/results/family_intervals.json")
    args = parser.parse_args()
    rows: dict[str, dict[str, dict]] = {}
    with open(args.predictions, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            rows.setdefault(row["dataset"], {})[row["id"]] = row
    result = {"predictions": args.predictions, "bootstrap": args.bootstrap, "datasets": {}}
    for name in CORPUS_SPLITS:
        if name not in rows:
            continue
        table = load_any(name)
        missing = set(table["id"]) ^ set(rows[name])
        if missing:
            raise SystemExit(f"{args.predictions}: its {name} rows are not the split's ({len(missing)} ids differ); "
                             "the predictions were written for another corpus version")
        gold = [rows[name][i]["gold"] for i in table["id"]]
        pred = [rows[name][i]["decision"] for i in table["id"]]
        families = resampling_families(table)
        by_rows = safety_report(gold, pred, bootstrap=args.bootstrap)
        by_families = safety_report(gold, pred, bootstrap=args.bootstrap, families=families)
        result["datasets"][name] = {
            "rows": len(table), "families": len(set(families)),
            **{metric: {"value": by_rows[metric], "rows_ci": by_rows["ci"][metric],
                        "families_ci": by_families["ci"][metric]} for metric in METRICS}}
        for metric in METRICS:
            entry = result["datasets"][name][metric]
            (lo, hi), (flo, fhi) = entry["rows_ci"], entry["families_ci"]
            print(f"{name} {metric:22s} {entry['value']:.3f}  rows [{lo:.3f}, {hi:.3f}]  "
                  f"families [{flo:.3f}, {fhi:.3f}]  ({(fhi - flo) / (hi - lo):.1f}x as wide)")
    out = atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
