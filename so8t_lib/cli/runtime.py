"""so8t runtime: the safety gate on requests from the command line.

    so8t runtime --config configs/basic.yaml --request "経費精算の締め日は？" [--pretty]
    cat requests.jsonl | so8t runtime --config configs/basic.yaml [--use-gguf] [--test-mode]

One JSON result per request (``so8t_lib.serve.runtime.Agent.run_batch``), one audit record each; the
gate fails closed (ESCALATE, never ALLOW) on anything it cannot decide. A stdin line that is not
UTF-8 or not JSON gets its own fail-closed result; the other lines are decided.

Exit status: 0 all decided and recorded; 3 the model could not be loaded (every request was
escalated); 4 an audit record could not be written (those requests were escalated, see ``error``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from ..core.config import ConfigError
from ..serve.request_checks import Unparsed
from ..serve.runtime import Agent
from .gate_options import add_gate_options, gate_overrides

EXIT_MODEL_NOT_LOADED = 3
EXIT_AUDIT_FAILED = 4


def read_items(stream) -> list:
    """Requests from a binary stream of JSON lines; an unreadable line becomes ``Unparsed``. A UTF-8 byte-order
    mark before the first line (Windows editors write one) is dropped, as the training loaders drop it."""
    items: list = []
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
            items.append(Unparsed(f"stdin line {line_no}: not valid UTF-8 (byte {exc.start})",
                                  raw[:200].decode("utf-8", "replace")))
            continue
        try:
            items.append(json.loads(text))
        except json.JSONDecodeError as exc:
            items.append(Unparsed(f"stdin line {line_no}: not JSON ({exc.msg})", text[:200]))
    return items


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
        items = [{"user_request": args.request, "context": args.context, "user_id": args.user_id}]
    else:
        items = read_items(getattr(sys.stdin, "buffer", sys.stdin))
    try:
        for result in agent.run_batch(items):
            if args.pretty:
                print(f"{result['decision']:<9s} conf {result['confidence']}  [{result['category']}]  "
                      f"human_required={result['human_required']}  {result['request_id']}\n  {result['rationale']}"
                      + (f"\n  answer: {result['task_response']}" if result["task_response"] else "")
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
