"""What ``verify`` checks once a chain is walked: that it matches its anchor, and an outside checkpoint
(``--expect SEQ:HASH``, ``--heads``). Kept apart from the walk so that each module stays readable."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .audit_files import anchor_mac, same_digest


@dataclass
class ChainSummary:
    """What a check needs of a walked chain, in constant memory however long the log: its first and last
    record, how many there were, and the records of the few seqs asked for beforehand (the anchor's, --expect's)."""

    count: int = 0
    first: dict | None = None
    last: dict | None = None
    at: dict[int, dict] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.count > 0


def check_anchor(anchor: dict | None, chain: ChainSummary, key: bytes | None, log: Path) -> tuple[list[str], list[str]]:
    """(errors, notes) of a walked chain against its anchor (``read_anchor`` checked its fields' types) and, with
    the key, the anchor's signature."""
    errors, notes = [], []
    if anchor is None:
        if chain:
            errors.append(f"{log.name}.anchor is missing: deletions at either end and a re-hashed chain cannot be "
                          "ruled out")
        return errors, notes
    if key:
        if "mac" not in anchor:
            errors.append(f"{log.name}.anchor is not signed, but an HMAC key was given")
        elif not same_digest(anchor["mac"], anchor_mac(anchor, key)):
            errors.append(f"{log.name}.anchor: the signature does not match (the anchor was forged or the key is wrong)")
    elif "mac" in anchor:
        notes.append(f"{log.name}.anchor is signed; pass the HMAC key to check its signature")
    if anchor.get("adopted_at") and not anchor.get("accepted_by"):
        errors.append(f"{log.name}.anchor was re-created by the writer at {anchor['adopted_at']} for a log that had "
                      f"none: deletions before then cannot be ruled out (so8t audit accept-anchor after a review)")
    elif anchor.get("accepted_by"):
        notes.append(f"{log.name}.anchor re-created and accepted by {anchor['accepted_by']} at {anchor['accepted_at']}")
    last_seq = anchor.get("last_seq")
    if last_seq is None:
        return errors, notes
    if not chain:
        errors.append(f"every record is missing: the anchor says the log holds seq {anchor['first_seq']}..{last_seq}")
        return errors, notes
    first = chain.first
    if first["seq"] > anchor["first_seq"]:
        errors.append(f"records before seq {first['seq']} are missing: the anchor says the log starts at seq "
                      f"{anchor['first_seq']} (deleted lines or a deleted oldest file)")
    elif first["seq"] == anchor["first_seq"] and first["prev_hash"] != anchor["first_prev_hash"]:
        errors.append(f"seq {first['seq']} does not link to the hash the anchor names for the start (the start of "
                      "the chain was replaced)")
    if chain.last["seq"] < last_seq:
        errors.append(f"records after seq {chain.last['seq']} are missing: the anchor says the log reaches seq "
                      f"{last_seq} (deleted lines or a deleted live file)")
    else:
        at = chain.at.get(last_seq)
        if at is not None and at["hash"] != anchor["last_hash"]:
            errors.append(f"seq {last_seq} has another hash than the anchor records: the chain was rewritten and "
                          "re-hashed")
    return errors, notes



def check_expect(expect: tuple[int, str], chain: ChainSummary,
                 rotated_is_note: bool = False) -> tuple[list[str], list[str]]:
    """(errors, notes) of an outside checkpoint ``(seq, hash)``. A checkpoint whose seq is no longer in the log
    cannot be compared: rotated away (before the first retained record) it is an error for ``--expect``, where the
    operator asked for exactly this check, and a note for ``--heads`` (``rotated_is_note``), whose next run
    compares with the head recorded now."""
    seq, digest = expect
    at = chain.at.get(seq)
    if at is not None:
        if at["hash"] != digest:
            return [f"seq {seq} has another hash than the outside checkpoint (the chain was rewritten)"], []
        return [], []
    if not chain or seq > chain.last["seq"]:
        return [f"the outside checkpoint names seq {seq}, but the log ends at seq "
                f"{chain.last['seq'] if chain else None} (rolled back)"], []
    if seq < chain.first["seq"]:
        problem = (f"the outside checkpoint names seq {seq}, which was rotated away (the oldest retained record is "
                   f"seq {chain.first['seq']}), so it could not be compared")
        if rotated_is_note:
            return [], [f"{problem}; the head recorded by this run is the next one's checkpoint"]
        return [f"{problem}: check against a newer checkpoint (the anchor line a passing run prints), or keep more "
                "rotated files (logging.backup_count)"], []
    return [f"the outside checkpoint names seq {seq}, which is missing from the log (records dropped)"], []
