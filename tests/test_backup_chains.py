"""How a backup opens each audit chain: as verify and read_records do (``consistent_view`` and ``open_files``), so
it shares their bounded wait for the lock and their way of reading a folder where the lock cannot be taken."""

from __future__ import annotations

import fcntl

import pytest

from so8t_lib.serve.audit import AuditLog, read_records
from so8t_lib.serve.audit_files import AuditLockTimeout, lock_path
from so8t_lib.workbench.backup import backup, check_backup


@pytest.fixture
def logs(tmp_path):
    folder = tmp_path / "logs"
    log = AuditLog(folder / "audit.jsonl", max_bytes=1024)
    for i in range(12):  # rotated files too
        log.append({"request_id": f"req_{i}", "decision": "REFUSE", "input": f"request {i} " * 10})
    assert log.wait_for_compression(60)
    return folder


def test_a_backup_behind_a_writer_that_hung_holding_the_lock_gives_up_and_leaves_nothing(tmp_path, logs):
    """The backup's own loop waited for the shared lock without a limit: a writer that hung holding the lock
    hung the backup with it."""
    with open(lock_path(logs / "audit.jsonl"), "a") as hung_writer:
        fcntl.flock(hung_writer, fcntl.LOCK_EX)
        with pytest.raises(AuditLockTimeout, match=r"audit\.jsonl: cannot read the audit log.*fuser -v"):
            backup(tmp_path / "b", logs, lock_timeout=0.3)
    assert [p.name for p in tmp_path.iterdir()] == ["logs"]  # no backup, no half-made folder
    made = backup(tmp_path / "b", logs, lock_timeout=0.3)
    assert made["chains"]["audit.jsonl"]["records"] == 12 and check_backup(tmp_path / "b")["problems"] == []


def test_a_folder_whose_lock_cannot_be_taken_is_backed_up_without_it(tmp_path, logs):
    """Where the lock file cannot be made (a folder the backup may only read, a copy without a lock file; here a
    link to nowhere, which root cannot write through either), readers read without the lock, and now so does
    the backup: it stopped with the lock file's error."""
    lock = lock_path(logs / "audit.jsonl")
    lock.unlink()
    lock.symlink_to(tmp_path / "nowhere" / "audit.jsonl.lock")
    made = backup(tmp_path / "b", logs)
    assert made["chains"]["audit.jsonl"]["records"] == 12 and made["chains"]["audit.jsonl"]["errors"] == []
    assert check_backup(tmp_path / "b")["problems"] == []
    assert [r["request_id"] for r in read_records(tmp_path / "b" / "logs")] == [f"req_{i}" for i in range(12)]
