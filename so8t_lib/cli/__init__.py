"""One command, ``so8t``, with a subcommand per job; this table is the whole command line.

    so8t <command> [options]          (also: python -m so8t_lib <command> ...)
    so8t --help                       the table below
    so8t <command> --help             that command's options

Each command lives in ``so8t_lib/cli/<module>.py`` as ``main(argv)``. The CLI sits above every layer:
it composes them, and nothing in the library imports it.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from typing import NamedTuple


class Command(NamedTuple):
    module: str
    function: str
    summary: str


COMMANDS: dict[str, Command] = {
    "corpus": Command("corpus", "main", "build the safety corpus from the seeds; stats; leakage check"),
    "train": Command("train", "main", "train an SO8T model (two optimizers, QLoRA, resume), then calibrate"),
    "evaluate": Command("evaluate", "main", "metrics with intervals per data set, calibration, latency"),
    "export": Command("export", "main", "checkpoint -> GGUF (both heads in one file) and the quantization ladder"),
    "inspect": Command("export", "inspect_main", "print a GGUF file's so8t.* metadata"),
    "runtime": Command("runtime", "main", "decide requests with the runtime contract (threshold, audit, escalation)"),
    "serve": Command("serve", "main", "the gate as an HTTP service: REST API, metrics, dashboard (FastAPI)"),
    "audit": Command("audit", "main", "verify or show the hash-chained audit log"),
    "escalation": Command("escalation", "main", "list or resolve escalation cases"),
    "router": Command("router", "main", "fit or score the learned escalation router (which reviewer gets a case)"),
    "report": Command("report", "main", "compliance report from the verified audit log: HTML with figures, CSV"),
    "retrain": Command("retrain", "main", "the retraining flow: extract, preprocess, train, evaluate (gate), deploy"),
    "backup": Command("backup", "main", "back up audit logs, the escalation queue, configs and model manifests"),
    "restore": Command("backup", "restore_main", "verify a backup (chains, checksums), then put it back"),
    "sweep": Command("sweep", "main", "run a papermill sweep (a notebook over a grid and seeds)"),
    "cache": Command("cache", "main", "what $SO8T_CACHE holds; prune frozen-state caches nothing will read again"),
    "card": Command("card", "main", "write MODEL_CARD.md and figures/ from committed results"),
    "demo": Command("demo", "main", "the main job: train, score, export, decide (make demo)"),
    "present": Command("present", "main", "the stakeholder demo as a web page on 127.0.0.1 (Voila; make present)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {command.summary}" for name, command in COMMANDS.items())
    return f"usage: so8t <command> [options]\n\ncommands:\n{rows}\n\nso8t <command> --help shows its options."


def main(argv: list[str] | None = None):
    """Run one command; returns what its ``main`` returns (the evaluation results, an exit code, or None)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        close = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"so8t: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    module = importlib.import_module(f"{__name__}.{command.module}")
    return getattr(module, command.function)(rest)


EXIT_BROKEN_PIPE = 141  # what a shell reports for a program stopped by SIGPIPE


def run(argv: list[str] | None = None) -> None:
    """The console entry point: exit with the command's code (0 unless it returned an int). Output piped into a
    reader that stops early (``| head``) ends the command quietly, as other Unix tools do, not with a traceback."""
    try:
        result = main(argv)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush would fail
        sys.exit(EXIT_BROKEN_PIPE)
    sys.exit(result if isinstance(result, int) else 0)
