"""so8t serve: the safety gate as an HTTP service (FastAPI on uvicorn), the same Agent as so8t runtime.

    export SO8T_CLIENT_KEYS="gateway:$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
    export SO8T_REVIEWER_KEYS="desk:..."          # reviewers: escalations and the emergency switch
    so8t serve --config configs/production.yaml [--host 127.0.0.1 --port 8080]
    so8t serve --config configs/production.yaml --check     # what a start would find; 0 ready, 3 degraded
    curl -s -H "Authorization: Bearer $KEY" -d '{"user_request": "経費精算の締め日は？"}' \\
         -H 'Content-Type: application/json' http://127.0.0.1:8080/v1/decide

API keys come from the environment only (the config's service.client_keys_env and
service.reviewer_keys_env name the variables). --port 0 takes any free port; the first line on stdout
says which. SIGTERM stops taking connections, answers the requests in flight for up to
service.shutdown_timeout_s (503 shutting_down for what is left then) and closes the audit log, all within
service.shutdown_timeout_s + 10 s; a model that cannot be loaded still serves, failing closed (every request escalated, /readyz 503).
Endpoints, metrics and alerts: docs/serving.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings

from ..core.config import ConfigError
from ..serve.applog import settle_level
from ..serve.config import load_runtime_config
from .gate_options import add_gate_options, gate_overrides

EXIT_DEGRADED = 3  # not 2: argparse exits 2 on a usage error, which would not start


class SaidAtStart(logging.Handler):
    """The warnings and errors the so8t loggers give while the service is put together."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> SaidAtStart:
        logging.getLogger("so8t").addHandler(self)
        settle_level()  # its warnings reach it whatever log_level the config sets
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("so8t").removeHandler(self)
        settle_level()


def preflight_report(service, said_at_start: SaidAtStart) -> int:
    """Print each check and every problem; 0 when there is none."""
    try:
        with said_at_start:
            checks = service.preflight()
    finally:
        service.agent.close()
    for name, finding in checks.items():
        print(f"{name:>16}: {finding}")
    problems = list(dict.fromkeys(said_at_start.messages))
    problems += [finding for finding in checks.values()
                 if finding.startswith("not ready") and not any(finding[11:] in said for said in problems)]
    for problem in problems:
        print(f"problem: {problem}")
    print(f"so8t serve --check: {'ready' if not problems else f'{len(problems)} problem(s); it would serve degraded'}")
    return EXIT_DEGRADED if problems else 0


def refuse_root_in_a_folder_of_another_user(config, log_dir: str | None) -> None:
    """--check opens the audit log and the queue as a start does, creating what is missing: run as root in the
    service user's folder, it would leave files that user cannot open, and the service would fail closed."""
    from ..serve.config import runtime_paths

    folder = runtime_paths(config, log_dir).audit.parent
    if os.geteuid() == 0 and folder.is_dir() and folder.stat().st_uid != 0:
        sys.exit(f"error: {folder} belongs to another user; run --check as that user (sudo -u <user> or "
                 "systemd-run -p User=<user>, docs/serving.md), or files it creates there would be root's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/basic.yaml")
    parser.add_argument("--host", help="address to listen on (default: service.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: service.port, 8080; 0: any free port)")
    parser.add_argument("--log-dir", help="folder of the audit log, queue, spool and flag file (else SO8T_LOG_DIR)")
    add_gate_options(parser)
    parser.add_argument("--test-mode", action="store_true", help="records and cases marked as tests; no notifications")
    parser.add_argument("--check", action="store_true",
                        help="load everything as a start would (so it creates the log folder's files a start "
                             "creates: queue, audit log anchor and lock), print what is wrong and exit without serving: "
                             f"0 ready, {EXIT_DEGRADED} it would serve degraded (or its port is taken), 1 it would not start")
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. service.max_batch=16")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    overrides = gate_overrides(args)
    for key, value in (("host", args.host), ("port", args.port)):
        if value is not None:
            overrides.append(f"service.{key}={value}")
    try:
        from ..serve.http import ApiKeys, Service
        from ..serve.http.server import listening_socket, uvicorn_server
        from ..serve.runtime import Agent
    except ImportError as exc:
        sys.exit(f"error: {exc.name} is missing: install the service extra (pip install -e '.[service]')")
    try:
        config = load_runtime_config(args.config, overrides)
        keys = ApiKeys.from_env(config.service.client_keys_env, config.service.reviewer_keys_env)
    except ConfigError as exc:
        sys.exit(f"error: {exc}")
    if args.check:
        refuse_root_in_a_folder_of_another_user(config, args.log_dir)
    said_at_start = SaidAtStart()
    try:
        listener = listening_socket(config.service.host, config.service.port)
    except OSError as exc:
        cannot_listen = f"cannot listen on {config.service.host}:{config.service.port}: {exc}"
        if not args.check:
            sys.exit(f"error: {cannot_listen}")
        listener = None  # the check goes on: the service it checks may be the one holding the port
        said_at_start.messages.append(f"{cannot_listen} (a running service holds it, or it would not start)")
    try:
        with said_at_start:
            agent = Agent(config, test_mode=args.test_mode, log_dir=args.log_dir)
    except ConfigError as exc:
        if listener is not None:
            listener.close()
        sys.exit(f"error: {exc}")
    if agent.load_error:
        print(f"so8t serve: {agent.load_error}; every request is escalated and /readyz answers 503", file=sys.stderr)
    if agent.router_error:
        print(f"so8t serve: {agent.router_error}", file=sys.stderr)
    if agent.audit.open_error:
        print(f"so8t serve: {agent.audit.open_error}; every decision fails closed and /readyz answers 503",
              file=sys.stderr)
    service = Service(agent, keys, log_dir=args.log_dir)
    if args.check:
        if listener is not None:
            listener.close()
        return preflight_report(service, said_at_start)
    host, port = listener.getsockname()[:2]
    print(f"so8t serve: listening on http://{host}:{port} (model {agent.model_version}, mode {service.switch.mode}, "
          f"audit log {agent.audit.path})", flush=True)
    uvicorn_server(service).run(sockets=[listener])
    return 0
