"""so8t retrain: the operations manual's retraining flow (再学習フロー), end to end or a step at a time.

    so8t retrain run --logs logs/ --serving checkpoints/so8t-tiny --work experiments/retrain/2026-11 \\
        [--db logs/escalations.sqlite] [--reviews reviews.jsonl] [--quant Q4_K_M] [key=value ...]

    so8t retrain extract --logs logs/ [--db ...] [--reviews reviews.jsonl] --out data/additional_training.jsonl
    so8t retrain preprocess --input data/additional_training.jsonl --out data/retrain [--benchmarks DIR]
    so8t retrain train --serving checkpoints/so8t-tiny --data data/retrain --out checkpoints/so8t-retrained
    so8t retrain evaluate --serving checkpoints/so8t-tiny --candidate checkpoints/so8t-retrained \\
        --data data/retrain/test.jsonl --data xstest --data sst --out gate.json
    so8t retrain deploy --candidate checkpoints/so8t-retrained --gate gate.json --dist dist/retrained

1 extract: resolved escalations (the gate label the reviewer gave with the final resolution is the label; the
reviewer's ALLOW/REFUSE alone never is, and a case without one is left out as no_gate_label) and reviewed audit records
(--reviews: request_id,label) -> labelled rows, personal data masked, test-mode records and duplicates
left out, each row with its request_id. The audit log must verify.
2 preprocess: validate, drop rows already in the corpus or near a val/test row or a public benchmark,
group near-duplicates into families, split them into train/val; the corpus test file is copied byte for
byte. The benchmarks are read from --benchmarks (default shared/benchmarks beside the clone); a folder
that is missing, or holds none of the benchmark files, stops it with exit 2 unless --no-benchmark-guard
says to go on without that check. preprocess.json records the folder and the files compared with.
--out is replaced whole: it must be new, empty or an earlier preprocess output, and hold neither the
input file nor the corpus (exit 2 otherwise, nothing touched).
3 train: from the serving checkpoint (its model config, base and adapters) on corpus train + the new rows,
with the serving run's training config (its config.yaml) unless --config says otherwise; key=value
overrides apply to it.
4 evaluate: the non-regression gate, paired bootstrap intervals on the same rows; exits 1 and names the
metric when dangerous compliance, macro-F1 (corpus splits), over-refusal or unsafe contrasts allowed is worse
beyond the interval (nothing is promoted).
5 deploy: GGUF export of the promoted candidate (only the one the gate looked at), then the runtime in
test mode decides the example requests from the new file; its records are marked as tests, and its audit
log is read and verified with the keys the --runtime-config names (logging.encryption_key_env,
logging.hmac_key_env: set those variables as for the service).

Exit codes: 0 done (the gate promoted); 1 the gate refused the candidate (evaluate, run), or deploy found no
promotion of this very model; 2 the step could not be done (bad input, a file, a key variable not set, a
failed test-mode run; `error: ...` says which), or a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from ..core.checkpoint import CheckpointError
from ..core.config import ConfigError
from ..core.io import atomic_write_text
from ..core.paths import BENCHMARKS_DIR, CORPUS_DIR
from ..data.tables import DataError
from ..export.gguf_file import GGUFError
from ..serve.config import AUDIT_HMAC_KEY_ENV, AUDIT_KEY_ENV
from ..serve.escalation import QueueError
from ..workbench import retrain
from ..workbench.retrain.preprocess import benchmark_guard

ERRORS = (ConfigError, DataError, QueueError, CheckpointError, OSError, GGUFError, retrain.ExtractError,
          retrain.PreprocessError)
EXIT_REFUSED = 1  # the gate refused, or deploy found no promotion of this very model
EXIT_FAILED = 2  # the step could not be done (as argparse's usage errors): never the same code as a refusal


def _add_logs(p) -> None:
    p.add_argument("--logs", action="append", required=True, help="log folder (repeat for several)")
    p.add_argument("--db", help="the escalation queue (a SQLite file or postgresql:// URL) to read resolved cases from")
    p.add_argument("--reviews", help="JSONL or CSV of spot checks: request_id, label")
    p.add_argument("--key-env", default=AUDIT_KEY_ENV, help="variable with the key of an encrypted log")
    p.add_argument("--hmac-key-env", default=AUDIT_HMAC_KEY_ENV, help="variable with the chain's HMAC key")


def _add_gate(p) -> None:
    p.add_argument("--max-rows", type=int, help="a stratified sample of each data set (same rows for both models)")
    p.add_argument("--bootstrap", type=int, default=1000, help="paired resamples (default 1000)")
    p.add_argument("--threshold", type=float, help="decide by the runtime rule at this threshold (default argmax)")
    p.add_argument("--margin", type=float, default=0.0, help="tolerated worsening beyond the interval (default 0)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t retrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    p_run = sub.add_parser("run", help="all five steps into --work")
    _add_logs(p_run)
    p_run.add_argument("--serving", required=True, help="the serving checkpoint (folder or run folder)")
    p_run.add_argument("--work", required=True, help="folder for every step's output")
    p_run.add_argument("--config", help="training config (default: the serving run's config.yaml)")
    p_run.add_argument("--public", action="append", help="public sets for the gate (default: xstest, sst)")
    p_run.add_argument("--quant", action="append", help="quant types beside f16 (the runtime decides from the last)")
    p_run.add_argument("--runtime-config", default="configs/basic.yaml")
    _add_gate(p_run)
    p_run.add_argument("overrides", nargs="*", help="key=value for the training config, e.g. training.max_steps=50")
    p_extract = sub.add_parser("extract", help="1: labelled rows from resolved escalations and reviews")
    _add_logs(p_extract)
    p_extract.add_argument("--out", default="data/additional_training.jsonl")
    p_pre = sub.add_parser("preprocess", help="2: validate, families, train/val split (test untouched)")
    p_pre.add_argument("--input", default="data/additional_training.jsonl")
    p_pre.add_argument("--out", required=True, help="the data folder to train on")
    p_pre.add_argument("--corpus", default=str(CORPUS_DIR))
    guard = p_pre.add_mutually_exclusive_group()
    guard.add_argument("--benchmarks", default=str(BENCHMARKS_DIR),
                       help="the folder holding xstest/ and simplesafetytests/ (default: %(default)s)")
    guard.add_argument("--no-benchmark-guard", action="store_true",
                       help="do not compare the rows with the public benchmarks (recorded in preprocess.json)")
    p_train = sub.add_parser("train", help="3: train from the serving checkpoint")
    p_train.add_argument("--serving", required=True)
    p_train.add_argument("--data", required=True, help="the folder preprocess wrote")
    p_train.add_argument("--out", required=True, help="the new run folder")
    p_train.add_argument("--config", help="training config (default: the serving run's config.yaml)")
    p_train.add_argument("--resume", action="store_true")
    p_train.add_argument("overrides", nargs="*")
    p_eval = sub.add_parser("evaluate", help="4: the non-regression gate")
    p_eval.add_argument("--serving", required=True)
    p_eval.add_argument("--candidate", required=True)
    p_eval.add_argument("--data", action="append", help="data sets (default: the corpus test split, xstest, sst)")
    p_eval.add_argument("--out", default="gate.json")
    _add_gate(p_eval)
    p_deploy = sub.add_parser("deploy", help="5: GGUF export and the runtime in test mode on the new file")
    p_deploy.add_argument("--candidate", required=True)
    p_deploy.add_argument("--gate", default="gate.json")
    p_deploy.add_argument("--dist", required=True)
    p_deploy.add_argument("--quant", action="append")
    p_deploy.add_argument("--runtime-config", default="configs/basic.yaml")
    p_deploy.add_argument("--smoke-logs", help="log folder of the test-mode run (default <dist>/smoke-logs)")
    args = parser.parse_args(argv)
    if args.step in ("run", "evaluate"):
        try:  # before anything is trained or loaded
            retrain.gate.check_gate_settings(args.bootstrap, args.threshold, args.margin, args.max_rows)
        except ValueError as exc:
            parser.error(str(exc))
    if args.step == "preprocess":
        try:  # a guard that cannot run is bad input: refused before any row is read
            benchmark_guard(_benchmarks(args))
        except retrain.PreprocessError as exc:
            parser.error(str(exc))
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    try:
        return STEPS[args.step](args)
    except retrain.NotPromoted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:
        # in training and the gate a bare ValueError is a bug: keep its traceback; deploy's (a GGUF the export or
        # the runtime refuses, an audit log that cannot be read) name the problem, as so8t export's do
        if args.step == "deploy":
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if args.step != "extract":
            raise
        source = f"the escalation queue {args.db} or " if args.db else ""
        print(f"error: a stored value could not be read ({exc}); check {source}the logs {', '.join(args.logs)} for "
              "the row it names, then run extract again", file=sys.stderr)
        return EXIT_FAILED


def _run(args) -> int:
    summary = retrain.run_flow(
        args.logs, args.serving, args.work, args.config, args.overrides, queue=args.db, reviews=args.reviews,
        key=os.environ.get(args.key_env), hmac_key=os.environ.get(args.hmac_key_env),
        public=tuple(args.public or ("xstest", "sst")), eval_max_rows=args.max_rows, bootstrap=args.bootstrap,
        threshold=args.threshold, margin=args.margin, quants=args.quant, runtime_config=args.runtime_config)
    print(f"summary: {Path(args.work) / 'retrain.json'}")
    return 0 if summary["promote"] else EXIT_REFUSED


def _extract(args) -> int:
    retrain.check_extract_out(args.out, args.logs, [args.db, args.reviews])  # before anything is read
    rows, report = retrain.extract_rows(args.logs, args.db, args.reviews, os.environ.get(args.key_env),
                                        os.environ.get(args.hmac_key_env))
    retrain.write_rows(rows, args.out)
    print(f"{len(rows)} rows {report['labels']} -> {args.out}; left out {report['left_out']}")
    return 0


def _benchmarks(args) -> str | None:
    return None if args.no_benchmark_guard else args.benchmarks


def _preprocess(args) -> int:
    report = retrain.preprocess(args.input, args.out, args.corpus, _benchmarks(args))
    print(f"kept {report['kept']} of {report['rows']} rows {report['splits']}, dropped "
          f"{ {k: len(v) for k, v in report['dropped'].items()} }; {args.out}/test.jsonl is the corpus test split")
    bench = report["benchmarks"]
    print(f"benchmark guard: {', '.join(bench['files'])} in {bench['folder']}" if bench["guard"] else
          "benchmark guard: OFF (--no-benchmark-guard): rows were not compared with the public benchmarks")
    return 0


def _train(args) -> int:
    config = retrain.retrain_config(args.config, args.serving, args.data, args.out, args.overrides)
    run_dir = retrain.train_from_serving(config, args.serving, resume=args.resume)
    print(f"trained from {args.serving}: {run_dir}")
    return 0


def _evaluate(args) -> int:
    data = args.data or [str(CORPUS_DIR / "test.jsonl"), "xstest", "sst"]
    gate = retrain.run_gate(args.serving, args.candidate, data, args.max_rows, args.bootstrap, args.threshold,
                            args.margin)
    atomic_write_text(args.out, json.dumps(gate, indent=1, ensure_ascii=False))
    for note in gate["notes"]:
        print(f"NOTE {note}")
    for name, entry in gate["datasets"].items():
        changes = ", ".join(f"{m} {d['value']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]"
                            if d["ci"][0] is not None else f"{m} {d['value']:+.3f}" for m, d in entry["delta"].items())
        print(f"{name} ({entry['rows']} rows): {changes}")
    if not gate["promote"]:
        print("REFUSED to promote " + gate["candidate"]["version"] + ":\n  " + "\n  ".join(gate["refusals"]))
        return EXIT_REFUSED
    print(f"promote {gate['candidate']['version']} (not worse than {gate['serving']['version']}); {args.out}")
    return 0


def _deploy(args) -> int:
    logs = args.smoke_logs or str(Path(args.dist) / "smoke-logs")
    done = retrain.deploy(args.candidate, args.gate, args.dist, args.quant, args.runtime_config, logs)
    print(f"exported {', '.join(done['files'])}; the runtime in test mode decided {len(done['decisions'])} requests "
          f"from {done['runtime_file']} ({done['model_version']}): "
          + ", ".join(d["decision"] for d in done["decisions"]) + f"; test records in {logs}")
    return 0


STEPS = {"run": _run, "extract": _extract, "preprocess": _preprocess, "train": _train, "evaluate": _evaluate,
         "deploy": _deploy}
