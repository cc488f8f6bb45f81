"""so8t runtime: the safety gate on requests from the command line.

    so8t runtime --config configs/basic.yaml --request "経費精算の締め日は？" [--pretty]
    cat requests.jsonl | so8t runtime --config configs/basic.yaml [--use-gguf] [--test-mode]

One JSON result per request (``so8t_lib.serve.runtime.Agent.run_batch``), one audit record each, in
input order; a stdin request's result starts with its ``line`` (blank lines are skipped). The gate fails closed
(ESCALATE, never ALLOW) on anything it cannot decide. A stdin line that is not UTF-8 or not JSON (or gives a key
twice, or is JSON Python cannot hold: a number past 4300 digits, nesting too deep) gets its own fail-closed result;
the other lines are decided. A UTF-16 input is refused before anything is decided. Lines are decided in batches of
at most ``service.max_batch`` (32) of what has arrived, so ``inference.decision_timeout_s`` limits each batch's
model pass, not the whole file, and a producer writing a line now and then (``tail -f``) gets each decision when
its line comes. SIGINT or SIGTERM stops reading; every line read by then is decided and recorded. A line sets only
``user_request``, ``context`` and ``user_id`` (a ``client`` field is ignored: only the HTTP service names the key
that asked).

Exit status: 0 all decided and recorded; 2 the config or the input as a whole is refused (nothing decided); 3 the
model could not be loaded (every request was escalated); 4 an audit record could not be written (those requests
were escalated, see ``error``); 5 some stdin lines gave no request (each escalated, see ``error``); 6 stdin could
not be read to its end (the lines before were decided); 128 + the signal's number when a signal stopped it (what
else went wrong is still said on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

from ..core.config import ConfigError
from ..serve.runtime import Agent
from .gate_options import add_gate_options, gate_overrides
from .runtime_input import (
    REQUEST_FIELDS,
    NotJsonLines,
    StdinBatches,
    StdinReadError,
    is_request,
    iter_items,
    read_items,
)

__all__ = ["REQUEST_FIELDS", "decide_in_chunks", "iter_items", "main", "read_items"]

EXIT_MODEL_NOT_LOADED = 3
EXIT_AUDIT_FAILED = 4
EXIT_UNREADABLE_LINES = 5
EXIT_STDIN_FAILED = 6
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def decide_in_chunks(agent: Agent, batches: Iterable[list[tuple[int | None, object]]]) -> Iterator[dict]:
    """``agent.run_batch`` on each batch of (line number, request) pairs (``StdinBatches``: at most the config's
    ``service.max_batch``, so ``inference.decision_timeout_s`` limits each pass, not the whole input); results in
    input order, each batch's as soon as it is decided, each starting with its ``line`` (blank lines are skipped),
    none for a request given without one (None: ``--request``). When deciding takes over a second, a bar on stderr
    counts the requests decided (only where stderr is a terminal and the results go elsewhere: a file or a pipe)."""
    quiet = True if _isatty(sys.stdout) else None  # None: tqdm shows the bar where stderr is a terminal
    with tqdm(desc="deciding", unit="request", leave=False, disable=quiet, file=sys.stderr, delay=1.0) as bar:
        for batch in batches:
            results = agent.run_batch([request for _, request in batch])
            for (line, _), result in zip(batch, results, strict=True):
                yield result if line is None else {"line": line, **result}
            bar.update(len(batch))


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set the event (the requests read by then are decided and recorded, and it is said on
    stderr); a second one stops at once. Only the main thread may install handlers (elsewhere the event is never
    set), and a signal the process was started ignoring (a script's background job ignores SIGINT) stays ignored."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def _asked(signum, frame) -> None:
        stop.signum = getattr(stop, "signum", signum)  # the first one says why the run stopped
        stop.set()
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
        os.write(2, f"so8t runtime: {signal.Signals(signum).name}: reading stops; the lines read are being decided "
                    "and recorded (the same signal again abandons them)\n".encode())  # no print: not reentrant

    before = {signum: signal.signal(signum, _asked) for signum in STOP_SIGNALS
              if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield stop
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _counting_unread(batches: Iterable[list], unreadable: list[int]) -> Iterator[list]:
    """``batches`` as they are; the line number of each line that gave no request goes to ``unreadable``."""
    for batch in batches:
        unreadable += [line_no for line_no, item in batch if not is_request(item)]
        yield batch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t runtime", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/basic.yaml")
    add_gate_options(parser)
    parser.add_argument("--request", help="one request; without it, JSONL objects are read from stdin")
    parser.add_argument("--context")
    parser.add_argument("--user-id")
    parser.add_argument("--test-mode", action="store_true", help="audit records and cases marked as tests; no notifications")
    parser.add_argument("--pretty", action="store_true", help="readable output instead of one JSON per line")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. inference.safety_threshold=0.9")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    overrides = gate_overrides(args)
    try:
        agent = Agent.from_config(args.config, overrides, test_mode=args.test_mode)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    if agent.load_error:
        print(f"so8t runtime: {agent.load_error}; every request is escalated", file=sys.stderr)
    if agent.router_error:
        print(f"so8t runtime: {agent.router_error}", file=sys.stderr)
    unreadable: list[int] = []  # line numbers of stdin lines that were no request
    read_failed: StdinReadError | None = None
    if args.request is None and sys.stdin is None:  # started with stdin closed (<&-)
        agent.close()
        print("error: no stdin to read requests from (it is closed): pipe JSON lines in, or give --request",
              file=sys.stderr)
        return 2
    with _stop_on_signals() as stop:
        source = None if args.request is not None else \
            StdinBatches(getattr(sys.stdin, "buffer", sys.stdin), agent.config.service.max_batch, stop)
        batches: Iterable[list] = _counting_unread(source, unreadable) if source is not None else \
            [[(None, {"user_request": args.request, "context": args.context, "user_id": args.user_id})]]
        try:
            for result in decide_in_chunks(agent, batches):
                print(_pretty(result) if args.pretty else json.dumps(result, ensure_ascii=False), flush=True)
        except NotJsonLines as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:  # the second Ctrl-C: at once, as asked; the model thread may be inside torch,
            # and an interpreter shutting down around it aborts (134), so the process ends here
            sys.stdout.flush()
            os.write(2, b"so8t runtime: stopped at once by a second SIGINT: the batch being decided has no result, "
                        b"and may have no audit record\n")
            os._exit(128 + signal.SIGINT)
        except StdinReadError as exc:  # the lines read before it were decided
            read_failed = exc
        finally:
            agent.close()
    if source is not None and source.unfinished:
        print(f"so8t runtime: {source.unfinished} byte(s) of a line still being written when reading stopped were "
              "not decided (not a request yet)", file=sys.stderr)
    status = _exit_status(agent, len(unreadable), getattr(stop, "signum", None), read_failed)
    if getattr(stop, "signum", None) is not None:  # stopped by a signal: the records are written and the agent
        # closed; returning into the interpreter's shutdown with torch's threads about aborted it now and then (134)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _pretty(result: dict) -> str:
    where = f"line {result['line']}  " if "line" in result else ""
    return (f"{where}{result['decision']:<9s} conf {result['confidence']}  [{result['category']}]  "
            f"human_required={result['human_required']}  {result['request_id']}\n  {result['rationale']}"
            + (f"\n  answer: {result['task_response']}" if result["task_response"] else "")
            + (f"\n  escalation: {result['escalation_id']} ({result.get('escalation_status')})"
               if result.get("escalation_id") else "")
            + (f"\n  error: {result['error']}" if result.get("error") else ""))


def _exit_status(agent: Agent, unreadable: int, signum: int | None, read_failed: StdinReadError | None = None) -> int:
    """What went wrong is said whatever ends the run; the status is the first of: a signal, the model not loaded,
    an audit record not written, stdin not read to its end, lines that were no request."""
    if read_failed is not None:
        print(f"so8t runtime: stdin could not be read to its end ({read_failed}); the lines before it were decided "
              "and recorded", file=sys.stderr)
    if agent.audit_failures:
        print(f"so8t runtime: {agent.audit_failures} audit record(s) could not be written; see each result's error",
              file=sys.stderr)
    if unreadable:
        print(f"so8t runtime: {unreadable} stdin line(s) gave no request (see each result's error): each was escalated "
              "as it stands, a case for a person; give one JSON object with user_request per line, UTF-8",
              file=sys.stderr)
    if signum is not None:
        print(f"so8t runtime: stopped by {signal.Signals(signum).name}; every complete line read was decided and "
              "recorded", file=sys.stderr)
        return 128 + signum
    if agent.load_error:
        return EXIT_MODEL_NOT_LOADED
    if agent.audit_failures:
        return EXIT_AUDIT_FAILED
    if read_failed is not None:
        return EXIT_STDIN_FAILED
    return EXIT_UNREADABLE_LINES if unreadable else 0
