"""The audit log's files and the rules the writer and the verifier share.

In a log folder, for a log named ``audit.jsonl``:

- ``audit.jsonl``: the live file, one JSON record per line; ``audit.jsonl.N.gz``: rotated files,
  ``.1.gz`` the newest (``audit.jsonl.N``: rotated, not gzipped yet; ``.gzip-<pid>-<thread>-<n>.tmp``: a gzip
  under way, see ``audit_rotation``);
- ``audit.jsonl.anchor``: where the chain must start and end (first seq and the hash it links to,
  last seq and its hash), rewritten after every append and on rotation; signed with an HMAC when a
  key is configured, so that rewriting the chain *and* the anchor needs the key;
- ``audit.jsonl.torn-<time>-<pid>``: bytes of an unfinished write (disk full, a kill during the
  write) that the writer set aside instead of building on them; ``verify`` lists them;
- ``audit.jsonl.lock``: the lock every writer holds while it appends or rotates.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import gzip
import hashlib
import hmac
import json
import logging
import os
import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .audit_lock import AuditLockTimeout, lock_within  # noqa: F401 - AuditLockTimeout is part of this API

logger = logging.getLogger("so8t.audit")

GENESIS = "0" * 64
ANCHOR_FORMAT = 1


def record_hash(record: dict) -> str:
    """sha256 of the previous hash and the record's canonical JSON without ``hash`` and ``mac``."""
    body = {k: v for k, v in record.items() if k not in ("hash", "mac")}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((record.get("prev_hash", "") + canonical).encode("utf-8")).hexdigest()


