"""so8t escalation: the queue of cases for people.

    so8t escalation list [--status unresolved] [--overdue] [--urgent] [--no-tests]
    so8t escalation resolve CASE_ID --decision ALLOW|REFUSE --by NAME [--note TEXT] [--supersede]
                            [--gate-label ALLOW|REFUSE|ESCALATE]
    so8t escalation history CASE_ID
    so8t escalation redact --resolved-before 2026-09-01 [--dry-run]

The queue is found as the runtime finds it: --db (a file or a postgresql:// URL), else
$SO8T_ESCALATION_DB, else $SO8T_ESCALATION_URL, else the --config's queue (escalation.queue_url, or
queue_db moved into $SO8T_LOG_DIR when set), else $SO8T_LOG_DIR/escalations.sqlite, else
logs/escalations.sqlite (--db and --config go before or after the subcommand). ``--status unresolved`` lists
every case waiting for a person: a case is ``open`` only until its notification is tried, then
``notified`` or ``notify_failed``. A path that is not an existing queue is an error, never a new empty
database. Each resolution is appended to the case's history and written to the audit log: --audit-log,
else the --config's, else next to a queue file. A queue at a URL has no folder, so there resolve and
redact need --audit-log, --config or $SO8T_LOG_DIR (the service's audit chain), and refuse with exit 2
without one: a record in a chain the service does not write is missed by so8t report and retrain extract.
A derived audit log whose folder is missing is refused too, and a record that starts a new chain says so.
A second resolution needs --supersede. --decision is what this employee gets; --gate-label is what the gate should
have decided on the request (shared/SAFETY_POLICY.md), the only label so8t retrain extract takes from a
resolution (a harassment report settled by a person is still ESCALATE for the gate); without it the case
trains nothing. An empty --db, --config or --audit-log (an unset variable in a script) is
an error, never the default queue or log; a --by, --note or CASE_ID that is not valid UTF-8 is one too.
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
from typing import NamedTuple

from ..core.config import ConfigError
from ..core.schema import HUMAN_DECISIONS, LABELS
from ..serve.audit import AuditLog, AuditWriteError
from ..serve.audit_files import anchor_path
from ..serve.config import (
    AUDIT_HMAC_KEY_ENV,
    AUDIT_KEY_ENV,
    QUEUE_URL_ENV,
    REPLICA_ENV,
    load_runtime_config,
    replica_log_name,
    runtime_paths,
)
from ..serve.escalation import (
    CASE_STATUSES,
    REDACTED_FIELDS,
    UNRESOLVED,
    EscalationQueue,
    QueueError,
)
from ..serve.outcome import utc_timestamp
from ..serve.queue_sql import is_url
from ..serve.resolutions import resolve_audited
from ..serve.urgency import is_urgent_case
from .arg_types import utc_midnight

DB_NAME = "escalations.sqlite"
MAX_LISTED_IDS = 1000  # a redaction's audit record names at most this many cases (it always counts them all)
LISTED = ("case_id", "created_at", "category", "status", "overdue", "urgent", "test", "human_decision", "resolved_by",
          "gate_label", "input")


class AuditTarget(NamedTuple):
    """Where a resolution or redaction is audited; ``path`` None when nothing names it (a URL queue)."""

    path: Path | None
    source: str  # what named it, for messages


class NoAuditLog(ValueError):
    """The command would write an audit record but cannot tell where the service's chain is."""


