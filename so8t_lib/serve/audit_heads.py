"""Chain heads kept outside the log folder between runs of ``so8t audit verify --heads FILE``.

The anchor inside a log folder finds records deleted or rewritten after it, but not the whole folder put back to
an earlier consistent state, nor a chain deleted together with its anchor. A head written by an earlier
verification and kept elsewhere finds both: each chain must still hold the record its head names, with the same
hash, and every chain recorded for a folder must still be there. ``--expect SEQ:HASH`` is the same check for
one chain by hand; this file is it for every chain, run after run (deploy/systemd/so8t-audit-verify.timer).
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

from ..core.io import atomic_write_text
from .audit_verify import failed_report

HEADS_FORMAT = "so8t-audit-heads/1"


class HeadsError(ValueError):
    """A heads file that cannot be read as one; it is left as it is."""


def chain_key(chain: str | Path) -> str:
    """How a chain is named in the file: its absolute path, so the same folder given two ways is one chain. Links
    are not followed: a link turned to an older copy of the folder is still the chain it named before."""
    return os.path.abspath(chain)


def read_heads(path: str | Path) -> dict[str, tuple[int, str]]:
    """The heads an earlier run wrote, by chain; none when the file does not exist yet (the first run)."""
    path = Path(path)
    if not path.exists():
        return {}
    fix = "it was not written by so8t audit verify --heads, or was damaged; restore it from its backup, or move it " \
          "aside to start over (the rollback check then starts from this run)"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadsError(f"{path}: cannot read the chain heads ({type(exc).__name__}: {exc}); {fix}") from None
    if not isinstance(data, dict) or data.get("format") != HEADS_FORMAT or not isinstance(data.get("heads"), dict):
        raise HeadsError(f"{path}: not a chain-heads file of format {HEADS_FORMAT}; {fix}")
    heads = {}
    for chain, head in data["heads"].items():
        if not (isinstance(head, dict) and isinstance(head.get("seq"), int) and not isinstance(head["seq"], bool)
                and head["seq"] >= 0 and isinstance(head.get("hash"), str) and head["hash"]):
            raise HeadsError(f"{path}: the head of {chain} is not {{seq: int >= 0, hash: text}}; {fix}")
        heads[chain] = (head["seq"], head["hash"])
    return heads


def heads_of(reports: dict[str, dict]) -> dict[str, tuple[int, str]]:
    """Each verified chain's anchor (seq, hash): the head the next run must find again."""
    heads = {}
    for chain, report in reports.items():
        anchor = report.get("anchor") or {}
        if anchor.get("last_seq") is not None and anchor.get("last_hash"):
            heads[chain_key(chain)] = (int(anchor["last_seq"]), str(anchor["last_hash"]))
    return heads


def gone_chains(heads: dict[str, tuple[int, str]], folders: list[str | Path], present: list[str]) -> dict[str, dict]:
    """A failing report for every chain of these folders that an earlier run verified and that is gone now."""
    roots = {chain_key(folder) for folder in folders}
    here = {chain_key(chain) for chain in present}
    return {chain: failed_report(f"{chain} was verified before (head seq {seq}) and is gone: deleted with its anchor")
            for chain, (seq, _) in heads.items() if str(Path(chain).parent) in roots and chain not in here}


def write_heads(path: str | Path, earlier: dict[str, tuple[int, str]], verified: dict[str, tuple[int, str]],
                folders: list[str | Path]) -> Path:
    """The new heads of these folders' chains, beside the untouched heads of other folders, written at once."""
    roots = {chain_key(folder) for folder in folders}
    kept = {chain: head for chain, head in earlier.items() if str(Path(chain).parent) not in roots}
    heads = {**kept, **verified}
    data = {"format": HEADS_FORMAT, "written_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "heads": {chain: {"seq": seq, "hash": digest} for chain, (seq, digest) in sorted(heads.items())}}
    return atomic_write_text(path, json.dumps(data, indent=1) + "\n")
