"""``so8t serve`` as a child process on 127.0.0.1, the way a deployment runs it: a config file for a
checkpoint, and a server started with ``--port 0`` whose first line says where it listens.

It exists so that tests/test_service_process.py and benchmarks/service_load.py (which puts tests/ on
sys.path for it) start the service one way instead of two copies that drift apart; each passes its own
API keys and settings. It imports nothing from so8t_lib: the service runs in the child."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]


def write_config(folder: Path, checkpoint: Path, *, queue_timeout_s: float = 5, **service) -> Path:
    """``folder/serve.yaml``: decisions only (no generated answers), the audit log under the log folder,
    no notifications; ``service`` is the service section, as given."""
    config = {"model": {"checkpoint_path": str(checkpoint)},
              "inference": {"generate_responses": False, "decision_timeout_s": 60},
              "logging": {"audit_log": "logs/audit.jsonl", "log_level": "WARNING"},
              "escalation": {"enable_notifications": False, "queue_timeout_s": queue_timeout_s, "retry_interval_s": 1},
              "service": service}
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class Server:
    """``so8t serve --port 0`` in a child process; ``url`` once its first line says where it listens.

    ``keys`` are the API-key variables (SO8T_CLIENT_KEYS, SO8T_REVIEWER_KEYS) added to its environment;
    ``threads``, if given, caps its OpenMP/MKL threads; ``overrides`` are ``section.field=value`` arguments.
    Its stdout is read to the end in a thread (a full pipe would block it), its stderr goes to a file
    beside the log folder (``errors()``). ``stop`` waits up to ``stop_timeout_s`` for it to exit."""

    def __init__(self, config: Path, log_dir: Path, *overrides: str, keys: dict[str, str],
                 threads: int | None = None, stop_timeout_s: float = 120) -> None:
        env = {**os.environ, **keys}
        if threads is not None:
            env |= {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.log_dir, self.stop_timeout_s = log_dir, stop_timeout_s
        self.stderr_path = log_dir.parent / f"serve-{time.monotonic_ns()}.err"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "so8t_lib", "serve", "--config", str(config), "--port", "0",
                                      "--log-dir", str(log_dir), "--test-mode", *overrides],
                                     cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        lines: queue.Queue[str] = queue.Queue()

        def read_stdout() -> None:
            for line in self.proc.stdout:
                lines.put(line)
            lines.put("")  # end of output: the server exited

        threading.Thread(target=read_stdout, daemon=True).start()
        try:
            first = lines.get(timeout=180)
        except queue.Empty:
            self.proc.kill()
            raise RuntimeError(f"so8t serve did not start: {self.errors()}") from None
        if "listening on http://" not in first:
            raise RuntimeError(f"so8t serve did not start: {first!r}\n{self.errors()}")
        self.url = first.split("listening on ", 1)[1].split()[0]

    def errors(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=30).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(self.stop_timeout_s)
        finally:
            self.stderr.close()
