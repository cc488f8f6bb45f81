"""so8t corpus: build the safety corpus from the seeds, show its statistics, check it for leakage.

    so8t corpus build [--seed 0] [--seeds-dir data/seeds] [--out data/so8t_safety]
    so8t corpus stats [--data data/so8t_safety] [--markdown]
    so8t corpus check [--data data/so8t_safety]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.paths import CORPUS_DIR, SEEDS_DIR
from ..data.corpus import build_corpus, leakage_report, stats_text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="so8t corpus", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="seeds -> data/so8t_safety/{train,val,test}.jsonl")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--seeds-dir", type=Path, default=SEEDS_DIR)
    b.add_argument("--out", type=Path, default=CORPUS_DIR)
    s = sub.add_parser("stats", help="counts per label x category x lang x split")
    s.add_argument("--data", type=Path, default=CORPUS_DIR)
    s.add_argument("--markdown", action="store_true")
    c = sub.add_parser("check", help="leakage check: no family or request in two splits")
    c.add_argument("--data", type=Path, default=CORPUS_DIR)
    args = p.parse_args(argv)
    try:
        if args.cmd == "build":
            counts = build_corpus(args.seeds_dir, args.out, seed=args.seed)
            print(f"wrote {args.out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        elif args.cmd == "stats":
            print(stats_text(args.data, markdown=args.markdown))
        else:
            rep = leakage_report(args.data)
            if rep["ok"]:
                bench = "checked" if rep["benchmarks_checked"] else "not present, skipped"
                print(f"ok: rows {rep['rows']}; no family or request in two splits; benchmarks {bench}")
                return 0
            for k in ("families_in_multiple_splits", "requests_in_multiple_splits", "rows_in_wrong_file",
                      "duplicate_ids", "benchmark_overlap"):
                if rep[k]:
                    print(f"LEAK {k}: {json.dumps(rep[k], ensure_ascii=False)}", file=sys.stderr)
            return 1
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
