"""Atomic checkpoint folders with a checksum manifest.

A checkpoint is written into a temporary sibling folder and moved into place with
one rename, so a crash (even SIGKILL) leaves either the old checkpoint or the new
one, never half of one. ``manifest.json`` records the sha256 of every file;
``verify_manifest`` names the first damaged or missing file, and refuses a folder without a
manifest (4 changed bytes of the safety head's bias turn it into a yes-machine; without a
manifest nothing would notice). An operator who must load such a folder sets
``SO8T_ALLOW_UNVERIFIED_MODEL=1``: the load is then logged, and the loaded model's version carries
``+unverified`` so every decision made with it says so.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .io import sha256_file
from .schema import ADAPTER_FILE, BEST_DIR, LAST_DIR, MANIFEST_FILE, MODEL_CONFIG_FILE

logger = logging.getLogger("so8t.checkpoint")
# The explicit override for model files without a manifest or checksum, and the mark it leaves.
UNVERIFIED_ENV = "SO8T_ALLOW_UNVERIFIED_MODEL"
UNVERIFIED_MARK = "+unverified"
# Modes of what a checkpoint folder holds, less the umask: the service's user (another account) must read them.
FILE_MODE, DIR_MODE = 0o666, 0o777


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, incomplete or damaged; the message names the file."""


class ResumeMismatch(CheckpointError):
    """A run's ``last/`` was made under other settings (config, data, base, process count, version) than the resume
    has: it cannot go on as that run. A sweep marks such a run folder stale, so ``--rerun-stale`` starts it afresh."""


def unverified_allowed() -> bool:
    """True when the operator set the override (SO8T_ALLOW_UNVERIFIED_MODEL=1)."""
    return os.environ.get(UNVERIFIED_ENV, "").strip().lower() in ("1", "true", "yes")


def refuse_unverified(path: Path, what: str) -> None:
    """Raise CheckpointError for model files that cannot be checked, unless the override is set
    (then log a warning naming the files)."""
    if not unverified_allowed():
        raise CheckpointError(f"{path}: {what}, so its files cannot be checked; refusing to load it (export or save "
                              f"it again, or set {UNVERIFIED_ENV}=1 to load it anyway, which is logged and marks "
                              f"every decision {UNVERIFIED_MARK})")
    logger.warning("%s: %s; loading it anyway because %s is set (decisions are marked %s)", path, what,
                   UNVERIFIED_ENV, UNVERIFIED_MARK)


