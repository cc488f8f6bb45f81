"""A durable spool for escalation cases: one JSON file per case, fsynced, in ``<queue>.spool/``.

Every escalation is written here *before* anything else happens to it, together with the audit
record it will get. While a request is in flight its file is held under an exclusive ``flock``;
a file nobody holds is an orphan: its process died (kill -9) or a step failed (the queue was
locked, the audit log could not be written). ``EscalationDesk`` replays orphans: it writes the
audit record if the log does not have it yet, adds the case to the queue if it is not there, and
only then deletes the file. So a case is never lost between the queue and the audit log, and
neither ever holds it twice. With an encryption key the files are Fernet tokens, like the audit
records and the queue's text fields.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import datetime
from pathlib import Path

logger = logging.getLogger("so8t.escalation")

SUFFIX = ".case.json"
UNREADABLE = ".unreadable"  # appended to an entry set aside for a person
# A ``.part`` file exists unlocked for the instant between its creation and its writer's flock; one that is
# unlocked and older than this is a crash's leftover. (Deleting a younger one raced a writer under load: its
# rename then failed and the case went unqueued.)
STALE_PART_S = 30.0
# The case fields the queue stores as text (``EscalationQueue.add``); each is a string or missing/None.
CASE_TEXT_FIELDS = ("request_id", "user_id", "category", "input", "context", "rationale", "created_at", "error",
                    "client")


def check_entry(data: object) -> None:
    """Raise ValueError (naming the field) unless ``data`` has the shape the replay reads: a case with a case_id and
    text fields the queue can store, an audit record object, and true/false steps. Checked where an entry is read,
    so one odd entry (edited by hand, a foreign writer) is set aside instead of failing the replay of all."""
    if not isinstance(data, dict):
        raise ValueError("the entry is not an object")
    case, record = data.get("case"), data.get("record")
    if not isinstance(case, dict):
        raise ValueError("its 'case' is not an object")
    if not isinstance(case.get("case_id"), str) or not case["case_id"]:
        raise ValueError("its case has no case_id text")
    for field in CASE_TEXT_FIELDS:
        if case.get(field) is not None and not isinstance(case[field], str):
            raise ValueError(f"its case's {field!r} is not text")
    if case.get("created_at") is not None:
        try:
            datetime.fromisoformat(case["created_at"])  # the queue computes the due time from it
        except ValueError:
            raise ValueError(f"its case's 'created_at' {case['created_at'][:40]!r} is not an ISO time") from None
    if case.get("confidence") is not None and (isinstance(case["confidence"], bool)
                                               or not isinstance(case["confidence"], int | float)):
        raise ValueError("its case's 'confidence' is not a number")
    if not isinstance(record, dict):
        raise ValueError("its 'record' is not an object")
    if record.get("request_id") is not None and not isinstance(record["request_id"], str):
        raise ValueError("its record's 'request_id' is not text")
    if record.get("flags") is not None and not isinstance(record["flags"], list):
        raise ValueError("its record's 'flags' is not a list")
    for step in ("queued", "audited"):
        if not isinstance(data.get(step, False), bool):
            raise ValueError(f"its {step!r} is not true or false")


def _write_all(fd: int, data: bytes, offset: int) -> None:
    while data:
        done = os.pwrite(fd, data, offset)
        data, offset = data[done:], offset + done


class SpoolEntry:
    """One spooled case, held (locked) by whoever created or picked it."""

    def __init__(self, path: Path, fd: int, data: dict, fernet=None) -> None:
        self.path, self._fd, self.data, self._fernet = path, fd, data, fernet
        self._written = os.fstat(fd).st_size > 0  # a new entry's first line holds all of it, later lines changes

    @property
    def case_id(self) -> str:
        return self.data["case"]["case_id"]

    def update(self, **changes) -> None:
        """Append the changes as one more line and fsync it. Never rewritten in place: a write that fails
        half-way (a full disk) leaves the lines before it, so the entry keeps what it had."""
        self.data.update(changes)
        line = json.dumps(changes if self._written else self.data, ensure_ascii=False).encode("utf-8")
        if self._fernet is not None:
            line = self._fernet.encrypt(line)
        end = os.fstat(self._fd).st_size
        if end and os.pread(self._fd, 1, end - 1) != b"\n":  # after a torn line: start a new one
            line = b"\n" + line
        _write_all(self._fd, line + b"\n", end)
        os.fsync(self._fd)
        self._written = True

    def done(self) -> None:
        """The case is queued and audited: the file goes."""
        with suppress(FileNotFoundError):
            os.unlink(self.path)
        self.release()

    def hand_over(self) -> SpoolEntry:
        """The same entry, still locked, held by a new owner; this object lets go of nothing any more (a replay
        batch releases every entry it picked, but one whose notice is still being sent must stay held)."""
        other = SpoolEntry(self.path, self._fd, self.data, self._fernet)
        self._fd = -1
        return other

    def release(self) -> None:
        """Let go of the file (it stays, for the desk to replay)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class CaseSpool:
    def __init__(self, folder: str | Path, fernet=None) -> None:
        self.folder, self._fernet = Path(folder), fernet

    def _load(self, raw: bytes) -> dict:
        """The entry: its first line, then each later line's changes in order. A later line that cannot be read
        (torn by a failed write) is skipped: its change is redone by the replay, which checks the queue and the
        log before it writes to either."""
        lines = [line for line in raw.split(b"\n") if line.strip()]
        if not lines:
            raise ValueError("an empty spool entry")
        data = self._line(lines[0])
        for line in lines[1:]:
            try:
                data.update(self._line(line))
            except Exception:  # noqa: BLE001
                logger.warning("a spool entry's update line could not be read (a torn write); its step is redone")
        return data

    def _line(self, line: bytes) -> dict:
        if self._fernet is not None and not line.startswith(b"{"):
            line = self._fernet.decrypt(line)
        value = json.loads(line)
        if not isinstance(value, dict):
            raise ValueError("a spool line is not an object")
        return value

    def put(self, case: dict, record: dict) -> SpoolEntry:
        """Write a new entry durably and hold it; OSError when the folder cannot take it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{case['case_id']}{SUFFIX}"
        part = self.folder / f"{case['case_id']}.part"  # written and locked before it gets its visible name
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entry = SpoolEntry(path, fd, {"case": case, "record": record, "queued": False, "audited": False},
                               self._fernet)
            entry.update()
            os.rename(part, path)
            dir_fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the new name survives a power cut too
            finally:
                os.close(dir_fd)
        except BaseException:
            os.close(fd)
            for leftover in (part, path):
                with suppress(OSError):
                    os.unlink(leftover)
            raise
        return entry

    def orphans(self) -> Iterator[SpoolEntry]:
        """Entries nobody holds, each locked for the caller (who must call done() or release())."""
        if not self.folder.is_dir():
            return
        for part in self.folder.glob("*.part"):  # a crash before the entry was complete: nothing else happened yet
            with suppress(OSError):
                fd = os.open(part, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    if time.time() - os.fstat(fd).st_mtime > STALE_PART_S:  # not a writer about to lock it
                        os.unlink(part)
                finally:
                    os.close(fd)
        for path in sorted(self.folder.glob(f"*{SUFFIX}")):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue  # finished meanwhile
            except OSError as exc:  # not ours to read (permissions, a folder, no descriptors left): the rest go on
                logger.error("spool entry %s cannot be opened (%s); it stays for a person or the next pass",
                             path.name, exc)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # in flight in this or another process
            if not path.exists():  # deleted between open and lock: it was finished
                os.close(fd)
                continue
            try:
                data = self._load(os.pread(fd, os.fstat(fd).st_size, 0))
                check_entry(data)
            except Exception as exc:  # noqa: BLE001 - unreadable JSON, a wrong shape: set it aside for a person
                os.close(fd)
                aside = path.with_name(path.name + UNREADABLE)
                try:
                    os.replace(path, aside)  # kept for a person; not replayed
                except OSError as moved:
                    logger.error("spool entry %s could not be set aside (%s)", path.name, moved)
                logger.error("spool entry %s could not be read (%s: %s) and was set aside as %s: its case may be "
                             "missing from the queue or the audit log; a person must read it (with the audit key "
                             "if one is set) and queue it by hand", path.name, type(exc).__name__, exc, aside.name)
                continue
            yield SpoolEntry(path, fd, data, self._fernet)

    def count(self) -> int:
        """Cases not yet in the queue and the log for sure: those waiting for a replay and those set aside as
        unreadable (which wait for a person, so the spooled gauge stays up until one looks)."""
        if not self.folder.is_dir():
            return 0
        return len(list(self.folder.glob(f"*{SUFFIX}"))) + len(list(self.folder.glob(f"*{SUFFIX}{UNREADABLE}")))
