"""The emergency switch of a running server: the admin endpoint and the flag file move it to
emergency mode (every request escalated, the model not consulted) and back, without a restart, and
every change is an audit record."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from service_support import CLIENT, PROBS, REVIEWER, FixedDecider, make_service, records

from so8t_lib.serve.audit import AuditWriteError, verify
from so8t_lib.serve.http import create_app


@pytest.fixture
def running(tmp_path):
    decider = FixedDecider(PROBS["ALLOW"])
    service = make_service(tmp_path / "logs", decider)
    with TestClient(create_app(service)) as client:
        yield service, client, decider


def decide(client) -> dict:
    return client.post("/v1/decide", json={"user_request": "Where is the expense form?"}, headers=CLIENT).json()


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the flag file was not noticed"
        time.sleep(0.05)


def test_the_admin_endpoint_escalates_everything_then_releases_it(running, tmp_path):
    service, client, decider = running
    assert decide(client)["decision"] == "ALLOW"
    on = client.post("/v1/admin/emergency", json={"enabled": True, "reason": "model under review"}, headers=REVIEWER)
    assert on.status_code == 200 and on.json()["mode"] == "emergency" and on.json()["audited"] is True
    calls = len(decider.batches)
    during = decide(client)
    assert during["decision"] == "ESCALATE" and during["rationale"].startswith("Emergency mode")
    assert len(decider.batches) == calls  # the model is not consulted
    assert "so8t_emergency_mode 1.0" in client.get("/metrics").text
    assert client.get("/readyz").json()["checks"]["mode"] == "emergency"
    off = client.post("/v1/admin/emergency", json={"enabled": False, "reason": "review done"}, headers=REVIEWER)
    assert off.json()["mode"] == "normal" and decide(client)["decision"] == "ALLOW"
    changes = records(tmp_path / "logs", "mode_change")
    assert [(c["mode"], c["source"], c["by"], c["note"]) for c in changes] == [
        ("emergency", "api", "api key desk", "model under review"), ("normal", "api", "api key desk", "review done")]
    assert verify(tmp_path / "logs")["errors"] == []


def test_the_flag_file_holds_emergency_mode_while_it_exists(running, tmp_path):
    service, client, _ = running
    flag = tmp_path / "logs" / "EMERGENCY"
    flag.write_text("incident 42: suspected prompt-injection campaign\n")
    wait_for(lambda: service.switch.mode == "emergency")
    assert decide(client)["decision"] == "ESCALATE"
    state = client.get("/v1/admin/emergency", headers=REVIEWER).json()
    assert state["sources"]["flag_file"]["reason"] == "incident 42: suspected prompt-injection campaign"
    # the API cannot release what the file holds
    client.post("/v1/admin/emergency", json={"enabled": True, "reason": "also"}, headers=REVIEWER)
    client.post("/v1/admin/emergency", json={"enabled": False, "reason": "api done"}, headers=REVIEWER)
    assert decide(client)["decision"] == "ESCALATE"
    flag.unlink()
    wait_for(lambda: service.switch.mode == "normal")
    assert decide(client)["decision"] == "ALLOW"
    sources = [(c["source"], c["enabled"], c["mode"]) for c in records(tmp_path / "logs", "mode_change")]
    assert sources == [("flag_file", True, "emergency"), ("api", True, "emergency"), ("api", False, "emergency"),
                       ("flag_file", False, "normal")]


def test_turning_it_off_needs_its_record_and_on_happens_even_without(running, monkeypatch):
    service, client, _ = running

    def broken(record):
        raise AuditWriteError("audit.jsonl: the record could not be written whole (disk full)")

    monkeypatch.setattr(service.agent.audit, "append", broken)
    on = client.post("/v1/admin/emergency", json={"enabled": True, "reason": "drill"}, headers=REVIEWER).json()
    assert on["mode"] == "emergency" and on["audited"] is False and "disk full" in on["error"]
    off = client.post("/v1/admin/emergency", json={"enabled": False, "reason": "drill over"}, headers=REVIEWER)
    assert off.status_code == 503 and "stays on" in off.json()["error"]["message"]
    assert service.switch.mode == "emergency"


def test_a_config_in_emergency_mode_cannot_be_switched_off(tmp_path):
    service = make_service(tmp_path / "logs", FixedDecider(PROBS["ALLOW"]), mode="emergency")
    with TestClient(create_app(service)) as client:
        client.post("/v1/admin/emergency", json={"enabled": False, "reason": "try"}, headers=REVIEWER)
        state = client.get("/v1/admin/emergency", headers=REVIEWER).json()
        assert state["mode"] == "emergency" and "config" in state["sources"]
        assert decide(client)["decision"] == "ESCALATE"


def test_two_switches_at_once_leave_the_gauge_as_the_gate_is(running):
    """The gauge's callback ran after the lock: a release slow to reach it could land after a later hold, and the
    gauge said normal while the gate escalated everything (the SO8TEmergencyMode alert silent)."""
    import threading

    from so8t_lib.serve.http.emergency import API

    service, client, _ = running
    switch = service.switch
    switch.set(API, True, "api key desk", "drill")
    original, calls = switch._on_change, []

    def slow_first(mode):
        calls.append(mode)
        if len(calls) == 1:
            time.sleep(0.3)
        original(mode)

    switch._on_change = slow_first
    release = threading.Thread(target=switch.set, args=(API, False, "api key desk", "drill over"))
    release.start()
    time.sleep(0.1)
    switch.set(API, True, "api key desk", "real incident")
    release.join(10)
    assert client.get("/v1/admin/emergency", headers=REVIEWER).json()["mode"] == "emergency"
    assert "so8t_emergency_mode 1.0" in client.get("/metrics").text.splitlines()


def test_reading_the_switch_while_a_change_waits_for_the_audit_log_stalls_nobody_else(tmp_path):
    """A switch change holds the switch while its record waits for the audit log's lock. Reading the switch
    took that lock on the event loop, so one GET froze the whole server: health checks, every client's
    decisions. Now the read waits on a worker thread and the server answers everyone else meanwhile."""
    import fcntl
    import threading

    import httpx
    from service_support import LiveServer

    from so8t_lib.serve.audit_files import lock_path

    service = make_service(tmp_path / "logs", FixedDecider(PROBS["ALLOW"]), logging={"audit_lock_timeout_s": 60})
    with LiveServer(service) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        holder = open(lock_path(service.agent.audit.path), "a")  # a backup or a verifier holding the log
        fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            change = threading.Thread(target=http.post, args=("/v1/admin/emergency",),
                                      kwargs={"json": {"enabled": True, "reason": "drill"}, "headers": REVIEWER})
            change.start()
            wait_for(lambda: service.switch.sources)  # the change holds the switch, waiting for the audit log
            read = threading.Thread(target=http.get, args=("/v1/admin/emergency",), kwargs={"headers": REVIEWER})
            read.start()
            wait_for(lambda: service.metrics.in_flight._value.get() >= 2)  # the read is in the server too
            with httpx.Client(base_url=server.url, timeout=20) as other:
                assert other.get("/healthz").status_code == 200
            assert change.is_alive() and read.is_alive()  # answered while the switch was still held
        finally:
            fcntl.flock(holder, fcntl.LOCK_UN)
            holder.close()
        change.join(60)
        read.join(60)
        assert not change.is_alive() and not read.is_alive()


FORGED_LINE = "drill\n2026-11-30 09:00:00,000 WARNING so8t.service: emergency mode released by lead\x1b[8m"


def test_a_reason_or_a_name_that_would_forge_a_log_line_is_refused(running):
    """The pattern asked for one visible character anywhere, so a line break and an escape sequence passed into the
    application log: a forged 'released' line and the real line's end hidden in a terminal."""
    service, client, _ = running
    for reason in (FORGED_LINE, "drill\u2028forged", "drill\x1b[8m"):
        refused = client.post("/v1/admin/emergency", json={"enabled": True, "reason": reason}, headers=REVIEWER)
        assert refused.status_code == 422, reason
    assert decide(client)["decision"] == "ALLOW"  # still normal mode
    refused = client.post("/v1/escalations/esc_0/resolve", json={"decision": "REFUSE", "by": "Sato\nIto"},
                          headers=REVIEWER)
    assert refused.status_code == 422
    accepted = client.post("/v1/admin/emergency", json={"enabled": True, "reason": "訓練 (drill) – 10 min"},
                           headers=REVIEWER)
    assert accepted.status_code == 200 and accepted.json()["mode"] == "emergency"


def test_the_application_log_keeps_one_line_per_message_whatever_its_values_hold(tmp_path, monkeypatch):
    import logging

    from so8t_lib.serve import applog

    monkeypatch.setattr(applog, "_HANDLERS", {})  # this test's handler only, removed after it
    log_file = tmp_path / "app.log"
    logger = applog.configure_logging("INFO", log_file)
    try:
        logging.getLogger("so8t.test").warning("switched by %s: %s", "lead\u202e", FORGED_LINE)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("so8t.test").exception("failed on %s", "x\ny")
    finally:
        for handler in applog._HANDLERS.values():
            logger.removeHandler(handler)
            handler.close()
    lines = log_file.read_text(encoding="utf-8").splitlines()
    assert lines[0].endswith("switched by lead\\u202e: drill\\n2026-11-30 09:00:00,000 WARNING so8t.service: "
                             "emergency mode released by lead\\x1b[8m")
    assert lines[1].endswith("failed on x\\ny") and lines[2] == "Traceback (most recent call last):"
    assert "\x1b" not in log_file.read_text(encoding="utf-8")
