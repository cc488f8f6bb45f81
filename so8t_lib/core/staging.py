"""Hidden staging folders that a running process locks, so that another process clearing stale ones never
removes a folder still in use.

A process makes its folder with ``LockedFolder`` (``flock`` held until it is done, an owner file written once the
lock is held); ``remove_stale`` removes only the folders whose lock is free: at once when they carry the owner
file (their process ended without removing them), else only once idle for ``UNLOCKED_STALE_S`` (a folder from an
earlier version, or a new one in the instant before its lock). Used by ``so8t export``, ``so8t retrain deploy``
and ``so8t retrain run``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from pathlib import Path

# written into a staging folder once its process holds the folder's lock: a lockable folder with it is a dead
# process's (the name predates its use outside export; folders earlier exports left carry it)
OWNER_FILE = ".so8t-export-owner"
# a staging folder without OWNER_FILE is left alone until nothing in it has changed for this long
UNLOCKED_STALE_S = 3600.0


class LockedFolder:
    """A new folder ``parent/<prefix>*`` (``path``), locked while the ``with`` block runs. On exit it is removed,
    unless ``keep`` was set: then it is only unlocked, and the next ``remove_stale`` of ``parent`` takes it."""

    def __init__(self, parent: str | Path, prefix: str) -> None:
        self.parent, self.prefix, self.keep = Path(parent), prefix, False
        self.path: Path | None = None
        self._handle: int | None = None

    def __enter__(self) -> LockedFolder:
        self.path = Path(tempfile.mkdtemp(dir=self.parent, prefix=self.prefix))
        try:
            self._handle = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
            try:
                fcntl.flock(self._handle, fcntl.LOCK_EX)
            except OSError as exc:  # NFS without local locks refuses it (EBADF, ENOLCK)
                raise OSError(exc.errno, f"cannot lock the staging folder {self.path} ({exc.strerror}): its "
                                         "filesystem does not support flock; give a folder on a local disk") from exc
            (self.path / OWNER_FILE).write_text(f"{os.getpid()}\n", encoding="ascii")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)  # before the unlock: nobody sees it half removed
        if self._handle is not None:
            os.close(self._handle)  # the lock goes with it
            self._handle = None


def remove_stale(parent: str | Path, prefixes: tuple[str, ...]) -> list[tuple[Path, bool]]:
    """Remove the staging folders in ``parent`` (names starting with one of ``prefixes``; no link, no file) that
    no running process holds. Returns each one tried and whether it is gone."""
    tried = []
    for folder in sorted(Path(parent).iterdir()):
        if not folder.name.startswith(prefixes) or folder.is_symlink() or not folder.is_dir():
            continue
        try:
            handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if (folder / OWNER_FILE).is_file() or time.time() - last_change(folder) > UNLOCKED_STALE_S:
                shutil.rmtree(folder, ignore_errors=True)
                tried.append((folder, not os.path.lexists(folder)))
        except OSError:  # a running process's (BlockingIOError), removed meanwhile by another, or not lockable here
            pass
        finally:
            os.close(handle)
    return tried


def last_change(folder: Path) -> float:
    """The newest mtime of a folder and everything in it (a file being written keeps it fresh)."""
    times = [folder.stat().st_mtime]
    for path in folder.rglob("*"):
        try:
            times.append(path.lstat().st_mtime)
        except OSError:
            continue
    return max(times)
