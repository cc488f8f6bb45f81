"""Checking and reading the audit log.

``verify`` finds, without any key:
- a record edited after it was written (its hash no longer matches its content);
- records dropped, inserted or reordered inside the retained files (a seq gap, a broken link);
- a line that is not a complete record, except the very last line of the live file, which is a
  torn tail (an unfinished write) and is reported as such;
- records deleted at the start (the first retained record is not the anchor's first seq, or does
  not link to the hash the anchor names) or at the end (the last record is before the anchor's
  last seq), a deleted live file, a deleted oldest ``.gz``;
- a chain that was rewritten and re-hashed from some record on, as long as the anchor was not
  rewritten too (the record at the anchor's last seq has another hash);
- a missing anchor, and an anchor the writer had to re-create for a log that had none.
With the HMAC key it also finds a forged anchor and any record added or re-hashed without the key
(each record carries an HMAC of its hash), so rewriting the chain and the anchor together is found. With ``expect=(seq, hash)`` (a checkpoint kept outside the log folder) it finds a log
rolled back to an older state together with an older anchor. What it cannot find: a rollback to
an earlier, validly signed anchor when no outside checkpoint is compared, changes made by someone
who holds the HMAC key, and records that were never written (a process killed before its write).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

from .audit_checks import ChainSummary, check_anchor, check_expect
from .audit_files import (
    GENESIS,
    READ_ERRORS,
    AuditLockTimeout,
    NotAnAuditLog,
    anchor_mac,
    anchor_path,
    chain_names,
    file_lock,
    key_bytes,
    lock_path,
    log_files,
    parse_record,
    read_anchor,
    read_lines,
    record_hash,
    refuse_non_log,
    same_digest,
    set_aside_files,
    signature_matches,
    write_anchor,
)
from .reviewer_names import checked_name

# How long a reader waits for the log's shared lock. Writers hold it for milliseconds, so a longer wait means a
# holder that hung; a reader without a limit hung behind it too (`so8t audit show`, reports, backups).
READ_LOCK_TIMEOUT_S = 30.0


def make_fernet(key: str | bytes):
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise RuntimeError("audit encryption needs the cryptography package: pip install -e '.[runtime]'") from None
    try:
        return Fernet(key.encode("ascii") if isinstance(key, str) else key)
    except (ValueError, TypeError):
        raise ValueError("the audit encryption key is not a Fernet key (32 url-safe base64 bytes); make one with "
                         "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'") \
            from None


def read_records(folder: str | Path, name: str = "audit.jsonl", key: str | bytes | None = None,
                 unreadable: list[str] | None = None, *, lock_timeout: float | None = READ_LOCK_TIMEOUT_S,
                 skipped: list[str] | None = None, named: bool = False) -> Iterator[dict]:
    """Every complete record, oldest first, decrypted when ``key`` is given (encrypted ones need it). A file that
    cannot be read to the end (a damaged .gz) is a ValueError naming it, or, given an ``unreadable`` list, a line
    added to it, and the next file is read. The files are those of one moment (``open_files``): a rotation or
    a gzip swap while they are read neither hides nor repeats a record. A lock held past ``lock_timeout`` seconds
    (None: no limit) is an ``AuditLockTimeout``. Lines that are no record are passed over; given a ``skipped``
    list, each is named there (``file:line``) except the live file's last line, which ``verify`` reads as a torn
    tail (a write in progress, or cut by a crash), so a reader can tell damage from an empty log. ``named``: as for
    ``consistent_view`` (a file that is no log is a ValueError)."""
    fernet = make_fernet(key) if key else None
    with ExitStack() as handles:
        try:
            with consistent_view(Path(folder) / name, lock_timeout, named):
                files = open_files(Path(folder), name, handles)
        except NotAnAuditLog as exc:
            raise ValueError(str(exc)) from None
        for index, (path, handle, length, error) in enumerate(files):
            try:
                if error is not None:
                    raise error
                yield from _file_records(path, fernet, handle, length, skipped, newest=index == len(files) - 1)
            except READ_ERRORS as exc:
                problem = f"{path.name}: cannot be read to the end ({exc}); the records after the damage are missing"
                if unreadable is None:
                    raise ValueError(problem) from None
                unreadable.append(problem)


@contextmanager
def consistent_view(log: Path, timeout: float | None = READ_LOCK_TIMEOUT_S, named: bool = False) -> Iterator[None]:
    """The log's shared lock, for opening its files at one moment (a rotation or a gzip swap afterwards cannot
    pull a file away); where it cannot be taken (a read-only copy of a folder), the files are opened without it.
    A lock held longer than ``timeout`` seconds (None: no limit) is an ``AuditLockTimeout`` that says what to do.
    ``named``: the caller was told this file is a chain (``--name``, or verify), so one that is no log is refused
    (``NotAnAuditLog``); a reader of every chain in a folder reads a stray file as one without records instead."""
    with ExitStack() as lock:
        try:
            lock.enter_context(file_lock(log, shared=True, timeout=timeout))
        except AuditLockTimeout:
            held = lock_path(log)
            raise AuditLockTimeout(
                f"{log}: cannot read the audit log: another process has held its lock {held} for more than "
                f"{timeout:g} s (a writer that hung?); find it with `fuser -v {held}` or `lsof {held}` and stop or "
                "fix it, or wait longer (--lock-timeout)") from None
        except OSError:
            pass
        if named:
            refuse_non_log(log)  # inside the lock's context: a lock file it made beside such a file is removed
        yield


def open_files(folder: Path, name: str, handles: ExitStack,
               sidecars: bool = False) -> list[tuple[Path, BinaryIO | None, int, OSError | None]]:
    """(path, open handle, length, error) of each file of the chain, oldest first; call it inside
    ``consistent_view``. What is appended after the call is not read (``length``). With ``sidecars``, then the
    anchor and the set-aside tails that exist (a backup copies them with the chain, as of the same moment)."""
    found, paths = [], log_files(folder, name)
    if sidecars:
        paths += [p for p in (anchor_path(folder / name), *set_aside_files(folder, name)) if p.is_file()]
    for path in paths:
        try:
            handle = handles.enter_context(open(path, "rb"))
            found.append((path, handle, os.fstat(handle.fileno()).st_size, None))
        except OSError as exc:
            found.append((path, None, 0, exc))
    return found


def _file_records(path: Path, fernet, handle: BinaryIO, length: int, skipped: list[str] | None,
                  newest: bool) -> Iterator[dict]:
    for number, ((line, _), last_line) in enumerate(_with_last(read_lines(path, handle, length)), 1):
        stored = parse_record(line)
        if stored is None:
            torn_tail = newest and last_line and path.suffix != ".gz"  # verify's note, not its error: the writer
            if skipped is not None and not torn_tail and line.strip():  # sets it aside on its next append
                skipped.append(f"{path.name}:{number}")
            continue
        if "enc" in stored:
            if fernet is None:
                raise ValueError(f"{path.name}: records are encrypted; pass the key (SO8T_AUDIT_KEY)")
            from cryptography.fernet import InvalidToken

            try:
                yield json.loads(fernet.decrypt(stored["enc"].encode("ascii")))
            except InvalidToken:
                raise ValueError(f"{path.name}: seq {stored.get('seq')} cannot be decrypted with this key") from None
        else:
            yield stored


def _with_last(items: Iterator) -> Iterator[tuple[object, bool]]:
    """(item, whether it is the last one), reading one item ahead."""
    iterator = iter(items)
    try:
        ahead = next(iterator)
    except StopIteration:
        return
    for item in iterator:
        yield ahead, False
        ahead = item
    yield ahead, True


class _ChainWalker:
    """One streaming pass over a chain's files, oldest first: each record's hash, signature and link checked, the
    chain kept as a ``ChainSummary``, every problem an error or a note."""

    def __init__(self, key: bytes | None, wanted: set[int] | frozenset[int]) -> None:
        self.key, self.wanted = key, wanted
        self.chain, self.errors, self.notes = ChainSummary(), [], []
        self.unsigned, self.seen_signed, self.prev = 0, False, None

    def read(self, path: Path, lines: Iterator[tuple[bytes, bool]], newest: bool) -> None:
        for line_no, ((line, terminated), last_line) in enumerate(_with_last(lines), 1):
            where = f"{path.name}:{line_no}"
            record = parse_record(line) if terminated else None
            if record is None:
                if newest and last_line and path.suffix != ".gz":
                    self.notes.append(f"{where}: torn tail ({len(line)} bytes of an unfinished write); the writer "
                                      "sets it aside on its next append")
                else:
                    self.errors.append(f"{where}: not a complete audit record")
                continue
            self.record(record, where)

    def record(self, record: dict, where: str) -> None:
        seq, key, prev = record["seq"], self.key, self.prev
        if record_hash(record) != record["hash"]:
            self.errors.append(f"{where}: record seq {seq} was edited (its hash does not match its content)")
        if key and not signature_matches(record, key):
            if "mac" in record or self.seen_signed:
                self.errors.append(f"{where}: record seq {seq} has no valid signature (added or re-hashed without "
                                   "the key)")
            else:
                self.unsigned += 1  # written before the key was configured
        self.seen_signed = self.seen_signed or "mac" in record
        if prev is not None:
            if seq != prev["seq"] + 1:
                self.errors.append(f"{where}: seq {seq} follows seq {prev['seq']} (records dropped or reordered)")
            elif record["prev_hash"] != prev["hash"]:
                self.errors.append(f"{where}: seq {seq} does not link to the record before it")
        self.prev = record
        kept = {"seq": seq, "hash": record["hash"], "prev_hash": record["prev_hash"], "signed": "mac" in record}
        chain = self.chain
        chain.count += 1
        chain.first = chain.first or kept
        chain.last = kept
        if seq in self.wanted:
            chain.at.setdefault(seq, kept)


def _walk(files: list[Path], key: bytes | None = None, opened: list | None = None, limits: list[int] | None = None,
          wanted: set[int] | frozenset[int] = frozenset()) -> tuple[ChainSummary, list[str], list[str]]:
    """One streaming pass over the files (read from ``opened``, each live file up to its entry in ``limits``, when
    given): the chain's summary, errors and notes; with the HMAC key every record's signature is checked too."""
    walker = _ChainWalker(key, wanted)
    for index, path in enumerate(files):
        lines = read_lines(path, opened[index] if opened else None, limits[index] if limits else None)
        try:
            walker.read(path, lines, newest=index == len(files) - 1)
        except READ_ERRORS as exc:  # a damaged .gz: what was read counts, the rest is this error
            walker.errors.append(f"{path.name}: cannot be read to the end ({exc})")
    if walker.unsigned:
        walker.notes.append(f"{walker.unsigned} record(s) carry no signature (written without the HMAC key)")
    return walker.chain, walker.errors, walker.notes


def verify(folder: str | Path, name: str = "audit.jsonl", hmac_key: str | bytes | None = None,
           expect: tuple[int, str] | None = None, *, lock_timeout: float | None = READ_LOCK_TIMEOUT_S,
           rotated_expect_is_note: bool = False) -> dict:
    """Check the chain, its anchor and (optionally) an outside checkpoint ``expect=(seq, hash)`` (one rotated away is
    an error, or a note with ``rotated_expect_is_note``: ``audit_checks.check_expect``).
    Returns {files, records, first_seq, last_seq, errors, notes, set_aside, anchor}; ``AuditLockTimeout`` when
    the log's lock stays held past ``lock_timeout`` seconds (None: no limit)."""
    folder = Path(folder)
    log = folder / name
    with ExitStack() as handles:
        # every file opened and the anchor read at one moment; the walk, which can take minutes on a large log,
        # runs after the lock is released, so the gate's appends never wait for a verification
        try:
            with consistent_view(log, lock_timeout, named=True):  # a chain verify calls OK must be one
                found = open_files(folder, name, handles)
                try:
                    anchor, anchor_errors = read_anchor(log), []
                except ValueError as exc:
                    anchor, anchor_errors = None, [str(exc)]
                aside = set_aside_files(folder, name)
        except NotAnAuditLog as exc:
            return failed_report(str(exc))
        files, opened, limits, unreadable = [], [], [], []
        for path, handle, length, error in found:
            if error is not None:  # named as a problem of the chain, never a traceback
                unreadable.append(f"{path.name}: cannot be read ({error.strerror or error})")
            else:
                files.append(path), opened.append(handle), limits.append(length)
        wanted = {seq for seq in ((anchor or {}).get("last_seq"), expect[0] if expect else None) if seq is not None}
        chain, errors, notes = _walk(files, key_bytes(hmac_key), opened, limits, wanted)
    errors += unreadable + anchor_errors
    # an unreadable anchor is named once (anchor_errors), not a second time as a missing one
    more_errors, more_notes = check_anchor(anchor, chain, key_bytes(hmac_key), log) if not anchor_errors \
        else ([], [])
    errors += more_errors
    notes += more_notes
    notes += [f"{p.name}: {p.stat().st_size} bytes of an unfinished write, set aside by the writer"
              for p in aside if p.exists()]
    if chain and chain.first["seq"] > 0 and chain.first["prev_hash"] != GENESIS and not errors:
        notes.append(f"seq 0..{chain.first['seq'] - 1} were rotated away (backup_count)")
    if expect is not None:
        more_errors, more_notes = check_expect(expect, chain, rotated_expect_is_note)
        errors += more_errors
        notes += more_notes
    return {"files": [str(p) for p in files], "records": chain.count,
            "first_seq": chain.first["seq"] if chain else None, "last_seq": chain.last["seq"] if chain else None,
            "errors": errors, "notes": notes, "set_aside": [str(p) for p in aside], "anchor": anchor}


