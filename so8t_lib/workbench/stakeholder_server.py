"""Serving the stakeholder page: Voilà runs notebook 05 as a standalone page on 127.0.0.1 (no code shown).

``so8t present`` and the browser tests start it the same way (``voila_command`` + ``LocalServer``), so the
tests open the page a presenter opens. Settings reach the notebook through ``$SO8T_DEMO_*`` (Voilà has no
parameters to inject), and the kernel is the project's ``so8t`` (registered in .venv by ``make venv``) or,
where that is missing, one written for this Python so the page never fails for want of a kernel name.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..core.paths import PROJECT_ROOT
from .stakeholder_view import ENV_LOG_DIR, ENV_MODEL, ENV_THRESHOLD

NOTEBOOK = PROJECT_ROOT / "notebooks" / "05_stakeholder_demo.ipynb"
KERNEL = "so8t"  # every notebook's kernelspec name
HOST = "127.0.0.1"


class ServerError(RuntimeError):
    """A local server that did not start, with the end of its log."""


def free_port(host: str = HOST) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = HOST) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except (OSError, OverflowError):  # taken, or no port at all (over 65535: OverflowError)
            return False
        return True


def kernel_environment(env: Mapping[str, str], scratch: str | Path) -> dict[str, str]:
    """``env`` with a ``so8t`` kernel Jupyter can find: the registered one if there is one, else a kernelspec
    for this Python written under ``scratch`` and put first on ``JUPYTER_PATH``."""
    from jupyter_client.kernelspec import KernelSpecManager

    env = dict(env)
    if KERNEL in KernelSpecManager().find_kernel_specs():
        return env
    folder = Path(scratch) / "kernels" / KERNEL
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python (so8t workbench)", "language": "python"}
    (folder / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(scratch), env.get("JUPYTER_PATH")) if p)
    return env


def present_environment(model: str | None, threshold: float | None, log_dir: str | Path | None,
                        base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment the page's kernel inherits: the settings notebook 05 reads when it has no parameters."""
    env = dict(os.environ if base is None else base)
    for name, value in ((ENV_MODEL, model), (ENV_THRESHOLD, threshold), (ENV_LOG_DIR, log_dir)):
        if value is None or value == "":
            env.pop(name, None)
        else:
            env[name] = str(value)
    return env


def voila_command(port: int, notebook: str | Path = NOTEBOOK, open_browser: bool = False) -> list[str]:
    """Voilà on ``notebook``, bound to 127.0.0.1 on exactly ``port`` (no silent move to another port), sources
    stripped, tracebacks hidden."""
    cmd = [sys.executable, "-m", "voila", str(notebook), f"--port={port}", f"--Voila.ip={HOST}",
           "--Voila.port_retries=0", "--strip_sources=True", "--show_tracebacks=False", "--theme=light",
           "--VoilaExporter.exclude_markdown=True"]  # the notebook's header is for notebook readers
    return cmd if open_browser else [*cmd, "--no-browser"]


class LocalServer:
    """A server process of ours on 127.0.0.1: started in its own session, ready once it answers HTTP at all,
    and always stopped (SIGTERM so it can shut its kernels down, then SIGKILL to its process group)."""

    def __init__(self, cmd: Sequence[str], url: str, env: Mapping[str, str] | None = None,
                 cwd: str | Path | None = None, log: str | Path | None = None) -> None:
        self.cmd, self.url, self.env, self.cwd = list(cmd), url, env, cwd
        self.log = Path(log) if log else None
        self.process: subprocess.Popen | None = None

    def start(self) -> LocalServer:
        out = open(self.log, "ab") if self.log else None  # noqa: SIM115 - the child owns it until it exits
        try:
            self.process = subprocess.Popen(self.cmd, env=None if self.env is None else dict(self.env), cwd=self.cwd,
                                            stdout=out, stderr=subprocess.STDOUT if out else None,
                                            start_new_session=True)
        finally:
            if out:
                out.close()
        return self

    def log_tail(self, chars: int = 3000) -> str:
        if not self.log or not self.log.is_file():
            return "(its output went to the terminal)"
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def wait_ready(self, timeout: float = 120.0, path: str = "/voila/static/favicon.ico") -> None:
        """Poll until the server answers any HTTP request (an error status counts: it is listening).
        ``path`` should be cheap: Voilà runs the notebook for a request of the page itself."""
        deadline = time.monotonic() + timeout
        probe = self.url.rstrip("/") + path
        while True:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise ServerError(f"{self.cmd[2:4]} exited (status {code}) before serving {self.url}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(probe, timeout=5):
                    return
            except urllib.error.HTTPError:
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"{self.url} did not answer within {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(0.2)

    def stop(self, grace: float = 15.0) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # our own session: the server and whatever it left
            except ProcessLookupError:
                pass
            process.wait()
        return process.returncode

    def __enter__(self) -> LocalServer:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
