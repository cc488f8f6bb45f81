"""The escalation desk when things break part-way: a spool entry whose update fails, a queue URL that cannot be
read, a queue or a log that raises something unexpected, a process that dies between queueing and notifying, a
queue row edited by hand, a case whose text was encrypted under another key. Each ESCALATE still gets exactly
one case and one audit record, and nothing raises out of ``run_batch``."""

import errno
import json
import logging
import os
import sqlite3

import pytest
from test_escalation import _agent, _records

from so8t_lib.core.config import ConfigError
from so8t_lib.serve import spool as spool_module
from so8t_lib.serve.audit import AuditWriteError
from so8t_lib.serve.escalation import EscalationQueue, QueueError
from so8t_lib.serve.spool import CaseSpool

HR = "上司からのパワハラについて相談したい"


def _quiet_agent(tmp_path):
    """An agent whose desk never starts its background thread: each test calls ``replay`` itself, and a replay of
    the thread's between two of the test's steps would finish an entry the test means to finish."""
    agent = _agent(tmp_path, enable_notifications=False)
    agent.desk.background = False
    return agent


def _decisions(tmp_path, request_id):
    return [r for r in _records(tmp_path) if r.get("request_id") == request_id and r.get("event", "decision") == "decision"]


def test_a_spool_update_that_fails_half_way_keeps_what_the_entry_had(tmp_path, monkeypatch):
    """Rewritten in place, a failed write after the truncate left an empty file, which the next replay set
    aside without a word: the case was queued but its decision never audited."""
    spool = CaseSpool(tmp_path / "spool")
    entry = spool.put({"case_id": "esc_1"}, {"request_id": "req_1"})
    real = os.pwrite

    def torn(fd, data, offset):  # a full disk: a few bytes of the line, then ENOSPC
        real(fd, data[:5], offset)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module.os, "pwrite", torn)
    with pytest.raises(OSError):
        entry.update(queued=True)
    monkeypatch.setattr(spool_module.os, "pwrite", real)
    entry.update(audited=True)  # the next update starts a line of its own after the torn one
    entry.release()
    (orphan,) = list(spool.orphans())
    assert orphan.data["case"] == {"case_id": "esc_1"} and orphan.data["record"] == {"request_id": "req_1"}
    assert orphan.data["audited"] is True and orphan.data["queued"] is False  # the torn change is redone
    orphan.release()


def test_an_unreadable_spool_entry_is_logged_and_still_counted(tmp_path, caplog):
    spool = CaseSpool(tmp_path / "spool")
    spool.put({"case_id": "esc_1"}, {"request_id": "req_1"}).release()
    (tmp_path / "spool" / "esc_1.case.json").write_bytes(b"")
    with caplog.at_level(logging.ERROR, logger="so8t.escalation"):
        assert list(spool.orphans()) == []
    assert "esc_1.case.json could not be read" in caplog.text and "set aside as esc_1.case.json.unreadable" in caplog.text
    assert spool.count() == 1  # the spooled gauge stays up until a person looks


def test_an_unreadable_queue_url_stops_the_start_and_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_ESCALATION_URL", "postgresql://so8t@127.0.0.1:54x2/so8t_queue")
    with pytest.raises(ConfigError, match="SO8T_ESCALATION_URL: unreadable escalation queue URL"):
        _agent(tmp_path, enable_notifications=False)
    with pytest.raises(QueueError, match="unreadable escalation queue URL"):
        EscalationQueue("postgresql://so8t@127.0.0.1:54x2/so8t_queue")


def test_a_queue_that_raises_something_unexpected_leaves_the_case_spooled_once(tmp_path):
    """A ValueError from the queue escaped try_queue: run_batch raised, and the spool entries of both the
    decision and its fail-closed retry were replayed later into two cases for one request."""
    agent = _quiet_agent(tmp_path)
    real_add = agent.desk.store.add
    agent.desk.store.add = lambda case: (_ for _ in ()).throw(ValueError("invalid literal for int()"))
    results = agent.run_batch([{"user_request": HR}, {"user_request": "経費精算の締め日はいつですか"}])
    assert [r["escalation_status"] for r in results] == ["spooled", "spooled"]
    assert "ValueError: invalid literal" in results[0]["error"]
    agent.desk.store.add = real_add
    assert len(agent.desk.replay()["finished"]) == 2
    for result in results:
        assert len(_decisions(tmp_path, result["request_id"])) == 1
    assert len(agent.queue.list()) == 2
    agent.close()


