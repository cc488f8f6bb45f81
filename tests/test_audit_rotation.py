"""Audit rotation in two steps: decisions never wait for gzip, every record stays readable at every moment, and
whatever a crash leaves between the steps is finished or cleaned on the next open."""

import fcntl
import gzip
import os
import threading
from types import SimpleNamespace

import pytest

from so8t_lib.serve import audit, audit_rotation
from so8t_lib.serve.audit_files import (
    chain_names,
    first_record,
    log_files,
    plain_rotated_path,
    read_anchor,
    rotated_path,
)


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


def test_temp_files_nobody_writes_are_deleted_and_one_being_written_is_kept(tmp_path):
    """A temp file's writer holds a lock on it; a crashed one holds none. (Telling them by pid kept a crashed
    gzip's temp file forever when the restarted server got the same pid, as pid 1 in a container does.)"""
    log = _plain_rotation(tmp_path)
    crashed = tmp_path / f"audit.jsonl.gzip-{os.getpid()}-1.tmp"  # this very pid, as after a restart in a container
    busy = tmp_path / "audit.jsonl.gzip-4242-7.tmp"
    crashed.write_bytes(b"half a gzip")
    busy.write_bytes(b"a gzip under way")
    with open(busy, "rb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        reopened = audit.AuditLog(log.path)
        assert reopened.wait_for_compression(60)
        assert not crashed.exists() and busy.exists()


def test_a_plain_file_beside_a_gz_of_other_records_is_kept_not_deleted_as_a_copy(tmp_path, caplog):
    """A writer of the older version rotated beside this one's plain .1 (a rolling upgrade): the plain file was
    deleted as a "copy" and its records were gone."""
    log = _plain_rotation(tmp_path, n=3)
    plain = plain_rotated_path(log.path, 1)
    other = gzip.compress(b"".join(line + b"\n" for line in plain.read_bytes().splitlines()[1:]))
    rotated_path(log.path, 1).write_bytes(other)
    audit.AuditLog(log.path)
    assert plain.exists() and "hold different records" in caplog.text


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


def test_a_gzip_that_cannot_start_does_not_fail_the_record_it_follows(tmp_path, monkeypatch, caplog):
    """The record is written before the gzip starts; "can't start new thread" raised out of append, and the
    runtime decided the request again: two records for one request."""
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=1024, backup_count=100)

    def no_threads():
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(log._compressor, "start", no_threads)
    for i in range(20):  # rotations happen; every append still returns its record
        assert log.append(_record(i))["seq"] == i
    assert "could not start" in caplog.text
    assert [r["request_id"] for r in audit.read_records(tmp_path)] == [f"req_{i}" for i in range(20)]


def test_a_reader_of_the_spool_gives_up_on_a_stuck_lock_instead_of_hanging(tmp_path):
    """find_requests (the spool replay, also at shutdown) waited for the shared lock without a limit."""
    log = audit.AuditLog(tmp_path / "audit.jsonl", lock_timeout_s=0.2)
    log.append(_record(0))
    with open(tmp_path / "audit.jsonl.lock", "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(audit_rotation.audit_files.AuditLockTimeout):
            log.find_requests({"req_0"})
    assert log.find_requests({"req_0"}) == {"req_0"}


def test_appends_under_contention_wait_their_turn_instead_of_timing_out(tmp_path):
    """Polling for the lock with a growing pause let newcomers win over long waiters: healthy appends timed out
    and failed closed. Waiting in the kernel's queue, 12 threads of 2 processes x 40 appends each, with a
    limit far above a turn's length, all get their turn."""
    script = (
        "import sys, threading\n"
        "sys.path.insert(0, sys.argv[2])\n"
        "from so8t_lib.serve import audit\n"
        "log = audit.AuditLog(sys.argv[1], lock_timeout_s=5.0)\n"
        "def write(t):\n"
        "    for i in range(40):\n"
        "        log.append({'request_id': f'{sys.argv[3]}_{t}_{i}', 'decision': 'REFUSE'})\n"
        "threads = [threading.Thread(target=write, args=(t,)) for t in range(6)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n")
    root = str(audit_rotation.Path(audit.__file__).resolve().parents[2])
    import subprocess
    import sys
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "audit.jsonl"), root, f"p{n}"],
                              stderr=subprocess.PIPE, text=True) for n in range(2)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and report["records"] == 2 * 6 * 40


class _LockHeldByTheGzipThread:
    """The compressor's own lock, which the gzip thread keeps (at the end of a pass) until ``release``: a fork
    at that moment copies it into the child locked, with no thread there to let it go."""

    def __init__(self, parent: int):
        self.real, self.parent = threading.Lock(), parent
        self.held, self.release = threading.Event(), threading.Event()

    def __enter__(self):
        self.real.acquire()
        if threading.current_thread().name == "so8t-audit-gzip" and os.getpid() == self.parent:
            self.held.set()
            self.release.wait(60)
        return self

    def __exit__(self, *exc):
        self.real.release()


