"""Audit rotation in two steps: decisions never wait for gzip, every record stays readable at every moment, and
whatever a crash leaves between the steps is finished or cleaned on the next open."""

import gzip
import os
import subprocess
import sys
import threading
from types import SimpleNamespace

import pytest

from so8t_lib.serve import audit, audit_rotation
from so8t_lib.serve.audit_files import chain_names, log_files, plain_rotated_path, rotated_path


def _record(i):
    return {"request_id": f"req_{i}", "decision": "REFUSE", "input": f"request number {i} " * 8}


@pytest.fixture
def held_gzip(monkeypatch):
    """gzip that waits for ``release`` once it has started: a rotation's compression, frozen mid-way."""
    started, release = threading.Event(), threading.Event()
    real_open = gzip.open

    def slow_open(*args, **kwargs):
        started.set()
        assert release.wait(60), "the test never released the gzip"
        return real_open(*args, **kwargs)

    monkeypatch.setattr(audit_rotation, "gzip", SimpleNamespace(open=slow_open))
    yield started, release
    release.set()


def _append_in_thread(log, record):
    done = threading.Event()
    thread = threading.Thread(target=lambda: (log.append(record), done.set()), daemon=True)
    thread.start()
    return done


def test_appends_go_on_while_a_rotated_file_is_being_gzipped(tmp_path, held_gzip):
    started, release = held_gzip
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=2048, backup_count=5)
    i = 0
    while not started.is_set():  # append until a rotation has handed its file to the gzip thread
        log.append(_record(i))
        i += 1
        assert i < 100, "no rotation happened"
    # the gzip is stuck mid-way; decisions are still recorded (under the old rotation they waited for it)
    assert _append_in_thread(log, _record(i)).wait(20), "an append waited for the gzip"
    assert plain_rotated_path(log.path, 1).is_file() and not rotated_path(log.path, 1).exists()
    report = audit.verify(tmp_path)  # the plain .1 is read like a .1.gz: nothing missing meanwhile
    assert report["errors"] == [] and report["records"] == i + 1
    assert [r["request_id"] for r in audit.read_records(tmp_path)] == [f"req_{n}" for n in range(i + 1)]
    assert not log.wait_for_compression(0.2)
    release.set()
    assert log.wait_for_compression(60)
    rotated = [p for p in log_files(tmp_path) if p != log.path]
    assert rotated and all(p.suffix == ".gz" for p in rotated)
    assert not list(tmp_path.glob("*.tmp"))
    assert audit.verify(tmp_path)["errors"] == [] and audit.verify(tmp_path)["records"] == i + 1


def test_rotations_while_gzip_is_held_keep_backup_count_and_the_anchor_start(tmp_path, held_gzip):
    """Plain files shift like gzipped ones, and the one beyond backup_count goes with the anchor moved first."""
    started, release = held_gzip
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=1024, backup_count=2)
    for i in range(60):
        log.append(_record(i))
    assert started.is_set()
    rotated = [p for p in log_files(tmp_path) if p != log.path]
    assert len(rotated) == 2 and any(p.suffix != ".gz" for p in rotated)
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and report["first_seq"] > 0 and report["last_seq"] == 59
    release.set()
    assert log.wait_for_compression(60)
    after = audit.verify(tmp_path)
    assert after["errors"] == [] and (after["first_seq"], after["last_seq"]) == (report["first_seq"], 59)
    assert all(p.suffix == ".gz" for p in log_files(tmp_path) if p != log.path)


