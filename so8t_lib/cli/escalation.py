"""so8t escalation: the queue of cases for people.

    so8t escalation list [--status open] [--overdue] [--urgent] [--no-tests]
    so8t escalation resolve CASE_ID --decision ALLOW|REFUSE --by NAME [--note TEXT] [--supersede]
    so8t escalation history CASE_ID
    so8t escalation redact --resolved-before 2026-09-01 [--dry-run]

The queue is found as the runtime finds it: --db (a file or a postgresql:// URL), else
$SO8T_ESCALATION_DB, else $SO8T_ESCALATION_URL, else the --config's queue (escalation.queue_url, or
queue_db moved into $SO8T_LOG_DIR when set), else $SO8T_LOG_DIR/escalations.sqlite, else
logs/escalations.sqlite. A path that is not an existing queue is an error, never a new empty
database. Each resolution is appended to the case's history and written to the audit log (next to
the queue unless --audit-log or --config says otherwise); a second resolution needs --supersede.
``redact`` blanks the stored texts (user id, input, rationale, notes) of cases resolved before a date,
keeping decisions, names and times (retention of personal data), and writes one audit record for it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

from ..core.config import ConfigError
from ..core.schema import HUMAN_DECISIONS
from ..serve.audit import AuditLog, AuditWriteError
from ..serve.config import QUEUE_URL_ENV, REPLICA_ENV, load_runtime_config, replica_log_name, runtime_paths
from ..serve.escalation import REDACTED_FIELDS, EscalationQueue, QueueError
from ..serve.outcome import utc_timestamp
from ..serve.queue_sql import is_url
from ..serve.urgency import is_urgent_case
from .arg_types import utc_midnight

DB_NAME = "escalations.sqlite"
MAX_LISTED_IDS = 1000  # a redaction's audit record names at most this many cases (it always counts them all)
LISTED = ("case_id", "created_at", "category", "status", "overdue", "urgent", "test", "human_decision", "resolved_by", "input")


def _locations(args) -> tuple[str | Path, Path, str | None, str | None]:
    """(queue file or server URL, audit log, encryption key, HMAC key) for this invocation."""
    enc_env, mac_env = "SO8T_AUDIT_KEY", "SO8T_AUDIT_HMAC_KEY"
    config_db = config_audit = None
    if args.config:
        config = load_runtime_config(args.config)
        paths = runtime_paths(config)
        config_db, config_audit = paths.queue_target, paths.audit
        enc_env = config.logging.encryption_key_env or enc_env
        mac_env = config.logging.hmac_key_env or mac_env
    log_dir = Path(os.environ.get("SO8T_LOG_DIR") or "logs")
    db = (args.db or os.environ.get("SO8T_ESCALATION_DB") or os.environ.get(QUEUE_URL_ENV) or config_db
          or log_dir / DB_NAME)
    db = db if is_url(db) else Path(db)
    beside = log_dir if is_url(db) else Path(db).parent
    audit = Path(getattr(args, "audit_log", None) or config_audit or
                 replica_log_name(beside / "audit.jsonl", os.environ.get(REPLICA_ENV) or None))
    return db, audit, os.environ.get(enc_env), os.environ.get(mac_env)


def _redact(queue: EscalationQueue, audit: AuditLog, before: dt.datetime, dry_run: bool) -> int:
    def record(ids: list[str]) -> None:
        audit.append({"event": "redaction", "timestamp": utc_timestamp(), "resolved_before": before.date().isoformat(),
                      "cases": len(ids), "case_ids": ids[:MAX_LISTED_IDS], "fields": list(REDACTED_FIELDS)})

    ids = queue.redact_resolved(before, dry_run=dry_run, before_commit=record)
    verb = "would blank" if dry_run else "blanked"
    print(f"{verb} the texts of {len(ids)} case(s) resolved before {before.date()}"
          + ("" if dry_run else f"; recorded in {audit.path}"))
    for case_id in ids:
        print(case_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t escalation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="the queue: a SQLite file or a postgresql:// URL (default: see above)")
    parser.add_argument("--config", help="a runtime config: its queue, audit log and key variables")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="show cases (one JSON object each)")
    p_list.add_argument("--status", choices=["open", "notified", "notify_failed", "resolved"])
    p_list.add_argument("--overdue", action="store_true", help="only cases past escalation_timeout")
    p_list.add_argument("--urgent", action="store_true", help="only cases the emergency screen marked")
    p_list.add_argument("--no-tests", action="store_true", help="leave out cases made in --test-mode")
    p_resolve = sub.add_parser("resolve", help="record a person's decision on a case")
    p_resolve.add_argument("case_id")
    p_resolve.add_argument("--decision", required=True, choices=HUMAN_DECISIONS)
    p_resolve.add_argument("--by", required=True)
    p_resolve.add_argument("--note")
    p_resolve.add_argument("--supersede", action="store_true", help="replace an earlier decision (it stays in the history)")
    p_resolve.add_argument("--audit-log", help="the audit log that records the resolution")
    p_history = sub.add_parser("history", help="every resolution of a case, oldest first")
    p_history.add_argument("case_id")
    p_redact = sub.add_parser("redact", help="blank the texts of cases resolved before a date (retention)")
    p_redact.add_argument("--resolved-before", required=True, type=utc_midnight, help="a date (UTC), e.g. 2026-09-01")
    p_redact.add_argument("--dry-run", action="store_true", help="list the cases, change nothing")
    p_redact.add_argument("--audit-log", help="the audit log that records the redaction")
    args = parser.parse_args(argv)
    try:
        db, audit_path, enc_key, mac_key = _locations(args)
        queue = EscalationQueue(db, create=False, encryption_key=enc_key)
        if args.command == "list":
            for case in queue.list(args.status, overdue_only=args.overdue, include_tests=not args.no_tests):
                if args.urgent and not is_urgent_case(case):
                    continue
                print(json.dumps({k: case.get(k) for k in LISTED}, ensure_ascii=False))
            return 0
        if args.command == "history":
            queue.get(args.case_id)
            for entry in queue.history(args.case_id):
                print(json.dumps(entry, ensure_ascii=False))
            return 0
        audit = AuditLog(audit_path, encryption_key=enc_key, hmac_key=mac_key)
        if args.command == "redact":
            return _redact(queue, audit, args.resolved_before, args.dry_run)

        def record(resolution: dict) -> None:
            audit.append({"event": "resolution", "timestamp": utc_timestamp(), "request_id": resolution["request_id"],
                          "case_id": resolution["case_id"], "human_decision": resolution["decision"],
                          "resolved_by": resolution["decided_by"], "note": resolution["note"],
                          "supersedes": resolution["supersedes"], "test": resolution["test"]})

        case = queue.resolve(args.case_id, args.decision, args.by, args.note, supersede=args.supersede,
                             before_commit=record)
    except (ConfigError, QueueError, KeyError, ValueError, AuditWriteError) as exc:
        sys.exit(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}")
    before = case["resolution"]["supersedes"]
    print(f"{case['case_id']}: resolved as {case['human_decision']} by {case['resolved_by']} at {case['resolved_at']}"
          + (f" (supersedes {before['decision']} by {before['decided_by']} at {before['decided_at']})" if before else "")
          + f"; recorded in {audit_path}")
    return 0