def failed_report(error: str) -> dict:
    """``verify``'s report for a chain that could not be walked at all (a folder without a log, a chain gone)."""
    return {"files": [], "records": 0, "first_seq": None, "last_seq": None, "errors": [error], "notes": [],
            "set_aside": [], "anchor": None}


def verify_chains(folders: str | Path | list[str | Path], name: str = "audit.jsonl",
                  hmac_key: str | bytes | None = None,
                  expect_for: Callable[[Path], tuple[int, str] | None] | None = None, *,
                  lock_timeout: float | None = READ_LOCK_TIMEOUT_S) -> dict[str, dict]:
    """``verify`` for every chain of one or more log folders (``name`` and each replica's
    ``<stem>-<replica><suffix>``), keyed ``<folder>/<chain>``; ``expect_for(chain path)`` gives a chain its outside
    checkpoint (``so8t audit verify --heads``). A folder with no chain at all is an entry with an error, so a
    mistyped folder is never a clean report. ``lock_timeout``: as for ``verify``."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    reports: dict[str, dict] = {}
    for folder in map(Path, folders):
        names = chain_names(folder, name)
        if not names:
            reports[str(folder / name)] = failed_report(f"no audit log ({name} or a replica's chain) in {folder}")
        for chain in names:
            if (stray := _stray_file(folder / chain)) is not None:  # found by its name, not named by anyone
                reports[str(folder / chain)] = {**failed_report(stray), "errors": [], "notes": [stray]}
                continue
            reports[str(folder / chain)] = verify(folder, chain, hmac_key,
                                                  expect_for(folder / chain) if expect_for else None,
                                                  lock_timeout=lock_timeout, rotated_expect_is_note=True)
    return reports


def _stray_file(log: Path) -> str | None:
    """A note for a file named like a replica's chain that holds no audit record (``audit-export.jsonl``): not a
    chain, so no chain failed; else None."""
    try:
        refuse_non_log(log)
    except NotAnAuditLog as exc:
        return f"{exc}: named like a replica's chain, not read as one (move it out of the log folder)"
    except OSError:
        return None  # verify names what cannot be read
    return None


def read_chains(folders: str | Path | list[str | Path], name: str = "audit.jsonl",
                key: str | bytes | None = None, unreadable: list[str] | None = None, *,
                lock_timeout: float | None = READ_LOCK_TIMEOUT_S) -> Iterator[tuple[str, dict]]:
    """(chain, record) for every complete record of every chain of the folders, each chain oldest
    first; ``chain`` is the replica's log name (``audit.jsonl``, ``audit-r2.jsonl``). ``unreadable`` and
    ``lock_timeout``: as for ``read_records``."""
    folders = [folders] if isinstance(folders, (str, Path)) else list(folders)
    for folder in folders:
        for chain in chain_names(folder, name):
            for record in read_records(folder, chain, key, unreadable, lock_timeout=lock_timeout):
                yield chain, record


def accept_anchor(folder: str | Path, by: str, name: str = "audit.jsonl", hmac_key: str | bytes | None = None) -> dict:
    """Record that a person reviewed a re-created anchor; verify then reports it as a note. Refused: a name that
    shows nothing (as for a reviewer), an anchor already accepted (the first reviewer's name is kept), and a
    signed anchor without its key (it would be written unsigned, and verify with the key would then fail)."""
    by = checked_name(by)
    log = Path(folder) / name
    with file_lock(log, timeout=READ_LOCK_TIMEOUT_S):  # a person at a terminal: named, not hung, behind a holder
        anchor = read_anchor(log)
        if anchor is None:
            raise ValueError(f"{log}.anchor does not exist")
        if not anchor.get("adopted_at"):
            raise ValueError(f"{log}.anchor was not re-created; there is nothing to accept")
        if anchor.get("accepted_by"):
            raise ValueError(f"{log}.anchor was accepted by {anchor['accepted_by']} at {anchor.get('accepted_at')} "
                             "already; nothing to do")
        if "mac" in anchor and not (hmac_key and same_digest(anchor["mac"], anchor_mac(anchor, key_bytes(hmac_key)))):
            raise ValueError(f"{log}.anchor is signed: set the HMAC key it is signed with (--hmac-key-env) so the "
                             "accepted anchor stays signed (no key, or another one, is refused)")
        anchor.update(accepted_by=by.strip(), accepted_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        write_anchor(log, anchor, key_bytes(hmac_key))
    return anchor
