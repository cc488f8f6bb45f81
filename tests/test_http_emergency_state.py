"""The emergency switch thrown through the API outlives the process: a restart (crash, Restart=, deploy) comes
back in emergency mode, as the audit log's last mode_change says, instead of answering ALLOW; a state file that
cannot be read holds emergency mode too."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient
from service_support import CLIENT, REVIEWER, make_service, records

from so8t_lib.serve.audit import AuditWriteError
from so8t_lib.serve.http import create_app

ASK = {"user_request": "Where is the expense form?"}


def switch(client, enabled: bool, reason: str = "incident 42"):
    return client.post("/v1/admin/emergency", json={"enabled": enabled, "reason": reason}, headers=REVIEWER)


def test_an_emergency_switched_on_through_the_api_survives_a_restart_until_it_is_switched_off(tmp_path, caplog):
    folder = tmp_path / "logs"
    with TestClient(create_app(make_service(folder))) as client:
        assert switch(client, True).json()["mode"] == "emergency"
    with caplog.at_level(logging.WARNING, "so8t.service"), TestClient(create_app(make_service(folder))) as client:
        state = client.get("/v1/admin/emergency", headers=REVIEWER).json()
        assert state["mode"] == "emergency"
        assert state["sources"]["api"]["by"] == "api key desk" and state["sources"]["api"]["reason"] == "incident 42"
        assert state["sources"]["api"]["restored_from"] == str(folder / "EMERGENCY.api.json")
        assert client.post("/v1/decide", json=ASK, headers=CLIENT).json()["decision"] == "ESCALATE"
        assert "so8t_emergency_mode 1.0" in client.get("/metrics").text
        assert any("emergency mode restored from" in r.getMessage() for r in caplog.records)
        assert switch(client, False, "incident closed").json()["mode"] == "normal"
        assert not (folder / "EMERGENCY.api.json").exists()
    with TestClient(create_app(make_service(folder))) as client:
        assert client.post("/v1/decide", json=ASK, headers=CLIENT).json()["decision"] == "ALLOW"
    assert [(r["enabled"], r["source"]) for r in records(folder, "mode_change")] == [(True, "api"), (False, "api")]


@pytest.mark.parametrize("content", [b"{not json", b"[]", b'{"by": "x", "reason": 5, "since": "now"}', b"\xff\xfe",
                                     b"[" * 100_000], ids=["not json", "a list", "a reason that is not text",
                                                           "not utf-8", "nested too deep to parse"])
def test_a_state_file_that_cannot_be_read_holds_emergency_mode(tmp_path, caplog, content):
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / "EMERGENCY.api.json").write_bytes(content)
    with caplog.at_level(logging.ERROR, "so8t.service"), TestClient(create_app(make_service(folder))) as client:
        state = client.get("/v1/admin/emergency", headers=REVIEWER).json()
        assert state["mode"] == "emergency" and "unreadable state file" in state["sources"]["api"]["reason"]
        assert client.post("/v1/decide", json=ASK, headers=CLIENT).json()["decision"] == "ESCALATE"
        assert any("cannot be read" in r.getMessage() and "fail-closed" in r.getMessage() for r in caplog.records)
        assert switch(client, False, "checked, the file was damaged").json()["mode"] == "normal"
        assert client.post("/v1/decide", json=ASK, headers=CLIENT).json()["decision"] == "ALLOW"
    assert not (folder / "EMERGENCY.api.json").exists()


def test_a_state_file_that_cannot_be_written_or_removed_never_releases_the_gate(tmp_path):
    folder = tmp_path / "logs"
    with TestClient(create_app(make_service(folder))) as client:
        (folder / "EMERGENCY.api.json").mkdir()  # neither written over nor removed
        on = switch(client, True).json()
        assert on["mode"] == "emergency" and on["audited"] is True and "not kept across a restart" in on["error"]
        off = switch(client, False, "done")
        assert off.status_code == 503 and off.json()["error"]["type"] == "switch_refused"
        assert "could not be moved aside" in off.json()["error"]["message"]
        assert client.post("/v1/decide", json=ASK, headers=CLIENT).json()["decision"] == "ESCALATE"
    assert [r["enabled"] for r in records(folder, "mode_change")] == [True]  # the refused release wrote nothing


def test_a_release_that_cannot_be_recorded_keeps_the_state_file(tmp_path, monkeypatch):
    folder = tmp_path / "logs"
    service = make_service(folder)
    with TestClient(create_app(service)) as client:
        switch(client, True)

        def broken(record):
            raise AuditWriteError("audit.jsonl: the record could not be written whole (disk full)")

        monkeypatch.setattr(service.agent.audit, "append", broken)
        assert switch(client, False, "done").status_code == 503
        monkeypatch.undo()
    assert (folder / "EMERGENCY.api.json").is_file()
    restarted = make_service(folder)
    assert restarted.switch.mode == "emergency" and "api" in restarted.switch.sources
    assert restarted.preflight()["mode"].startswith("not ready: ")
    restarted.agent.close()


def test_each_replica_keeps_its_own_state_file(tmp_path, monkeypatch):
    folder = tmp_path / "logs"
    monkeypatch.setenv("SO8T_REPLICA", "r2")
    with TestClient(create_app(make_service(folder))) as client:
        switch(client, True)
    assert (folder / "EMERGENCY.api-r2.json").is_file() and not (folder / "EMERGENCY.api.json").exists()
    monkeypatch.delenv("SO8T_REPLICA")
    other = make_service(folder)
    assert other.switch.mode == "normal"
    other.agent.close()


def test_a_release_refused_on_a_full_disk_keeps_the_hold_for_the_next_start(tmp_path, monkeypatch):
    """The release removed the state file before its record and wrote it back when the record failed: on a full
    disk the write failed too, so the next start answered ALLOW while the log's last mode_change said on."""
    import so8t_lib.serve.http.emergency as emergency

    folder = tmp_path / "logs"
    service = make_service(folder)
    with TestClient(create_app(service)) as client:
        switch(client, True)

        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(service.agent.audit, "append", lambda record: (_ for _ in ()).throw(
            AuditWriteError("audit.jsonl: the record could not be written whole (disk full)")))
        monkeypatch.setattr(emergency, "atomic_write_text", full)
        assert switch(client, False, "done").status_code == 503
        monkeypatch.undo()
    assert (folder / "EMERGENCY.api.json").is_file()
    restarted = make_service(folder)
    assert restarted.switch.mode == "emergency"
    restarted.agent.close()


def test_a_hold_set_aside_by_a_release_that_died_is_held_again_at_the_next_start(tmp_path):
    folder = tmp_path / "logs"
    with TestClient(create_app(make_service(folder))) as client:
        switch(client, True)
    (folder / "EMERGENCY.api.json").rename(folder / "EMERGENCY.api.json.releasing")  # killed before its record
    restarted = make_service(folder)
    assert restarted.switch.mode == "emergency" and restarted.switch.sources["api"]["reason"] == "incident 42"
    restarted.agent.close()
