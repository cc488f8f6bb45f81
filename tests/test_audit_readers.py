"""Readers of the audit log (show, verify, reports, the spool replay) wait a bounded time for its shared lock: a
writer that hung while holding the exclusive lock hung every one of them, forever."""

from __future__ import annotations

import inspect
import subprocess
import sys
import time

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.serve import audit, audit_verify
from so8t_lib.serve.audit_files import AuditLockTimeout, lock_path

HOLDER = ("import fcntl, select, sys\n"
          "lock = open(sys.argv[1], 'a')\n"
          "fcntl.flock(lock, fcntl.LOCK_EX)\n"
          "print('held', flush=True)\n"
          "select.select([sys.stdin], [], [], float(sys.argv[2]))\n")  # until told to go, or at most this long


@pytest.fixture
def log(tmp_path):
    written = audit.AuditLog(tmp_path / "audit.jsonl")
    for i in range(3):
        written.append({"request_id": f"req_{i}", "decision": "REFUSE"})
    return written


@pytest.fixture
def hung_writer(log):
    """Another process that took the log's exclusive lock and hangs (let go after 10 s at the latest, so a reader
    without a limit returns late instead of never)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_path(log.path)), "10"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield holder
    holder.stdin.close()
    holder.wait(30)


def _gives_up_quickly(read, log) -> str:
    started = time.monotonic()
    with pytest.raises(AuditLockTimeout) as caught:
        read()
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert str(log.path) in message and f"fuser -v {lock_path(log.path)}" in message and "0.3 s" in message
    return message


def test_readers_give_up_on_a_hung_writer_with_an_error_that_names_the_log(log, hung_writer):
    folder = log.path.parent
    _gives_up_quickly(lambda: list(audit.read_records(folder, lock_timeout=0.3)), log)
    _gives_up_quickly(lambda: audit.verify(folder, lock_timeout=0.3), log)
    _gives_up_quickly(lambda: audit_verify.verify_chains([folder], lock_timeout=0.3), log)
    _gives_up_quickly(lambda: list(audit_verify.read_chains([folder], lock_timeout=0.3)), log)
    hung_writer.stdin.close()  # the writer is gone: the same readers read as before
    hung_writer.wait(30)
    assert [r["request_id"] for r in audit.read_records(folder, lock_timeout=0.3)] == ["req_0", "req_1", "req_2"]
    assert audit.verify(folder, lock_timeout=0.3)["errors"] == []


def test_every_reader_waits_a_bounded_time_by_default():
    for reader in (audit.read_records, audit.verify, audit_verify.verify_chains, audit_verify.read_chains,
                   audit_verify.consistent_view):
        default = inspect.signature(reader).parameters[
            "timeout" if reader is audit_verify.consistent_view else "lock_timeout"].default
        assert default == audit_verify.READ_LOCK_TIMEOUT_S and 0 < default < 600, reader.__name__


def test_the_spool_replays_lookup_is_bounded_even_where_appends_wait_without_a_limit(log, hung_writer, monkeypatch):
    """An AuditLog opened without lock_timeout_s (so8t escalation resolve) looked records up with no limit."""
    monkeypatch.setattr(audit, "READ_LOCK_TIMEOUT_S", 0.3)
    log.lock_timeout_s = None  # appends wait without a limit
    _gives_up_quickly(lambda: log.find_requests({"req_0"}), log)


def test_audit_show_and_verify_exit_2_with_the_message_instead_of_hanging(log, hung_writer, capsys, tmp_path):
    folder = str(log.path.parent)
    assert so8t(["audit", "show", folder, "--lock-timeout", "0.3"]) == 2
    shown = capsys.readouterr()
    assert shown.out == "" and shown.err.startswith("error: ") and "fuser -v" in shown.err
    metrics = tmp_path / "verify.prom"
    assert so8t(["audit", "verify", folder, "--lock-timeout", "0.3", "--metrics-file", str(metrics)]) == 2
    checked = capsys.readouterr()
    assert str(log.path) in checked.err and "fuser -v" in checked.err
    assert "so8t_audit_verify_ok 0.0" in metrics.read_text()  # an alert on the gauge sees a run that checked nothing


def test_a_tool_writing_to_the_log_gives_up_behind_a_hung_holder_instead_of_hanging(log, hung_writer):
    """AuditLog's lock_timeout_s defaulted to no limit, so a reviewer's `so8t escalation resolve`, a rotation and
    `audit accept-anchor` hung behind a writer that hung holding the lock. A tool now gets the readers' limit."""
    assert log.lock_timeout_s == audit_verify.READ_LOCK_TIMEOUT_S
    log.lock_timeout_s = 0.3
    started = time.monotonic()
    with pytest.raises(audit.AuditWriteError, match="0.3 s"):
        log.append({"request_id": "req_9", "decision": "REFUSE"})
    with pytest.raises(AuditLockTimeout, match="held by another writer for more than 0.3 s"):
        log.rotate()
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("content", [b"runtime:\n  threshold: 0.5\n", b'{"not": "a record"}', b"SQLite format 3\x00"])
def test_show_and_verify_of_a_file_that_is_no_log_refuse_it_and_leave_nothing_beside_it(tmp_path, capsys, content):
    """``--name config.yaml`` was "OK: 0 records" with a torn-tail note, and left config.yaml.lock behind."""
    target = tmp_path / "config.yaml"
    target.write_bytes(content)
    with pytest.raises(SystemExit) as failed:
        so8t(["audit", "verify", str(tmp_path), "--name", target.name])
    assert failed.value.code == 1 and "FAIL" in (out := capsys.readouterr().out) and "not an audit log" in out
    with pytest.raises(SystemExit, match="not an audit log"):
        so8t(["audit", "show", str(tmp_path), "--name", target.name])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"] and target.read_bytes() == content


