"""so8t sweep: one notebook, a parameter grid, several seeds, comparable results.

    so8t sweep experiments/<spec>.yaml [--workers 2] [--dry-run] [--rerun-stale]

The spec format is in ``so8t_lib.workbench.sweep``; an interrupted sweep resumes where it stopped.
Exit status: 0 when every run is ok, 1 when any failed (so ``make ablation`` stops before analysing
a partial sweep), 2 for a spec it refuses (stale run folders included), 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.config import ConfigError
from ..workbench.sweep import RUNS_ROOT, load_spec, run_sweep
from .arg_types import whole_number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec")
    parser.add_argument("--workers", type=whole_number(1), default=1, help="runs at a time, 1 or more")
    parser.add_argument("--runs-root", default=str(RUNS_ROOT))
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    parser.add_argument("--rerun-stale", action="store_true",
                        help="delete and rerun run folders whose params.yaml or notebook code differ from the spec's")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if args.dry_run:
            for name, params in spec.runs():
                print(name, json.dumps(params, ensure_ascii=False))
            return 0
        frame = run_sweep(spec, args.workers, Path(args.runs_root), rerun_stale=args.rerun_stale)
    except ConfigError as exc:
        print(f"so8t sweep: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("so8t sweep: interrupted; the sweep's summary.csv lists every run of the spec (those not "
              "finished marked 'not run' or 'unfinished'), and the same command resumes", file=sys.stderr)
        return 130
    ok = int((frame["status"] == "ok").sum()) if "status" in frame else 0
    print(f"{ok}/{len(spec.runs())} runs ok; summary: {Path(args.runs_root) / spec.name / 'summary.csv'}")
    return 0 if ok == len(spec.runs()) else 1
