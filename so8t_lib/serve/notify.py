"""Notifications for escalation cases, by category: a Slack-compatible webhook and e-mail over SMTP.

Addresses and channels come from the config; secrets only from the environment (SLACK_WEBHOOK_URL,
SMTP_USERNAME, SMTP_PASSWORD, and each route's own webhook variable, ``routes.<category>.webhook_env``:
Slack's incoming webhooks post to the channel they were made for, so one shared webhook reaches one
channel). Sending runs in a background thread with retries and exponential backoff, bounded by
``notify_timeout_s``, so it never delays a decision; the outcome is recorded on the case. When no
channel is configured at all, that is itself a failed outcome (logged, recorded, the case shows
notify_failed): an escalation that reaches nobody must not look like a sent one.

The request is the asker's text: in a message it is quoted line by line (a line break in it cannot pose as a line
of ours, such as a forged "Resolve:" link) and, for Slack, escaped (``<!channel>`` or ``<url|label>`` would
otherwise ping a channel or show a link under a false name). STARTTLS checks the server's certificate against the
system's CAs, or SMTP_CA_FILE / ``smtp_ca_file`` for an internal CA: the password and the case go only to the server
that proves to be ``smtp_server``; a server that offers no STARTTLS gets nothing unless ``smtp_require_tls`` is
turned off for a relay on a trusted network.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import smtplib
import ssl
import time
import urllib.request
from email.message import EmailMessage

from .config import EscalationConfig
from .urgency import is_urgent_case

logger = logging.getLogger("so8t.escalation")


def slack_escaped(text: str) -> str:
    """Slack's three control characters as entities: the text shows as typed, never as a ping or a link."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def quoted(text: str) -> str:
    """Every line of ``text`` after a ``> `` marker, so none of it can pass for a line of the message around it."""
    return "\n".join("> " + line for line in (str(text).splitlines() or [""]))
