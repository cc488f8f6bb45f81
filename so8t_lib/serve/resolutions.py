"""A person's decision on a case, recorded in the queue and in the audit log as one step.

The audit record is written inside the queue's transaction (``CaseStore.resolve(before_commit=...)``): if the
record cannot be written, nothing is resolved. The other way round cannot be undone, since the log is append-only:
a transaction that fails after its record was written (the commit itself, or a server gone between the two)
leaves a ``resolution`` the queue does not hold, and the reviewer's retry writes a second one. So that failure
appends a ``resolution_withdrawn`` record naming the attempt, and every reader of resolutions
(``standing_resolutions``) leaves withdrawn attempts out.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from .escalation import CaseStore, ResolvedButUnread
from .outcome import utc_timestamp

logger = logging.getLogger("so8t.escalation")

RESOLUTION = "resolution"
WITHDRAWN = "resolution_withdrawn"


def resolve_audited(queue: CaseStore, audit, case_id: str, decision: str, by: str, note: str | None = None,
                    supersede: bool = False, via: str | None = None) -> dict:
    """``queue.resolve`` with its audit record; what ``resolve`` raises is raised unchanged, after a record
    already written for the failed attempt is withdrawn (``resolution_withdrawn``). ``via`` names the channel
    (an API key) when it is not the command line."""
    attempt = uuid.uuid4().hex
    written: dict = {}

    def record(resolution: dict) -> None:
        entry = {"event": RESOLUTION, "timestamp": utc_timestamp(), "request_id": resolution["request_id"],
                 "case_id": resolution["case_id"], "human_decision": resolution["decision"],
                 "resolved_by": resolution["decided_by"], "note": resolution["note"],
                 "supersedes": resolution["supersedes"], "test": resolution["test"], "attempt": attempt}
        if via is not None:
            entry["via"] = via
        audit.append(entry)
        written.update(entry)

    try:
        return queue.resolve(case_id, decision, by, note, supersede, record)
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