def test_a_failure_while_failing_closed_returns_an_unrecorded_escalate_instead_of_raising(tmp_path):
    agent = _quiet_agent(tmp_path)
    agent._decide_one = lambda *args: (_ for _ in ()).throw(RuntimeError("a bug while deciding"))
    agent._fail_closed = lambda *args, **kw: (_ for _ in ()).throw(RuntimeError("a bug while failing closed"))
    (result,) = agent.run_batch([{"user_request": HR}])
    assert result["decision"] == "ESCALATE" and result["human_required"]
    assert "a bug while failing closed" in result["error"] and "not recorded" in result["error"]
    assert agent.audit_failures == 1
    agent.close()


def test_a_case_queued_by_a_process_that_died_before_notifying_is_notified_by_the_replay(tmp_path, monkeypatch):
    monkeypatch.setenv("SLACK_WEBHOOK_URL", "http://127.0.0.1:9/unused")
    agent = _agent(tmp_path, enable_notifications=True)
    sent = []
    agent.notifier.notify_async = lambda case, reminder=False: sent.append(case["case_id"])
    agent.desk.finish = lambda ticket, audited: ticket.entry.release()  # the process dies here: its lock goes
    result = agent.run_agent(None, HR, "u1")
    assert result["escalation_status"] == "queued" and sent == []
    del agent.desk.finish
    assert agent.desk.replay()["finished"] == [result["escalation_id"]]
    assert sent == [result["escalation_id"]] and len(_decisions(tmp_path, result["request_id"])) == 1
    agent.close()


def test_a_replay_that_fails_part_way_lets_go_of_every_entry(tmp_path):
    agent = _quiet_agent(tmp_path)
    real_append = agent.audit.append
    agent.audit.append = lambda record: (_ for _ in ()).throw(AuditWriteError("lock timeout"))
    result = agent.run_agent(None, HR, "u1")  # queued, but its audit record is spooled
    agent.audit.append = real_append
    real_find = agent.audit.find_requests
    agent.audit.find_requests = lambda ids, since=None: (_ for _ in ()).throw(RuntimeError("a record under an older key"))
    outcome = agent.desk.replay()
    assert outcome["finished"] == [] and "RuntimeError: a record under an older key" in outcome["failed"][0]
    agent.audit.find_requests = real_find
    assert agent.desk.replay()["finished"] == [result["escalation_id"]]  # not stranded, locked by a lost handle
    assert len(_decisions(tmp_path, result["request_id"])) == 1
    agent.close()


def test_a_queue_row_with_an_unreadable_notifications_cell_still_lists(tmp_path):
    agent = _quiet_agent(tmp_path)
    case_id = agent.run_agent(None, HR, "u1")["escalation_id"]
    agent.close()
    with sqlite3.connect(tmp_path / "cases.sqlite") as db:
        db.execute("update cases set notifications = ?", ('[{"channel": "webhook"',))
    queue = EscalationQueue(tmp_path / "cases.sqlite", create=False)
    (case,) = queue.list()
    assert case["case_id"] == case_id and case["notifications"] == [{"error": "unreadable notifications record"}]
    queue.close()


