"""so8t present: the stakeholder demo as a web page (what ``make present`` runs).

    so8t present                                   # http://127.0.0.1:8866/, the default model's Q4_K_M file
    so8t present --model checkpoints/so8t-tiny --threshold 0.9 --port 0 --no-browser

Voilà serves notebooks/05_stakeholder_demo.ipynb on 127.0.0.1 as a page without code: a request box,
context, a model picker, the threshold, example buttons; after Decide, the decision, a confidence bar per
class, the answer or the reason, and where an escalation goes. Every model under checkpoints/ and dist/ is
offered; the page opens on --model, else so8t-demo's Q4_K_M file, else another Q4_K_M file. Decisions are
made by the production agent in test mode and recorded under --log-dir (nobody is notified). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import tempfile
from pathlib import Path

from ..core.paths import enter_project_root
from ..workbench.stakeholder_server import (
    HOST,
    NOTEBOOK,
    LocalServer,
    ServerError,
    free_port,
    kernel_environment,
    port_is_free,
    present_environment,
    voila_command,
)
from ..workbench.stakeholder_view import demo_settings, log_folder_problem, model_label
from .arg_types import number_in, whole_number

MAX_PORT = 65535


def _port(text: str) -> int:
    """0 to 65535 (0: a free one); anything else would end in an OverflowError traceback from the socket."""
    port = whole_number(0)(text)
    if port > MAX_PORT:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to {MAX_PORT}, got {text!r}")
    return port


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C: Voilà shuts its kernels down


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t present", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="checkpoint, run folder or .gguf file the page opens on")
    parser.add_argument("--threshold", type=float, help="the runtime rule's threshold it opens on (default 0.8)")
    parser.add_argument("--port", type=_port, default=8866, help="port on 127.0.0.1; 0 picks a free one")
    parser.add_argument("--log-dir", help="the demo's audit log and escalation queue (default: logs/present)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    parser.add_argument("--timeout", type=number_in(1, what="seconds"), default=120,  # NaN would never time out
                        help="seconds to wait for Voilà to answer")
    args = parser.parse_args(argv)

    if importlib.util.find_spec("voila") is None:
        print("so8t present needs Voilà: pip install -e '.[notebooks]' (make venv installs it)", file=sys.stderr)
        return 2
    model = str(Path(args.model).resolve()) if args.model else None  # paths as the caller meant them
    log_dir = Path(args.log_dir).resolve() if args.log_dir else None
    if model and not Path(model).exists():
        print(f"so8t present: --model {args.model}: no such file or folder", file=sys.stderr)
        return 2
    root = enter_project_root()
    log_dir = log_dir or root / "logs" / "present"
    problem = log_folder_problem(log_dir)  # before Voilà: otherwise "ready", and the page a generic cell error
    if problem:
        print(f"so8t present: {problem}", file=sys.stderr)
        return 2
    settings = demo_settings(model=model, threshold=args.threshold)
    for note in settings.notes:
        print(f"so8t present: {note}", file=sys.stderr)
    if settings.selected is None:
        print("no trained model under checkpoints/ or dist/ yet: the page will say so (run `make demo` first)",
              file=sys.stderr)
    else:
        print(f"model: {model_label(settings.selected)} ({settings.selected}); threshold {settings.threshold:.2f}; "
              f"{len(settings.models)} model(s) to pick from; records under {log_dir}")

    port = args.port or free_port()
    if not port_is_free(port):
        print(f"so8t present: port {port} on {HOST} is taken (another so8t present?); use --port 0 for a free one",
              file=sys.stderr)
        return 2
    url = f"http://{HOST}:{port}/"
    scratch = tempfile.TemporaryDirectory(prefix="so8t-present-")
    env = kernel_environment(present_environment(settings.selected, settings.threshold, log_dir), scratch.name)
    server = LocalServer(voila_command(port, NOTEBOOK, open_browser=not args.no_browser), url, env, cwd=root)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        server.start()
        server.wait_ready(args.timeout)
        print(f"\nThe stakeholder demo is at {url}  (Ctrl-C stops it)\n", flush=True)
        return server.process.wait()
    except ServerError as exc:
        print(f"so8t present: Voilà did not start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)
        scratch.cleanup()
