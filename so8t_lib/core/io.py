"""Writing files whole or not at all, and hashing them."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes, mode: int = 0o644) -> Path:
    """Write a file whole or not at all: a temporary file in the same folder, fsync, rename.
    A reader (or a crash) never sees half a file; a failed write leaves the old file in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """``atomic_write_bytes`` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def unwritable_place(path: str | Path, option: str, folder: bool = False) -> str | None:
    """Why ``path`` (a file to write, or with ``folder`` one to create or replace) cannot be written, or None:
    it is the other kind, it would lie under a file, or this user cannot write where it goes. Commands ask before
    their work, so a bad ``--out`` does not cost the run."""
    target = Path(path)
    if folder and target.exists() and not target.is_dir():
        return f"{option} {path} is a file, not a folder; name a folder"
    if not folder and target.is_dir():
        return f"{option} {path} is a folder; give a file name in it (e.g. {target / 'out.json'})"
    parent = Path(os.path.abspath(target)).parent  # what is created or swapped in goes here
    while not parent.exists() and parent != parent.parent:  # the write creates missing folders
        parent = parent.parent
    if not parent.is_dir():
        return f"{option} {path}: {parent} is a file, so no folder can be made there; choose another path"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{option} {path}: this user cannot write in {parent}; choose a writable path"
    return None

