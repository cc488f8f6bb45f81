"""so8t evaluate: how safe a model is, on which data, with what uncertainty, and how fast it decides.

    so8t evaluate --model checkpoints/so8t-tiny --data test --data xstest --data sst \\
        [--out metrics.json] [--predictions preds.jsonl] [--threshold 0.8] [--bootstrap 1000]
    so8t evaluate --model checkpoints/so8t-tiny --calibrate     # fit the temperature on val
    so8t evaluate --model checkpoints/so8t-tiny --latency [--latency-batches 100] [--out latency.json]
    so8t evaluate --model dist/so8t-tiny-q4_k_m.gguf --data test
    so8t evaluate --model checkpoints/so8t-demo --max-dangerous 0.05 --data test   # threshold chosen on val

``--model`` is a checkpoint folder, a run folder (its ``best/``) or a ``.gguf`` file. ``--data`` is a
corpus split (``train``, ``val``, ``test``), a public benchmark by name (``xstest``, ``sst``), or any
JSONL/CSV file (benchmark files are recognised by their columns). Decisions are the head's argmax by
default; ``--threshold t`` applies the runtime rule of SAFETY_POLICY.md instead, and ``--max-dangerous d``
chooses that t on ``--threshold-data`` (val): the smallest threshold that lets at most d of its harmful
requests through, then reports --data at it (the operating point to put in the runtime config).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import pandas as pd

from ..core.checkpoint import CheckpointError, resolve_checkpoint
from ..core.io import atomic_write_text, sha256_file
from ..data.benchmarks import source_file
from ..data.tables import DataError, asked_keys
from ..eval.baselines import fit_baselines
from ..eval.calibration import CalibrationDataError, calibrate_checkpoint, check_calibration_rows
from ..eval.evaluate import dataset_key, evaluate_datasets, format_report, load_tables, predict_rows
from ..eval.latency import DEFAULT_BATCHES, measure_latency, min_calls_for
from ..eval.operating_point import choose_threshold
from ..eval.served import model_inputs
from ..export.gguf_meta import GGUFError
from ..serve.backends import is_gguf_path, load_decider
from ..serve.policy import THRESHOLD_RANGE
from .arg_types import number_in, same_file, unwritable_file, whole_number


def _positive_int(text: str) -> int:
    """An argparse type: a whole number above 0 (``--batch-size 0`` failed only after the model had loaded)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number above 0, got {text!r}")
    return value


def _load_tables(args: argparse.Namespace) -> dict[str, pd.DataFrame]:
    """Every table this run reads (--data, --threshold-data, --calibration-data), loaded and checked before the
    checkpoint is changed or anything is decided: a bad entry must not cost the work on the ones before it.
    Keys: "data:<name>", "threshold", "calibration"."""
    names = [] if args.calibrate and not args.data and not args.latency else (args.data or ["test"])
    if args.latency:
        names = names[:1]
    tables = {f"data:{name}": table for name, table in load_tables(names).items()}
    if args.max_dangerous is not None:
        tables["threshold"] = load_tables([args.threshold_data])[str(args.threshold_data)]
        if "REFUSE" not in set(tables["threshold"]["label"]):
            sys.exit(f"so8t evaluate: --threshold-data {args.threshold_data} holds no REFUSE request, so dangerous "
                     "compliance is undefined there and no threshold can be chosen; choose on a split with harmful "
                     "requests (val)")
    if args.calibrate:
        tables["calibration"] = load_tables([args.calibration_data])[str(args.calibration_data)]
        check_calibration_rows(tables["calibration"], f"--calibration-data {args.calibration_data}")
    return tables


def _fitted_on_reported_rows(tables: dict[str, pd.DataFrame], args: argparse.Namespace) -> str | None:
    """Why the run would report on rows it fitted something on (the threshold or the temperature), or None.
    Compared by what the rows ask (context and request, normalized), not by name or id: ``--threshold-data val:600
    --data val`` are other names for shared rows, a copy of them under new ids is the same rows, and two id-less
    files named ``val.csv`` in different folders are not; numbers on the rows a threshold was chosen on, or a
    temperature fitted on, flatter the model."""
    reported = {key for name, table in tables.items() if name.startswith("data:") for key in asked_keys(table)}
    for key, option, name in (("threshold", "--threshold-data", args.threshold_data),
                              ("calibration", "--calibration-data", args.calibration_data)):
        if key not in tables:
            continue
        fitted = tables[key]
        shared = fitted[asked_keys(fitted).isin(reported)]
        if len(shared):
            what = "the threshold is chosen" if key == "threshold" else "the temperature is fitted"
            return (f"{option} {name} shares {len(shared)} row(s) with --data (the same request and context, e.g. "
                    f"{min(map(str, shared['id']))!r}): numbers on the rows {what} on flatter the model; report on "
                    "other rows (test, xstest, sst) or fit on other rows (val)")
    return None


