"""Rotation of the audit log in two steps, so that no decision waits for gzip.

Under the log's exclusive lock a rotation only renames: the live file becomes ``<log>.1`` (older files shift up
by one, the one beyond ``backup_count`` goes). That takes milliseconds whatever the file's size; before, gzip ran
under the lock and held every decision for about 30 s per GB (``benchmarks/audit_rotation.py``).

The gzip runs afterwards, outside the lock, on a background thread: ``<log>.N`` is compressed to a temp file, and
only the swap (``.N.gz`` in, ``.N`` out) takes the lock again. Every reader (verify, reports, backups, the chain
head) reads a plain ``.N`` as it reads a ``.N.gz``, so a record is readable at every moment. A crash leaves a
plain ``.N`` (compressed on the next open), a temp file of a process that is gone (deleted on the next open), or,
between the swap's two renames, both ``.N`` and ``.N.gz``: the ``.N.gz`` is complete (it is fsynced before it
is renamed in), so readers take it and the next open deletes the copy.
"""

from __future__ import annotations

import fcntl
import gzip
import itertools
import logging
import os
import re
import threading
import time
import weakref
from pathlib import Path

from . import audit_files
from .audit_files import (
    file_lock,
    first_record,
    log_files,
    plain_rotated_path,
    rotated_path,
    sibling,
    write_anchor,
)

logger = logging.getLogger("so8t.audit")
_TEMP_NUMBERS = itertools.count()  # each gzip its own temp file, even two in one thread


def shift_and_rename(log: Path, backup_count: int, anchor: dict | None, mac_key: bytes | None) -> dict | None:
    """The locked step: the live file becomes ``.1`` (renames only). Every rotated file numbered ``backup_count`` or
    more goes, not only ``.<backup_count>``: after ``backup_count`` was lowered, older files are beyond it too, and
    deleting the one at the limit alone cut the chain in the middle. The anchor's start moves to the first file
    kept before any is deleted (oldest first), so a crash never looks like a deletion. Returns the anchor as it
    now is."""
    doomed = _rotated_from(log, backup_count)
    if doomed:
        keep = [p for p in log_files(log.parent, log.name) if p not in doomed]
        first = first_record(keep[0]) if keep else None
        if anchor is not None and first is not None:
            anchor.update(first_seq=first["seq"], first_prev_hash=first["prev_hash"])
            write_anchor(log, anchor, mac_key)
        for path in doomed:
            path.unlink()
    for n in range(backup_count - 1, 0, -1):
        for older, newer in ((rotated_path(log, n), rotated_path(log, n + 1)),
                             (plain_rotated_path(log, n), plain_rotated_path(log, n + 1))):
            if older.exists():
                os.replace(older, newer)
    os.replace(log, plain_rotated_path(log, 1))
    return anchor


def _rotated_from(log: Path, lowest: int) -> list[Path]:
    """Every rotated file (``.N`` and ``.N.gz``) numbered ``lowest`` or more, oldest (highest N) first."""
    pattern = re.compile(rf"^{re.escape(log.name)}\.(\d+)(\.gz)?$")
    found = [(int(m.group(1)), p) for p in log.parent.glob(f"{log.name}.*") if (m := pattern.match(p.name))]
    return [p for n, p in sorted(found, key=lambda item: (-item[0], item[1].name)) if n >= lowest]


def _plain_files(log: Path) -> list[Path]:
    pattern = re.compile(rf"^{re.escape(log.name)}\.(\d+)$")
    return sorted((p for p in log.parent.glob(f"{log.name}.*") if pattern.match(p.name)),
                  key=lambda p: -int(p.name.rsplit(".", 1)[1]))


def _packed(plain: Path) -> Path:
    return plain.with_name(plain.name + ".gz")


