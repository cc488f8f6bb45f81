"""so8t runtime: the safety gate on requests from the command line.

    so8t runtime --config configs/basic.yaml --request "経費精算の締め日は？" [--pretty]
    cat requests.jsonl | so8t runtime --config configs/basic.yaml [--use-gguf] [--test-mode]

One JSON result per request (``so8t_lib.serve.runtime.Agent.run_batch``), one audit record each; the
gate fails closed (ESCALATE, never ALLOW) on anything it cannot decide.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings

from ..serve.runtime import Agent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="so8t runtime", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/basic.yaml")
    parser.add_argument("--use-gguf", action="store_true", help="decide with the config's GGUF file")
    parser.add_argument("--model-path", help="override model.checkpoint_path (a folder or a .gguf file)")
    parser.add_argument("--request", help="one request; without it, JSONL objects are read from stdin")
    parser.add_argument("--context")
    parser.add_argument("--user-id")
    parser.add_argument("--test-mode", action="store_true", help="audit records marked as tests; no notifications")
    parser.add_argument("--pretty", action="store_true", help="readable output instead of one JSON per line")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. inference.safety_threshold=0.9")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    overrides = list(args.overrides)
    if args.use_gguf:
        overrides.append("model.use_gguf=true")
    if args.model_path:
        overrides.append(f"model.checkpoint_path={args.model_path}")
        if args.model_path.endswith(".gguf"):
            overrides += ["model.use_gguf=true", f"model.gguf_path={args.model_path}"]
    agent = Agent.from_config(args.config, overrides, test_mode=args.test_mode)
    if args.request is not None:
        items = [{"user_request": args.request, "context": args.context, "user_id": args.user_id}]
    else:
        items = []
        for line_no, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                items.append({"user_request": None, "_error": f"stdin line {line_no}: not JSON ({exc.msg})"})
    for result in agent.run_batch(items):
        if args.pretty:
            print(f"{result['decision']:<9s} conf {result['confidence']}  [{result['category']}]  "
                  f"human_required={result['human_required']}  {result['request_id']}\n  {result['rationale']}"
                  + (f"\n  answer: {result['task_response']}" if result["task_response"] else ""))
        else:
            print(json.dumps(result, ensure_ascii=False))
