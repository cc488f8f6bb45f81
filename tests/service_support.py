"""Shared pieces of the service tests: stand-in models, an Agent on a temp folder, API keys, and a
real uvicorn server on a free loopback port in a thread."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np

from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.http import ApiKeys, Service
from so8t_lib.serve.http.server import listening_socket, uvicorn_server
from so8t_lib.serve.runtime import Agent

CLIENT_SECRET = "client-secret-0123456789"
REVIEWER_SECRET = "reviewer-secret-0123456789"
OTHER_CLIENT_SECRET = "other-client-secret-0123"
CLIENT = {"Authorization": f"Bearer {CLIENT_SECRET}"}
OTHER_CLIENT = {"Authorization": f"Bearer {OTHER_CLIENT_SECRET}"}
REVIEWER = {"Authorization": f"Bearer {REVIEWER_SECRET}"}
KEY_ENV = {"SO8T_CLIENT_KEYS": f"gateway:{CLIENT_SECRET},batch:{OTHER_CLIENT_SECRET}",
           "SO8T_REVIEWER_KEYS": f"desk:{REVIEWER_SECRET}"}
PROBS = {"ALLOW": (0.96, 0.02, 0.02), "REFUSE": (0.02, 0.96, 0.02), "ESCALATE": (0.3, 0.3, 0.4)}


def keys() -> ApiKeys:
    return ApiKeys.from_env("SO8T_CLIENT_KEYS", "SO8T_REVIEWER_KEYS", KEY_ENV)


class FixedDecider:
    """The same probabilities for every request (ALLOW by default), or an error for every batch."""

    model_version = "fake-fixed@1"

    def __init__(self, probs=PROBS["ALLOW"], fail: bool = False, delay_s: float = 0.0):
        self.probs, self.fail, self.delay_s = probs, fail, delay_s
        self.batches: list[int] = []

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        self.batches.append(len(requests))
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("CUDA error: device-side assert triggered")
        return np.asarray([self.probs] * len(requests))

    def generate(self, request, context=None, max_tokens=128, temperature=0.0):
        return "Here is how: file it in the portal."


def fault_of(text: str) -> str | None:
    """The fault FaultyDecider injects for a (cleaned) request text: about half of all texts break."""
    kind = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[0] % 6
    return {0: "raise", 1: "nan", 2: "shape"}.get(kind)


class FaultyDecider:
    """Would ALLOW everything with confidence 0.99, but breaks on the texts ``fault_of`` picks: it
    raises, returns NaN, or returns the wrong shape. So any ALLOW for such a text is a fail-open."""

    model_version = "fake-faulty@1"

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        faults = [fault_of(r) for r in requests]
        if "raise" in faults:
            raise RuntimeError("injected model fault")
        if "shape" in faults:
            return np.ones((len(requests), 2)) / 2
        rows = np.asarray([[0.99, 0.005, 0.005]] * len(requests))
        rows[[i for i, f in enumerate(faults) if f == "nan"]] = np.nan
        return rows

    def generate(self, request, context=None, max_tokens=128, temperature=0.0):
        return "answer"


def runtime_config(folder: Path, **sections) -> RuntimeConfig:
    data = {
        "model": {"checkpoint_path": "unused"},
        "inference": {"generate_responses": False, "decision_timeout_s": 10},
        "logging": {"audit_log": str(folder / "audit.jsonl")},
        "escalation": {"queue_db": str(folder / "escalations.sqlite"), "enable_notifications": False,
                       "queue_timeout_s": 2, "retry_interval_s": 3600},
        "service": {"emergency_flag_file": str(folder / "EMERGENCY"), "flag_poll_s": 0.1, "queue_poll_s": 0.2},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values} if isinstance(values, dict) else values
    return RuntimeConfig.model_validate(data)


LOAD = "load"  # make_service(decider=LOAD): the agent loads model.checkpoint_path itself


def make_service(folder: Path, decider=None, **sections) -> Service:
    """A Service on ``folder``; the decider defaults to FixedDecider (ALLOW)."""
    folder.mkdir(parents=True, exist_ok=True)
    decider = FixedDecider() if decider is None else None if decider == LOAD else decider
    agent = Agent(runtime_config(folder, **sections), decider=decider, test_mode=True)
    return Service(agent, keys())


def records(folder: Path, event: str | None = "decision") -> list[dict]:
    path = folder / "audit.jsonl"
    if not path.is_file():
        return []
    out = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in out if event is None or r.get("event") == event]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """``with LiveServer(service) as server:`` a real uvicorn on 127.0.0.1 (port chosen by the kernel)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.sock = listening_socket("127.0.0.1", 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn_server(service)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()