def compress_one(log: Path, plain: Path) -> bool:
    """gzip one rotated ``.N`` outside the lock, then swap it in under the lock. False when there was nothing to
    do (another thread or process compressed it first, or a later rotation deleted it). The file stays open
    until the swap, so its inode cannot be reused by a newer file that the swap would then overwrite."""
    if _packed(plain).exists():
        return False  # a crash's copy beside its .gz: the next open deletes it, nothing to compress
    tmp = sibling(log, f".gzip-{os.getpid()}-{threading.get_ident()}-{next(_TEMP_NUMBERS)}.tmp")
    try:
        source = open(plain, "rb")
    except FileNotFoundError:
        return False
    try:
        with source, open(tmp, "wb") as raw:
            fcntl.flock(raw, fcntl.LOCK_EX)  # in use: clean_leftovers leaves a temp file it cannot lock
            if os.fstat(raw.fileno()).st_nlink == 0:  # a cleaner deleted it between the open and the lock
                return compress_one(log, plain)
            with gzip.open(raw, "wb", compresslevel=audit_files.ROTATE_GZIP_LEVEL) as target:
                while block := source.read(1 << 20):
                    target.write(block)
            raw.flush()
            os.fsync(raw.fileno())
            read = os.fstat(source.fileno())
            with file_lock(log):
                for candidate in _plain_files(log):  # a rotation meanwhile moved it up: find it by what it is
                    try:
                        if not os.path.samestat(read, candidate.stat()):
                            continue
                    except FileNotFoundError:
                        continue
                    if _packed(candidate).exists():
                        break  # compressed by someone else, who deletes the copy
                    os.replace(tmp, _packed(candidate))
                    candidate.unlink()
                    return True
        return False
    finally:
        tmp.unlink(missing_ok=True)


def compress_pending(log: Path) -> int:
    """gzip every rotated file still plain, oldest first; the number compressed. A failure (a full disk) is
    logged and leaves the plain file as it is: readable, and compressed on a later try."""
    done = 0
    for plain in _plain_files(log):
        try:
            done += compress_one(log, plain)
        except OSError as exc:
            logger.error("%s: could not gzip %s (%s); it stays readable as it is and is compressed on a later "
                         "rotation or start", log, plain.name, exc)
            return done
    return done


def clean_leftovers(log: Path) -> None:
    """Under the lock, on open: the plain copy of a file whose ``.gz`` is in place (the same records: a gzip
    cut between its renames), and the temp files nobody is writing (a writer holds a lock on its own)."""
    for plain in _plain_files(log):
        packed = _packed(plain)
        if not packed.exists():
            continue
        try:
            same = (first_record(plain) or {}).get("hash") == (first_record(packed) or {}).get("hash")
        except audit_files.READ_ERRORS:
            same = False
        if same:
            plain.unlink()
            logger.warning("%s: removed the plain copy left by an interrupted gzip of %s", log, plain.name)
        else:  # not a copy: a writer of an older version rotated beside this one's plain file
            logger.error("%s: %s and %s hold different records; both are kept, and readers see only the .gz "
                         "(every process writing one log must run the same version)", log, plain.name, packed.name)
    for tmp in log.parent.glob(f"{log.name}.gzip-*.tmp"):
        try:
            with open(tmp, "rb") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink(missing_ok=True)
        except BlockingIOError:
            continue  # a gzip under way, in this process or another
        except FileNotFoundError:
            continue


class BackgroundCompressor:
    """One thread per log that gzips rotated files after the lock is released; asked again while it runs, it
    makes one more pass, so a file rotated meanwhile is not left behind. A forked child starts with none
    running (``_after_fork_in_child``)."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._reset()
        _COMPRESSORS.add(self)

    def _reset(self) -> None:
        """No thread, nothing due. In a forked child the parent's gzip thread does not exist, so a lock it held
        at the fork would never be released there, and its pending pass is the parent's to make."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._again = False

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                self._again = True
                return
            self._thread = threading.Thread(target=self._run, name="so8t-audit-gzip", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                compress_pending(self.log)
            except Exception:  # noqa: BLE001 - a background thread: say it, never die silently
                logger.exception("%s: gzip of rotated files failed", self.log)
            with self._lock:
                if not self._again:
                    self._thread = None
                    return
                self._again = False

    def wait(self, timeout: float | None = None) -> bool:
        """Until no gzip is running or due (True), or ``timeout`` seconds (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            thread = self._thread
        while thread is not None:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                return False
            with self._lock:
                if self._thread is thread:  # dead without clearing it (a fork's copy)
                    self._thread = None
                thread = self._thread
        return True


_COMPRESSORS: weakref.WeakSet[BackgroundCompressor] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for compressor in list(_COMPRESSORS):
        compressor._reset()


os.register_at_fork(after_in_child=_after_fork_in_child)
