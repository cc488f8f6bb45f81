"""so8t sweep: one notebook, a parameter grid, several seeds, comparable results.

    so8t sweep experiments/<spec>.yaml [--workers 2] [--dry-run]

The spec format is in ``so8t_lib.workbench.sweep``; an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..workbench.sweep import RUNS_ROOT, load_spec, run_sweep


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="so8t sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("spec")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs-root", default=str(RUNS_ROOT))
    parser.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    if args.dry_run:
        for name, params in spec.runs():
            print(name, json.dumps(params, ensure_ascii=False))
        return
    frame = run_sweep(spec, args.workers, Path(args.runs_root))
    ok = int((frame.get("status") == "ok").sum()) if "status" in frame else 0
    print(f"{ok}/{len(frame)} runs ok; summary: {Path(args.runs_root) / spec.name / 'summary.csv'}")
