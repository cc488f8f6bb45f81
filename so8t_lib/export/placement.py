"""Moving an export's staged files into ``out_dir`` all or none: afterwards it holds the earlier export or the new
one, never a mix of two model versions in which every file passes its own sidecar check.

Every target is checked before the first rename. Each file a move replaces is kept in ``aside`` (a hard link, a
copy where the file system has none), and the other version's rungs are moved there rather than deleted, so when
a rename fails every earlier file is put back and the new ones are taken out. ``aside`` lies in the staging folder
and goes with it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .gguf_meta import GGUFError, sidecar_path


def with_sidecars(paths: list[Path]) -> list[Path]:
    """Each file followed by its sha256 sidecar: what moving it in writes or replaces."""
    return [part for path in paths for part in (path, sidecar_path(path))]


def check_targets(out_dir: Path, targets: list[Path]) -> None:
    """GGUFError naming the first target no file can be renamed onto (a folder) or an ``out_dir`` this user may
    not write in: found before anything moves, not half-way through."""
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise GGUFError(f"{out_dir}: this user (uid {os.getuid()}) may not create or replace files in it, so the "
                        "export cannot be moved in; make it writable or name another --out")
    for target in targets:
        if target.is_dir() and not target.is_symlink():
            raise GGUFError(f"{target} is a folder, which the export's file of that name cannot replace; move it out "
                            f"of {out_dir} and run the command again")


def place(staged: list[Path], out_dir: Path, stale: list[Path], aside: Path) -> list[Path]:
    """Move ``staged`` files (with their sidecars) into ``out_dir`` and ``stale`` ones out of it into ``aside``,
    all or none; returns the placed files. A move that fails undoes the others, then its error is raised."""
    moves = [(source, out_dir / source.name) for source in with_sidecars(staged)]
    check_targets(out_dir, [target for _, target in moves])
    aside.mkdir()
    undo: list[tuple[Path, Path | None]] = []  # a path in out_dir, and the file to put back there (None: remove)
    try:
        for source, target in moves:
            undo.append((target, _keep(target, aside)))
            move(source, target)
        for path in stale:
            move(path, aside / path.name)
            undo.append((path, aside / path.name))
    except BaseException as exc:
        _undo(undo, out_dir, exc)
        raise
    return [out_dir / path.name for path in staged]


def move(source: Path, target: Path) -> None:
    """One rename within out_dir's file system (a function of its own, so a test can fail or interrupt it)."""
    os.replace(source, target)


def _keep(path: Path, aside: Path) -> Path | None:
    """A second name for the file at ``path`` in ``aside`` (None where there is none), to put back on failure."""
    if not os.path.lexists(path):
        return None
    kept = aside / path.name
    try:
        os.link(path, kept, follow_symlinks=False)
    except OSError:  # a file system without hard links
        shutil.copy2(path, kept, follow_symlinks=False)
    return kept


def _undo(undo: list[tuple[Path, Path | None]], out_dir: Path, cause: BaseException) -> None:
    """Put back what ``place`` changed, last first; GGUFError naming every path that could not be restored."""
    failed = []
    for path, kept in reversed(undo):
        try:
            if kept is None:
                path.unlink(missing_ok=True)
            else:
                os.replace(kept, path)
        except OSError as exc:
            failed.append(f"{path} ({exc.strerror or exc})")
    if failed:
        raise GGUFError(f"moving the export into {out_dir} failed ({cause}) and {len(failed)} file(s) could not be "
                        f"put back: {', '.join(failed)}; remove the {out_dir.name} files of this model and export "
                        "again") from cause