def test_retraining_leaves_out_a_case_whose_text_is_under_another_key(tmp_path, monkeypatch):
    from cryptography.fernet import Fernet

    from so8t_lib.workbench.retrain import extract_rows

    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("SO8T_AUDIT_KEY", old)
    agent = _agent(tmp_path / "old", {"encryption_key_env": "SO8T_AUDIT_KEY"}, enable_notifications=False,
                   queue_db=str(tmp_path / "cases.sqlite"))
    agent.queue.resolve(agent.run_agent(None, HR, "u1")["escalation_id"], "REFUSE", "Sato", gate_label="ESCALATE")
    agent.close()
    monkeypatch.setenv("SO8T_AUDIT_KEY", new)  # the key was rotated; the old chain was rotated away
    agent = _agent(tmp_path / "logs", {"encryption_key_env": "SO8T_AUDIT_KEY"}, enable_notifications=False,
                   queue_db=str(tmp_path / "cases.sqlite"))
    agent.run_agent(None, "経費精算の締め日はいつですか", "u2")
    agent.close()
    rows, report = extract_rows([tmp_path / "logs"], tmp_path / "cases.sqlite", key=new)
    assert rows == [] and report["left_out"]["undecryptable"] == 1
    assert json.dumps(rows).count("encrypted") == 0


def test_an_entry_that_cannot_be_opened_strands_none_of_the_others(tmp_path, caplog):
    """An OSError other than 'not found' while the spool was listed escaped before the entries already picked were
    let go: they stayed locked by lost descriptors, and every later replay skipped them as in flight."""
    agent = _quiet_agent(tmp_path)
    real_append = agent.audit.append
    agent.audit.append = lambda record: (_ for _ in ()).throw(AuditWriteError("lock timeout"))
    result = agent.run_agent(None, HR, "u1")
    agent.audit.append = real_append
    blocker = agent.desk.spool.folder / "esc_zzzz.case.json"
    blocker.mkdir()  # opening it fails with IsADirectoryError (as EACCES or EMFILE would)
    with caplog.at_level(logging.ERROR, logger="so8t.escalation"):
        assert agent.desk.replay()["finished"] == [result["escalation_id"]]
    assert not (agent.desk.spool.folder / f"{result['escalation_id']}.case.json").exists()
    assert agent.queue.get(result["escalation_id"])["status"] == "open"
    assert "esc_zzzz.case.json cannot be opened" in caplog.text
    assert len(_decisions(tmp_path, result["request_id"])) == 1
    agent.close()


@pytest.mark.parametrize("url", ["postgresql:/so8t@db/queue", "postgresql//so8t@db/queue"])
def test_a_queue_url_missing_its_slashes_is_refused_not_taken_for_a_file(tmp_path, monkeypatch, url):
    monkeypatch.setenv("SO8T_ESCALATION_URL", url)
    with pytest.raises(ConfigError, match="SO8T_ESCALATION_URL: .* is not a URL"):
        _agent(tmp_path, enable_notifications=False)


def test_a_spooled_decision_recorded_several_rotations_ago_is_not_audited_again(tmp_path):
    """The replay looked for the spooled decision in the newest two log files only: a process that died after
    recording it, followed by a busy log, gave the request a second decision record."""
    agent = _quiet_agent(tmp_path)
    agent.audit.max_bytes = 1024
    agent.desk.finish = lambda ticket, audited: ticket.entry.release()  # recorded, then the process dies
    result = agent.run_agent(None, HR, "u1")
    del agent.desk.finish
    for i in range(30):  # other decisions meanwhile: the log rotates several times
        agent.audit.append({"event": "decision", "request_id": f"req_filler_{i}", "decision": "ALLOW",
                            "input": "経費精算の締め日はいつですか " * 4})
    assert agent.audit.wait_for_compression(30)
    assert len(list(tmp_path.glob("audit.jsonl.*.gz"))) >= 3
    assert agent.desk.replay()["finished"] == [result["escalation_id"]]
    assert len(_decisions(tmp_path, result["request_id"])) == 1
    agent.close()


def test_the_replay_bounds_its_search_by_the_oldest_spooled_decision():
    """The files the replay reads start at the oldest unaudited decision's time (the runtime's timestamp format);
    one record without a readable time makes it read every file."""
    from so8t_lib.serve.escalation_desk import _oldest_decision

    records = [{"timestamp": "2026-12-01T10:00:00.000000Z"}, {"timestamp": "2026-12-01T09:00:00.500000Z"}]
    assert _oldest_decision(records) == 1796115600.5
    assert _oldest_decision(records + [{"timestamp": "yesterday"}]) is None and _oldest_decision([]) is None