def test_rotate_returns_with_the_file_gzipped(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    for i in range(5):
        log.append(_record(i))
    log.rotate()
    assert [p.name for p in log_files(tmp_path)] == ["audit.jsonl.1.gz"]
    assert [r["request_id"] for r in audit.read_records(tmp_path)] == [f"req_{i}" for i in range(5)]


def _plain_rotation(tmp_path, n=6):
    """A log whose last rotation was renamed but never gzipped (the process died before its gzip ran)."""
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    for i in range(n):
        log.append(_record(i))
    with audit_rotation.file_lock(log.path):
        audit_rotation.shift_and_rename(log.path, log.backup_count, None, None)
    return log


def test_a_plain_file_a_crash_left_is_gzipped_on_the_next_open(tmp_path):
    _plain_rotation(tmp_path)
    assert [p.name for p in log_files(tmp_path)] == ["audit.jsonl.1"]
    reopened = audit.AuditLog(tmp_path / "audit.jsonl")
    assert reopened.wait_for_compression(60)
    assert [p.name for p in log_files(tmp_path)] == ["audit.jsonl.1.gz"]
    reopened.append(_record(6))
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and report["records"] == 7


def test_a_crash_between_the_swaps_renames_leaves_a_copy_that_readers_skip_and_the_next_open_deletes(tmp_path):
    log = _plain_rotation(tmp_path)
    plain = plain_rotated_path(log.path, 1)
    rotated_path(log.path, 1).write_bytes(gzip.compress(plain.read_bytes()))  # .gz renamed in; .1 not yet deleted
    assert [p.name for p in log_files(tmp_path)] == ["audit.jsonl.1.gz"]  # each record once
    assert audit.verify(tmp_path)["errors"] == [] and audit.verify(tmp_path)["records"] == 6
    audit.AuditLog(tmp_path / "audit.jsonl")
    assert not plain.exists() and audit.verify(tmp_path)["records"] == 6


def test_temp_files_of_gone_processes_are_deleted_and_a_live_ones_kept(tmp_path):
    log = _plain_rotation(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"audit.jsonl.gzip-{int(gone.stdout)}-1.tmp"
    alive = tmp_path / f"audit.jsonl.gzip-{os.getppid()}-1.tmp"  # pytest's parent: certainly running
    dead.write_bytes(b"half a gzip")
    alive.write_bytes(b"another process's work in progress")
    reopened = audit.AuditLog(log.path)
    assert reopened.wait_for_compression(60)
    assert not dead.exists() and alive.exists()


def test_a_gzip_swaps_in_only_the_file_it_read(tmp_path, monkeypatch):
    """While one gzip runs, another finishes the same file and a new rotation puts a different file at ``.1``:
    the first gzip must not swap its (older) content in under the new file's name."""
    log = _plain_rotation(tmp_path, n=4)
    real_open = gzip.open
    meddled = []

    def meddling_open(*args, **kwargs):
        if not meddled:
            meddled.append(True)
            assert audit_rotation.compress_pending(log.path) == 1  # the same .1, done by someone else
            for i in range(4, 8):
                log.append(_record(i))
            with audit_rotation.file_lock(log.path):  # and a new .1, renamed but not yet gzipped
                audit_rotation.shift_and_rename(log.path, log.backup_count, None, None)
        return real_open(*args, **kwargs)

    monkeypatch.setattr(audit_rotation, "gzip", SimpleNamespace(open=meddling_open))
    assert audit_rotation.compress_one(log.path, plain_rotated_path(log.path, 1)) is False
    monkeypatch.setattr(audit_rotation, "gzip", gzip)
    assert [p.name for p in log_files(tmp_path)] == ["audit.jsonl.2.gz", "audit.jsonl.1"]
    assert [r["request_id"] for r in audit.read_records(tmp_path)] == [f"req_{i}" for i in range(8)]
    assert audit.verify(tmp_path)["errors"] == []


def test_a_full_disk_during_gzip_leaves_the_plain_file_and_loses_nothing(tmp_path, monkeypatch, caplog):
    log = _plain_rotation(tmp_path)

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(audit_rotation, "gzip", SimpleNamespace(open=no_space))
    assert audit_rotation.compress_pending(log.path) == 0
    assert "could not gzip audit.jsonl.1" in caplog.text
    assert [p.name for p in log_files(tmp_path)] == ["audit.jsonl.1"] and not list(tmp_path.glob("*.tmp"))
    assert audit.verify(tmp_path)["records"] == 6


def test_a_replica_chain_known_only_by_a_plain_rotated_file_is_still_a_chain(tmp_path):
    log = audit.AuditLog(tmp_path / "audit-r2.jsonl")
    log.append(_record(0))
    with audit_rotation.file_lock(log.path):
        audit_rotation.shift_and_rename(log.path, log.backup_count, None, None)
    (tmp_path / "audit-r2.jsonl.anchor").unlink()
    assert "audit-r2.jsonl" in chain_names(tmp_path)