def write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {str(p.relative_to(folder)): {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in files}
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": entries}, indent=1, sort_keys=True), encoding="utf-8")


def checkpoint_version(folder: str | Path, name: str) -> str:
    """``name@<first 12 hex of the adapter's sha256>``: the same trained weights give the same version
    in every backend (HF checkpoint, each GGUF exported from it) and in every audit record."""
    manifest = Path(folder) / MANIFEST_FILE
    if manifest.is_file():
        try:
            digest = json.loads(manifest.read_text(encoding="utf-8"))["files"][ADAPTER_FILE]["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            digest = None  # a damaged manifest: verify_manifest refuses the checkpoint by name
        if isinstance(digest, str) and digest:
            return f"{name}@{digest[:12]}"
    return name


def has_manifest(folder: str | Path) -> bool:
    return (Path(folder) / MANIFEST_FILE).is_file()


def make_readable(path: Path) -> None:
    """Give ``path`` the mode a new file gets under the umask: safetensors writes 0600, which keeps every other
    user (the service's) out of a checkpoint saved by this one."""
    os.chmod(path, (DIR_MODE if path.is_dir() else FILE_MODE) & ~_umask())


def verify_manifest(folder: Path) -> None:
    """Raise CheckpointError naming the first file that is missing, truncated or altered, or cannot be read by
    this user, or the missing manifest itself (unless the override is set: see ``refuse_unverified``)."""
    try:
        _verify_manifest(folder)
    except PermissionError as exc:
        raise CheckpointError(f"{exc.filename or folder}: this user (uid {os.getuid()}) may not read it, so checkpoint "
                              f"{folder} cannot be checked or loaded: make it readable (chmod -R a+rX {folder}) or save "
                              "it again with this version, which writes it readable to other users") from None


def _verify_manifest(folder: Path) -> None:
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        if (folder / MODEL_CONFIG_FILE).is_file():  # a checkpoint without its checksums
            refuse_unverified(folder, f"no {MANIFEST_FILE}")
        return  # not a checkpoint at all: the loader names what is missing
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        if not all(isinstance(e["bytes"], int) and isinstance(e["sha256"], str) for e in entries.values()):
            raise ValueError("an entry without bytes and sha256")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{manifest}: unreadable manifest ({type(exc).__name__}: {exc})") from None
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE}
    added = sorted(present - set(entries))
    if added:  # e.g. a tokenizer file the loader would read: it changes decisions under the same version
        raise CheckpointError(f"{folder / added[0]}: not in the manifest of checkpoint {folder} (added after it was "
                              f"written{f', with {len(added) - 1} more' if len(added) > 1 else ''}); remove it or "
                              "save the checkpoint again")
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: missing from checkpoint {folder}")
        if path.stat().st_size != entry["bytes"]:
            raise CheckpointError(f"{path}: truncated or damaged ({path.stat().st_size} bytes, expected {entry['bytes']})")
        if sha256_file(path) != entry["sha256"]:
            raise CheckpointError(f"{path}: damaged (checksum does not match the manifest)")


def recover_interrupted_swap(target: str | Path) -> None:
    """If a kill landed between the two renames of a swap, put the previous folder back."""
    target = Path(target)
    if target.exists():
        return
    olds = sorted(target.parent.glob(f".{target.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds:
        os.replace(olds[-1], target)


def check_replaceable(target: Path) -> None:
    """CheckpointError unless ``target`` may be replaced whole: absent, an empty folder, or a folder this module
    wrote (every file in it listed in its manifest). ``model.save("checkpoints")`` or a report written into the
    repository must not delete what the workbench never wrote."""
    if not target.exists():
        return
    if not target.is_dir():
        raise CheckpointError(f"{target} is a file, not a folder; name a new folder to write into")
    present = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    if not present:
        return  # empty, or empty folders (and a manifest) only
    listed: set[str] = set()
    try:
        listed = set(json.loads((target / MANIFEST_FILE).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # no manifest (or an unreadable one): nothing in it counts as written here
    foreign = [name for name in present if name not in listed]
    if foreign or not (target / MANIFEST_FILE).is_file():
        named = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise CheckpointError(
            f"{target} holds files the workbench did not write ({named or f'no {MANIFEST_FILE}'}), and writing there "
            "replaces the folder whole, which would delete them; name a new folder, or move those files away first")


@contextmanager
def atomic_folder(target: str | Path, owned: bool = False) -> Iterator[Path]:
    """Yield a temporary folder; on success add a manifest and swap it in for ``target``. ``target`` must be
    new, empty or an earlier output (``check_replaceable``) unless ``owned``: the caller's own folder, replaced
    whatever it holds (a run's ``last/``, the conversion cache, a checkpoint whose files are carried over)."""
    target = Path(os.path.abspath(target))  # "." or "x/.." have no name to stage beside
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_swap(target)
    if not owned:
        check_replaceable(target)  # before the caller's work, not after it
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if not owned:
            check_replaceable(target)  # a file dropped in while the caller wrote
        write_manifest(tmp)
        for path in [*tmp.rglob("*"), tmp]:  # mkdtemp's 0700 and safetensors' 0600 would keep the service out
            make_readable(path)
        _sync_tree(tmp)  # on disk before the old copy is let go: a power cut cannot leave empty files behind
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            _sync_dir(target.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
            _sync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _sync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    for path in [*(p for p in folder.rglob("*") if p.is_dir()), folder]:
        _sync_dir(path)


def _sync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would change it for other threads meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a training run folder (its ``best/``, else its ``last/``)."""
    path = Path(path)
    recover_interrupted_swap(path)
    if (path / MODEL_CONFIG_FILE).is_file():
        return path
    for child in (BEST_DIR, LAST_DIR):
        recover_interrupted_swap(path / child)
        if (path / child / MODEL_CONFIG_FILE).is_file():
            return path / child
        if child == BEST_DIR and (path / child).is_dir():  # damaged: never fall back to last/ without a word
            raise CheckpointError(f"{path / child}: no {MODEL_CONFIG_FILE}, so the run's best checkpoint is damaged; "
                                  f"name {path / LAST_DIR} to use the last one instead")
    return path
