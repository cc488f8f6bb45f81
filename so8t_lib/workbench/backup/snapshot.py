"""``so8t backup``: one folder holding what the gate's operation cannot be rebuilt without.

    backup/<UTC time>/
      BACKUP.json                  what was copied, from where, each file's sha256 and size, each chain's head
                                   and whether it is signed, the HMAC key's variable, the queue's file name
                                   and (a SQLite copy) its rows' digest (``queue_digest``)
      logs/                        every replica's audit chain (live file, rotated files, anchor, set-aside
                                   tails), the emergency flag file, the escalation queue and its spool (under
                                   the names the config gave them)
      configs/                     the runtime and training configs
      models/<name>/               each model's manifest (sha256 of its files); its files too with
                                   include_models

Order matters while servers keep running. The spool is copied first, every entry, in flight or not (``put``
names an entry only once its content is written and fsynced). Then, while every chain's lock is held (a
few milliseconds: no audit record can be appended meanwhile), the spool entries named since are copied,
the queue's snapshot is taken (``QueueSnapshot``: SQLite's online backup API reads inside a read
transaction begun then, PostgreSQL's tables inside a REPEATABLE READ one) and each chain's files are
opened and the live file's length taken; the copying of the queue and the chains runs after the locks
are let go. A case's spool entry is named before its audit record is written and leaves the spool only
once the case is queued, and a resolution's record is written before the queue commits it; so every
ESCALATE record in the chains' copy has its case in the queue's copy or in the spool's, and every
resolution in the queue's copy has its record in the chains'. A spool entry whose case the queue's copy
holds too does no harm: replay adds a case to the queue, and its record to the log, only where missing.
A chain is opened as every reader opens it (``serve.audit_verify``: ``consistent_view``, ``open_files``),
so a lock held past ``lock_timeout`` by a writer that hung fails the backup instead of hanging it. The
folder is written beside its final name and renamed into place when complete: a backup is whole or absent.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import stat
import tempfile
from contextlib import ExitStack, closing
from pathlib import Path, PurePosixPath

from ...core.checkpoint import resolve_checkpoint
from ...core.io import sha256_file
from ...core.schema import MANIFEST_FILE
from ...export.gguf_meta import sidecar_path
from ...serve.audit_files import chain_names
from ...serve.audit_verify import READ_LOCK_TIMEOUT_S, consistent_view, open_files, verify
from ...serve.escalation import EscalationQueue
from ...serve.queue_sql import display
from ...serve.spool import SUFFIX as SPOOL_SUFFIX
from ...serve.spool import UNREADABLE
from .queue_copy import SQLITE_FILE, QueueSnapshot, copy_sqlite, database_of, export_rows
from .queue_digest import queue_digest

logger = logging.getLogger("so8t.backup")
BACKUP_FILE = "BACKUP.json"
FORMAT = 1
FLAG_FILE = "EMERGENCY"  # the flag file's name when the config does not say
SPOOL_DIR_SUFFIX = ".spool"  # the spool is the queue file's name with this (serve.config.runtime_paths)


class BackupError(RuntimeError):
    """A backup that cannot be made or used; the message names the file and what is wrong."""


def _entries(root: Path):
    """Every path under ``root``, links not followed (a link to a folder is listed, never entered)."""
    for here, folders, files in os.walk(root):
        yield from (Path(here) / name for name in folders + files)


def regular_files(root: Path) -> list[Path]:
    """Every regular file under ``root``, sorted; a symbolic link is none, whatever it points to."""
    return sorted(p for p in _entries(root) if stat.S_ISREG(p.lstat().st_mode))


def odd_entries(root: Path) -> list[str]:
    """A problem for each symbolic link, device, pipe or socket under ``root``: backup writes only folders and
    regular files, so one of them was added later, and reading or copying through it would take in whatever it
    points to (a folder outside the backup, with files no sha256 covers)."""
    problems = []
    for path in sorted(_entries(root)):
        mode, name = path.lstat().st_mode, path.relative_to(root)
        if stat.S_ISLNK(mode):
            problems.append(f"{name}: a symbolic link (to {os.readlink(path)}), which no backup holds: added later; "
                            "remove it")
        elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            problems.append(f"{name}: not a regular file or folder, which no backup holds: added later; remove it")
    return problems


def file_entries(root: Path) -> dict[str, dict]:
    """relative path -> {sha256, bytes} of every regular file under ``root`` but BACKUP.json and SQLite's side files
    of a database there (``-wal``, ``-shm``, ``-journal``: made and deleted by whoever opens the copy; it holds all
    its data itself, ``queue_copy``)."""
    return {str(p.relative_to(root)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in regular_files(root) if p.name != BACKUP_FILE and database_of(p) is None}


def _copy_logs(log_dir: Path, tmp: Path, queue: str | Path | None, spool: Path, hmac_key: str | bytes | None,
               lock_timeout: float | None, chain: str) -> tuple[dict, dict, dict]:
    """The spool, the queue and every chain as of one moment (the module docstring says why in this order):
    (spool, queue, chains) as BACKUP.json records them. The chains' shared locks cover only the late spool
    entries, the queue snapshot's first read and opening the chains' files (a rotation afterwards cannot pull a
    file away, and appends afterwards are not copied), so the gate's appends never wait for gigabytes to be
    copied. ``chain``: the configured log's name; its replicas' chains come with it."""
    logs, copied = tmp / "logs", set()
    in_flight = _copy_spool(spool, logs / spool.name, copied)  # the backlog, before any lock is held
    names = chain_names(log_dir, chain)
    queue_info: dict = {"kind": "none"}
    with ExitStack() as held:
        store = snapshot = None
        if queue is not None:  # opened first: it may wait for the queue's writer (the schema check writes)
            store = EscalationQueue(queue, create=False)
            held.callback(store.close)
            snapshot = held.enter_context(closing(QueueSnapshot(store)))
        with ExitStack() as locks:
            for name in names:
                locks.enter_context(consistent_view(log_dir / name, lock_timeout))
            in_flight += _copy_spool(spool, logs / spool.name, copied)  # named since; none can be audited now
            if snapshot is not None:
                snapshot.take()
            found = [open_files(log_dir, name, held, sidecars=True) for name in names]
        if store is not None and snapshot is not None:
            if store.path is not None:
                local = Path(store.path).name
                queue_info = {"kind": "sqlite", "source": store.where, "file": local,
                              **copy_sqlite(store, logs / local, snapshot.sqlite)}
            else:  # restored into a SQLite file by default: the one queue_db names, where the spool lies beside
                local = spool.name.removesuffix(SPOOL_DIR_SUFFIX) if spool.name.endswith(SPOOL_DIR_SUFFIX) \
                    and spool.name != SPOOL_DIR_SUFFIX else SQLITE_FILE
                queue_info = {"kind": "postgresql", "source": display(store.where), "file": local,
                              **export_rows(store, tmp / "queue", snapshot.connection)}
        for files in found:
            for path, handle, length, error in files:
                if error is not None:
                    raise error
                if (logs / path.name).exists():  # the queue or its spool, copied first, named like a chain file
                    raise BackupError(f"{path}: the escalation queue or its spool has the name of this audit log "
                                      "file; rename one")
                _copy_prefix(handle, length, logs / path.name)
    chains = {}
    for name in names:
        report = verify(logs, name, hmac_key)
        anchor = report["anchor"] or {}
        chains[name] = {"records": report["records"], "first_seq": report["first_seq"], "last_seq": report["last_seq"],
                        "head": f"{anchor.get('last_seq')}:{anchor.get('last_hash')}" if anchor else None,
                        "signed": "mac" in anchor, "errors": report["errors"]}
    return {"name": spool.name, "entries": len(copied), "in_flight": in_flight}, queue_info, chains


def _copy_prefix(source, length: int, target: Path, chunk: int = 1 << 20) -> None:
    """The first ``length`` bytes of an open file, with its modification time."""
    left = length
    with open(target, "wb") as out:
        while left > 0:
            data = source.read(min(chunk, left))
            if not data:
                break
            out.write(data)
            left -= len(data)
    stat = os.fstat(source.fileno())
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def _copy_spool(spool: Path, target: Path, copied: set[str]) -> int:
    """Every spool entry not in ``copied`` (its name is added), and those set aside for a person; how many of them
    were in flight (held). An entry in flight is copied too: its case may reach the queue after the queue's copy
    and its record the chains' copy, and only the spool's copy then holds the case. ``put`` names an entry only
    once its first line is written and fsynced; a line appended meanwhile is left out unless complete (replay
    redoes its step, and checks the queue and the log first)."""
    in_flight = 0
    if not spool.is_dir():
        return 0
    for entry in sorted([*spool.glob(f"*{SPOOL_SUFFIX}"), *spool.glob(f"*{SPOOL_SUFFIX}{UNREADABLE}")]):
        if entry.name in copied:
            continue
        try:
            fd = os.open(entry, os.O_RDONLY)
        except FileNotFoundError:
            continue  # finished meanwhile: its case was queued first, so the queue's copy, taken later, holds it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                held = False
            except BlockingIOError:
                held = True
            data = os.pread(fd, os.fstat(fd).st_size, 0)
        finally:
            os.close(fd)
        if held:
            in_flight += 1
            data = data[:data.rfind(b"\n") + 1] if b"\n" in data else data
        target.mkdir(parents=True, exist_ok=True)
        (target / entry.name).write_bytes(data)
        copied.add(entry.name)
    return in_flight


def _model_entry(path: Path, models_dir: Path, include: bool, index: int) -> dict:
    """A model's manifest (checkpoint) or sha256 (GGUF, router file), and its files when ``include`` (a router
    file always), stored as ``<index>-<name>`` (two models may share a name: a retrained GGUF keeps it); ``path``
    is where restore puts it back (relative to the restore folder)."""
    where = path if not path.is_absolute() else Path(("dist" if path.suffix == ".gguf" else "checkpoints"), path.name)
    if ".." in path.parts:
        raise BackupError(f"{path}: a model path with '..' could not be restored inside the restore folder; name "
                          "it from the folder it lives in")
    if path.suffix == ".json":  # the escalation router (escalation.router): small, always copied
        if not path.is_file():
            raise BackupError(f"router file not found: {path}")
        models_dir.mkdir(parents=True, exist_ok=True)
        stored = f"{index}-{path.name}"
        shutil.copy2(path, models_dir / stored)
        copy = models_dir / stored  # hashed as copied: a router refitted meanwhile cannot fail the backup's check
        return {"kind": "router", "path": str(where), "sha256": sha256_file(copy), "bytes": copy.stat().st_size,
                "stored": stored, "included": True}
    if path.suffix == ".gguf":
        if not path.is_file():
            raise BackupError(f"model file not found: {path}")
        entry = {"kind": "gguf", "path": str(where), "sha256": sha256_file(path), "bytes": path.stat().st_size}
        models_dir.mkdir(parents=True, exist_ok=True)
        stored = models_dir / f"{index}-{path.name}"
        if include:
            shutil.copy2(path, stored)
            if sidecar_path(path).is_file():  # the runtime checks it before llama.cpp reads the file
                shutil.copy2(sidecar_path(path), sidecar_path(stored))
        return {**entry, "stored": stored.name if include else None, "included": include}
    folder = resolve_checkpoint(path)
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        raise BackupError(f"{folder}: no checkpoint with a manifest there (a model without checksums is not "
                          "backed up)")
    if folder != path:
        where = where / folder.relative_to(path)
    stored = models_dir / f"{index}-{path.name}"
    if include:
        shutil.copytree(folder, stored)
    else:
        stored.mkdir(parents=True)
        shutil.copy2(manifest, stored / MANIFEST_FILE)
    return {"kind": "checkpoint", "path": str(where), "stored": stored.name, "manifest_sha256": sha256_file(manifest),
            "included": include}


def overlapping_targets(models: list[dict]) -> list[str]:
    """Restore moves whole parts into place: no model may land on, in or around logs/, configs/ or another
    model, or one part would replace another (two GGUF files of one name given by absolute paths both go to
    dist/<name>)."""
    targets = ["logs", "configs"] + [m["path"] for m in models if safe_relative(m["path"])]
    parts = [PurePosixPath(t) for t in targets]
    problems = []
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            if a == b or a in b.parents or b in a.parents:
                problems.append(f"restore targets {str(a)!r} and {str(b)!r} overlap: one would replace the other")
    return problems


def safe_relative(text: str) -> bool:
    path = PurePosixPath(text)
    return not path.is_absolute() and ".." not in path.parts and bool(path.parts)


def _copy_configs(configs: list[str | Path], folder: Path) -> list[str]:
    """Every config file (a folder's *.yaml) into ``folder``, one file given twice copied once. Restore puts them
    all into one configs/, so two files of one name cannot both be kept: a file named on its own (the ``--config``
    the service runs) wins over a folder's file of that name, which is left out with a warning; two named alike
    on their own, or in folders, are refused, since one would silently replace the other."""
    kept: dict[str, tuple[Path, bool]] = {}  # name -> (file, named on its own)
    for source in map(Path, configs):
        named = not source.is_dir()
        for path in sorted(source.glob("*.yaml")) if source.is_dir() else [source]:
            if not path.is_file():
                raise BackupError(f"config not found: {path}")
            other, other_named = kept.get(path.name, (None, False))
            if other is None or other.resolve() == path.resolve():
                kept.setdefault(path.name, (path, named))
            elif named != other_named:
                chosen, left = (path, other) if named else (other, path)
                logger.warning("two configs named %s: keeping %s (named on its own), leaving out %s", path.name,
                               chosen, left)
                kept[path.name] = (chosen, True)
            else:
                raise BackupError(f"two configs named {path.name}: {other} and {path}; the backup keeps its configs "
                                  "in one folder, so one would replace the other (rename one, or leave one out)")
    if kept:
        folder.mkdir(exist_ok=True)
    for name, (path, _) in kept.items():
        shutil.copy2(path, folder / name)
    return list(kept)


def backup(out: str | Path, log_dir: str | Path, queue: str | Path | None = None,
           configs: list[str | Path] = (), models: list[str | Path] = (), include_models: bool = False,
           hmac_key: str | bytes | None = None, flag_file: str | Path | None = None,
           spool: str | Path | None = None, lock_timeout: float | None = READ_LOCK_TIMEOUT_S, *,
           chain: str = "audit.jsonl", hmac_key_env: str | None = None) -> dict:
    """Write the backup folder ``out`` (which must not exist); returns BACKUP.json's content. The queue
    is ``queue`` (a file or URL), else ``<log_dir>/escalations.sqlite`` when present; the emergency flag file
    is ``flag_file`` (the config's ``service.emergency_flag_file``), else ``<log_dir>/EMERGENCY``, copied into
    ``logs/`` when it exists; the spool is ``spool`` (the runtime's, beside ``escalation.queue_db`` even when the
    queue is on PostgreSQL), else beside the queue file or ``<log_dir>/escalations.sqlite``. The queue and spool
    keep their file names (recorded, so restore puts them where the config has the service look). ``chain`` is the
    configured audit log's name (``logging.audit_log``'s, without a replica's suffix); ``hmac_key_env``, the
    variable that holds its key, is recorded for restore when there is a key or a signed chain (restore then
    refuses to go on without a key). A chain whose lock stays held past ``lock_timeout``
    seconds (None: no limit) is an ``AuditLockTimeout``, and nothing is written."""
    out, log_dir = Path(out), Path(log_dir)
    if out.exists():
        raise BackupError(f"{out} already exists; a backup never overwrites another")
    if not log_dir.is_dir():
        raise BackupError(f"no log folder at {log_dir}")
    empty = [str(c) for c in map(Path, configs) if c.is_dir() and not any(c.glob("*.yaml"))]
    if empty:  # a mistyped folder would back up no config, silently
        raise BackupError(f"no config (*.yaml) in {', '.join(empty)} (--configs): name the folder that holds them, "
                          "or each file")
    if out.resolve().is_relative_to(log_dir.resolve()):  # lost with the folder it is meant to outlive
        raise BackupError(f"{out} lies in the log folder {log_dir} it backs up; write the backup elsewhere")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        logs = tmp / "logs"
        logs.mkdir()
        queue = queue or (log_dir / SQLITE_FILE if (log_dir / SQLITE_FILE).is_file() else None)
        spool = Path(spool) if spool else Path(f"{queue}.spool") if queue is not None and "://" not in str(queue) \
            else log_dir / (SQLITE_FILE + ".spool")
        spool_info, queue_info, chains = _copy_logs(log_dir, tmp, queue, spool, hmac_key, lock_timeout, chain)
        if not chains:
            others = [n for n in chain_names(log_dir) if n != chain] if chain != "audit.jsonl" else []
            raise BackupError(f"no audit log {chain} in {log_dir} (nor a replica's chain of it)" +
                              (f"; {', '.join(others)} there is another log, not backed up" if others else ""))
        flag, flag_info = Path(flag_file) if flag_file else log_dir / FLAG_FILE, None
        if flag.is_file():
            if (logs / flag.name).exists():
                raise BackupError(f"the emergency flag file {flag} has the name of an audit log file; rename it")
            shutil.copy2(flag, logs / flag.name)
            flag_info = {"source": str(flag), "stored": f"logs/{flag.name}"}
        holds = []  # the admin endpoint's holds (EMERGENCY.api.json, one per replica), which outlive a restart too
        for hold in sorted(flag.parent.glob(f"{flag.name}.api*.json")):
            if (logs / hold.name).exists():
                raise BackupError(f"the emergency hold {hold} has the name of an audit log file; rename it")
            shutil.copy2(hold, logs / hold.name)
            holds.append({"source": str(hold), "stored": f"logs/{hold.name}"})
        config_files = _copy_configs(configs, tmp / "configs")
        model_info = [_model_entry(Path(m), tmp / "models", include_models, i) for i, m in enumerate(models)]
        clashes = overlapping_targets(model_info)
        if clashes:
            raise BackupError("; ".join(clashes) + " (name the models from the folders they live in)")
        manifest = {
            "format": FORMAT, "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "source": {"logs": str(log_dir), "cwd": os.getcwd()}, "chains": chains,
            "hmac_key_env": hmac_key_env if hmac_key or any(c["signed"] for c in chains.values()) else None,
            "queue": queue_info,  # and a SQLite copy's rows, should its bytes change (a newer so8t adds columns):
            "queue_digest": queue_digest(logs / queue_info["file"]) if queue_info["kind"] == "sqlite" else None,
            "spool": spool_info, "emergency_flag": flag_info, "emergency_holds": holds, "configs": config_files, "models": model_info, "files": file_entries(tmp)}
        (tmp / BACKUP_FILE).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest
