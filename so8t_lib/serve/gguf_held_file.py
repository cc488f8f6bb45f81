"""The GGUF file a backend serves: opened and held, checked against its sha256 sidecar, its ``so8t.*`` metadata
read (the label order, the safety head's tensors), and checked again later to still be the bytes that were loaded.

It exists so that everything about trusting the file (which file a path names, whether its bytes were verified,
whether they changed under a running gate) sits in one place, apart from what the backend does with the weights.
``HeldFile`` is a part of ``gguf_backend.GGUFBackend`` and works on the identity and descriptor it holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..core.checkpoint import CheckpointError
from ..core.schema import LABELS
from ..export.gguf_meta import GGUFError, read_metadata, verify_sha256_sidecar
from ..model.heads import SafetyHeadB


def file_identity(path: Path) -> tuple[int, int, int, int]:
    """(device, inode, size, mtime): which file a path names and whether its bytes may have moved. A replacement
    by rename (an export) brings another inode; a copy over it in place (``cp new.gguf served.gguf``) keeps the
    inode llama.cpp has mapped, so its decisions would silently follow the new weights, but it moves mtime (and
    usually the size). Not ctime: a hard link or a chmod by a backup tool moves it without touching a byte."""
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


# said when the loaded file's bytes change under a backend (written over in place: the same inode): the head and
# model_version are the old file's, the mapped weights may already be the new one's. A file replaced by rename is
# another inode: the mapped one still holds the old bytes, so decisions go on from it (answers are refused when the
# answer context would have to open the path anew)
CHANGED = ("was written over in place since the gate loaded it, so its decisions and answers may no longer come from "
           "the weights the head and model_version belong to; replace served files by rename (as so8t export does), "
           "never by copying over them")


def hold_file(path: Path) -> tuple[tuple[int, int, int, int], int]:
    """(the file's identity, a read-only descriptor of it): the loaded inode, whatever its path names later.
    The caller closes the descriptor."""
    try:
        identity = file_identity(path)
        held = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise GGUFError(f"{path}: no such file") from None
    except OSError as exc:
        raise GGUFError(f"{path}: cannot be opened ({exc.strerror or exc})") from None
    return identity, held


def verified_metadata(path: Path) -> tuple[bool, dict]:
    """(whether the file matched its sha256 sidecar, its metadata). Checked before anything is read from the file:
    the head, then llama.cpp's tensors, come from the file whose bytes match the sidecar."""
    try:
        verified = verify_sha256_sidecar(path)
    except (GGUFError, CheckpointError):
        read_metadata(path)  # a file so8t did not export says that first, whatever its sidecar
        raise
    meta = read_metadata(path)
    if tuple(meta["so8t.labels"]) != tuple(LABELS):
        raise GGUFError(f"{path}: label order {meta['so8t.labels']} differs from {list(LABELS)}")
    return verified, meta


def safety_head_from(path: Path, meta: dict) -> SafetyHeadB:
    """SafetyHeadB rebuilt from the file's ``so8t.head.*`` tensors, stored temperature and pooling."""
    state = {k: torch.from_numpy(v.copy()) for k, v in meta["head"].items()}
    state["temperature"] = torch.tensor(float(meta["so8t.temperature"]))
    try:
        head = SafetyHeadB.from_state_dict(state, pooling=meta["so8t.pooling"])
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:  # shapes that do not chain into a head
        raise GGUFError(f"{path}: the so8t.head.* tensors do not make a safety head ({exc})") from None
    outputs = head.net[-1].out_features
    if outputs != len(meta["so8t.labels"]):  # 2 or 4 columns: decisions read by position would name wrong labels
        raise GGUFError(f"{path}: the so8t.head.* output layer gives {outputs} probabilities, so8t.labels names "
                        f"{len(meta['so8t.labels'])} ({', '.join(meta['so8t.labels'])}); export the checkpoint again")
    return head


class HeldFile:
    """The backend's checks that its file is unchanged: ``_same_bytes`` (the held inode's size and mtime) before
    and after llama.cpp reads the mapped weights, ``_same_file`` (what the path names) before a path is opened."""

    path: Path
    _identity: tuple[int, int, int, int]
    _held: int

    def _same_bytes(self) -> None:
        """GGUFError unless the loaded inode still has the size and mtime it had at load: llama.cpp reads the
        mapped file as it is now, so bytes written over it in place would be the weights decided with."""
        held = os.fstat(self._held)
        if (held.st_size, held.st_mtime_ns) != (self._identity[2], self._identity[3]):
            raise GGUFError(f"{self.path} {CHANGED}; restart the gate to load the new file (its sidecar is checked "
                            "then)")

    def _same_file(self, problem: str) -> None:
        """GGUFError naming ``problem`` unless the path still names the very file (inode, size, times) loaded."""
        try:
            now = file_identity(self.path)
        except OSError:
            now = None
        if now != self._identity:
            raise GGUFError(f"{self.path} {problem}; restart the gate to load the new file (its sidecar is checked "
                            "then)")
