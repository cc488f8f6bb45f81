"""What evaluating on the runtime's text changes: the same checkpoint scored on raw table text and on the text the
runtime gives the model.

    python benchmarks/served_text.py [--model checkpoints/so8t-demo] [--data test xstest sst]
                                     [--out benchmarks/results/served_text.json]

Until ``eval/served.model_inputs``, ``so8t evaluate`` handed the model each row's text as the table holds it,
while the runtime first runs ``validate_request`` (NFKC, invisible characters removed, stripped): a full-width
"Ｈｏｗ　ｄｏ　Ｉ…" was scored as written and served as "How do I…". Every result file written before it describes
the raw text. This script decides each data set both ways with one loaded model (argmax, ties to the safer
class, bootstrap intervals over families on corpus splits) and reports how many rows' text differs, how many
decisions change, and the headline metrics both ways.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.data.benchmarks import load_any  # noqa: E402
from so8t_lib.eval.evaluate import predict_rows, report_from_predictions  # noqa: E402
from so8t_lib.eval.served import model_inputs, served_decisions  # noqa: E402
from so8t_lib.serve.backends import load_decider  # noqa: E402

METRICS = ("macro_f1", "dangerous_compliance", "over_refusal", "not_allowed_rate_unsafe", "not_allowed_rate")


def raw_decisions(model, table) -> tuple[np.ndarray, list[str]]:
    """The old way: the table's own text, an empty context as none."""
    contexts = [c if isinstance(c, str) and c else None for c in table["context"]]
    probs = np.asarray(model.decide(list(table["user_request"]), contexts, progress=True).numpy(), dtype=float)
    return probs, served_decisions(probs, None)


def headline(report: dict) -> dict:
    return {name: report.get(name) for name in METRICS} | {"ci": {k: report["ci"].get(k) for k in METRICS
                                                                  if report.get("ci") and k in report["ci"]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="checkpoints/so8t-demo")
    parser.add_argument("--data", nargs="+", default=["test", "xstest", "sst"])
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", default="benchmarks/results/served_text.json")
    args = parser.parse_args()
    model = load_decider(args.model, "cpu")
    result = {"model": args.model, "model_version": str(model.model_version), "datasets": {},
              "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()}}
    for name in args.data:
        table = load_any(name).reset_index(drop=True)
        inputs = model_inputs(table)
        differs = sum(r != clean or (c or None) != cc for r, c, clean, cc in
                      zip(table["user_request"][inputs.positions], table["context"][inputs.positions],
                          inputs.requests, inputs.contexts))
        raw_probs, raw = raw_decisions(model, table)
        served = predict_rows(model, table, progress=True)
        changed = [i for i, (a, b) in enumerate(zip(raw, served.decisions)) if a != b]
        ways = {"raw_text": report_from_predictions(table, raw_probs, raw, args.bootstrap),
                "served_text": report_from_predictions(table, served.probs, served.decisions, args.bootstrap,
                                                       served.invalid)}
        result["datasets"][name] = {
            "rows": len(table), "rows_whose_text_differs": int(differs), "invalid_input_rows": len(inputs.invalid),
            "decisions_changed": len(changed), "changed_ids": [str(table["id"][i]) for i in changed][:50],
            "changed_to": {f"{raw[i]}->{served.decisions[i]}": sum(1 for j in changed if (raw[j], served.decisions[j])
                                                                   == (raw[i], served.decisions[i])) for i in changed},
            **{way: headline(report) for way, report in ways.items()},
            "ci_resampling": ways["served_text"].get("ci_resampling")}
        entry = result["datasets"][name]
        print(f"{name}: {differs} of {len(table)} rows' text differs, {len(changed)} decisions change; " +
              ", ".join(f"{m} {entry['raw_text'][m]} -> {entry['served_text'][m]}" for m in METRICS
                        if entry["raw_text"][m] is not None))
    out = atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
