"""Taking the audit log's flock with a time limit, without giving up the kernel's queue.

A plain blocking ``flock`` waits in the kernel's queue, which is fair enough: under 16 busy processes no append
waited more than a fraction of a second. But it waits forever behind a holder that hung. Polling with
``LOCK_NB`` has a limit but no queue: a waiter that backs off loses to every newcomer, and healthy appends timed
out under ordinary contention (about 2 in 1,600 at 16 processes with a 5 s limit) and failed closed.

So here one thread per log and mode (per process) waits in the kernel's blocking ``flock`` on behalf of the
callers, in their order of arrival, on a file descriptor of its own. Each caller waits for its turn at most its
``timeout`` and then leaves the queue; once the lock is taken, the descriptor is handed to the first caller
still waiting. However long a holder hangs, at most one thread per log waits in the kernel, and the callers who
gave up leave nothing behind. A forked child starts with no queues (its parent's threads do not exist there).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections import deque
from pathlib import Path


class AuditLockTimeout(TimeoutError):
    """The log's lock stayed held by someone else for longer than the caller would wait."""


class _Turn:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.fd: int | None = None
        self.error: Exception | None = None


class _LockQueue:
    def __init__(self, path: Path, shared: bool) -> None:
        self.path, self.shared = path, shared
        self.mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        self.mutex = threading.Lock()
        self.turns: deque[_Turn] = deque()
        self.waiter: threading.Thread | None = None

    def acquire(self, timeout: float) -> int:
        """A descriptor holding the lock; the caller unlocks and closes it."""
        turn = _Turn()
        with self.mutex:
            self.turns.append(turn)
            if self.waiter is None:
                waiter = threading.Thread(target=self._wait_in_kernel, name="so8t-audit-lock", daemon=True)
                try:
                    waiter.start()
                except RuntimeError as exc:  # no threads left: the lock cannot be had, which callers handle
                    self.turns.remove(turn)
                    raise OSError(errno.EAGAIN, f"cannot start the thread that waits for {self.path}: {exc}") from exc
                except BaseException:
                    self.turns.remove(turn)
                    raise
                self.waiter = waiter
        try:
            ready = turn.ready.wait(timeout)
        except BaseException:
            with self.mutex:
                if turn.ready.is_set():
                    if turn.fd is not None:
                        fcntl.flock(turn.fd, fcntl.LOCK_UN)
                        os.close(turn.fd)
                else:
                    self.turns.remove(turn)
            raise
        if not ready:
            with self.mutex:
                if not turn.ready.is_set():
                    self.turns.remove(turn)
                    raise AuditLockTimeout(f"{self.path} was held by another writer for more than {timeout:g} s "
                                           "(a hung process? `fuser` on the lock file names it)")
        if turn.error is not None:
            raise turn.error
        assert turn.fd is not None
        return turn.fd

    def _next_turn(self) -> _Turn | None:
        """The first caller still waiting (under the mutex; one who gave up has left the queue); None ends the
        thread."""
        if not self.turns:
            self.waiter = None
            return None
        return self.turns[0]

    def _wait_in_kernel(self) -> None:
        while True:
            with self.mutex:
                if self._next_turn() is None:
                    return
            fd, error = None, None
            try:
                fd = _open_lock_file(self.path, self.shared)
                fcntl.flock(fd, self.mode)  # blocks in the kernel's queue, beside other processes' writers
            except Exception as exc:  # noqa: BLE001 - any failure is the waiting caller's to see, not a timeout
                if fd is not None:
                    os.close(fd)
                fd, error = None, exc
            if not self._hand_over(fd, error):
                return

    def _hand_over(self, fd: int | None, error: Exception | None) -> bool:
        """Give the lock (or the error) to the first caller still waiting; False: nobody is, the thread ends."""
        with self.mutex:
            turn = self._next_turn()
            if turn is None:  # everyone gave up while the lock was being taken: let it go
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)  # a forked child may hold a duplicate of fd
                    os.close(fd)
                return False
            self.turns.popleft()
            turn.fd, turn.error = fd, error
            turn.ready.set()
            return True


def _open_lock_file(path: Path, shared: bool) -> int:
    """Read-only for a reader where the file exists (a verifier's sandbox may not write), else created."""
    if shared and path.exists():
        return os.open(path, os.O_RDONLY)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)


_QUEUES: dict[tuple[str, bool], _LockQueue] = {}
_QUEUES_LOCK = threading.Lock()


def lock_within(path: Path, shared: bool, timeout: float) -> int:
    """A descriptor holding ``path``'s flock, taken within ``timeout`` seconds or ``AuditLockTimeout``."""
    key = (os.path.abspath(path), shared)
    with _QUEUES_LOCK:
        queue = _QUEUES.get(key)
        if queue is None:
            queue = _QUEUES[key] = _LockQueue(Path(key[0]), shared)
    return queue.acquire(timeout)


def _after_fork_in_child() -> None:
    global _QUEUES_LOCK
    _QUEUES_LOCK = threading.Lock()
    _QUEUES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
