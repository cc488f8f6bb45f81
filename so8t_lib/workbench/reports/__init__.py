"""Compliance reports from the audit log (the feature list's コンプライアンス報告).

    so8t report --logs logs/ --from 2026-11-01 --to 2026-11-30 [--period daily|weekly] [--db QUEUE] --out reports/

``collect`` verifies and reads every chain (and, given the escalation queue, what it holds of each case), ``compliance`` computes the tables, ``render`` writes
the HTML page (figures inline), the CSVs and summary.json. ``make_report`` does all three; notebook
07 calls the same functions and shows the figures.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from .collect import PERIODS, Collected, ReportError, collect, day_range, open_queue, queue_history
from .compliance import ComplianceReport, build_report
from .render import figures, render_html, write_report

__all__ = ["PERIODS", "Collected", "ComplianceReport", "ReportError", "build_report", "collect", "day_range",
           "figures", "make_report", "render_html", "write_report"]


def make_report(logs: list[str | Path], date_from: dt.date, date_to: dt.date, out: str | Path | None = None,
                period: str | None = None, sla_s: float = 300.0, key: str | bytes | None = None,
                hmac_key: str | bytes | None = None, include_tests: bool = False,
                now: dt.datetime | None = None, name: str = "audit.jsonl",
                queue: str | Path | None = None) -> tuple[ComplianceReport, Path | None]:
    """Verify, read, compute and (with ``out``) write; returns the report and its folder. ``name``: the audit
    log's file name (the config's ``logging.audit_log``); each replica's chain is found from it. ``queue``: the
    escalation queue (a SQLite file or postgresql:// URL, read with ``key``); with it only the resolutions it
    holds count, since a resolve killed before its commit leaves a record in the log and the case open."""
    if period is not None and period not in PERIODS:
        raise ReportError(f"--period must be one of {', '.join(PERIODS)} (got {period!r})")
    day_range(date_from, date_to)  # a range that cannot be reported on is refused before any chain is read
    store = open_queue(queue, key) if queue is not None else None  # a wrong --db fails before the logs are read
    try:
        collected = collect(logs, key, hmac_key, include_tests, name)
        history = queue_history(store, collected.records) if store is not None else None
    finally:
        if store is not None:
            store.close()
    report = build_report(collected, date_from, date_to, period, sla_s, now, queue_history=history)
    return report, (write_report(report, out) if out is not None else None)
