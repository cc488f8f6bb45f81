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
from ..data.benchmarks import load_any
from ..data.tables import DataError
from ..eval.routing import format_routing, score_routing, urgency_counts
from ..serve.router import fit_router, load_router


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
    p_score.add_argument("--bootstrap", type=int, default=1000, help="family resamples for the intervals (>= 1)")
    p_score.add_argument("--out", help="write the results as JSON")
    args = parser.parse_args(argv)
    try:
        if args.command == "fit":
            table = load_any(args.data)  # as every command reads data: a split, split:N or a file
            router = fit_router(table.to_dict("records"), source=str(args.data))
            router.save(args.out)
            counts = router.fitted_on["by_category"]
            print(f"router fitted on {router.fitted_on['rows']} rows of {args.data} ({counts}), "
                  f"{len(router.vectorizer.vocabulary_)} features -> {args.out}")
            return 0
        if args.bootstrap < 1:
            parser.error("--bootstrap must be at least 1")
        router = load_router(args.router)
        results = {"router": str(args.router), "router_sha256": sha256_file(args.router),
                   "fitted_on": router.fitted_on, "data": {}}
        for name in args.data or ["val", "test"]:
            table = load_any(name)
            result = {**score_routing(router, table, resamples=args.bootstrap), "urgency": urgency_counts(table)}
            results["data"][name] = result
            print(format_routing(name, result))
        if args.out:
            atomic_write_text(args.out, json.dumps(results, indent=1, ensure_ascii=False))
        return 0
    except (ConfigError, DataError) as exc:
        print(f"so8t router: {exc}", file=sys.stderr)
        return 2
