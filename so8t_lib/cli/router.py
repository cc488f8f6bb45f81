"""so8t router: the learned escalation router (which reviewer gets a case).

    so8t router fit [--data data/so8t_safety/train.jsonl] --out checkpoints/so8t-demo/router.json
    so8t router score --router checkpoints/so8t-demo/router.json [--data val --data test] [--out routing.json]

``fit`` trains a char n-gram TF-IDF logistic regression on the rows' ``category`` (about 15 s on the corpus's
training split) and writes it as checked JSON; point ``escalation.router`` of a runtime config at it. ``score``
measures the keyword table, the router and both together (the runtime's rule) on REFUSE and ESCALATE rows of each
data set, with 95% intervals over families, and counts the rows the emergency screen marks per label.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..core.config import ConfigError
from ..core.io import atomic_write_text, sha256_file
from ..data.benchmarks import load_any, source_file
from ..data.tables import DataError
from ..eval.routing import format_routing, score_routing, urgency_counts
from ..serve.router import fit_router, load_router
from .arg_types import same_file, unwritable_file, whole_number

SCORED_BY_DEFAULT = ("val", "test")  # what score reads without --data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t router", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_fit = sub.add_parser("fit", help="fit a router on a data file's categories")
    p_fit.add_argument("--data", default="train", help="train (the corpus split), split:N or a JSONL/CSV file")
    p_fit.add_argument("--out", required=True, help="the router file to write")
    p_score = sub.add_parser("score", help="routing accuracy on data sets")
    p_score.add_argument("--router", required=True)
    p_score.add_argument("--data", action="append", help="val, test, split:N or a file (repeatable; default val and test)")
    p_score.add_argument("--bootstrap", type=whole_number(1), default=1000,
                         help="family resamples for the intervals (>= 1)")
    p_score.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args(argv)
    _check_out(parser, args)
    try:
        if args.command == "fit":
            table = load_any(args.data)  # as every command reads data: a split, split:N or a file
            router = fit_router(table.to_dict("records"), source=str(args.data))
            _write(args.out, router.save)
            counts = router.fitted_on["by_category"]
            print(f"router fitted on {router.fitted_on['rows']} rows of {args.data} ({counts}), "
                  f"{len(router.vectorizer.vocabulary_)} features -> {args.out}")
            return 0
        router = load_router(args.router)
        results = {"router": str(args.router), "router_sha256": sha256_file(args.router),
                   "fitted_on": router.fitted_on, "data": {}}
        for name in args.data or SCORED_BY_DEFAULT:
            table = load_any(name)
            result = {**score_routing(router, table, resamples=args.bootstrap), "urgency": urgency_counts(table)}
            if fitted := _fitted_on(router, name):  # its rows' accuracy says how well it learned them, nothing more
                result["fitting_data"] = fitted
            results["data"][name] = result
            print(format_routing(name, result))
            if fitted:
                print(f"  note: the router was fitted on {fitted}, the file {name} is read from: these are not "
                      "held-out rows (score val or test)")
        if args.out:
            _write(args.out, lambda out: atomic_write_text(out, json.dumps(results, indent=1, ensure_ascii=False)))
        return 0
    except (ConfigError, DataError, OSError) as exc:
        print(f"so8t router: {exc}", file=sys.stderr)
        return 2


def _fitted_on(router, name: str) -> str | None:
    """The router's fitting source when ``name`` reads the same file (``train:2000`` after fitting on ``train``), else
    None: a router scored on the rows it was fitted on looked perfect (1.000 against 0.469 on val) without a word."""
    source = str(router.fitted_on.get("source") or "")
    try:
        return source if source and source_file(source).resolve() == source_file(name).resolve() else None
    except (DataError, OSError, ValueError):
        return None


def _check_out(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Before any work: ``--out`` must be a file that can be written and none of the inputs (the labelled rows, the
    router being scored), which the write would replace."""
    if why := unwritable_file("--out", args.out):
        parser.error(why)
    names = [args.data] if isinstance(args.data, str) else (args.data or SCORED_BY_DEFAULT)
    try:
        inputs = {f"--data {name}": str(source_file(name)) for name in names}
    except DataError as exc:  # a split sample written wrong (train:x): named before any work
        parser.error(str(exc))
    if args.command == "score":
        inputs["--router"] = args.router
    if option := same_file(args.out, inputs):
        parser.error(f"--out {args.out} is the file {option} names; writing it would replace that input. "
                     "Give --out a path of its own")


def _write(out: str, write) -> None:
    try:
        write(out)
    except OSError as exc:
        raise OSError(f"cannot write --out {out}: {exc.strerror or exc}; nothing was written there") from exc
