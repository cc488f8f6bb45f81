"""A person's decision on a case, recorded in the queue and in the audit log as one step.

The audit record is written inside the queue's transaction (``CaseStore.resolve(before_commit=...)``): if the
record cannot be written, nothing is resolved. The other way round cannot be undone, since the log is append-only:
a transaction that fails after its record was written (the commit itself, or a server gone between the two)
leaves a ``resolution`` the queue does not hold, and the reviewer's retry writes a second one. So that failure
appends a ``resolution_withdrawn`` record naming the attempt, and every reader of resolutions
(``standing_resolutions``) leaves withdrawn attempts out. A process killed between the record and the commit
(kill -9, the OOM killer) withdraws nothing: the queue, not the log, says whether a case was resolved, so a
reader that has the queue keeps only the records it holds (``held_by_queue``).

A resolution answers one employee (``human_decision``: ALLOW approved, REFUSE declined, this time). What the
gate should decide on such a request is another question (SAFETY_POLICY.md: a harassment report a person
handled is still ESCALATE), so it is recorded only when the reviewer gives it (``gate_label``), and
``so8t retrain extract`` takes a label from that, never from the decision.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping

from .escalation import CLI_CHANNEL, CaseStore, ResolvedButUnread
from .outcome import parse_time, utc_timestamp

logger = logging.getLogger("so8t.escalation")

RESOLUTION = "resolution"
WITHDRAWN = "resolution_withdrawn"


def resolve_audited(queue: CaseStore, audit, case_id: str, decision: str, by: str, note: str | None = None,
                    supersede: bool = False, via: str | None = None, gate_label: str | None = None) -> dict:
    """``queue.resolve`` with its audit record; what ``resolve`` raises is raised unchanged, after a record
    already written for the failed attempt is withdrawn (``resolution_withdrawn``). ``via`` names the channel
    (an API key) when it is not the command line; ``gate_label`` (ALLOW, REFUSE, ESCALATE or None) is what
    the gate should have decided, recorded in the row and the audit record."""
    attempt = uuid.uuid4().hex
    written: dict = {}

    def record(resolution: dict) -> None:
        entry = {"event": RESOLUTION, "timestamp": utc_timestamp(), "request_id": resolution["request_id"],
                 "case_id": resolution["case_id"], "human_decision": resolution["decision"],
                 "resolved_by": resolution["decided_by"], "note": resolution["note"],
                 "supersedes": resolution["supersedes"], "test": resolution["test"], "attempt": attempt,
                 "decided_at": resolution["decided_at"],  # the queue row's own stamp: readers pair the two on it
                 "gate_label": resolution.get("gate_label")}
        if via is not None:
            entry["via"] = via
        audit.append(entry)
        written.update(entry)

    try:
        return queue.resolve(case_id, decision, by, note, supersede, record, via=via or CLI_CHANNEL,
                             gate_label=gate_label)
    except ResolvedButUnread:  # committed: the record stands
        raise
    except BaseException as failure:
        if written:
            _withdraw(audit, written, failure)
        raise


def _withdraw(audit, written: dict, failure: BaseException) -> None:
    reason = f"the queue did not commit it: {type(failure).__name__}: {failure}"
    try:
        audit.append({"event": WITHDRAWN, "timestamp": utc_timestamp(), "request_id": written["request_id"],
                      "case_id": written["case_id"], "attempt": written["attempt"], "reason": reason,
                      "test": written["test"]})
    except Exception:  # noqa: BLE001 - the resolve's own error is what the reviewer must see
        logger.exception("escalation %s: a resolution the queue did not commit is in the audit log (attempt %s) "
                         "and could not be withdrawn there", written["case_id"], written["attempt"])


def standing_resolutions(records: Iterable[dict]) -> list[dict]:
    """The ``resolution`` records among ``records`` whose attempt was not withdrawn (older records carry no
    attempt and always stand), in their order."""
    records = list(records)
    withdrawn = {r.get("attempt") for r in records if r.get("event") == WITHDRAWN and r.get("attempt")}
    return [r for r in records if r.get("event") == RESOLUTION and r.get("attempt") not in withdrawn]


def held_by_queue(records: Iterable[dict], history: Mapping[str, list[dict]]) -> tuple[list[dict], list[dict]]:
    """(held, not_held): the ``resolution`` records among ``records`` split by whether the queue holds them, in
    their order. ``history`` maps a case id to its ``resolutions`` rows (``CaseStore.history``); each row
    holds at most one record. A record that carries ``decided_at`` (written since it was added) is its row's
    when decision, reviewer and ``decided_at`` are the row's; an older one is the first record with the
    row's decision and reviewer written at or after the row's ``decided_at`` (the record is written after
    that stamp is taken, so an attempt killed before the row's transaction never pairs with it)."""
    records = [r for r in records if r.get("event") == RESOLUTION]
    taken: set[int] = set()
    by_case: dict[str, list[dict]] = {}
    for record in records:
        by_case.setdefault(record.get("case_id"), []).append(record)
    for case_id, logged in by_case.items():
        for row in sorted(history.get(case_id) or [], key=lambda row: row["id"]):
            match = _record_of(row, [r for r in logged if id(r) not in taken])
            if match is not None:
                taken.add(id(match))
    return [r for r in records if id(r) in taken], [r for r in records if id(r) not in taken]


def _record_of(row: dict, logged: list[dict]) -> dict | None:
    """The record of one queue ``resolutions`` row among a case's unpaired records, or None."""
    same = [r for r in logged if r.get("human_decision") == row["decision"]
            and r.get("resolved_by", row["decided_by"]) == row["decided_by"]]
    exact = [r for r in same if r.get("decided_at") == row["decided_at"]]
    if exact:
        return exact[-1]  # a killed attempt and its retry within the same second: the retry is the later one
    since = parse_time(row["decided_at"])
    older = [(at, r) for r in same if "decided_at" not in r
             and (at := parse_time(r.get("timestamp"))) is not None and since is not None and at >= since]
    return min(older, key=lambda pair: pair[0])[1] if older else None
