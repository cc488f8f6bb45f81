"""``so8t restore``: check a backup completely, and only then put it back.

The checks, all before anything is written: BACKUP.json is readable and shaped as backup writes it; every
file it lists is there with its size and sha256 (a SQLite queue copy whose bytes differ passes if its rows
are those the recorded digest says, ``queue_digest``: a newer so8t that opened it added columns), and no file
is there that it does not list (but SQLite's side files, which whoever opens the queue's copy makes: one that
holds data is refused, ``_side_file_problem``); every audit chain verifies (hash
chain, anchor, signatures with the HMAC key) and ends at the head recorded when it was backed up (a
chain rolled back or re-hashed together with its anchor is refused); a signed chain without its key is
refused unless unchecked signatures are accepted explicitly (only the key tells a re-hashed chain); the queue passes SQLite's
integrity check and holds the recorded number of cases and resolutions; every included model matches
its manifest or sha256. Then the files are written into a staging folder inside the target and each
top-level part (``logs/``, ``configs/``, each model's path) is renamed into place; a part that already
exists in the target is refused before the first write, so nothing is ever overwritten, and when a part
cannot be moved the ones already moved are taken back: a restore is whole or absent (except a PostgreSQL
queue, loaded before the moves in its own transaction).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from ...core.checkpoint import CheckpointError, verify_manifest
from ...core.io import sha256_file
from ...serve.audit_files import chain_names
from ...serve.audit_verify import verify
from ...serve.escalation import EscalationQueue, QueueError
from ...serve.router import load_router
from .queue_copy import SQLITE_FILE, check_sqlite, database_of, export_rows, load_rows, read_rows
from .queue_digest import digest_shape_problem, rows_changed
from .snapshot import (
    BACKUP_FILE,
    FORMAT,
    BackupError,
    file_entries,
    odd_entries,
    overlapping_targets,
    regular_files,
    safe_relative,
)

# a plain file name, never a path: a chain (logging.audit_log may have any name: gate.jsonl, audit.log), the queue
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,120}")
HEAD = re.compile(r"None:(None|[0-9a-f]{64})|-?\d+:[0-9a-f]{64}")  # SEQ:HASH as backup writes it (None:...: no record)
MODEL_KINDS = ("checkpoint", "gguf", "router")


def _load_manifest(folder: Path) -> dict:
    path = folder / BACKUP_FILE
    if not path.is_file():
        raise BackupError(f"{folder} is not a backup (no {BACKUP_FILE})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise BackupError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BackupError(f"{path}: format {found!r}, this version reads {FORMAT}")
    problem = _shape_problem(manifest)
    if problem:
        raise BackupError(f"{path}: {problem}; the file was changed or damaged after the backup was made")
    return manifest


def _shape_problem(manifest: dict) -> str | None:
    """What in BACKUP.json is not as ``backup`` writes it (a checked backup is trusted field by field after this:
    a chain named ``../x`` would have the checks open files outside the backup)."""
    files, chains, models = manifest.get("files"), manifest.get("chains"), manifest.get("models", [])
    if not isinstance(files, dict) or not all(isinstance(e, dict) and isinstance(e.get("sha256"), str)
                                              and isinstance(e.get("bytes"), int) for e in files.values()):
        return "'files' is not a table of sha256 and size"
    if not isinstance(chains, dict) or not chains:
        return "'chains' is not a table of audit chains"
    for name, chain in chains.items():
        if not FILE_NAME.fullmatch(name) or not isinstance(chain, dict):
            return f"chain {name!r} is not an audit log's file name"
        if f"logs/{name}" not in files and f"logs/{name}.anchor" not in files:
            return f"chain {name!r} has no file in the backup"
        head, errors = chain.get("head"), chain.get("errors", [])
        if not isinstance(errors, list) or head is not None and not (isinstance(head, str) and HEAD.fullmatch(head)):
            return f"chain {name!r}: its head {head!r} or errors are not as recorded"
    if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("path"), str) and m.get("kind") in MODEL_KINDS
            and isinstance(m.get("stored"), (str, type(None))) for m in models):
        return "'models' is not a list of models with a path, a kind and where each is stored"
    queue = manifest.get("queue", {})
    if not isinstance(queue, dict):
        return "'queue' is not a record of the escalation queue"
    if queue.get("kind") in ("sqlite", "postgresql") and not all(
            isinstance(queue.get(k), int) for k in ("cases", "resolutions")):
        return "'queue' does not record how many cases and resolutions the copy holds"
    if not FILE_NAME.fullmatch(str(queue.get("file", SQLITE_FILE))):
        return f"the queue's file name {queue.get('file')!r} is not a plain file name"
    digest = manifest.get("queue_digest")
    if digest is not None and (queue.get("kind") != "sqlite" or digest_shape_problem(digest)):
        return digest_shape_problem(digest) or "'queue_digest' records the rows of a queue that is no SQLite file"
    if not isinstance(manifest.get("hmac_key_env"), (str, type(None))):
        return "'hmac_key_env' is not the name of a variable"
    return None


def recorded_key_env(folder: str | Path) -> str | None:
    """The variable BACKUP.json says held the chains' HMAC key (None: not recorded, or no readable backup, which
    ``check_backup`` then reports), so restore looks where the service did."""
    try:
        return _load_manifest(Path(folder)).get("hmac_key_env")
    except BackupError:
        return None


def _unchecked_signatures(name: str, key_env: str | None) -> str:
    where = f"${key_env}" if key_env else "the service's HMAC key variable"
    return (f"{name}: the chain is signed and no HMAC key was given ({where} is not set): its signatures cannot be "
            f"checked, so a chain re-hashed without the key would pass; set {key_env or 'the variable'}, or accept "
            "unchecked signatures explicitly (so8t restore --unchecked-signatures)")


def check_backup(folder: str | Path, hmac_key: str | bytes | None = None, *, key_env: str | None = None,
                 unchecked_signatures: bool = False) -> dict:
    """Every check restore makes; writes nothing. {"manifest", "problems": [...], "checked": [...], "notes": [...]}.
    A signed chain (as recorded, or by its anchor), or any chain of a backup that records a key variable, without
    ``hmac_key`` is a problem naming ``key_env`` (default: the variable the backup recorded) unless
    ``unchecked_signatures``: a forger who re-hashes a chain cannot sign it, and only the key tells."""
    folder = Path(folder)
    manifest = _load_manifest(folder)
    key_env = key_env or manifest.get("hmac_key_env")
    problems, checked, notes = [], [], []
    listed, present = manifest["files"], file_entries(folder)
    queue = manifest.get("queue", {})
    digest = manifest.get("queue_digest")  # None: a backup made before it was recorded, judged by sha256 alone
    queue_file = f"logs/{queue.get('file', SQLITE_FILE)}" if digest is not None else None  # judged by its rows too
    by_rows: set[str] = set()
    sides = {name for name in listed if database_of(folder / name) is not None} | {
        str(p.relative_to(folder)) for p in regular_files(folder) if database_of(p) is not None}
    for name, entry in listed.items():
        if name in sides:  # checked below: SQLite's side files are not data, unless one recorded some
            continue
        found = present.get(name)
        if found is None:
            problems.append(f"{name}: missing from the backup")
        elif found["bytes"] != entry["bytes"] or found["sha256"] != entry["sha256"]:
            changed = rows_changed(folder / name, digest) if name == queue_file else ""
            if changed is None:  # never written to the backup: read immutable, and restored as it is
                by_rows.add(name)
                notes.append(f"{name}: its bytes changed since the backup was made (sha256 does not match), but its "
                             "rows are those backed up (opened by a newer so8t, which added columns, or rewritten "
                             "by SQLite): restored as it is")
            else:
                problems.append(f"{name}: changed since the backup was made (sha256 does not match" +
                                (f"; {changed})" if changed else ")"))
    problems += [f"{name}: not part of the backup (added later)" for name in sorted(set(present) - set(listed))]
    problems += odd_entries(folder)  # a link is never read or copied through
    problems += filter(None, (_side_file_problem(name, folder / name, listed.get(name)) for name in sorted(sides)))
    checked.append(f"{len(set(listed) - sides - by_rows)} files match their sha256")
    notes += [f"{name}: SQLite's side file of a copied database, listed by an older backup: not data, not checked"
              for name in sorted(sides & set(listed)) if not listed[name]["bytes"]]
    for name, chain in manifest["chains"].items():
        if chain.get("errors"):
            problems.append(f"{name}: did not verify when it was backed up: {'; '.join(chain['errors'])}")
            continue
        head = chain.get("head")
        expect = None
        if head and not head.startswith("None"):  # the shape was checked: SEQ:HASH
            seq, digest = head.split(":", 1)
            expect = (int(seq), digest)
        report = verify(folder / "logs", name, hmac_key, expect)
        problems += [f"{name}: {e}" for e in report["errors"]]
        notes += [f"{name}: {n}" for n in report["notes"]]
        signed = bool(chain.get("signed")) or "mac" in (report["anchor"] or {})
        unchecked = signed and not hmac_key
        if unchecked and unchecked_signatures:
            notes.append(f"{name}: signed, but its signatures were NOT checked (no HMAC key)")
        elif unchecked:
            problems.append(_unchecked_signatures(name, key_env))
        elif not hmac_key:  # unsigned as found: only the key could tell a chain whose signatures were stripped
            recorded = manifest.get("hmac_key_env")
            notes.append(f"{name}: signatures NOT checked: no HMAC key was read (${key_env or 'SO8T_AUDIT_HMAC_KEY'} "
                         "is not set" + (f"; the backup says the key was in ${recorded}" if recorded else "") +
                         "), so a chain re-hashed without the key cannot be told from the real one: if the service "
                         "signs its log, set its key's variable or pass --hmac-key-env")
        if not report["errors"] and not (unchecked and not unchecked_signatures):
            checked.append(f"{name}: {report['records']} records verify, head {head}" +
                           (", signatures checked" if signed and hmac_key else ""))
    try:
        if queue.get("kind") == "sqlite":
            counts = check_sqlite(folder / "logs" / queue.get("file", SQLITE_FILE))
        elif queue.get("kind") == "postgresql":
            cases, resolutions = read_rows(folder / "queue")
            counts = {"cases": len(cases), "resolutions": len(resolutions)}
        else:
            counts = None
        if counts is not None and counts != {k: queue[k] for k in ("cases", "resolutions")}:
            problems.append(f"escalation queue: {counts} in the copy, {queue['cases']} cases and {queue['resolutions']} "
                            "resolutions recorded")
        elif counts is not None:
            checked.append(f"escalation queue ({queue['kind']}): {counts['cases']} cases, {counts['resolutions']} "
                           "resolutions, integrity ok")
    except (QueueError, OSError, ValueError) as exc:
        problems.append(f"escalation queue: {exc}")
    problems += overlapping_targets(manifest["models"])
    for model in manifest.get("models", []):
        if not safe_relative(model["path"]):
            problems.append(f"model path {model['path']!r} leaves the restore folder")
            continue
        if not model.get("included"):
            continue
        name = str(model.get("stored") or "")
        if PurePosixPath(name).name != name or name in ("", ".", "..") or not any(
                f == f"models/{name}" or f.startswith(f"models/{name}/") for f in listed):
            problems.append(f"model {model['path']}: stored as {name!r}, not a file of this backup's models/")
            continue
        stored = folder / "models" / name
        try:
            if model["kind"] in ("gguf", "router"):
                if sha256_file(stored) != model["sha256"]:
                    raise CheckpointError(f"{stored}: damaged (sha256 does not match)")
                if model["kind"] == "router":
                    load_router(stored)  # its own checks too: the runtime must be able to route by it
            else:
                verify_manifest(stored)
            checked.append(f"model {model['path']}: files match")
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with a stored model is a reported problem
            problems.append(f"model {model['path']}: {exc}")
    return {"manifest": manifest, "problems": problems, "checked": checked, "notes": notes}


def _side_file_problem(name: str, path: Path, recorded: dict | None) -> str | None:
    """What is wrong with a SQLite side file beside a database of the backup, None if nothing. A ``-shm`` is an
    index SQLite rebuilds, and an empty ``-wal`` or ``-journal`` holds nothing: whoever opens the copy makes and
    deletes them, so they are not part of a backup. Backups made before this was so listed the empty ones that
    the backup's own check left (the copy was written whole: ``queue_copy``); one recorded with data must be
    there unchanged, and one holding data the backup did not record means the copy was written to."""
    if name.endswith("-shm"):
        return None
    size = path.stat().st_size if path.is_file() else 0
    if recorded is not None and recorded["bytes"] > 0:
        if not path.is_file():
            database = name[:name.rfind("-")]
            return (f"{name}: missing from the backup; it held {recorded['bytes']} bytes of changes not yet in "
                    f"{database} when the backup was made, so that database cannot be restored without it")
        if size != recorded["bytes"] or sha256_file(path) != recorded["sha256"]:
            return f"{name}: changed since the backup was made (sha256 does not match)"
        return None
    if size:
        return (f"{name}: {size} bytes written to the backup's copy after the backup was made (by a program that "
                "has it open, or one that stopped while writing): the copy is not what was backed up")
    return None


def _no_side_files(folder: Path, manifest: dict):
    """copytree's ``ignore``: SQLite's side files beside a copied database stay behind (none holds data: the
    checks passed), unless the backup recorded one with data (an older backup's)."""
    keep = {name for name, entry in manifest["files"].items() if entry["bytes"] > 0}

    def ignore(directory: str, names: list[str]) -> set[str]:
        here = Path(directory)
        return {n for n in names if database_of(here / n) is not None and str((here / n).relative_to(folder)) not in keep}

    return ignore


def _parts(manifest: dict, folder: Path, into: Path) -> dict[Path, Path]:
    """staging-relative source -> final target of each part restore renames into place."""
    parts = {Path("logs"): into / "logs"}
    if manifest.get("configs"):
        parts[Path("configs")] = into / "configs"
    for model in manifest.get("models", []):
        if model.get("included"):
            parts[Path("models") / model["stored"]] = into / model["path"]
            if model["kind"] == "gguf" and (folder / "models" / (model["stored"] + ".sha256")).is_file():
                parts[Path("models") / (model["stored"] + ".sha256")] = into / (model["path"] + ".sha256")
    return parts


def restore(folder: str | Path, into: str | Path, queue_url: str | None = None,
            hmac_key: str | bytes | None = None, *, key_env: str | None = None,
            unchecked_signatures: bool = False) -> dict:
    """Check the backup (``key_env``, ``unchecked_signatures``: as for ``check_backup``), then put it into ``into``
    (logs/, configs/, the models' paths), the queue and spool under the names they had; with ``queue_url`` the
    escalation cases go to that empty PostgreSQL queue instead of logs/."""
    folder, into = Path(folder), Path(into)
    checks = check_backup(folder, hmac_key, key_env=key_env, unchecked_signatures=unchecked_signatures)
    if checks["problems"]:
        raise BackupError(f"{folder} did not pass its checks; nothing was restored:\n  " +
                          "\n  ".join(checks["problems"]))
    manifest = checks["manifest"]
    if live := chain_names(into) + [SQLITE_FILE] * (into / SQLITE_FILE).exists():
        raise BackupError(f"{into} holds a live log ({', '.join(live[:3])}): restore into an empty folder, then "
                          "point the service at it; a second copy of the chain beside the first would split it")
    parts = _parts(manifest, folder, into)
    taken = [str(t) for t in parts.values() if t.exists() and not (t.is_dir() and not any(t.iterdir()))]
    if taken:
        raise BackupError(f"restore never overwrites: {', '.join(taken)} already exist(s); restore into an empty "
                          "folder")
    made = _make_parents(into, parents=[t.parent for t in parts.values()])
    try:
        counts = _restore_parts(folder, into, parts, manifest, queue_url)
    except BaseException:
        _remove_if_empty(made)  # a failed restore leaves the target as it found it, without empty folders
        raise
    return {"checked": checks["checked"], "notes": checks["notes"], "restored": [str(t) for t in parts.values()],
            "queue": counts}


def _restore_parts(folder: Path, into: Path, parts: dict[Path, Path], manifest: dict,
                   queue_url: str | None) -> dict | None:
    """Copy into a staging folder beside the targets, load the queue, then move every part into place."""
    staging = Path(tempfile.mkdtemp(prefix=".so8t-restore-", dir=into))
    try:
        # symlinks=True: a link is copied as a link, never what it points to (the checks refused any anyway)
        shutil.copytree(folder / "logs", staging / "logs", symlinks=True, ignore=_no_side_files(folder, manifest))
        for part in ("configs", "models"):
            if (folder / part).is_dir():
                shutil.copytree(folder / part, staging / part, symlinks=True)
        queue = manifest.get("queue", {})
        local = staging / "logs" / queue.get("file", SQLITE_FILE)  # the name queue_db gave it (older backups: fixed)
        if queue_url is not None:
            if queue.get("kind") == "sqlite":  # the SQLite copy's rows into the server
                copy = EscalationQueue(local, create=False)
                export_rows(copy, staging / "queue")
                copy.close()
                local.unlink()
                counts = load_rows(staging / "queue", queue_url)
            else:
                counts = load_rows(folder / "queue", queue_url)
        elif queue.get("kind") == "postgresql":  # into the embedded default
            counts = load_rows(folder / "queue", local)
        else:
            counts = check_sqlite(local) if queue.get("kind") == "sqlite" else None
        _move_into_place(parts, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _make_parents(into: Path, parents: list[Path]) -> list[Path]:
    """Every folder the parts go into, made before anything is copied: a file where a folder must be is found
    here, not after logs/ was already moved into place. Returns the folders it made, deepest first."""
    made: list[Path] = []
    for parent in [into, *parents]:
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            _remove_if_empty(made)
            raise BackupError(f"cannot restore into {parent}: {exc.filename or parent} is a file where a folder must "
                              "be; nothing was restored") from None
        made = missing + [p for p in made if p not in missing]
    return sorted(made, key=lambda p: len(p.parts), reverse=True)


def _remove_if_empty(folders: list[Path]) -> None:
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (something else put a file there) or already gone


def _move_into_place(parts: dict[Path, Path], staging: Path) -> None:
    """Rename each part into place; if one fails, the ones already moved go back and the empty folders the
    operator had prepared for them (a mount point's folder, one with its own owner) are made again, so a restore
    is whole or absent."""
    moved: list[tuple[Path, Path]] = []
    emptied: list[tuple[Path, int]] = []  # (folder, its mode)
    failed = None
    try:
        for source, target in parts.items():
            failed = target
            if target.is_dir():
                mode = target.stat().st_mode & 0o7777
                target.rmdir()  # an empty folder: nothing is overwritten
                emptied.append((target, mode))
            os.replace(staging / source, target)
            moved.append((source, target))
    except OSError as exc:
        for source, placed in reversed(moved):
            os.replace(placed, staging / source)
        for folder, mode in emptied:
            folder.mkdir(exist_ok=True)
            folder.chmod(mode)
        raise BackupError(f"restore stopped at {failed} ({exc}); the parts already moved were taken back, nothing "
                          "was restored") from None