def _child_exit_code(pid: int, limit: float = 30.0) -> int | None:
    """The forked child's exit code, or None when it hung (then it is killed)."""
    import signal
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
@pytest.mark.parametrize("moment", ["mid-gzip", "holding its own lock"])
def test_a_child_forked_during_a_gzip_rotates_appends_and_compresses(tmp_path, monkeypatch, moment):
    """A process forked while its gzip thread held the compressor's lock hung on its first rotation: the child
    inherited the lock held, and the thread that would release it exists only in the parent."""
    parent = os.getpid()
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=2048, backup_count=100)
    frozen = _LockHeldByTheGzipThread(parent)
    if moment == "mid-gzip":
        real_open = gzip.open

        def parents_gzip_waits(*args, **kwargs):
            if os.getpid() == parent:
                frozen.held.set()
                frozen.release.wait(60)
            return real_open(*args, **kwargs)

        monkeypatch.setattr(audit_rotation, "gzip", SimpleNamespace(open=parents_gzip_waits))
    else:
        log._compressor._lock = frozen
    i = 0
    while not frozen.held.wait(0.01):  # append until a rotation's gzip thread is at that moment
        assert i < 100, "no rotation happened"
        log.append(_record(i))
        i += 1
    pid = os.fork()
    if pid == 0:  # the child reports through its exit code only; it must never return into pytest
        code = 9
        try:
            for n in range(i, i + 30):  # several rotations, each starting the child's own gzip thread
                log.append(_record(n))
            compressed = log.wait_for_compression(30)
            plain = [p for p in log_files(tmp_path) if p.suffix != ".gz" and p != log.path]
            report = audit.verify(tmp_path)
            code = 0 if compressed and not plain and not report["errors"] and report["records"] == i + 30 else 3
        finally:
            os._exit(code)
    try:
        assert _child_exit_code(pid) == 0, "the forked child hung (None) or could not rotate and compress (3, 9)"
    finally:
        frozen.release.set()
    assert log.wait_for_compression(60)  # the parent's own gzip finishes too, beside the child's work
    log.append(_record(i + 30))
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and report["records"] == i + 31
    assert all(p.suffix == ".gz" for p in log_files(tmp_path) if p != log.path)
    assert not list(tmp_path.glob("*.tmp"))


def test_a_temp_file_a_cleaner_deletes_before_the_gzip_locks_it_is_replaced_and_the_gzip_finishes(tmp_path,
                                                                                                    monkeypatch):
    """Another process opening the log (clean_leftovers, under the log's lock) finds the gzip's temp file in the
    moment between its open and its flock, when nothing marks it in use yet, and deletes it. Written on, the
    unlinked file would be lost and the swap's rename would fail; the gzip starts again with a new temp file."""
    import subprocess
    import sys

    log = _plain_rotation(tmp_path)
    root = str(audit_rotation.Path(audit.__file__).resolve().parents[2])
    cleaner = ("import sys; sys.path.insert(0, sys.argv[2]); from pathlib import Path\n"
               "from so8t_lib.serve.audit_rotation import clean_leftovers, file_lock\n"
               "log = Path(sys.argv[1])\n"
               "with file_lock(log):\n"
               "    clean_leftovers(log)\n")
    deleted = []

    def open_then_clean(path, *args, **kwargs):
        handle = open(path, *args, **kwargs)
        if ".gzip-" in str(path) and not deleted:  # opened, not locked yet: the cleaner's moment
            subprocess.run([sys.executable, "-c", cleaner, str(log.path), root], check=True, timeout=120)
            deleted.append(not os.path.exists(path))
        return handle

    monkeypatch.setattr(audit_rotation, "open", open_then_clean, raising=False)
    assert audit_rotation.compress_one(log.path, plain_rotated_path(log.path, 1)) is True
    assert deleted == [True]  # the race did happen
    assert [p.name for p in log_files(tmp_path)] == ["audit.jsonl.1.gz"] and not list(tmp_path.glob("*.tmp"))
    assert [r["request_id"] for r in audit.read_records(tmp_path)] == [f"req_{i}" for i in range(6)]
    assert audit.verify(tmp_path)["errors"] == []


def test_a_decision_several_rotations_back_is_still_found_and_old_files_are_skipped_by_time(tmp_path):
    """find_requests read only the newest two files of a chain: after three rotations a spooled decision's
    record looked missing, and the replay wrote it a second time."""
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=1024, backup_count=100)
    log.append(_record(0))
    for i in range(1, 30):
        log.append(_record(i))
    assert log.wait_for_compression(30)
    files = log_files(tmp_path, "audit.jsonl")
    assert len(files) > 3  # req_0 is three or more files back from the live one
    assert log.find_requests({"req_0", "req_29", "req_99"}) == {"req_0", "req_29"}
    hour_ago = files[0].stat().st_mtime - 3600
    os.utime(files[0], (hour_ago, hour_ago))  # the oldest file, last written an hour before the others
    assert log.find_requests({"req_0"}, since=hour_ago) == {"req_0"}
    assert log.find_requests({"req_0"}, since=hour_ago + 2 * audit.FIND_SLACK_S) == set()  # not opened at all


def test_lowering_backup_count_drops_every_file_beyond_it_and_the_chain_still_verifies(tmp_path):
    """Only ``.<backup_count>`` was deleted: with .1 .. .7 and backup_count lowered to 2, .2 went, .3 .. .7 stayed
    and shifted, and the chain had a gap in the middle that verify failed on for good."""
    log = audit.AuditLog(tmp_path / "audit.jsonl", backup_count=10)
    for i in range(7):  # .1.gz .. .7.gz and a live file
        log.append(_record(i))
        log.rotate()
    log.append(_record(7))
    assert len(log_files(tmp_path)) == 8
    log = audit.AuditLog(tmp_path / "audit.jsonl", backup_count=2)  # the operator keeps fewer files from now on
    log.rotate()
    log.append(_record(8))
    assert [p.name for p in log_files(tmp_path)] == ["audit.jsonl.2.gz", "audit.jsonl.1.gz", "audit.jsonl"]
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and (report["first_seq"], report["last_seq"]) == (6, 8)
    anchor, oldest = read_anchor(log.path), first_record(tmp_path / "audit.jsonl.2.gz")
    assert (anchor["first_seq"], anchor["first_prev_hash"]) == (oldest["seq"], oldest["prev_hash"])
    assert any("rotated away" in note for note in report["notes"])
