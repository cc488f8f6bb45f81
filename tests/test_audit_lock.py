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
