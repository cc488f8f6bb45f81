"""The audit log: append-only JSONL with a hash chain, size-based rotation with gzip, safe under
many threads and processes at once.

    so8t audit verify logs/        # exit 1 and name the record if anything was edited,
                                   # dropped or reordered (no key needed)
    so8t audit show logs/          # the records; decrypted with $SO8T_AUDIT_KEY if encrypted

Every record gets ``seq`` (0, 1, 2, ...), ``prev_hash`` (the previous record's ``hash``) and
``hash`` = sha256 of ``prev_hash`` and the record's canonical JSON without ``hash``. Appends hold an
exclusive ``flock`` on ``<log>.lock`` while they read the chain head, write one line, flush and
fsync, so records from concurrent writers are never interleaved or lost. When the live file would
pass ``max_bytes`` it is gzipped to ``<log>.1.gz`` (older ones shift to ``.2.gz`` ...; beyond
``backup_count`` the oldest is deleted) and the chain head is kept in ``<log>.head`` so the chain
continues across files. The record format is the operations manual's (timestamp, request_id, user_id,
input, decision, rationale, human_required, model_version, processing_time_ms, confidence_score)
plus whatever the runtime adds (category, flags, error).
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..core.io import atomic_write_text
from .masking import mask_personal_data

GENESIS = "0" * 64


def record_hash(record: dict) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256((record.get("prev_hash", "") + canonical).encode("utf-8")).hexdigest()


@dataclass
class AuditLog:
    """``AuditLog(path).append(record)`` -> the record as written (with seq and hashes)."""

    path: Path
    max_bytes: int = 100 * 2**20
    backup_count: int = 5
    mask_input: bool = True
    encryption_key: str | bytes | None = None  # a Fernet key: records are stored encrypted at rest

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self._fernet = make_fernet(self.encryption_key) if self.encryption_key else None
        if self.backup_count < 1:
            raise ValueError("backup_count must be at least 1: rotation would delete records at once")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def _lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    @property
    def _head_path(self) -> Path:
        return self.path.with_name(self.path.name + ".head")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self._lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _head(self) -> tuple[int, str]:
        """(next seq, hash of the last record): from the live file's last line, else the head file."""
        if self.path.is_file() and self.path.stat().st_size:
            with self.path.open("rb") as handle:
                handle.seek(0, os.SEEK_END)
                end = handle.tell()
                chunk, pos = b"", end
                while pos > 0 and chunk.count(b"\n") < 2:
                    step = min(65536, pos)
                    pos -= step
                    handle.seek(pos)
                    chunk = handle.read(step) + chunk
            last = chunk.rstrip(b"\n").rsplit(b"\n", 1)[-1]
            record = json.loads(last)
            return int(record["seq"]) + 1, record["hash"]
        if self._head_path.is_file():
            head = json.loads(self._head_path.read_text(encoding="utf-8"))
            return int(head["next_seq"]), head["hash"]
        return 0, GENESIS

    def _rotate(self, next_seq: int, last_hash: str) -> None:
        atomic_write_text(self._head_path, json.dumps({"next_seq": next_seq, "hash": last_hash}))
        oldest = self.path.with_name(f"{self.path.name}.{self.backup_count}.gz")
        oldest.unlink(missing_ok=True)
        for n in range(self.backup_count - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{n}.gz")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{n + 1}.gz"))
        target = self.path.with_name(f"{self.path.name}.1.gz")
        part = target.with_name(target.name + ".tmp")
        with self.path.open("rb") as src, gzip.open(part, "wb") as dst:
            while block := src.read(1 << 20):
                dst.write(block)
        os.replace(part, target)
        self.path.unlink()

    def append(self, record: dict) -> dict:
        record = dict(record)
        if self.mask_input and isinstance(record.get("input"), str):
            record["input"] = mask_personal_data(record["input"])
        with self._locked():
            next_seq, last_hash = self._head()
            record["seq"], record["prev_hash"] = next_seq, last_hash
            stored = record
            if self._fernet is not None:  # the chain covers the ciphertext: verify needs no key
                token = self._fernet.encrypt(json.dumps(record, ensure_ascii=False).encode("utf-8")).decode("ascii")
                stored = {"seq": next_seq, "prev_hash": last_hash, "enc": token}
            stored["hash"] = record_hash(stored)
            record["hash"] = stored["hash"]
            line = (json.dumps(stored, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
            if self.path.is_file() and self.path.stat().st_size and \
                    self.path.stat().st_size + len(line) > self.max_bytes:
                self._rotate(next_seq, last_hash)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return record


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


def read_records(folder: str | Path, name: str = "audit.jsonl", key: str | bytes | None = None) -> Iterator[dict]:
    """Every record, oldest first, decrypted when ``key`` is given (encrypted ones need it)."""
    fernet = make_fernet(key) if key else None
    for path in log_files(folder, name):
        for line in _lines(path):
            stored = json.loads(line)
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


def log_files(folder: str | Path, name: str = "audit.jsonl") -> list[Path]:
    """Oldest first: ``name.N.gz`` ... ``name.1.gz``, then the live ``name``."""
    folder = Path(folder)
    rotated = sorted(folder.glob(f"{name}.*.gz"), key=lambda p: -int(p.name[len(name) + 1:-3]))
    live = folder / name
    return rotated + ([live] if live.is_file() else [])


def _lines(path: Path) -> Iterator[str]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        yield from handle


def verify(folder: str | Path, name: str = "audit.jsonl") -> dict:
    """Walk every file oldest first and check each record's hash, its link to the previous one, and
    that ``seq`` has no gap. Returns {files, records, first_seq, last_seq, errors}; the first record
    may start after 0 when older files were rotated away (``backup_count``)."""
    files = log_files(folder, name)
    errors: list[str] = []
    count, first_seq, prev = 0, None, None
    for path in files:
        for line_no, line in enumerate(_lines(path), 1):
            where = f"{path.name}:{line_no}"
            try:
                record = json.loads(line)
                seq, stored = int(record["seq"]), record["hash"]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                errors.append(f"{where}: not a complete audit record")
                continue
            if record_hash(record) != stored:
                errors.append(f"{where}: record seq {seq} was edited (its hash does not match its content)")
            if prev is not None:
                if seq != prev["seq"] + 1:
                    errors.append(f"{where}: seq {seq} follows seq {prev['seq']} (records dropped or reordered)")
                elif record.get("prev_hash") != prev["hash"]:
                    errors.append(f"{where}: seq {seq} does not link to the record before it")
            first_seq = seq if first_seq is None else first_seq
            prev, count = record, count + 1
    return {"files": [str(p) for p in files], "records": count, "first_seq": first_seq,
            "last_seq": prev["seq"] if prev else None, "errors": errors}
