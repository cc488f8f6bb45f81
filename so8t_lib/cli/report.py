"""so8t report: a compliance report from the audit log, verified first.

    so8t report --logs logs/ --from 2026-11-01 --to 2026-11-30 [--period daily|weekly] --out reports/
    so8t report --logs logs/r1 --logs logs/r2 --config configs/production.yaml --from ... --to ...
    so8t report --logs logs/ --db logs/escalations.sqlite --from ... --to ...   (or --db postgresql://...)

Every chain of every --logs folder (the log --name or the config's logging.audit_log names, audit.jsonl
by default, and each replica's <stem>-<replica>.jsonl too) is verified before anything is counted; a
folder without that log is a failed chain. The page says so at the top, and the command exits 1 when a
chain does not verify (the report is still written, marked as such). A range that ends before it starts, or on the last
date there is (9999-12-31), exits 2 before any log is read. Decisions by class, category and language;
escalations opened, resolved and overdue against escalation_timeout, and how reviewers decided
compared with the model; fail-closed events by reason; model versions in service; the emergency
switch. With --db (the escalation queue: a SQLite file or postgresql:// URL) only the resolutions the queue
holds count: a resolve killed before its commit leaves a resolution record in the log while the case stays
open; the report says how many such records it left out. Without --db it reads the log alone. A queue that
cannot be opened, or holds none of the cases the logs resolved (another service's), is an error naming it, and
nothing is written. Encrypted logs (and an encrypted queue) are
read with the key in $SO8T_AUDIT_KEY (or the config's logging.encryption_key_env). The report holds no
request text, user id or note. Writes <out>/compliance_<from>_<to>[_<period>]/ (report.html, one CSV per
table, summary.json).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..core.checkpoint import CheckpointError
from ..core.config import ConfigError
from ..serve.config import AUDIT_HMAC_KEY_ENV, AUDIT_KEY_ENV, load_runtime_config
from ..workbench.reports import PERIODS, ComplianceReport, ReportError, day_range, make_report, write_report
from .arg_types import iso_date, number_in


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="so8t report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", action="append", required=True, help="a log folder (repeat for several)")
    parser.add_argument("--from", dest="date_from", type=iso_date, required=True, help="first day (UTC), YYYY-MM-DD")
    parser.add_argument("--to", dest="date_to", type=iso_date, required=True, help="last day (UTC), included")
    parser.add_argument("--period", choices=PERIODS, help="break the numbers down by day or ISO week")
    parser.add_argument("--out", default="reports", help="folder for the report's folder (default reports/)")
    parser.add_argument("--config", help="a runtime config: its audit log's name, escalation_timeout (the SLA) and "
                        "key variables")
    parser.add_argument("--name", help="the audit log's file name, replicas' chains found from it (default: the "
                        "config's logging.audit_log, else audit.jsonl)")
    parser.add_argument("--sla-seconds", type=number_in(0, what="a number of seconds"), help="escalation SLA in seconds (default: the config's "
                        "escalation_timeout, else 300)")
    parser.add_argument("--key-env", default=AUDIT_KEY_ENV, help="variable holding the encryption key")
    parser.add_argument("--hmac-key-env", default=AUDIT_HMAC_KEY_ENV, help="variable holding the HMAC key")
    parser.add_argument("--include-tests", action="store_true", help="count test-mode records too")
    parser.add_argument("--db", help="the escalation queue (a SQLite file or postgresql:// URL) that confirms the "
                        "log's resolutions: only those it holds count")
    args = parser.parse_args(argv)
    try:
        day_range(args.date_from, args.date_to)
    except ReportError as exc:  # before any config or chain is read
        parser.error(str(exc))
    sla, key_env, mac_env, name = 300.0, args.key_env, args.hmac_key_env, "audit.jsonl"
    try:
        if args.config:
            config = load_runtime_config(args.config)
            sla = config.escalation.escalation_timeout
            key_env = config.logging.encryption_key_env or key_env
            mac_env = config.logging.hmac_key_env or mac_env
            name = Path(config.logging.audit_log).name  # the base name: each replica's chain is found from it
        name = args.name or name
        if Path(name).name != name or name in ("", ".", ".."):
            raise ReportError(f"--name {name!r}: give the audit log's file name, not a path (the folder is --logs)")
        report, _ = make_report(args.logs, args.date_from, args.date_to, None, args.period,
                                sla if args.sla_seconds is None else args.sla_seconds, os.environ.get(key_env),
                                os.environ.get(mac_env), args.include_tests, name=name, queue=args.db)
    except (ConfigError, ReportError, OSError) as exc:
        sys.exit(f"error: {exc}")
    _print_outcome(report)
    try:  # written after the outcome is printed: a folder that cannot be written still shows what was verified
        folder = write_report(report, args.out)
    except (CheckpointError, OSError) as exc:  # CheckpointError: the folder holds files the workbench did not write
        sys.exit(f"error: the report was not written: {exc}")
    print(f"report: {folder / 'report.html'}")
    return 0 if report.verified else 1


def _print_outcome(report: ComplianceReport) -> None:
    """The verification header and the counts, as the command prints them."""
    s = report.summary
    head = (f"audit chains verified: {s['chains']} chain(s), {s['records_verified']} records" if report.verified
            else "AUDIT CHAIN VERIFICATION FAILED:\n  " + "\n  ".join(
                f"{chain}: {e}" for chain, r in report.verification.items() for e in r["errors"]))
    print(head)
    print(f"{s['decisions']} decisions ({s['decisions_allow']} ALLOW, {s['decisions_refuse']} REFUSE, "
          f"{s['decisions_escalate']} ESCALATE), {s['fail_closed']} fail-closed; {s['escalations_opened']} "
          f"escalations, {s['escalations_resolved']} resolved, {s['escalations_overdue']} overdue (SLA "
          f"{report.sla_s:g} s); {s['model_versions']} model version(s); {s['test_records_left_out']} test "
          f"record(s) left out")
    if "resolutions_not_in_queue" in s:
        print(f"resolutions checked against the escalation queue: {s['resolutions_not_in_queue']} record(s) it does "
              "not hold (a resolve stopped before its commit) left out")
    for note in report.notes:  # also at the top of the page and in summary.json
        print(f"note: {note}")
