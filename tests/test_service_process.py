"""so8t serve as a process, with the tiny model: it refuses to start without keys; SIGTERM stops taking
connections, answers the requests in flight and closes the audit log; kill -9 in the middle of a burst
loses nothing that was answered (the restarted server finds every answered decision in the log and
every escalation in the queue, and the chain verifies)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from serve_process import Server, write_config
from service_support import CLIENT, KEY_ENV, REVIEWER, records

from so8t_lib.serve.audit import verify

ROOT = Path(__file__).resolve().parents[1]
SERVICE = {"flag_poll_s": 0.2}  # the emergency flag file, looked for five times a second


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    path = tmp_path_factory.mktemp("model") / "tiny"
    SO8TModel.from_config(ModelConfig()).save(path)
    return path


def test_serve_refuses_to_start_without_keys(tmp_path, checkpoint):
    env = {k: v for k, v in os.environ.items() if k not in KEY_ENV}
    done = subprocess.run([sys.executable, "-m", "so8t_lib", "serve", "--config",
                           str(write_config(tmp_path, checkpoint, **SERVICE)), "--port", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "SO8T_CLIENT_KEYS" in done.stderr and done.stdout == ""


def test_sigterm_answers_the_requests_in_flight_then_stops(tmp_path, checkpoint):
    log_dir = tmp_path / "logs"
    config = write_config(tmp_path, checkpoint, **SERVICE)
    server = Server(config, log_dir, "service.max_wait_ms=1000", "service.max_batch=64", keys=KEY_ENV)
    answers: list[httpx.Response | Exception] = []

    def ask(n: int) -> None:
        try:
            answers.append(httpx.post(f"{server.url}/v1/decide", headers=CLIENT, timeout=120,
                                      json={"user_request": f"How do I book meeting room {n}?", "user_id": f"u{n}"}))
        except httpx.HTTPError as exc:
            answers.append(exc)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(10)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while server.metric("so8t_http_requests_in_flight") < 11:  # the ten, and this scrape
        assert time.monotonic() < deadline, "the requests did not arrive"
        time.sleep(0.01)
    server.proc.send_signal(signal.SIGTERM)  # the ten are in flight: received, not answered
    refused = False
    while not refused and server.proc.poll() is None:
        try:
            httpx.get(f"{server.url}/healthz", timeout=5)
        except (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError):
            refused = True  # refused outright, or a connection the closing listener had queued and then reset
        time.sleep(0.02)
    for t in threads:
        t.join(120)
    code = server.stop()
    assert code in (0, -signal.SIGTERM), server.errors()
    assert refused, "the server kept accepting connections until it exited"
    assert len(answers) == 10 and all(isinstance(a, httpx.Response) and a.status_code == 200 for a in answers), answers
    assert sorted(r["request_id"] for r in records(log_dir)) == sorted(a.json()["request_id"] for a in answers)
    assert verify(log_dir)["errors"] == []
    assert "shutdown complete" in server.errors()


def test_kill_9_mid_burst_loses_nothing_that_was_answered(tmp_path, checkpoint):
    log_dir = tmp_path / "logs"
    config = write_config(tmp_path, checkpoint, **SERVICE)
    server = Server(config, log_dir, keys=KEY_ENV)
    answered: list[dict] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(base_url=server.url, headers=CLIENT, timeout=60) as http:
            n = 0
            while not stop.is_set():
                try:
                    answer = http.post("/v1/decide", json={"user_request": f"client {k} asks {n}: the VPN is down"})
                except httpx.HTTPError:
                    return
                if answer.status_code == 200:
                    answered.append(answer.json())
                n += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while len(answered) < 40:
        assert time.monotonic() < deadline and server.proc.poll() is None, server.errors()
        time.sleep(0.01)
    server.stop(signal.SIGKILL)  # nothing is cleaned up
    stop.set()
    for t in threads:
        t.join(60)
    restarted = Server(config, log_dir, keys=KEY_ENV)
    try:
        deadline = time.monotonic() + 60
        while restarted.metric("so8t_escalations_spooled") > 0:  # the new server finishes what was spooled
            assert time.monotonic() < deadline, restarted.errors()
            time.sleep(0.2)
        logged = [r["request_id"] for r in records(log_dir)]
        assert len(logged) == len(set(logged))  # none recorded twice
        assert {a["request_id"] for a in answered} <= set(logged)  # nothing answered is missing
        cases = httpx.get(f"{restarted.url}/v1/escalations", params={"limit": 1000}, headers=REVIEWER, timeout=30).json()
        queued = {c["case_id"] for c in cases["cases"]}
        assert {a["escalation_id"] for a in answered if a.get("escalation_id")} <= queued
        assert not any(a["decision"] == "ALLOW" and "fail_closed" in a["flags"] for a in answered)
    finally:
        restarted.stop()
    assert verify(log_dir)["errors"] == []


def test_check_reports_what_a_start_would_find_and_serves_nothing(tmp_path, checkpoint, monkeypatch, capsys):
    """so8t serve --check: 0 when everything a start loads is there; 3, naming each problem, when the gate would
    serve degraded (a router file that is not there, a flag file holding emergency mode, its port taken); it never
    listens and writes no audit record."""
    from so8t_lib.cli import main as so8t

    for name, value in KEY_ENV.items():
        monkeypatch.setenv(name, value)
    log_dir = tmp_path / "logs"
    command = ["serve", "--config", str(write_config(tmp_path, checkpoint)), "--log-dir", str(log_dir), "--check"]
    busy = socket.create_server(("127.0.0.1", 0))  # a port another process holds
    assert so8t([*command, "service.port=0"]) == 0
    out = capsys.readouterr().out
    assert "model: loaded: " in out and "escalation_queue: reachable: 0 unresolved" in out
    assert out.splitlines()[-1] == "so8t serve --check: ready"

    (log_dir / "EMERGENCY").write_text("drill\n", encoding="utf-8")
    with busy:
        assert so8t([*command, "escalation.router=missing/router.json", f"service.port={busy.getsockname()[1]}"]) == 3
    out = capsys.readouterr().out
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 3, out
    for expected in ("missing/router.json", "holds emergency mode", "cannot listen on 127.0.0.1"):
        assert any(expected in p for p in problems), (expected, out)
    assert records(log_dir, event=None) == []  # nothing decided, not even the switch's audit record
    if os.geteuid() == 0:  # root in the service user's folder would leave files that user cannot open
        os.chown(log_dir, 65534, 65534)
        with pytest.raises(SystemExit) as exited:
            so8t([*command, "service.port=0"])
        assert "belongs to another user" in str(exited.value.code)


def test_check_sees_the_warnings_of_a_start_under_any_log_level(tmp_path, checkpoint, monkeypatch, capsys):
    """A config that logs only errors still has its warnings counted by --check (escalations notifying nobody),
    and its log file still gets errors only."""
    from so8t_lib.cli import main as so8t

    for name, value in KEY_ENV.items():
        monkeypatch.setenv(name, value)
    log_dir = tmp_path / "logs"
    command = ["serve", "--config", str(write_config(tmp_path, checkpoint)), "--log-dir", str(log_dir), "--check",
               "service.port=0", "logging.log_level=ERROR", "logging.log_file=agent.log",
               "escalation.enable_notifications=true"]
    assert so8t(command) == 3
    out = capsys.readouterr().out
    assert any(line.startswith("problem: escalations will reach nobody") for line in out.splitlines()), out
    assert "reach nobody" not in (log_dir / "agent.log").read_text(encoding="utf-8")


def test_a_start_whose_audit_log_cannot_be_opened_says_so_on_stderr(tmp_path, checkpoint, monkeypatch, capsys):
    """A full disk or a bad path at start left only logging's own tracebacks on stderr (the application log could
    not be written either): the open error is printed as the model's load error is."""
    from so8t_lib.cli import main as so8t

    for name, value in KEY_ENV.items():
        monkeypatch.setenv(name, value)
    log_dir = tmp_path / "logs"
    (log_dir / "audit.jsonl").mkdir(parents=True)  # a folder where the log file must be: it cannot be opened
    command = ["serve", "--config", str(write_config(tmp_path, checkpoint)), "--log-dir", str(log_dir), "--check",
               "service.port=0"]
    assert so8t(command) == 3  # and --check, which said "audit_log: writable", names the problem
    captured = capsys.readouterr()
    assert "exists and is not a regular file); every decision fails closed and /readyz answers 503" in captured.err
    assert any(line.startswith("problem: ") and "is not a regular file" in line for line in captured.out.splitlines())
    assert [p.name for p in log_dir.iterdir() if p.name.startswith("audit.jsonl.anchor")] == []
