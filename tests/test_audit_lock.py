"""The audit lock with a time limit: callers wait in the kernel's queue through one thread per log, give up at
their limit, and a hung holder leaves at most that one thread waiting, however many callers gave up."""

import fcntl
import threading
import time

import pytest

from so8t_lib.serve.audit_files import AuditLockTimeout, file_lock, lock_path


def _waiters() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "so8t-audit-lock"]


def test_callers_behind_a_hung_holder_give_up_and_leave_one_thread_waiting(tmp_path):
    log = tmp_path / "audit.jsonl"
    gave_up = []

    def append_like():
        try:
            with file_lock(log, timeout=0.3):
                pass
        except AuditLockTimeout as exc:
            gave_up.append(str(exc))

    with open(lock_path(log), "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)  # a process that took the lock and hung
        callers = [threading.Thread(target=append_like) for _ in range(20)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join(30)
        assert len(gave_up) == 20 and "held by another writer for more than 0.3 s" in gave_up[0]
        assert len(_waiters()) == 1  # not one blocked thread per request
    # the holder let go: the waiting thread takes the lock, finds nobody waiting, lets it go and ends
    deadline = time.monotonic() + 30
    while _waiters() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _waiters()
    with file_lock(log, timeout=5):
        with pytest.raises(BlockingIOError):  # held now, by this caller's descriptor
            with open(lock_path(log), "a") as other:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(lock_path(log), "a") as other:  # and released after it
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_waiting_callers_get_the_lock_in_turn_once_it_is_free(tmp_path):
    log = tmp_path / "audit.jsonl"
    inside, overlaps = [], []

    def append_like(n):
        with file_lock(log, timeout=30):
            if inside:
                overlaps.append(n)
            inside.append(n)
            time.sleep(0.005)
            inside.remove(n)

    with open(lock_path(log), "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        callers = [threading.Thread(target=append_like, args=(n,)) for n in range(10)]
        for caller in callers:
            caller.start()
        time.sleep(0.2)
    for caller in callers:
        caller.join(60)
    assert not any(c.is_alive() for c in callers) and overlaps == []  # each alone, none timed out


def _lock_is_free(log) -> bool:
    with open(lock_path(log), "a") as probe:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(probe, fcntl.LOCK_UN)
        return True


def test_callers_who_gave_up_leave_nothing_queued(tmp_path):
    """Each timed-out caller stayed in the queue while the waiting thread was blocked: memory grew with every
    request as long as a holder hung."""
    from so8t_lib.serve import audit_lock

    log = tmp_path / "audit.jsonl"
    with open(lock_path(log), "a") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        for _ in range(50):
            with pytest.raises(AuditLockTimeout):
                with file_lock(log, timeout=0.001):
                    pass
        queue = audit_lock._QUEUES[(str(lock_path(log)), False)]
        assert len(queue.turns) == 0


def test_a_caller_interrupted_while_waiting_leaves_the_lock_free(tmp_path):
    """A signal handler that raises in the waiting thread (Ctrl-C, SIGTERM) left its turn queued; the lock was
    later handed to nobody and stayed held by this process for good."""
    import signal

    class Interrupted(Exception):
        pass

    def interrupt(*_):
        raise Interrupted

    log = tmp_path / "audit.jsonl"
    previous = signal.signal(signal.SIGALRM, interrupt)
    holder = open(lock_path(log), "a")
    fcntl.flock(holder, fcntl.LOCK_EX)
    threading.Timer(0.4, holder.close).start()  # the holder is done soon after the interruption
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(Interrupted):
            with file_lock(log, timeout=10):
                pass
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    deadline = time.monotonic() + 10
    while not _lock_is_free(log) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _lock_is_free(log)


def test_a_forked_child_takes_the_lock_though_its_parent_had_a_thread_waiting(tmp_path):
    """The child inherited the parent's queue with its waiting thread recorded but not running there: every
    append of the child timed out although the lock was free."""
    import os

    log = tmp_path / "audit.jsonl"
    holder = open(lock_path(log), "a")
    fcntl.flock(holder, fcntl.LOCK_EX)
    def wait_once():
        with file_lock(log, timeout=10):
            pass

    waiting = threading.Thread(target=wait_once)
    waiting.start()
    time.sleep(0.2)  # the parent's waiting thread is in the kernel's queue
    pid = os.fork()
    if pid == 0:  # the child: its copy of the holder goes, then it asks for the lock
        holder.close()
        time.sleep(0.5)
        try:
            with file_lock(log, timeout=5):
                os._exit(0)
        except BaseException:  # noqa: BLE001 - a child must not return into pytest
            os._exit(1)
    fcntl.flock(holder, fcntl.LOCK_UN)
    holder.close()
    waiting.join(10)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_lock_file_that_cannot_be_opened_is_the_callers_error_not_a_timeout(tmp_path):
    """The waiting thread died on anything but an OSError, and its callers saw timeouts instead of the cause."""
    bad = tmp_path / "nul\x00name" / "audit.jsonl"
    with pytest.raises(ValueError, match="null"):
        with file_lock(bad, timeout=2):
            pass
    with pytest.raises(FileNotFoundError):  # an OSError reaches the caller as itself, too
        with file_lock(tmp_path / "no-such-folder" / "audit.jsonl", timeout=2):
            pass


def test_a_waiting_thread_that_cannot_start_fails_the_append_as_a_write_error(tmp_path, monkeypatch):
    """With no threads left, append raised RuntimeError, which the runtime does not treat as a failed write: an
    ALLOW already recorded was decided a second time, and the whole batch came back unrecorded."""
    from so8t_lib.serve import audit_lock
    from so8t_lib.serve.audit import AuditLog, AuditWriteError

    log = AuditLog(tmp_path / "audit.jsonl", lock_timeout_s=5)
    log.append({"request_id": "a", "decision": "ALLOW"})

    class NoThreads(threading.Thread):
        def start(self):
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(audit_lock.threading, "Thread", NoThreads)
    with pytest.raises(AuditWriteError, match="cannot start the thread that waits"):
        log.append({"request_id": "b", "decision": "ALLOW"})
    monkeypatch.undo()
    assert log.append({"request_id": "c", "decision": "ALLOW"})["seq"] == 1  # nothing stuck: the next one is written
