"""What a benchmark script's result file records about its own run: the command line and the arguments, so a
reader can tell how it was made (--resamples, --batches ...) and run it again."""

from __future__ import annotations

import argparse
import json
import sys


def run_record(script: str, args: argparse.Namespace, argv: list[str] | None) -> dict:
    """``{"command", "settings"}`` for ``script`` (a path such as ``benchmarks/seed_ensemble.py``): the command line
    (``argv``, or this process's own when None) and ``vars(args)`` as JSON values, ``--out`` left out."""
    given = sys.argv[1:] if argv is None else argv
    settings = json.loads(json.dumps(vars(args), default=str))
    return {"command": " ".join(["python", script, *given]),
            "settings": {key: value for key, value in settings.items() if key != "out"}}


__all__ = ["run_record"]
