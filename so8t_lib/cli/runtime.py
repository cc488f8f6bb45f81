"""so8t runtime: the safety gate on requests from the command line.

    so8t runtime --config configs/basic.yaml --request "経費精算の締め日は？" [--pretty]
    cat requests.jsonl | so8t runtime --config configs/basic.yaml [--use-gguf] [--test-mode]

One JSON result per request (``so8t_lib.serve.runtime.Agent.run_batch``), one audit record each, in
input order; the gate fails closed (ESCALATE, never ALLOW) on anything it cannot decide. A stdin line
that is not UTF-8 or not JSON (or JSON Python cannot hold: a number past 4300 digits, nesting too
deep) gets its own fail-closed result; the other lines are decided. Lines are decided in chunks of
``service.max_batch`` (32), so ``inference.decision_timeout_s`` limits each chunk's model pass, not the
whole file; each chunk's results are printed when it is decided. A line sets only ``user_request``,
``context`` and ``user_id`` (a ``client`` field is ignored: only the HTTP service names the key that asked).

Exit status: 0 all decided and recorded; 3 the model could not be loaded (every request was
escalated); 4 an audit record could not be written (those requests were escalated, see ``error``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterable, Iterator
from itertools import islice

from tqdm import tqdm

from ..core.config import ConfigError
from ..serve.request_checks import Unparsed
from ..serve.runtime import Agent
from .gate_options import add_gate_options, gate_overrides

EXIT_MODEL_NOT_LOADED = 3
EXIT_AUDIT_FAILED = 4


REQUEST_FIELDS = ("user_request", "context", "user_id")  # what a stdin line may set; never ``client`` (an API key's
# name, which only the HTTP service sets for the key that asked)


def iter_items(stream) -> Iterator:
    """Requests from a binary stream of JSON lines, one at a time; an unreadable line (not UTF-8, not JSON, or JSON
    that Python cannot hold: a number past 4300 digits, nesting past the recursion limit) becomes ``Unparsed``. A
    UTF-8 byte-order mark before the first line (Windows editors write one) is dropped, as the training loaders drop
    it. An object keeps only the request's own fields (``REQUEST_FIELDS``)."""
    for line_no, raw in enumerate(stream, 1):
        if isinstance(raw, str):  # a text stream (tests, notebooks): back to the bytes it stands for
            raw = raw.encode("utf-8", "surrogateescape")
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Unparsed(f"stdin line {line_no}: not valid UTF-8 (byte {exc.start})", raw[:200].decode("utf-8", "replace"))
            continue
        try:
            item = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Unparsed(f"stdin line {line_no}: not JSON ({exc.msg})", text[:200])
            continue
        except RecursionError:
            yield Unparsed(f"stdin line {line_no}: not readable JSON (nested too deep)", text[:200])
            continue
        except Exception as exc:  # noqa: BLE001 - ValueError (a number past 4300 digits), MemoryError: that line only
            yield Unparsed(f"stdin line {line_no}: not readable JSON ({type(exc).__name__}: {str(exc)[:200]})",
                           text[:200])
            continue
        yield {k: item[k] for k in REQUEST_FIELDS if k in item} if isinstance(item, dict) else item


def read_items(stream) -> list:
    """All of ``iter_items(stream)``."""
    return list(iter_items(stream))


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or closed
        return False


def decide_in_chunks(agent: Agent, items: Iterable, chunk: int) -> Iterator[dict]:
    """``agent.run_batch`` on at most ``chunk`` requests at a time (the config's ``service.max_batch``), so
    ``inference.decision_timeout_s`` limits each pass, not the whole input; results in input order, each chunk's as
    soon as it is decided. When deciding takes over a second, a bar on stderr counts the requests decided (only
    where stderr is a terminal and the results go elsewhere: a file or a pipe)."""
    items = iter(items)
    quiet = True if _isatty(sys.stdout) else None  # None: tqdm shows the bar where stderr is a terminal
    with tqdm(desc="deciding", unit="request", leave=False, disable=quiet, file=sys.stderr, delay=1.0) as bar:
        while batch := list(islice(items, chunk)):
            yield from agent.run_batch(batch)
            bar.update(len(batch))


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
    if args.request is not None:
        items: Iterable = [{"user_request": args.request, "context": args.context, "user_id": args.user_id}]
    else:
        items = iter_items(getattr(sys.stdin, "buffer", sys.stdin))
    try:
        for result in decide_in_chunks(agent, items, agent.config.service.max_batch):
            if args.pretty:
                print(f"{result['decision']:<9s} conf {result['confidence']}  [{result['category']}]  "
                      f"human_required={result['human_required']}  {result['request_id']}\n  {result['rationale']}"
                      + (f"\n  answer: {result['task_response']}" if result["task_response"] else "")
                      + (f"\n  escalation: {result['escalation_id']} ({result.get('escalation_status')})"
                         if result.get("escalation_id") else "")
                      + (f"\n  error: {result['error']}" if result.get("error") else ""))
            else:
                print(json.dumps(result, ensure_ascii=False))
    finally:
        agent.close()
    if agent.load_error:
        return EXIT_MODEL_NOT_LOADED
    if agent.audit_failures:
        print(f"so8t runtime: {agent.audit_failures} audit record(s) could not be written; see each result's error",
              file=sys.stderr)
        return EXIT_AUDIT_FAILED
    return 0
