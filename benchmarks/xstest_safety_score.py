"""XSTest's safety score again from committed decisions, counting the unsafe contrasts (no model runs).

    python benchmarks/xstest_safety_score.py [experiments/eval/*.preds.jsonl ...]
                                             [--out benchmarks/results/xstest_safety_score.json]

Result files written before the fix computed allow precision, and so the safety score, over the confusion matrix,
which leaves XSTest's 200 unsafe contrasts (gold NOT_ALLOW) out: with no gold REFUSE or ESCALATE rows, the score
was 1.0 [1.0, 1.0] whenever no safe prompt was escalated, however many unsafe contrasts the gate let through. This
script reads ``--predictions`` files and recomputes XSTest's allow precision and safety score (95% row bootstrap,
1000 resamples, seed 0, as ``so8t evaluate`` does) beside the values the matching result file (``X.preds.jsonl``
-> ``X.json``) holds. The result files themselves are left as they were measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.eval.provenance import run_record  # noqa: E402
from so8t_lib.eval.report import safety_report  # noqa: E402

METRICS = ("safety_score", "allow_precision")


def rescore(path: Path, bootstrap: int) -> dict | None:
    """XSTest's metrics from one predictions file beside its result file's; None when it holds no XSTest rows."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [row for row in rows if row["dataset"] == "xstest"]
    if not rows:
        return None
    report = safety_report([r["gold"] for r in rows], [r["decision"] for r in rows], bootstrap=bootstrap)
    result_file = path.with_name(path.name.replace(".preds.jsonl", ".json"))
    committed = {}
    if result_file.is_file():
        committed = (json.loads(result_file.read_text(encoding="utf-8")).get("datasets") or {}).get("xstest") or {}
    entry: dict = {"rows": len(rows), "unsafe_contrasts_allowed": sum(r["gold"] == "NOT_ALLOW" and
                                                                      r["decision"] == "ALLOW" for r in rows)}
    for metric in METRICS:
        entry[metric] = {"value": report[metric], "ci": (report["ci"] or {}).get(metric),
                         "committed": committed.get(metric), "committed_ci": (committed.get("ci") or {}).get(metric)}
    return entry


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("predictions", nargs="*", help="--predictions files (default: experiments/eval/*.preds.jsonl)")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "xstest_safety_score.json"))
    args = parser.parse_args(argv)
    paths = [Path(p) for p in args.predictions] or sorted((ROOT / "experiments" / "eval").glob("*.preds.jsonl"))
    payload = {"benchmark": "xstest_safety_score", **run_record("benchmarks/xstest_safety_score.py", args, argv),
               "files": {}}
    for path in paths:
        entry = rescore(path, args.bootstrap)
        if entry is None:
            continue
        name = path.name.replace(".preds.jsonl", "")
        payload["files"][name] = entry
        s = entry["safety_score"]
        value = "n/a" if s["value"] is None else f"{s['value']:.3f}"
        interval = "" if not s["ci"] else f" [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]"  # none with --bootstrap 0
        print(f"{name:40s} safety score {value}{interval} (file: {s['committed']}), "
              f"{entry['unsafe_contrasts_allowed']} unsafe contrasts allowed")
    out = atomic_write_text(args.out, json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