def given_path(text: str) -> str:
    """An argparse type: a path or URL that names something (``--db ""`` from an unset variable must not fall
    back to the default queue, another queue than the one meant)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a path, or leave the option out to use the default")
    return text


def unicode_text(text: str) -> str:
    """An argparse type: text that can be stored (invalid UTF-8 arrives as lone surrogates, which no store takes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError("not valid Unicode text (its bytes are not UTF-8: check the encoding of "
                                         "the terminal or script that passed it)") from None
    return text


def _locations(args) -> tuple[str | Path, AuditTarget, str | None, str | None, dict]:
    """(queue file or server URL, audit log, encryption key, HMAC key, the log's masking settings) for this
    invocation; the settings are the --config's ``logging`` (else the defaults), for the log and the queue alike."""
    enc_env, mac_env = AUDIT_KEY_ENV, AUDIT_HMAC_KEY_ENV
    config_db = config_audit = None
    masking = {"mask_personal_data": True, "max_field_chars": 8192}
    if args.config:
        config = load_runtime_config(args.config)
        paths = runtime_paths(config)
        config_db, config_audit = paths.queue_target, paths.audit
        enc_env = config.logging.encryption_key_env or enc_env
        mac_env = config.logging.hmac_key_env or mac_env
        masking = {"mask_personal_data": config.logging.mask_personal_data,
                   "max_field_chars": config.logging.max_field_chars}
    env_log_dir = os.environ.get("SO8T_LOG_DIR")
    log_dir = Path(env_log_dir or "logs")
    db = (args.db or os.environ.get("SO8T_ESCALATION_DB") or os.environ.get(QUEUE_URL_ENV) or config_db
          or log_dir / DB_NAME)
    db = db if is_url(db) else Path(db)
    replica = os.environ.get(REPLICA_ENV) or None
    if getattr(args, "audit_log", None):
        audit = AuditTarget(Path(args.audit_log), "--audit-log")
    elif config_audit:
        audit = AuditTarget(Path(config_audit), f"--config {args.config}")
    elif not is_url(db):
        audit = AuditTarget(replica_log_name(Path(db).parent / "audit.jsonl", replica), "the queue's folder")
    elif env_log_dir:  # a URL has no folder: only an explicit log folder says where the service audits
        audit = AuditTarget(replica_log_name(log_dir / "audit.jsonl", replica), "SO8T_LOG_DIR")
    else:
        audit = AuditTarget(None, "nothing")
    return db, audit, os.environ.get(enc_env), os.environ.get(mac_env), masking


def open_audit_log(target: AuditTarget, enc_key: str | None, mac_key: str | None,
                   masking: dict | None = None) -> tuple[AuditLog, bool]:
    """The audit log to record in, and whether it already held a chain. Refuses (NoAuditLog) when no
    log is named, or when a log not given by --audit-log lies in a missing folder: AuditLog would make
    the folder and a fresh chain there, one that neither the service nor so8t report reads."""
    if target.path is None:
        raise NoAuditLog(
            "the queue is a URL (--db or $SO8T_ESCALATION_URL), which does not say where the service's audit "
            "log is, and neither --audit-log, --config nor $SO8T_LOG_DIR is set; refusing to write the record "
            "into a new chain under ./logs that so8t report and so8t retrain extract would never read. Pass "
            "--audit-log PATH (the service's audit.jsonl), --config (the service's runtime config) or set "
            "SO8T_LOG_DIR to the service's log folder")
    if target.source != "--audit-log" and not target.path.parent.is_dir():
        raise NoAuditLog(
            f"the audit log {target.path} (from {target.source}) is in a folder that does not exist; refusing "
            "to start a new chain there. Pass --audit-log PATH (the service's audit.jsonl) or correct "
            f"{target.source}")
    existed = target.path.is_file() or anchor_path(target.path).is_file()
    masking = masking or {}
    log = AuditLog(target.path, encryption_key=enc_key, hmac_key=mac_key,
                   mask_input=masking.get("mask_personal_data", True),
                   max_field_chars=masking.get("max_field_chars", 8192))
    if log.open_error:  # e.g. not an audit log at all: refused before the case is touched
        raise NoAuditLog(log.open_error)
    return log, existed


def _new_chain_note(path: Path) -> None:
    print(f"note: there was no audit chain at {path}; this record started one (if the service audits "
          "elsewhere, point --audit-log at its log)", file=sys.stderr)


def _redact(queue: EscalationQueue, audit: AuditLog | None, before: dt.datetime, dry_run: bool) -> int:
    def record(ids: list[str]) -> None:
        audit.append({"event": "redaction", "timestamp": utc_timestamp(), "resolved_before": before.date().isoformat(),
                      "cases": len(ids), "case_ids": ids[:MAX_LISTED_IDS], "fields": list(REDACTED_FIELDS)})

    ids = queue.redact_resolved(before, dry_run=dry_run, before_commit=None if audit is None else record)
    verb = "would blank" if dry_run else "blanked"
    print(f"{verb} the texts of {len(ids)} case(s) resolved before {before.date()}"
          + ("" if audit is None else f"; recorded in {audit.path}"))
    for case_id in ids:
        print(case_id)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t escalation", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = argparse.ArgumentParser(add_help=False)  # also after the subcommand, as the docs write them
    for parent, default in ((parser, None), (where, argparse.SUPPRESS)):
        parent.add_argument("--db", default=default, type=given_path,
                            help="the queue: a SQLite file or a postgresql:// URL (default: see above)")
        parent.add_argument("--config", default=default, type=given_path,
                            help="a runtime config: its queue, audit log, key variables and masking")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", parents=[where], help="show cases (one JSON object each)")
    p_list.add_argument("--status", choices=[*CASE_STATUSES, UNRESOLVED],
                        help=f"one status, or {UNRESOLVED} (every case waiting for a person)")
    p_list.add_argument("--overdue", action="store_true", help="only cases past escalation_timeout")
    p_list.add_argument("--urgent", action="store_true", help="only cases the emergency screen marked")
    p_list.add_argument("--no-tests", action="store_true", help="leave out cases made in --test-mode")
    p_resolve = sub.add_parser("resolve", parents=[where], help="record a person's decision on a case")
    p_resolve.add_argument("case_id", type=unicode_text)
    p_resolve.add_argument("--decision", required=True, choices=HUMAN_DECISIONS)
    p_resolve.add_argument("--by", required=True, type=unicode_text, help="who decided (a visible name, at most "
                           "128 characters)")
    p_resolve.add_argument("--note", type=unicode_text, help="why (stored masked and bounded, as the audit log does)")
    p_resolve.add_argument("--supersede", action="store_true", help="replace an earlier decision (it stays in the history)")
    p_resolve.add_argument("--gate-label", choices=LABELS, help="what the gate should have decided on this request "
                           "(the label retraining takes; without it the case is no training row)")
    p_resolve.add_argument("--audit-log", type=given_path, help="the audit log that records the resolution")
    p_history = sub.add_parser("history", parents=[where], help="every resolution of a case, oldest first")
    p_history.add_argument("case_id", type=unicode_text)
    p_redact = sub.add_parser("redact", parents=[where],
                              help="blank the texts of cases resolved before a date (retention)")
    p_redact.add_argument("--resolved-before", required=True, type=utc_midnight, help="a date (UTC), e.g. 2026-09-01")
    p_redact.add_argument("--dry-run", action="store_true", help="list the cases, change nothing")
    p_redact.add_argument("--audit-log", type=given_path, help="the audit log that records the redaction")
    args = parser.parse_args(argv)
    try:
        db, target, enc_key, mac_key, masking = _locations(args)
        queue = EscalationQueue(db, create=False, encryption_key=enc_key, **masking)
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
        if args.command == "redact" and args.dry_run:  # writes nothing, so needs no audit log
            return _redact(queue, None, args.resolved_before, dry_run=True)
        if args.command == "redact" and args.resolved_before > dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
            print(f"error: --resolved-before {args.resolved_before.date()} is in the future: it would blank cases "
                  "resolved minutes ago, and blanking cannot be undone; give a past date (tomorrow: all so far)",
                  file=sys.stderr)
            return 2
        audit, existed = open_audit_log(target, enc_key, mac_key, masking)
        if args.command == "redact":
            code = _redact(queue, audit, args.resolved_before, dry_run=False)
        else:
            case = _resolve(queue, audit, args)
    except NoAuditLog as exc:  # a missing setting: bad input, nothing written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConfigError, QueueError, KeyError, ValueError, AuditWriteError) as exc:
        sys.exit(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}")
    if not existed and audit.path.is_file():
        _new_chain_note(audit.path)
    if args.command == "redact":
        return code
    before = case["resolution"]["supersedes"]
    print(f"{case['case_id']}: resolved as {case['human_decision']} by {case['resolved_by']} at {case['resolved_at']}"
          + (f" (supersedes {before['decision']} by {before['decided_by']} at {before['decided_at']})" if before else "")
          + (f"; gate label {case['resolution']['gate_label']}" if case["resolution"].get("gate_label") else
             "; no gate label (retraining leaves the case out)")
          + f"; recorded in {audit.path}")
    return 0


def _resolve(queue: EscalationQueue, audit: AuditLog, args: argparse.Namespace) -> dict:
    return resolve_audited(queue, audit, args.case_id, args.decision, args.by, args.note, supersede=args.supersede,
                           gate_label=args.gate_label)