def encode_line(stored: dict) -> bytes:
    return (json.dumps(stored, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


# a JSON escape of a lone UTF-16 surrogate (\ud800..\udfff): valid JSON, but no UTF-8 text, so no hash of it exists
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def parse_record(line: bytes | str) -> dict | None:
    """The record on one line, or None when the line is not a complete record: anything the writer cannot have
    written is none, whatever makes it so (bad JSON or UTF-8, nesting too deep to parse, a lone surrogate that no
    hash can be taken of), so a hand-made line is named by verify and set aside as a torn tail, never a traceback."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("seq"), int) or isinstance(record["seq"], bool) \
            or not isinstance(record.get("hash"), str) or not isinstance(record.get("prev_hash"), str):
        return None
    raw = line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
    if _SURROGATE_ESCAPE.search(raw):  # rare (the writer never escapes text): only then the full check
        try:
            json.dumps(record, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return None
    return record


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def anchor_path(log: Path) -> Path:
    return sibling(log, ".anchor")


# what reading a damaged or vanished log file raises: a cut .gz ends early (EOFError), a corrupted one fails to
# inflate (zlib.error), a bad header or an unreadable file is an OSError (gzip.BadGzipFile among them)
READ_ERRORS = (OSError, EOFError, zlib.error)
# gzip level of a rotated file (compressed after the lock is released: audit_rotation, benchmarks/audit_rotation.py)
ROTATE_GZIP_LEVEL = 6  # zlib's default: as small as 9 on these logs, 0.62x its time (plain records)


def lock_path(log: Path) -> Path:
    return sibling(log, ".lock")


def legacy_head_path(log: Path) -> Path:
    """Written by earlier versions at rotation; read when nothing newer says where the chain is."""
    return sibling(log, ".head")


def rotated_path(log: Path, n: int) -> Path:
    return sibling(log, f".{n}.gz")


def plain_rotated_path(log: Path, n: int) -> Path:
    """A rotated file not yet gzipped (``audit_rotation``: gzip runs after the lock is released)."""
    return sibling(log, f".{n}")


def log_files(folder: str | Path, name: str = "audit.jsonl") -> list[Path]:
    """Oldest first: ``name.N.gz`` (or ``name.N``, rotated but not yet gzipped) ... ``name.1.gz``, then the live
    ``name``. Where a crash left both ``.N`` and ``.N.gz``, the ``.gz`` is listed: it was complete before it
    was renamed in, and the plain one is its copy."""
    folder = Path(folder)
    pattern = re.compile(rf"^{re.escape(name)}\.(\d+)(\.gz)?$")
    numbered: dict[int, Path] = {}
    for path in folder.glob(f"{name}.*"):
        if (m := pattern.match(path.name)) and (m.group(2) or int(m.group(1)) not in numbered):
            numbered[int(m.group(1))] = path
    live = folder / name
    return [numbered[n] for n in sorted(numbered, reverse=True)] + ([live] if live.is_file() else [])


def chain_names(folder: str | Path, name: str = "audit.jsonl") -> list[str]:
    """Every chain of a log folder: ``name`` and the replicas' ``<stem>-<replica><suffix>`` (one chain
    per server process sharing the folder), each found by its live file, a rotated file or its anchor;
    ``name`` first, then the replicas by name."""
    stem, suffix = Path(name).stem, Path(name).suffix
    pattern = re.compile(rf"^({re.escape(stem)}(?:-[A-Za-z0-9_]{{1,40}})?{re.escape(suffix)})(?:\.\d+(?:\.gz)?|\.anchor)?$")
    folder = Path(folder)
    found = {m.group(1) for p in folder.iterdir() if (m := pattern.match(p.name))} if folder.is_dir() else set()
    return sorted(found, key=lambda n: (n != name, n))


def set_aside_files(folder: str | Path, name: str = "audit.jsonl") -> list[Path]:
    return sorted(Path(folder).glob(f"{name}.torn-*"))


def read_lines(path: Path, opened: BinaryIO | None = None, limit: int | None = None) -> Iterator[tuple[bytes, bool]]:
    """(line without its newline, whether it was terminated) for a live or a gzipped file; from ``opened`` (a
    handle taken earlier, so a file renamed or deleted since still reads as it was) and, for a live file, only
    its first ``limit`` bytes (what it held when the handle was taken: appends after that are not read)."""
    if opened is None:
        with open(path, "rb") as handle:
            yield from read_lines(path, handle, limit)
        return
    opened.seek(0)
    source = gzip.GzipFile(fileobj=opened, mode="rb") if path.suffix == ".gz" else opened
    left = None if path.suffix == ".gz" else limit
    for line in source:
        if left is not None:
            if left <= 0:
                return
            line, left = line[:left], left - len(line)
        yield (line[:-1], True) if line.endswith(b"\n") else (line, False)


def first_record(path: Path) -> dict | None:
    for line, _ in read_lines(path):
        record = parse_record(line)
        if record is not None:
            return record
    return None


def last_record(path: Path) -> dict | None:
    """The last complete record of a file (read from the end for the live file)."""
    if path.suffix == ".gz":
        last = None
        for line, terminated in read_lines(path):
            record = parse_record(line) if terminated else None
            last = record or last
        return last
    end, _ = last_good_end(path)
    if not end:
        return None
    with path.open("rb") as handle:
        start = max(0, end - (1 << 20))
        handle.seek(start)
        chunk = handle.read(end - start)
    return parse_record(chunk.rstrip(b"\n").rsplit(b"\n", 1)[-1])


def not_a_torn_write(content: bytes) -> bool:
    """Whether a file's content, holding no complete record, cannot be the writer's first line cut by a crash: that
    is the start of one JSON object without its newline, never whole lines, other text or complete other JSON."""
    if b"\n" in content or not content.startswith(b"{"):
        return True
    try:
        json.loads(content)
    except (ValueError, RecursionError):
        return False  # a cut object does not parse
    return parse_record(content) is None


def last_good_end(path: Path) -> tuple[int, int]:
    """(offset just after the last complete record line, file size). Everything after that offset
    is a torn tail: an unterminated line, or lines that are not records."""
    if not path.is_file():
        return 0, 0
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        window = 1 << 16
        while True:
            start = max(0, size - window)
            handle.seek(start)
            chunk = handle.read(size - start)
            cut = chunk.rfind(b"\n")  # bytes after the last newline are unterminated: torn
            while cut >= 0:
                prev = chunk.rfind(b"\n", 0, cut)
                if prev < 0 and start > 0:
                    break  # the line may begin before this window: read more
                if parse_record(chunk[prev + 1:cut]) is not None:
                    return start + cut + 1, size
                cut = prev
            if start == 0:
                return 0, size
            window *= 4


def record_mac(digest: str, key: bytes) -> str:
    """The HMAC that signs one record's hash (only someone with the key can add or re-hash records)."""
    return hmac.new(key, digest.encode("ascii"), hashlib.sha256).hexdigest()


def anchor_mac(anchor: dict, key: bytes) -> str:
    body = {k: v for k, v in anchor.items() if k != "mac"}
    return hmac.new(key, json.dumps(body, sort_keys=True).encode("utf-8"), hashlib.sha256).hexdigest()


def read_anchor(log: Path) -> dict | None:
    """The anchor, or None when there is none; ValueError when it is unreadable."""
    path = anchor_path(log)
    if not path.is_file():
        return None
    try:
        anchor = json.loads(path.read_text(encoding="utf-8"))
        _check_anchor_types(anchor)
    except (ValueError, KeyError, TypeError, RecursionError) as exc:
        raise ValueError(f"{path}: unreadable anchor ({exc}); the writer replaces it on its next append as a "
                         "re-created anchor, which verify reports until it is reviewed") from None
    return anchor


def _check_anchor_types(anchor: object) -> None:
    """TypeError naming the first field the writer cannot have written: a hand-edited ``"last_seq": "4"`` must be
    an unreadable anchor, not a comparison that fails deep inside verify."""
    if not isinstance(anchor, dict):
        raise TypeError(f"a JSON object was expected, not {type(anchor).__name__}")
    wanted = {"first_seq": (int,), "first_prev_hash": (str,), "last_seq": (int, type(None)), "last_hash": (str,)}
    for name, types in wanted.items():
        value = anchor[name]
        if not isinstance(value, types) or isinstance(value, bool):
            raise TypeError(f"{name} is {value!r}, not {' or '.join(t.__name__ for t in types)}")
    if "mac" in anchor and not isinstance(anchor["mac"], str):
        raise TypeError(f"mac is {anchor['mac']!r}, not str")


def same_digest(given: object, expected: str) -> bool:
    """``hmac.compare_digest`` for a value read from a file: anything but an ASCII string (a hand-edited field) is no
    match, where compare_digest would raise TypeError."""
    return isinstance(given, str) and given.isascii() and hmac.compare_digest(given, expected)


def signature_matches(record: dict, key: bytes) -> bool:
    """Whether a record's ``mac`` signs its ``hash`` under ``key``; a hash that is no ASCII text has no signature
    (``record_mac`` of it would raise)."""
    digest = record["hash"]
    return digest.isascii() and same_digest(record.get("mac"), record_mac(digest, key))


def write_anchor(log: Path, anchor: dict, key: bytes | None = None) -> None:
    """Replace the anchor in one rename (a reader sees the old or the new one, never half)."""
    anchor = {k: v for k, v in anchor.items() if k != "mac"}
    anchor["format"] = ANCHOR_FORMAT
    if key:
        anchor["mac"] = anchor_mac(anchor, key)
    path = anchor_path(log)
    tmp = sibling(path, f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(anchor, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)


class NotAnAuditLog(OSError):
    """The file where the log should be holds no record and cannot be a crash's torn first write: another file
    (a config, the queue, a key), left as it was."""


@contextmanager
def file_lock(log: Path, shared: bool = False, timeout: float | None = None) -> Iterator[None]:
    """The log's lock: exclusive for writers, shared for readers that need a consistent view (a reader opens
    an existing lock file read-only, so it can take the lock where it may not write: a verifier's sandbox).
    With ``timeout``, ``AuditLockTimeout`` after that many seconds of waiting (a hung holder must not hang the
    gate: its caller fails closed instead), still in the kernel's queue (``audit_lock``). A lock file this call
    made beside a file that turns out not to be a log (``NotAnAuditLog``) is removed with the refusal."""
    path = lock_path(log)
    made = not path.exists()
    try:
        with _held(path, shared, timeout):
            yield
    except NotAnAuditLog:
        if made:
            path.unlink(missing_ok=True)
        raise


@contextmanager
def _held(path: Path, shared: bool, timeout: float | None) -> Iterator[None]:
    if timeout is not None:
        fd = lock_within(path, shared, timeout)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        return
    with open(path, "r" if shared and path.exists() else "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def refuse_non_log(log: Path) -> None:
    """``NotAnAuditLog`` when the file where a reader looks for the log holds no record and cannot be a torn first
    write (``--name config.yaml``): it was reported as a torn tail of an empty log, "OK"; nothing for a log, an
    empty file or none, and nothing for a chain with rotated files or an anchor (its live file may be what a crash
    left). Only the first MiB is looked at (a newline there already rules out one cut record)."""
    if _has_history(log):
        return
    good_end, size = last_good_end(log)
    if good_end or not size:
        return
    with log.open("rb") as handle:
        head = handle.read(1 << 20)
    if len(head) < size and b"\n" not in head and head.startswith(b"{"):
        return  # one long unterminated object: may be a torn record
    if not_a_torn_write(head):
        raise NotAnAuditLog(_not_a_log_message(log))


def _has_history(log: Path) -> bool:
    """A chain with rotated files or an anchor: its live file, whatever it holds (NULs a crash left), is the log's, to
    be set aside as torn by the writer and read as such by verify, never refused as another file."""
    return len(log_files(log.parent, log.name)) > 1 or anchor_path(log).exists()


def _not_a_log_message(log: Path) -> str:
    return f"{log} holds no audit record: not an audit log, left as it was; name the chain"


def set_aside_torn_tail(log: Path) -> Path | None:
    """Move what follows the log's last complete record (a write a crash cut off) into a ``.torn-`` file beside
    it and cut the log there; the file it went to, or None when there was nothing. Called under the lock. A file
    with no record at all that cannot be a torn first write is refused (``NotAnAuditLog``), left as it was."""
    good_end, size = last_good_end(log)
    if good_end == size:
        return None
    with log.open("rb") as handle:
        handle.seek(good_end)
        torn = handle.read()
    if good_end == 0 and not_a_torn_write(torn) and not _has_history(log):  # a config, the queue, a key
        raise NotAnAuditLog(_not_a_log_message(log))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = sibling(log, f".torn-{stamp}-{os.getpid()}")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, torn)
        os.fsync(fd)
    finally:
        os.close(fd)
    with log.open("rb+") as handle:
        handle.truncate(good_end)
        os.fsync(handle.fileno())
    logger.warning("%s: set aside %d bytes of an unfinished write as %s; the chain continues from the last "
                   "complete record", log, len(torn), target.name)
    return target


def key_bytes(key: str | bytes | None) -> bytes | None:
    if not key:
        return None
    return key.encode("utf-8") if isinstance(key, str) else key
