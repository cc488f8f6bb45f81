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
were escalated, see ``error``); 5 some stdin lines were no request (each escalated, see ``error``); 128 + the
signal's number when a signal stopped it.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

from ..core.config import ConfigError
from ..serve.request_checks import Unparsed
from ..serve.runtime import Agent
from .gate_options import add_gate_options, gate_overrides
from .runtime_input import REQUEST_FIELDS, NotJsonLines, arrived_batches, iter_items, iter_lines, read_items

__all__ = ["REQUEST_FIELDS", "decide_in_chunks", "iter_items", "main", "read_items"]

EXIT_MODEL_NOT_LOADED = 3
EXIT_AUDIT_FAILED = 4
EXIT_UNREADABLE_LINES = 5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def decide_in_chunks(agent: Agent, items: Iterable, chunk: int, stop: threading.Event | None = None) -> Iterator[dict]:
    """``agent.run_batch`` on at most ``chunk`` requests at a time (the config's ``service.max_batch``), so
    ``inference.decision_timeout_s`` limits each pass, not the whole input; results in input order, each batch's as
    soon as it is decided. A batch holds the requests that have arrived (``runtime_input.arrived_batches``): a
    producer writing now and then gets each decision when its line comes. ``items`` may be (line number, request)
    pairs (``iter_lines``): each result then starts with its ``line``, since blank lines are skipped. When deciding
    takes over a second, a bar on stderr counts the requests decided (only where stderr is a terminal and the
    results go elsewhere: a file or a pipe)."""
    quiet = True if _isatty(sys.stdout) else None  # None: tqdm shows the bar where stderr is a terminal
    with tqdm(desc="deciding", unit="request", leave=False, disable=quiet, file=sys.stderr, delay=1.0) as bar:
        for batch in arrived_batches(items, chunk, stop):
            numbered = all(isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], int)
                           for entry in batch)
            requests = [entry[1] for entry in batch] if numbered else batch
            for entry, result in zip(batch, agent.run_batch(requests), strict=True):
                yield {"line": entry[0], **result} if numbered else result
            bar.update(len(batch))


@contextmanager
def _stop_on_signals() -> Iterator[threading.Event]:
    """SIGINT and SIGTERM set the event (the requests read by then are decided and recorded); a second one stops at
    once, as before. Only the main thread may install handlers: elsewhere the event is never set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def _asked(signum, frame) -> None:
        stop.signum = signum
        stop.set()
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    before = {signum: signal.signal(signum, _asked) for signum in STOP_SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


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
    if args.request is not None:
        items: Iterable = [{"user_request": args.request, "context": args.context, "user_id": args.user_id}]
    else:
        items = _counting_unread(iter_lines(getattr(sys.stdin, "buffer", sys.stdin)), unreadable)
    with _stop_on_signals() as stop:
        try:
            for result in decide_in_chunks(agent, items, agent.config.service.max_batch, stop):
                print(_pretty(result) if args.pretty else json.dumps(result, ensure_ascii=False), flush=True)
        except NotJsonLines as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        finally:
            agent.close()
    return _exit_status(agent, len(unreadable), getattr(stop, "signum", None))


def _counting_unread(pairs: Iterable[tuple[int, object]], unreadable: list[int]) -> Iterator[tuple[int, object]]:
    """``pairs`` as they are; the line number of each that could not be read as a request goes to ``unreadable``."""
    for line_no, item in pairs:
        if isinstance(item, Unparsed):
            unreadable.append(line_no)
        yield line_no, item


def _pretty(result: dict) -> str:
    where = f"line {result['line']}  " if "line" in result else ""
    return (f"{where}{result['decision']:<9s} conf {result['confidence']}  [{result['category']}]  "
            f"human_required={result['human_required']}  {result['request_id']}\n  {result['rationale']}"
            + (f"\n  answer: {result['task_response']}" if result["task_response"] else "")
            + (f"\n  escalation: {result['escalation_id']} ({result.get('escalation_status')})"
               if result.get("escalation_id") else "")
            + (f"\n  error: {result['error']}" if result.get("error") else ""))


def _exit_status(agent: Agent, unreadable: int, signum: int | None) -> int:
    if signum is not None:
        print(f"so8t runtime: stopped by {signal.Signals(signum).name}; every request read was decided and "
              "recorded", file=sys.stderr)
        return 128 + signum
    if agent.load_error:
        return EXIT_MODEL_NOT_LOADED
    if agent.audit_failures:
        print(f"so8t runtime: {agent.audit_failures} audit record(s) could not be written; see each result's error",
              file=sys.stderr)
        return EXIT_AUDIT_FAILED
    if unreadable:
        print(f"so8t runtime: {unreadable} stdin line(s) could not be read as a request (see each result's error): "
              "each was escalated as it stands, a case for a person; give one JSON object per line, UTF-8",
              file=sys.stderr)
        return EXIT_UNREADABLE_LINES
    return 0