NO_CHANNEL = ("no notification channel is configured (set SLACK_WEBHOOK_URL or escalation.notification_webhook, "
              "or escalation.email_notifications with smtp_server)")


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

    def __init__(self, config: EscalationConfig, queue=None) -> None:
        self.config, self.queue = config, queue
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="so8t-notify")

    def shared_webhook(self) -> str | None:
        """SLACK_WEBHOOK_URL, else escalation.notification_webhook."""
        return os.environ.get("SLACK_WEBHOOK_URL") or self.config.notification_webhook

    def webhook_for(self, category: str) -> str | None:
        """The route's own webhook (``routes.<category>.webhook_env``) when its variable is set, else the shared one."""
        env = self.config.routes[category].webhook_env
        return (os.environ.get(env) if env else None) or self.shared_webhook()

    def unset_route_webhooks(self) -> list[str]:
        """Variables named by ``webhook_env`` that are not set (their routes fall back to the shared webhook)."""
        return [route.webhook_env for route in self.config.routes.values()
                if route.webhook_env and not os.environ.get(route.webhook_env)]

    def channels(self) -> list[str]:
        """The channels a case could be sent to now ([] when none is configured)."""
        found = []
        if self.shared_webhook() or any(route.webhook_env and os.environ.get(route.webhook_env)
                                         for route in self.config.routes.values()):
            found.append("webhook")
        if self.config.email_notifications and (os.environ.get("SMTP_SERVER") or self.config.smtp_server):
            found.append("email")
        return found

    def _message(self, case: dict, reminder: bool, escape=str) -> str:
        """The text of a notification; ``escape`` makes each value from the case literal for the channel."""
        head = ("URGENT, a possible emergency: " if is_urgent_case(case) else "") + (
            "OVERDUE: no decision yet on " if reminder else "")
        case_id, category, request_id = (escape(case[key]) for key in ("case_id", "category", "request_id"))
        rationale = " ".join(str(case["rationale"]).split())  # one line: it cannot break the message's layout
        return (f"[SO8T escalation {case_id}] {head}category {category}, request {request_id}\n"
                f"{escape(rationale)}\nInput (personal data masked):\n{quoted(escape(case['input']))}\n"
                f"Resolve: so8t escalation resolve {case_id} --decision ALLOW|REFUSE --by NAME")

    def _webhook(self, case: dict, timeout: float, reminder: bool) -> None:
        url = self.webhook_for(case["category"])
        route = self.config.routes[case["category"]]
        if not url:
            raise RuntimeError(f"no webhook for route {case['category']}: set "
                               f"{route.webhook_env or 'its webhook_env variable'} or SLACK_WEBHOOK_URL")
        body = json.dumps({"text": self._message(case, reminder, escape=slack_escaped), "channel": route.slack_channel}).encode("utf-8")
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - URL from config/env
            if response.status >= 300:
                raise RuntimeError(f"webhook answered HTTP {response.status}")

    def _email(self, case: dict, timeout: float, reminder: bool) -> None:
        route = self.config.routes[case["category"]]
        message = EmailMessage()
        message["From"], message["To"] = self.config.email_from, route.email
        message["Subject"] = f"[SO8T] {'URGENT ' if is_urgent_case(case) else ''}" \
                             f"{'OVERDUE ' if reminder else ''}escalation {case['case_id']} ({case['category']})"
        message.set_content(self._message(case, reminder))
        host = os.environ.get("SMTP_SERVER") or self.config.smtp_server
        port = int(os.environ.get("SMTP_PORT") or self.config.smtp_port)
        with smtplib.SMTP(host, port, timeout=timeout) as smtp:
            smtp.ehlo()  # the server's extensions are known only after EHLO
            encrypted = smtp.has_extn("starttls")
            if not encrypted and self.config.smtp_require_tls:
                raise RuntimeError(f"{host}:{port} offers no STARTTLS; the case is not sent in clear (set "
                                   "escalation.smtp_require_tls: false for a relay on a trusted network)")
            if encrypted:
                smtp.starttls(context=self._tls_context())
                smtp.ehlo()
            user, password = os.environ.get("SMTP_USERNAME"), os.environ.get("SMTP_PASSWORD")
            if user and password:
                if not encrypted:
                    raise RuntimeError(f"{host}:{port} offers no STARTTLS; refusing to send SMTP_PASSWORD in clear")
                smtp.login(user, password)
            smtp.send_message(message)

    def _tls_context(self) -> ssl.SSLContext:
        """Certificate and host name checked (smtplib's own default checks neither)."""
        ca_file = os.environ.get("SMTP_CA_FILE") or self.config.smtp_ca_file
        try:
            return ssl.create_default_context(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise RuntimeError(f"SMTP_CA_FILE / smtp_ca_file {ca_file}: unreadable as PEM certificates ({exc})") from None

    def send(self, case: dict, reminder: bool = False) -> list[dict]:
        """Send now (blocking, bounded by notify_timeout_s); returns one outcome per channel, each appended to the
        case's record (a reminder's marked ``reminder: true``)."""
        deadline = time.monotonic() + self.config.notify_timeout_s
        outcomes = []
        route = self.config.routes[case["category"]]
        channels = self.channels()
        if "webhook" in channels:
            own = bool(route.webhook_env and os.environ.get(route.webhook_env))
            outcomes.append({"channel": "webhook", "target": route.webhook_env if own else route.slack_channel,
                             **_with_retries(lambda t: self._webhook(case, t, reminder), self.config.retries, deadline)})
        if "email" in channels and route.email:
            outcomes.append({"channel": "email", "target": route.email,
                             **_with_retries(lambda t: self._email(case, t, reminder), self.config.retries, deadline)})
        if not outcomes:
            outcomes.append({"channel": "none", "target": None, "ok": False, "attempts": 0, "error": NO_CHANNEL})
        for outcome in outcomes:
            if reminder:  # the queue appends these beside the first notice's, which a failed reminder must not undo
                outcome["reminder"] = True
            if not outcome["ok"]:
                logger.error("escalation %s: %s notification failed after %d attempts: %s", case["case_id"],
                             outcome["channel"], outcome["attempts"], outcome.get("error"))
        if self.queue is not None:
            try:
                self.queue.record_notifications(case["case_id"], outcomes)
            except Exception as exc:  # noqa: BLE001 - the queue may be locked; the log line above stays
                logger.error("escalation %s: notification outcome not recorded (%s)", case["case_id"], exc)
        return outcomes

    def notify_async(self, case: dict, reminder: bool = False) -> concurrent.futures.Future:
        return self._pool.submit(self.send, case, reminder)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)
