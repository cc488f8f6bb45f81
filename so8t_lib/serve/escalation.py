"""Escalations: a queue of cases for people, and notifications by category.

    so8t escalation list [--db logs/escalations.sqlite] [--status open]
    so8t escalation resolve CASE_ID --decision ALLOW|REFUSE --by NAME [--note TEXT]

Every ESCALATE decision becomes a case in an SQLite queue (status open → notified | notify_failed →
resolved). The human's decision, who made it and when are recorded there; the retraining flow reads
resolved cases later. Notifications go, by category, to a Slack-compatible webhook and to e-mail over
SMTP. Addresses and channels come from the config; secrets only from the environment
(SLACK_WEBHOOK_URL, SMTP_USERNAME, SMTP_PASSWORD). Sending runs in a background thread with
retries and exponential backoff, bounded by ``notify_timeout_s``, so it never delays a decision;
a failure is recorded on the case and logged.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import os
import smtplib
import sqlite3
import time
import urllib.request
import uuid
from email.message import EmailMessage
from pathlib import Path

from ..core.schema import HUMAN_DECISIONS
from .config import EscalationConfig

logger = logging.getLogger("so8t.escalation")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY, created_at TEXT NOT NULL, request_id TEXT, user_id TEXT, category TEXT,
    input TEXT, rationale TEXT, confidence REAL, status TEXT NOT NULL, notifications TEXT,
    human_decision TEXT, resolved_by TEXT, resolved_at TEXT, note TEXT, test INTEGER NOT NULL DEFAULT 0
)"""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class EscalationQueue:
    """SQLite-backed cases; safe for several processes (WAL, busy timeout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def add(self, result: dict, user_input: str, user_id: str | None = None, test: bool = False) -> str:
        case_id = f"esc_{uuid.uuid4().hex[:12]}"
        with self._connect() as db:
            db.execute("INSERT INTO cases (case_id, created_at, request_id, user_id, category, input, rationale, "
                       "confidence, status, notifications, test) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                       (case_id, _now(), result.get("request_id"), user_id, result.get("category"), user_input,
                        result.get("rationale"), result.get("confidence"), "open", "[]", int(test)))
        return case_id

    def get(self, case_id: str) -> dict:
        with self._connect() as db:
            row = db.execute("SELECT * FROM cases WHERE case_id = ?", (case_id,)).fetchone()
        if row is None:
            raise KeyError(f"no escalation case {case_id!r} in {self.path}")
        case = dict(row)
        case["notifications"] = json.loads(case["notifications"] or "[]")
        return case

    def list(self, status: str | None = None) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT case_id FROM cases" + (" WHERE status = ?" if status else "") +
                              " ORDER BY created_at", (status,) if status else ()).fetchall()
        return [self.get(r["case_id"]) for r in rows]

    def record_notifications(self, case_id: str, outcomes: list[dict]) -> None:
        ok = outcomes and all(o["ok"] for o in outcomes)
        with self._connect() as db:
            db.execute("UPDATE cases SET notifications = ?, status = CASE WHEN status = 'resolved' THEN status "
                       "ELSE ? END WHERE case_id = ?",
                       (json.dumps(outcomes, ensure_ascii=False), "notified" if ok else "notify_failed", case_id))

    def resolve(self, case_id: str, decision: str, by: str, note: str | None = None) -> dict:
        if decision not in HUMAN_DECISIONS:
            raise ValueError(f"decision must be one of {HUMAN_DECISIONS}, got {decision!r}")
        if not by.strip():
            raise ValueError("--by must name the person who decided")
        self.get(case_id)  # raises KeyError for an unknown id
        with self._connect() as db:
            db.execute("UPDATE cases SET status='resolved', human_decision=?, resolved_by=?, resolved_at=?, note=? "
                       "WHERE case_id=?", (decision, by.strip(), _now(), note, case_id))
        return self.get(case_id)


def _with_retries(send, retries: int, deadline: float) -> dict:
    attempt, delay, error = 0, 0.2, None
    while True:
        attempt += 1
        try:
            send(max(0.1, deadline - time.monotonic()))
            return {"ok": True, "attempts": attempt}
        except Exception as exc:  # noqa: BLE001 - any transport failure is retried, then recorded
            error = f"{type(exc).__name__}: {exc}"
        if attempt > retries or time.monotonic() + delay >= deadline:
            return {"ok": False, "attempts": attempt, "error": error}
        time.sleep(delay)
        delay *= 2


class Notifier:
    """Sends one case's notifications (webhook and/or e-mail) in a background thread."""

    def __init__(self, config: EscalationConfig, queue: EscalationQueue | None = None) -> None:
        self.config, self.queue = config, queue
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="so8t-notify")

    def _message(self, case: dict) -> str:
        return (f"[SO8T escalation {case['case_id']}] category {case['category']}, request {case['request_id']}\n"
                f"{case['rationale']}\nInput (personal data masked): {case['input']}\n"
                f"Resolve: so8t escalation resolve {case['case_id']} --decision ALLOW|REFUSE --by NAME")

    def _webhook(self, case: dict, timeout: float) -> None:
        url = os.environ.get("SLACK_WEBHOOK_URL") or self.config.notification_webhook
        route = self.config.routes[case["category"]]
        body = json.dumps({"text": self._message(case), "channel": route.slack_channel}).encode("utf-8")
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - URL from config/env
            if response.status >= 300:
                raise RuntimeError(f"webhook answered HTTP {response.status}")

    def _email(self, case: dict, timeout: float) -> None:
        route = self.config.routes[case["category"]]
        message = EmailMessage()
        message["From"], message["To"] = self.config.email_from, route.email
        message["Subject"] = f"[SO8T] escalation {case['case_id']} ({case['category']})"
        message.set_content(self._message(case))
        host = os.environ.get("SMTP_SERVER") or self.config.smtp_server
        port = int(os.environ.get("SMTP_PORT") or self.config.smtp_port)
        with smtplib.SMTP(host, port, timeout=timeout) as smtp:
            smtp.ehlo()  # the server's extensions are known only after EHLO
            encrypted = smtp.has_extn("starttls")
            if encrypted:
                smtp.starttls()
                smtp.ehlo()
            user, password = os.environ.get("SMTP_USERNAME"), os.environ.get("SMTP_PASSWORD")
            if user and password:
                if not encrypted:
                    raise RuntimeError(f"{host}:{port} offers no STARTTLS; refusing to send SMTP_PASSWORD in clear")
                smtp.login(user, password)
            smtp.send_message(message)

    def send(self, case: dict) -> list[dict]:
        """Send now (blocking, bounded by notify_timeout_s); returns one outcome per channel."""
        deadline = time.monotonic() + self.config.notify_timeout_s
        outcomes = []
        route = self.config.routes[case["category"]]
        if os.environ.get("SLACK_WEBHOOK_URL") or self.config.notification_webhook:
            outcomes.append({"channel": "webhook", "target": route.slack_channel,
                             **_with_retries(lambda t: self._webhook(case, t), self.config.retries, deadline)})
        if self.config.email_notifications and route.email and (os.environ.get("SMTP_SERVER") or self.config.smtp_server):
            outcomes.append({"channel": "email", "target": route.email,
                             **_with_retries(lambda t: self._email(case, t), self.config.retries, deadline)})
        for outcome in outcomes:
            if not outcome["ok"]:
                logger.error("escalation %s: %s notification failed after %d attempts: %s", case["case_id"],
                             outcome["channel"], outcome["attempts"], outcome.get("error"))
        if self.queue is not None and outcomes:
            self.queue.record_notifications(case["case_id"], outcomes)
        return outcomes

    def notify_async(self, case: dict) -> concurrent.futures.Future:
        return self._pool.submit(self.send, case)
