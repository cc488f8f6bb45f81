"""An escalation desk on a scratch folder for the replay tests: a SQLite queue, its spool and an audit log, run in the
foreground; with ``record_notices`` the notices it would send are collected in ``desk.sent`` instead."""

from __future__ import annotations

from pathlib import Path

from so8t_lib.serve.audit import AuditLog
from so8t_lib.serve.config import EscalationConfig
from so8t_lib.serve.escalation import EscalationQueue
from so8t_lib.serve.escalation_desk import EscalationDesk
from so8t_lib.serve.notify import Notifier
from so8t_lib.serve.outcome import utc_timestamp
from so8t_lib.serve.spool import CaseSpool


def scratch_desk(folder: Path, record_notices: bool = False) -> EscalationDesk:
    queue_path = folder / "escalations.sqlite"
    desk = EscalationDesk(lambda: EscalationQueue(queue_path), CaseSpool(folder / "escalations.sqlite.spool"),
                          AuditLog(folder / "audit.jsonl"), Notifier(EscalationConfig()), notify=record_notices,
                          background=False)
    if record_notices:
        sent: list[str] = []
        desk._notify = lambda case, reminder=False: sent.append(case["case_id"])  # what would be sent
        desk.sent = sent
    return desk


def spooled_case(n: int) -> tuple[dict, dict]:
    """(case, decision record) of an escalated request, as the runtime hands them to the spool."""
    case = {"case_id": f"esc_{n:05d}", "request_id": f"req_{n:05d}", "category": "hr", "input": "x", "rationale": "r"}
    record = {"event": "decision", "timestamp": utc_timestamp(), "request_id": case["request_id"],
              "decision": "ESCALATE", "input": "x", "category": "hr"}
    return case, record