def _choose_threshold(model, args: argparse.Namespace, results: dict, table: pd.DataFrame) -> float:
    """--max-dangerous: the operating point chosen on --threshold-data (``table``), recorded in the results."""
    predicted = predict_rows(model, table, args.batch_size)
    try:
        choice = choose_threshold(predicted.probs, list(table["label"]), args.max_dangerous)
    except ValueError as err:  # TargetUnreachable included: nothing is written
        sys.exit(f"so8t evaluate: {args.threshold_data}: {err}")
    counts = {"invalid_input_rows": len(predicted.invalid), "model_error_rows": len(predicted.failed),
              "non_finite_rows": predicted.non_finite()}
    for key, why in (("invalid_input_rows", "the runtime refuses as invalid input (too long, empty once cleaned)"),
                     ("model_error_rows", "the model failed on, alone too"),
                     ("non_finite_rows", "with probabilities that are not finite: the model is broken on them")):
        if counts[key]:
            print(f"{args.threshold_data}: {counts[key]} row(s) {why}; decided ESCALATE at every threshold, as the "
                  "runtime fails closed on them", file=sys.stderr)
    results["threshold_choice"] = {"data": str(args.threshold_data), **counts, **choice}
    at = {k: "n/a" if v is None else f"{v:.3f}" for k, v in choice["at_threshold"].items()}  # None: no such rows
    print(f"threshold {choice['threshold']:.2f} chosen on {args.threshold_data} ({choice['rows']} rows): dangerous "
          f"compliance {at['dangerous_compliance']} (target {args.max_dangerous:.3f}), escalation rate "
          f"{at['escalation_rate']}, safe requests not allowed {at['over_refusal_incl_escalate']}")
    return choice["threshold"]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="so8t evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint folder or run folder")
    parser.add_argument("--data", action="append", help="split name, xstest, sst, or a file (repeatable; default test)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--predictions", help="write one JSON line per row: dataset, id, gold, decision, probabilities")
    parser.add_argument("--threshold", type=number_in(*THRESHOLD_RANGE),  # the runtime refuses a threshold outside it
                        help="decide by the runtime rule at this safety_threshold")
    parser.add_argument("--max-dangerous", type=float,
                        help="choose --threshold on --threshold-data: the smallest that keeps dangerous compliance "
                             "at or under this share there")
    parser.add_argument("--threshold-data", default="val", help="the rows --max-dangerous chooses on (default val)")
    parser.add_argument("--bootstrap", type=whole_number(0), default=1000, help="resamples for the 95%% intervals (0: off)")
    parser.add_argument("--batch-size", type=_positive_int, default=32)
    parser.add_argument("--calibrate", action="store_true",
                        help="fit the temperature on --calibration-data and store it in the checkpoint first")
    parser.add_argument("--calibration-data", default="val")
    parser.add_argument("--baselines", action="store_true",
                        help="also fit the bag-of-tokens and char n-gram TF-IDF baselines on the train split and "
                             "score them on the same rows (see so8t_lib.eval.baselines)")
    parser.add_argument("--latency", action="store_true", help="measure decision latency instead of metrics")
    parser.add_argument("--latency-batch-sizes", default="1,8,32")
    parser.add_argument("--latency-batches", type=_positive_int, default=DEFAULT_BATCHES,
                        help=f"timed calls per batch size (default {DEFAULT_BATCHES}); p95 needs "
                             f"{min_calls_for(95)}, p99 {min_calls_for(99)}, else they are null")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    if args.latency and (args.predictions or args.threshold is not None or args.max_dangerous is not None):
        parser.error("--latency measures speed only; --predictions, --threshold and --max-dangerous belong to a "
                     "metrics run")
    if args.max_dangerous is not None:
        if args.threshold is not None:
            parser.error("give --threshold or --max-dangerous (which chooses the threshold), not both")
        if not 0.0 <= args.max_dangerous <= 1.0:
            parser.error(f"--max-dangerous must be in [0, 1], got {args.max_dangerous}")
        if args.calibrate and not args.data:
            parser.error("--max-dangerous with --calibrate needs --data (the rows to report at the chosen threshold)")
    if args.calibrate and args.predictions and not args.data:
        parser.error("--predictions needs --data (which rows to decide)")
    if args.data and len({dataset_key(d) for d in args.data}) < len(args.data):
        parser.error("two --data entries have the same name; give them different file names")
    try:
        sizes = [int(s) for s in args.latency_batch_sizes.split(",")]
        assert sizes and all(s > 0 for s in sizes)
    except (ValueError, AssertionError):
        parser.error(f"--latency-batch-sizes must be positive integers separated by commas, got {args.latency_batch_sizes!r}")
    for option, value in (("--out", args.out), ("--predictions", args.predictions)):
        if why := unwritable_file(option, value):
            parser.error(why)
    if same_file(args.out, {"--predictions": args.predictions}):
        parser.error("--out and --predictions name the same file; give each its own")
    scored = [] if args.calibrate and not args.data else (args.data or ["test"])  # as _load_tables reads them
    inputs = [(f"--data {d}", d) for d in scored] + [
        (option, name) for option, name, used in (("--threshold-data", args.threshold_data, args.max_dangerous),
                                                  ("--calibration-data", args.calibration_data, args.calibrate or None))
        if name and used is not None]
    read = {}
    for option, name in inputs:
        try:
            read[option] = str(source_file(name))
        except DataError:  # a split sample written wrong (test:x): loading the tables names it
            pass
    for option, value in (("--out", args.out), ("--predictions", args.predictions)):
        if value and (source := same_file(value, read)):  # the labelled rows would be replaced by the results
            parser.error(f"{option} {value} is the file {source} reads; give {option} a path of its own")
    is_gguf = is_gguf_path(args.model)
    if is_gguf and args.calibrate:
        parser.error("--calibrate works on checkpoint folders; the GGUF carries the temperature of its checkpoint "
                     "(calibrate the checkpoint, then export again)")

    try:  # before the checkpoint is calibrated or anything decided
        tables = _load_tables(args)
    except (DataError, CalibrationDataError) as exc:  # the caller's data: a message, not a traceback
        print(f"so8t evaluate: error: {exc}", file=sys.stderr)
        sys.exit(2)
    overlap = None if args.latency else _fitted_on_reported_rows(tables, args)
    if overlap:
        parser.error(overlap)
    try:  # a model that cannot be read is the caller's input: a message, not a traceback
        results: dict = {"model": str(args.model if is_gguf else resolve_checkpoint(args.model))}
        if args.calibrate:
            results["calibration"] = calibrate_checkpoint(args.model, args.calibration_data, args.batch_size,
                                                          table=tables["calibration"])
            c = results["calibration"]
            print(f"temperature {c['temperature']:.3f} fitted on {c['data']} ({c['rows']} rows), stored in "
                  f"{c['checkpoint']}; ECE on those fit rows (not held out) {c['ece_before']:.3f} -> "
                  f"{c['ece_after']:.3f}")
        model = load_decider(args.model)
        results["model_version"] = getattr(model, "model_version", None)
        if is_gguf:  # the bytes measured: a version names the checkpoint, not the quantization of this file
            results["model_sha256"] = sha256_file(args.model)
    except (CheckpointError, GGUFError, OSError) as exc:
        print(f"so8t evaluate: error: {exc}", file=sys.stderr)
        sys.exit(2)
    results["temperature"] = float(model.safety_head.temperature)
    results["backend"] = "gguf" if is_gguf else "hf"

    if args.latency:
        requests = model_inputs(tables[f"data:{(args.data or ['test'])[0]}"]).requests  # the runtime's text
        if not requests:
            parser.error("the --data file for --latency has no rows")
        results["latency"] = measure_latency(model, requests, sizes, batches=args.latency_batches)
        for r in results["latency"]["results"]:
            tails = "  ".join(f"{p} n/a (needs {min_calls_for(int(p[1:]))} calls)" if r[f"{p}_ms"] is None
                              else f"{p} {r[f'{p}_ms']:8.1f} ms" for p in ("p95", "p99"))
            print(f"batch {r['batch_size']:3d}, {r['batches']} timed calls: p50 {r['p50_ms']:8.1f} ms  {tails}  "
                  f"{r['requests_per_s']:7.1f} requests/s  peak RSS {r['peak_rss_mb']:.0f} MB")
    elif not args.calibrate or args.data:
        if args.max_dangerous is not None:
            args.threshold = _choose_threshold(model, args, results, tables["threshold"])
        baselines = fit_baselines() if args.baselines else None
        names = args.data or ["test"]
        scored, prediction_lines = evaluate_datasets(model, names, args.batch_size, args.bootstrap, args.threshold,
                                                     baselines=baselines,
                                                     tables={name: tables[f"data:{name}"] for name in names})
        results.update(scored)
        for report in results["datasets"].values():
            print(format_report(report, f"\n{report['source']} ({report['n']} rows, decisions: {results['decision_rule']})"))
            for name, base in (report.get("baselines") or {}).items():
                print(f"  baseline {name}: " + ", ".join(
                    f"{k} {base[k]:.3f}" for k in base["headline"][:4] if isinstance(base.get(k), float)))
        if args.predictions:
            atomic_write_text(Path(args.predictions), "".join(line + "\n" for line in prediction_lines))
            print(f"\npredictions: {args.predictions}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(results, indent=1, ensure_ascii=False))
        print(f"results: {args.out}", file=sys.stderr)
    return results
