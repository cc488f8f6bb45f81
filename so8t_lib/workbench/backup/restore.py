"""``so8t restore``: check a backup completely, and only then put it back.

The checks, all before anything is written: BACKUP.json is readable; every file it lists is there with
its size and sha256, and no file is there that it does not list; every audit chain verifies (hash
chain, anchor, signatures with the HMAC key) and ends at the head recorded when it was backed up (a
chain rolled back or re-hashed together with its anchor is refused); the queue passes SQLite's
integrity check and holds the recorded number of cases and resolutions; every included model matches
its manifest or sha256. Then the files are written into a staging folder inside the target and each
top-level part (``logs/``, ``configs/``, each model's path) is renamed into place; a part that already
exists in the target is refused before the first write, so nothing is ever overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from ...core.checkpoint import CheckpointError, verify_manifest
from ...core.io import sha256_file
from ...serve.audit_verify import verify
from ...serve.escalation import EscalationQueue, QueueError
from ...serve.router import load_router
from .queue_copy import SQLITE_FILE, check_sqlite, export_rows, load_rows, read_rows
from .snapshot import BACKUP_FILE, FORMAT, BackupError, file_entries


def _load_manifest(folder: Path) -> dict:
    path = folder / BACKUP_FILE
    if not path.is_file():
        raise BackupError(f"{folder} is not a backup (no {BACKUP_FILE})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        manifest["files"], manifest["chains"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{path}: unreadable ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: format {manifest.get('format')!r}, this version reads {FORMAT}")
    return manifest


def _safe_relative(text: str) -> bool:
    path = PurePosixPath(text)
    return not path.is_absolute() and ".." not in path.parts and bool(path.parts)


def check_backup(folder: str | Path, hmac_key: str | bytes | None = None) -> dict:
    """Every check restore makes; writes nothing. {"manifest", "problems": [...], "checked": [...]}."""
    folder = Path(folder)
    manifest = _load_manifest(folder)
    problems, checked = [], []
    listed, present = manifest["files"], file_entries(folder)
    for name, entry in listed.items():
        found = present.get(name)
        if found is None:
            problems.append(f"{name}: missing from the backup")
        elif found["bytes"] != entry["bytes"] or found["sha256"] != entry["sha256"]:
            problems.append(f"{name}: changed since the backup was made (sha256 does not match)")
    problems += [f"{name}: not part of the backup (added later)" for name in sorted(set(present) - set(listed))]
    checked.append(f"{len(listed)} files match their sha256")
    for name, chain in manifest["chains"].items():
        if chain.get("errors"):
            problems.append(f"{name}: did not verify when it was backed up: {'; '.join(chain['errors'])}")
            continue
        head = chain.get("head")
        expect = None
        if head and not head.startswith("None"):
            seq, digest = head.split(":", 1)
            expect = (int(seq), digest)
        report = verify(folder / "logs", name, hmac_key, expect)
        problems += [f"{name}: {e}" for e in report["errors"]]
        if not report["errors"]:
            checked.append(f"{name}: {report['records']} records verify, head {head}")
    queue = manifest.get("queue", {})
    try:
        if queue.get("kind") == "sqlite":
            counts = check_sqlite(folder / "logs" / SQLITE_FILE)
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
    problems += _overlapping_targets(manifest)
    for model in manifest.get("models", []):
        if not _safe_relative(model["path"]):
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
    return {"manifest": manifest, "problems": problems, "checked": checked}


def _overlapping_targets(manifest: dict) -> list[str]:
    """Restore moves whole parts into place: no model may land on, in or around logs/, configs/ or another
    model, or one part would replace another."""
    targets = ["logs", "configs"] + [m["path"] for m in manifest.get("models", []) if _safe_relative(m["path"])]
    parts = [PurePosixPath(t) for t in targets]
    problems = []
    for i, a in enumerate(parts):
        for b in parts[i + 1:]:
            if a == b or a in b.parents or b in a.parents:
                problems.append(f"restore targets {str(a)!r} and {str(b)!r} overlap: one would replace the other")
    return problems


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
            hmac_key: str | bytes | None = None) -> dict:
    """Check the backup, then put it into ``into`` (logs/, configs/, the models' paths); with
    ``queue_url`` the escalation cases go to that empty PostgreSQL queue instead of logs/."""
    folder, into = Path(folder), Path(into)
    checks = check_backup(folder, hmac_key)
    if checks["problems"]:
        raise BackupError(f"{folder} did not pass its checks; nothing was restored:\n  " +
                          "\n  ".join(checks["problems"]))
    manifest = checks["manifest"]
    parts = _parts(manifest, folder, into)
    taken = [str(t) for t in parts.values() if t.exists() and not (t.is_dir() and not any(t.iterdir()))]
    if taken:
        raise BackupError(f"restore never overwrites: {', '.join(taken)} already exist(s); restore into an empty "
                          "folder")
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".so8t-restore-", dir=into))
    try:
        shutil.copytree(folder / "logs", staging / "logs")
        if (folder / "configs").is_dir():
            shutil.copytree(folder / "configs", staging / "configs")
        if (folder / "models").is_dir():
            shutil.copytree(folder / "models", staging / "models")
        queue = manifest.get("queue", {})
        if queue_url is not None:
            if queue.get("kind") == "sqlite":  # the SQLite copy's rows into the server
                copy = EscalationQueue(staging / "logs" / SQLITE_FILE, create=False)
                export_rows(copy, staging / "queue")
                copy.close()
                (staging / "logs" / SQLITE_FILE).unlink()
                counts = load_rows(staging / "queue", queue_url)
            else:
                counts = load_rows(folder / "queue", queue_url)
        elif queue.get("kind") == "postgresql":  # into the embedded default
            counts = load_rows(folder / "queue", staging / "logs" / SQLITE_FILE)
        else:
            counts = check_sqlite(staging / "logs" / SQLITE_FILE) if queue.get("kind") == "sqlite" else None
        for source, target in parts.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_dir():
                target.rmdir()  # an empty folder: nothing is overwritten
            os.replace(staging / source, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"checked": checks["checked"], "restored": [str(t) for t in parts.values()], "queue": counts}
