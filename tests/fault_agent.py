"""A child process for tests/test_faults.py: the real Agent with a deterministic stand-in model, run
as its own process so a test can limit its file size (RLIMIT_FSIZE), drop its privileges or kill -9 it.

    python tests/fault_agent.py LOG_DIR once [--fsize-limit BYTES] REQUEST_TEXT ...
    python tests/fault_agent.py LOG_DIR burst          # batches until killed
    python tests/fault_agent.py LOG_DIR burst --kill-at after_queue --kill-after 3

``--kill-at`` makes the process SIGKILL itself at an exact point of an escalation's path (after the
spool, after the queue, after the audit line, or halfway through writing the audit line), the
``--kill-after``-th time it gets there: the crash windows a random kill rarely hits.

Prints one JSON result per line (flushed), so the parent synchronises on output, not on time.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import signal
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from so8t_lib.serve.config import RuntimeConfig  # noqa: E402
from so8t_lib.serve.runtime import Agent  # noqa: E402


class KeywordDecider:
    """REFUSE when the text says "refuse", ESCALATE-level probabilities for "escalate", else ALLOW."""

    model_version = "fake-keywords@1"

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        rows = [[0.02, 0.96, 0.02] if "refuse" in r else [0.3, 0.3, 0.4] if "escalate" in r else [0.96, 0.02, 0.02]
                for r in requests]
        return np.asarray(rows)

    def generate(self, request, context=None, max_tokens=128, temperature=0.0):
        return "answer"


def make_agent(log_dir: str | Path, max_log_size: str = "100MB") -> Agent:
    log_dir = Path(log_dir)
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "inference": {"generate_responses": False, "decision_timeout_s": 10},
        "logging": {"audit_log": str(log_dir / "audit.jsonl"), "max_log_size": max_log_size, "backup_count": 10_000},
        "escalation": {"queue_db": str(log_dir / "escalations.sqlite"), "enable_notifications": False,
                       "queue_timeout_s": 0.5, "retry_interval_s": 3600},
    })
    return Agent(cfg, decider=KeywordDecider())


KILL_POINTS = ("after_spool", "after_queue", "after_audit", "mid_write")


def arm_kill(agent: Agent, point: str, after: int) -> None:
    """Wrap one step so that its ``after``-th call kills the process (SIGKILL: nothing is cleaned up)."""
    seen = {"n": 0}

    def due() -> bool:
        seen["n"] += 1
        return seen["n"] >= after

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "after_spool":
        original = agent.desk.try_queue
        agent.desk.try_queue = lambda ticket: die() if due() else original(ticket)
    elif point == "after_queue":
        original_append = agent.audit.append

        def append(record):
            if record.get("escalation_id") and due():
                die()
            return original_append(record)
        agent.audit.append = append
    elif point == "after_audit":
        original_finish = agent.desk.finish
        agent.desk.finish = lambda ticket, audited: die() if due() else original_finish(ticket, audited)
    elif point == "mid_write":
        original_write = agent.audit._write_line

        def write_line(line):
            if due():
                with open(agent.audit.path, "ab") as handle:
                    handle.write(line[: len(line) // 2])
                die()
            return original_write(line)
        agent.audit._write_line = write_line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("log_dir")
    parser.add_argument("mode", choices=["once", "burst"])
    parser.add_argument("--fsize-limit", type=int)
    parser.add_argument("--max-log-size", default="100MB")
    parser.add_argument("--kill-at", choices=KILL_POINTS)
    parser.add_argument("--kill-after", type=int, default=1)
    parser.add_argument("requests", nargs="*")
    args = parser.parse_intermixed_args()
    agent = make_agent(args.log_dir, args.max_log_size)
    if args.kill_at:
        arm_kill(agent, args.kill_at, args.kill_after)
    if args.fsize_limit:  # the disk is "full" from here on: no file of this process may grow past the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.fsize_limit, args.fsize_limit))
    if args.mode == "once":
        for result in agent.run_batch([{"user_request": r, "user_id": "u1"} for r in args.requests]):
            print(json.dumps(result, ensure_ascii=False), flush=True)
        return
    kinds = itertools.cycle(["please allow this", "please refuse this", "please escalate this"])
    for n in itertools.count():
        batch = [{"user_request": f"{next(kinds)} #{n}-{k}", "user_id": f"u{k}"} for k in range(3)]
        for result in agent.run_batch(batch):
            print(json.dumps({k: result.get(k) for k in ("request_id", "decision", "escalation_id")}), flush=True)


if __name__ == "__main__":
    main()
