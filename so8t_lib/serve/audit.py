"""The audit log: append-only JSONL with a hash chain and an anchor, size-based rotation with gzip (renamed
under the lock, gzipped after it: ``audit_rotation``), safe under many threads and processes at once, and
whole records or none.

    so8t audit verify logs/        # exit 1 and name the problem (see audit_verify for what is found)
    so8t audit show logs/          # the records; decrypted with $SO8T_AUDIT_KEY if encrypted

Every record gets ``seq`` (0, 1, 2, ...), ``prev_hash`` (the previous record's ``hash``) and
``hash`` = sha256 of ``prev_hash`` and the record's canonical JSON without ``hash``. An append
holds an exclusive ``flock`` on ``<log>.lock`` while it finds the chain head, writes one line
and fsyncs it, then moves the anchor (``audit_files``) to the new head. A write that cannot be
completed (disk full, file size limit, read-only folder) is cut back to where it began and
raises ``AuditWriteError``, so no torn record stays behind and the caller can fail closed. A torn
tail left by a crash is set aside (kept under ``<log>.torn-*``) when the log is opened or before
the next append, and the chain continues from the last complete record, or from the anchor when
the anchor is further along (records deleted at the end stay visible as a gap).

Every stored text is bounded (``fields``), and with ``mask_input`` the input, note and user id
are masked. The record format is the operations manual's plus what the runtime adds.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from . import audit_rotation
from .audit_files import (
    GENESIS,
    anchor_path,
    chain_names,
    encode_line,
    file_lock,
    first_record,
    key_bytes,
    last_record,
    legacy_head_path,
    log_files,
    parse_record,
    read_anchor,
    read_lines,
    record_hash,
    record_mac,
    rotated_path,
    set_aside_torn_tail,
    sibling,
    write_anchor,
)
from .audit_verify import READ_LOCK_TIMEOUT_S, consistent_view, make_fernet, open_files, read_records, verify
from .fields import bounded, masked_bounded, pseudonym, storable

__all__ = ["GENESIS", "AuditLog", "AuditWriteError", "log_files", "make_fernet", "read_records", "record_hash",
           "verify"]
logger = logging.getLogger("so8t.audit")
MASKED_FIELDS = ("input", "note", "context")
# find_requests reads a file last written up to this long before the decision asked about: the decision's
# timestamp and the file's mtime come from different clocks when replicas share a folder over a network
FIND_SLACK_S = 600.0


class AuditWriteError(RuntimeError):
    """A record could not be written whole; the message names the file and the cause."""


@dataclass
class AuditLog:
    """``AuditLog(path).append(record)`` -> the record as written (with seq and hashes)."""

    path: Path
    max_bytes: int = 100 * 2**20
    backup_count: int = 5
    mask_input: bool = True
    encryption_key: str | bytes | None = None  # a Fernet key: records are stored encrypted at rest
    hmac_key: str | bytes | None = None  # signs the anchor (and keys the user-id digests)
    max_field_chars: int = 8192
    # an append (or rotate) waiting longer for the lock fails (AuditWriteError); None waits without a limit. The
    # runtime passes logging.audit_lock_timeout_s (5 s); a tool gets the readers' 30 s, not a hang behind a hung holder
    lock_timeout_s: float | None = READ_LOCK_TIMEOUT_S
    set_aside: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._fernet = make_fernet(self.encryption_key) if self.encryption_key else None
        self._mac_key = key_bytes(self.hmac_key)
        if self.backup_count < 1:
            raise ValueError("backup_count must be at least 1: rotation would delete records at once")
        self.open_error: str | None = None
        self._compressor = audit_rotation.BackgroundCompressor(self.path)
        self._rotated = False  # set under the lock by a rotation; the gzip starts once the lock is released
        try:  # a broken folder must not stop the gate from answering: each append fails closed instead
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and not self.path.is_file():  # a folder there: every append would fail
                raise OSError(f"{self.path} exists and is not a regular file")
            with file_lock(self.path, timeout=self.lock_timeout_s):
                self._repair()
        except OSError as exc:
            self.open_error = f"{self.path}: cannot open the audit log ({type(exc).__name__}: {exc})"
            logger.error("%s", self.open_error)
        if self.open_error is None and self._fernet is None:  # with a key there is nothing to check
            self._check_not_encrypted()
        if self._rotated:  # files a crash left plain
            self._rotated = False
            self._start_compressing()

    # ----- repair on open -----------------------------------------------------------------------
    def _repair(self) -> None:
        """Undo what a crash can leave: a half-finished rotation or gzip, and a torn last line."""
        sibling(self.path, ".rotating.tmp").unlink(missing_ok=True)  # left by versions that gzipped under the lock
        newest = rotated_path(self.path, 1)
        if self.path.is_file() and newest.is_file():
            live_first, gz_first = first_record(self.path), first_record(newest)
            if live_first and gz_first and live_first["hash"] == gz_first["hash"]:
                self.path.unlink()  # rotation was cut after the gzip was in place: the live file is a copy
                logger.warning("%s: removed the copy left by an interrupted rotation", self.path)
        audit_rotation.clean_leftovers(self.path)
        self._rotated = any(p.suffix != ".gz" and p != self.path for p in log_files(self.path.parent, self.path.name))
        self._set_aside_torn_tail()
        self._catch_up_anchor()

    def _catch_up_anchor(self) -> None:
        """A new log gets its anchor before its first record (so a deleted anchor is always noticed);
        a log whose last write outran its anchor (a crash in between) gets the anchor moved up."""
        try:
            anchor = read_anchor(self.path)
        except ValueError:
            return  # verify reports it; the next append replaces it as a re-created anchor
        files = log_files(self.path.parent, self.path.name)
        if anchor is None:
            if not files:
                now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                write_anchor(self.path, {"first_seq": 0, "first_prev_hash": GENESIS, "last_seq": None,
                                         "last_hash": GENESIS, "created_at": now}, self._mac_key)
            return
        last = last_record(files[-1]) if files else None
        if last is not None and (anchor.get("last_seq") is None or last["seq"] > int(anchor["last_seq"])):
            self._move_anchor(anchor, last, last)

    def _set_aside_torn_tail(self) -> None:
        target = set_aside_torn_tail(self.path)
        if target is not None:
            self.set_aside.append(target)

    def _needs_key(self, last: dict | None) -> bool:
        """Whether the chain's last record is encrypted and this log has no key to continue it."""
        return self._fernet is None and last is not None and "enc" in last

    def _check_not_encrypted(self) -> None:
        """An encrypted log opened without its key refuses every append: said at open, so that readiness and
        ``so8t serve --check`` name it before the first decision fails closed without a record."""
        try:
            last = self._head()[2]
        except (OSError, ValueError, KeyError):
            return  # a damaged head: append names it
        if self._needs_key(last):
            self.open_error = (f"{self.path}: the log is encrypted and no key is set (logging.encryption_key_env): "
                               "every append would be refused; set the key, or give this config its own log folder")
            logger.error("%s", self.open_error)

    # ----- the chain head -------------------------------------------------------------------------
    def _head(self) -> tuple[int, str, dict | None, dict | None]:
        """(next seq, hash to link to, last record, anchor). The anchor wins when it is further along
        than the files (records were deleted at the end: the gap must stay visible)."""
        last = last_record(self.path) if self.path.is_file() else None
        if last is None:
            rotated = log_files(self.path.parent, self.path.name)
            last = last_record(rotated[-1]) if rotated and rotated[-1] != self.path else None
        try:
            anchor = read_anchor(self.path)
        except ValueError as exc:
            logger.error("%s", exc)
            anchor = None
        if anchor is not None and anchor.get("last_seq") is not None:
            a_seq, a_hash = int(anchor["last_seq"]), str(anchor["last_hash"])
            if last is None or a_seq > last["seq"] or (a_seq == last["seq"] and a_hash != last["hash"]):
                if last is not None:
                    logger.error("%s: the anchor is at seq %d but the log ends at seq %d; records are missing at "
                                 "the end (so8t audit verify shows them)", self.path, a_seq, last["seq"])
                return a_seq + 1, a_hash, last, anchor
        if last is not None:
            return last["seq"] + 1, last["hash"], last, anchor
        legacy = legacy_head_path(self.path)
        if legacy.is_file():
            head = json.loads(legacy.read_text(encoding="utf-8"))
            return int(head["next_seq"]), head["hash"], None, anchor
        return 0, GENESIS, None, anchor

    # ----- storing ----------------------------------------------------------------------------------
    def _sanitize(self, value, key: str | None = None):
        if isinstance(value, dict):
            return {storable(str(k))[:64]: self._sanitize(v, str(k)) for k, v in value.items()}  # keys too: UTF-8
        if isinstance(value, (list, tuple)):
            return [self._sanitize(v) for v in value[:256]]
        if value is None or isinstance(value, (bool, int)):
            return value
        if isinstance(value, float):
            return value if value == value and abs(value) != float("inf") else None
        if self.mask_input and key == "user_id":
            return pseudonym(bounded(value, self.max_field_chars), self._mac_key)
        if self.mask_input and key in MASKED_FIELDS:
            return masked_bounded(value, self.max_field_chars)
        return bounded(value, self.max_field_chars)

    def prepare(self, record: dict) -> dict:
        """The record as it will be stored: every text bounded, personal data masked (when on)."""
        return self._sanitize(dict(record))

    def _write_line(self, line: bytes) -> None:
        """Write the whole line and fsync it, or cut the file back to where it was and raise."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise AuditWriteError(f"{self.path}: cannot open for writing ({type(exc).__name__}: {exc})") from exc
        try:
            start = os.fstat(fd).st_size
            written = 0
            try:
                while written < len(line):
                    n = os.write(fd, line[written:])
                    if n <= 0:
                        raise OSError(errno.ENOSPC, "no space written")
                    written += n
                os.fsync(fd)
            except OSError as exc:
                try:
                    os.ftruncate(fd, start)  # leave no torn record behind
                except OSError:
                    logger.error("%s: could not cut back a partial write; it is set aside on the next open", self.path)
                raise AuditWriteError(f"{self.path}: the record could not be written whole ({written} of {len(line)} "
                                      f"bytes: {type(exc).__name__}: {exc})") from exc
        finally:
            os.close(fd)

    def _move_anchor(self, anchor: dict | None, stored: dict, last: dict | None) -> None:
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if anchor is not None and self._mac_key and not anchor.get("mac"):
            logger.warning("%s: the anchor was not signed; it is signed from now on", self.path)
        if anchor is None:
            anchor = {"first_seq": stored["seq"], "first_prev_hash": stored["prev_hash"], "created_at": now}
            if last is not None or stored["prev_hash"] != GENESIS:  # a log from before anchors existed
                files = log_files(self.path.parent, self.path.name)
                first = first_record(files[0]) if files else None
                if first is not None:
                    anchor["first_seq"], anchor["first_prev_hash"] = first["seq"], first["prev_hash"]
                anchor["adopted_at"] = now
                logger.warning("%s: no anchor found for an existing log; a new one starts at seq %s (deletions before "
                               "now cannot be ruled out; so8t audit verify reports this)", self.path, anchor["first_seq"])
        anchor.update(last_seq=stored["seq"], last_hash=stored["hash"], updated_at=now)
        try:
            write_anchor(self.path, anchor, self._mac_key)
        except OSError as exc:  # the record is safe; an anchor behind the log is still consistent
            logger.error("%s: the anchor could not be updated (%s)", self.path, exc)

    def append(self, record: dict) -> dict:
        """Write one record (bounded, masked, chained); AuditWriteError if it cannot be written whole."""
        record = self._sanitize(dict(record))
        try:
            with file_lock(self.path, timeout=self.lock_timeout_s):
                self._set_aside_torn_tail()
                next_seq, last_hash, last, anchor = self._head()
                if self._needs_key(last):
                    raise AuditWriteError(f"{self.path}: the log is encrypted; set the key "
                                          "(logging.encryption_key_env) to append to it")
                record["seq"], record["prev_hash"] = next_seq, last_hash
                stored = record
                if self._fernet is not None:  # the chain covers the ciphertext: verify needs no key
                    token = self._fernet.encrypt(json.dumps(record, ensure_ascii=False).encode("utf-8"))
                    stored = {"seq": next_seq, "prev_hash": last_hash, "enc": token.decode("ascii")}
                stored["hash"] = record_hash(stored)
                record["hash"] = stored["hash"]
                if self._mac_key:
                    stored["mac"] = record_mac(stored["hash"], self._mac_key)
                line = encode_line(stored)
                if self.path.is_file() and self.path.stat().st_size and \
                        self.path.stat().st_size + len(line) > self.max_bytes:
                    anchor = self._rotate(anchor)
                self._write_line(line)
                self._move_anchor(anchor, stored, last)
        except AuditWriteError:
            raise
        except OSError as exc:
            raise AuditWriteError(f"{self.path}: {type(exc).__name__}: {exc}") from exc
        finally:
            if self._rotated:  # after the lock is released: no decision waits for the gzip
                self._rotated = False
                self._start_compressing()
        self.open_error = None
        return record

    # ----- rotation -----------------------------------------------------------------------------------
    def rotate(self) -> None:
        """Rotate now, whatever the live file's size, and gzip it before returning (``.1.gz``)."""
        with file_lock(self.path, timeout=self.lock_timeout_s):
            if self.path.is_file() and self.path.stat().st_size:
                _, _, _, anchor = self._head()
                self._rotate(anchor)
        self._rotated = False
        self._compressor.wait()
        audit_rotation.compress_pending(self.path)

    def _rotate(self, anchor: dict | None) -> dict | None:
        """Renames only, under the lock; the gzip follows on a background thread (``audit_rotation``)."""
        anchor = audit_rotation.shift_and_rename(self.path, self.backup_count, anchor, self._mac_key)
        self._rotated = True
        return anchor

    def _start_compressing(self) -> None:
        """The record is written: a gzip that cannot start (no threads) must not fail it; it runs later."""
        try:
            self._compressor.start()
        except Exception as exc:  # noqa: BLE001 - never let the gzip decide a request a second time
            logger.error("%s: the gzip of rotated files could not start (%s); they stay plain for now", self.path, exc)

    def wait_for_compression(self, timeout: float | None = None) -> bool:
        """Until the rotated files are gzipped (True) or ``timeout`` seconds have passed (False)."""
        return self._compressor.wait(timeout)

    # ----- lookups --------------------------------------------------------------------------------------
    def find_requests(self, request_ids: set[str], since: float | None = None) -> set[str]:
        """Which of these request ids have a ``decision`` record in this chain or another replica's chain in the
        folder (used after a crash, to tell a decision that was recorded from one that was not: a replica may finish
        the spool entry another one left). Only decision records count: a reviewer may resolve a queued case whose
        decision record was never written, and that resolution must not pass for it. ``since`` (a POSIX time no
        later than the oldest decision asked about) skips the files last written more than ``FIND_SLACK_S`` before
        it, which cannot hold those records; None reads every file. A lock held past ``lock_timeout_s`` (or the
        readers' limit when that is None) is an ``AuditLockTimeout``."""
        if not request_ids:
            return set()
        timeout = READ_LOCK_TIMEOUT_S if self.lock_timeout_s is None else self.lock_timeout_s
        found: set[str] = set()
        folder = self.path.parent
        name = self.path.name
        base = re.sub(r"-[A-Za-z0-9_]{1,40}(?=\.[^.]*$)", "", name, count=1)  # the chain this replica's is named after
        chains = sorted(set(chain_names(folder, name)) | set(chain_names(folder, base)) | {name})
        oldest = None if since is None else since - FIND_SLACK_S
        with ExitStack() as handles:
            recent = []
            for chain in chains:  # each chain's files of one moment: a rotation meanwhile cannot hide a record
                with consistent_view(folder / chain, timeout):
                    recent += [f for f in open_files(folder, chain, handles) if _written_since(f, oldest)]
            for path, handle, length, error in recent:
                if error is not None:
                    raise error
                for line, _ in read_lines(path, handle, length):
                    stored = parse_record(line)
                    if stored is None:
                        continue
                    record = stored
                    if "enc" in stored and self._fernet is not None:
                        record = json.loads(self._fernet.decrypt(stored["enc"].encode("ascii")))
                    if record.get("event", "decision") == "decision" and record.get("request_id") in request_ids:
                        found.add(record["request_id"])
        return found

    @property
    def anchor_file(self) -> Path:
        return anchor_path(self.path)


def _written_since(opened: tuple, oldest: float | None) -> bool:
    """Whether a file of ``open_files`` may hold a record written at ``oldest`` or later: its last write is not
    before then (gzipping a rotated file writes a new one, later still). A file that could not be opened is
    kept when its age cannot be told either, so the caller sees the error rather than a record missed."""
    path, handle, _, _ = opened
    if oldest is None:
        return True
    try:
        written = os.fstat(handle.fileno()).st_mtime if handle is not None else path.stat().st_mtime
    except OSError:
        return True
    return written >= oldest