def test_readers_still_take_a_torn_first_write_for_a_log(tmp_path):
    """A crash that cut the first record is a log with a torn tail, not another file."""
    (tmp_path / "audit.jsonl").write_bytes(b'{"seq": 0, "request_id": "req_')
    report = audit_verify.verify(tmp_path)
    assert report["errors"] == [] and any("torn tail" in note for note in report["notes"])
    assert list(audit_verify.read_records(tmp_path)) == []


def test_a_stray_file_named_like_a_replica_chain_stops_no_reader_but_verify_names_it(log, tmp_path):
    """Refusing every file that is no log in the shared lock path stopped the spool replay, backup, reports and
    retrain extract for every chain of the folder over one `audit-export.jsonl`; a rotated chain whose live file a
    crash left as NULs was called no log, its good rotated records hidden."""
    stray = tmp_path / "audit-export.jsonl"
    stray.write_text('{"note": "not a log"}\n', encoding="utf-8")
    records = [record for _, record in audit_verify.read_chains(tmp_path)]
    assert [r["request_id"] for r in records] == ["req_0", "req_1", "req_2"]
    assert log.find_requests({"req_1"}) == {"req_1"}
    reports = audit_verify.verify_chains(tmp_path)  # a file found by its name is no chain that failed
    assert reports[str(log.path)]["errors"] == [] and reports[str(stray)]["errors"] == []
    assert "not an audit log" in reports[str(stray)]["notes"][0]
    stray.unlink()
    log.rotate()
    log.path.write_bytes(b"\x00" * 64)  # a crash's leftover in the live file of a rotated chain
    report = audit_verify.verify(tmp_path)
    assert report["records"] == 3 and report["errors"] == []
    log.append({"request_id": "req_3", "decision": "REFUSE"})  # the writer sets it aside too, as verify promised
    report = audit_verify.verify(tmp_path)
    assert report["records"] == 4 and report["errors"] == [] and report["set_aside"]
