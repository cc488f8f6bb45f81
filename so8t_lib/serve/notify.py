"""Notifications for escalation cases, by category: a Slack-compatible webhook and e-mail over SMTP.

Addresses and channels come from the config; secrets only from the environment (SLACK_WEBHOOK_URL,
SMTP_USERNAME, SMTP_PASSWORD, and each route's own webhook variable, ``routes.<category>.webhook_env``:
Slack's incoming webhooks post to the channel they were made for, so one shared webhook reaches one
channel). Sending runs in the background with retries and exponential backoff, so it never delays a
decision; the outcomes are recorded on the case together. Each channel has its own workers and waiting line
(urgent cases first), so a channel that hangs delays no other channel's sends, and each send has the whole
``notify_timeout_s`` and is given up at that deadline, whatever a slow or trickling server does: one sending
ends within ``notify_timeout_s`` (plus a fraction of a second), and a hung webhook leaves e-mail its full time.
A sender given up is cut off then (its sockets shut down), so its thread ends rather than wait on a server
that trickles for ever; should one outlive even that (a DNS look-up no socket reaches), at MAX_STUCK_SENDERS
such a channel counts as stuck and its new sends fail at once instead of each adding a thread.
When no channel is configured at all, that is itself a failed outcome (logged, recorded, the case shows
notify_failed): an escalation that reaches nobody must not look like a sent one. For the same reason a webhook
that redirects is a failure (urllib would re-send the POST as a GET without its body, and the target's 200
looked like a delivered notice), and a case whose category has no route goes to the fallback desk (general).

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
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from email.message import EmailMessage

from ..core.config import ConfigError
from ..core.schema import FALLBACK_CATEGORY
from .config import EscalationConfig, RouteConfig
from .config_fields import check_webhook_url
from .notify_transport import (  # noqa: F401 - GRACE_S, MAX_STUCK_SENDERS re-exported
    GRACE_S,
    MAX_STUCK_SENDERS,
    ChannelWorkers,
    Job,
    WebhookRedirected,
    WebhookUnusable,
    _Connections,
    _HeldSMTP,
    _redirect_target,
    _send_each,
    _Stragglers,
    webhook_opener,
)
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


class Notifier:
    """Sends one case's notifications (webhook and/or e-mail) in a background thread."""

    def __init__(self, config: EscalationConfig, queue=None, sending: bool = True) -> None:
        self.config, self.queue = config, queue
        # only records a "no channel" outcome; each channel sends on its own workers (``ChannelWorkers``)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="so8t-notify")
        self._channels: dict[str, ChannelWorkers] = {}
        self._channels_lock = threading.Lock()
        self._stragglers = _Stragglers()
        if config.enable_notifications and sending:  # a variable's URL is read now; the config's was at load
            for name, url in self._webhook_variables():
                try:
                    check_webhook_url(url, name)
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None

    def _webhook_variables(self) -> list[tuple[str, str]]:
        """The webhook variables set: SLACK_WEBHOOK_URL and each route's ``webhook_env``."""
        names = ["SLACK_WEBHOOK_URL", *(route.webhook_env for route in self.config.routes.values() if route.webhook_env)]
        return [(name, os.environ[name]) for name in dict.fromkeys(names) if os.environ.get(name)]

    def stuck_senders(self, channel: str) -> int:
        """Senders on ``channel`` given up and cut off yet still alive (MAX_STUCK_SENDERS marks it stuck)."""
        return self._stragglers.alive(channel)

    def shared_webhook(self) -> str | None:
        """SLACK_WEBHOOK_URL, else escalation.notification_webhook."""
        return os.environ.get("SLACK_WEBHOOK_URL") or self.config.notification_webhook

    def route_for(self, case: dict) -> RouteConfig:
        """The case's route; a category no route has (none, or one dropped from the config since the case was
        spooled) goes to the fallback desk rather than to nobody."""
        route = self.config.routes.get(case.get("category"))
        if route is None:
            logger.warning("escalation %s: no route for category %r; notifying the %s desk", case.get("case_id"),
                           case.get("category"), FALLBACK_CATEGORY)
            route = self.config.routes[FALLBACK_CATEGORY]
        return route

    def webhook_for(self, route: RouteConfig) -> str | None:
        """The route's own webhook (``routes.<category>.webhook_env``) when its variable is set, else the shared one."""
        env = route.webhook_env
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
                f"Resolve: so8t escalation resolve {case_id} --decision ALLOW|REFUSE "
                "[--gate-label ALLOW|REFUSE|ESCALATE] --by NAME\n"
                "--gate-label: what the gate should have decided (ESCALATE where the policy sends such a request "
                "to a person); retraining leaves out a case resolved without one")

    def _webhook(self, case: dict, route: RouteConfig, timeout: float, reminder: bool,
                 connections: _Connections) -> None:
        url = self.webhook_for(route)
        if not url:
            raise RuntimeError(f"no webhook for route {case['category']}: set "
                               f"{route.webhook_env or 'its webhook_env variable'} or SLACK_WEBHOOK_URL")
        own = route.webhook_env if route.webhook_env and os.environ.get(route.webhook_env) else None
        try:  # a variable set after the start is read here
            check_webhook_url(url, own or ("SLACK_WEBHOOK_URL" if os.environ.get("SLACK_WEBHOOK_URL") else
                                           "escalation.notification_webhook"))
        except ValueError as exc:
            raise WebhookUnusable(str(exc)) from None
        body = json.dumps({"text": self._message(case, reminder, escape=slack_escaped), "channel": route.slack_channel}).encode("utf-8")
        request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
        try:
            with webhook_opener(connections).open(request, timeout=timeout) as response:
                if response.status >= 300:
                    raise RuntimeError(f"webhook answered HTTP {response.status}")
        except urllib.error.HTTPError as exc:
            exc.close()
            if 300 <= exc.code < 400:
                raise WebhookRedirected(f"the webhook answered {exc.code} to "
                                        f"{_redirect_target(url, exc.headers.get('Location'))}: nothing was posted; "
                                        "point the config at the final URL") from None
            raise

    def _email(self, case: dict, route: RouteConfig, timeout: float, reminder: bool,
               connections: _Connections) -> None:
        message = EmailMessage()
        message["From"], message["To"] = self.config.email_from, route.email
        message["Subject"] = f"[SO8T] {'URGENT ' if is_urgent_case(case) else ''}" \
                             f"{'OVERDUE ' if reminder else ''}escalation {case['case_id']} ({case['category']})"
        message.set_content(self._message(case, reminder))
        host = os.environ.get("SMTP_SERVER") or self.config.smtp_server
        port = int(os.environ.get("SMTP_PORT") or self.config.smtp_port)
        with _HeldSMTP(connections, host, port, timeout=timeout) as smtp:
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

    def _plan(self, case: dict, reminder: bool) -> tuple[dict[str, Job], dict[str, str | None]]:
        """The case's sends, one job per configured channel, and whom each reaches."""
        route = self.route_for(case)
        channels, jobs, targets = self.channels(), {}, {}
        if "webhook" in channels:
            own = bool(route.webhook_env and os.environ.get(route.webhook_env))
            targets["webhook"] = route.webhook_env if own else route.slack_channel
            jobs["webhook"] = lambda t, held: self._webhook(case, route, t, reminder, held)
        if "email" in channels and route.email:
            targets["email"] = route.email
            jobs["email"] = lambda t, held: self._email(case, route, t, reminder, held)
        return jobs, targets

    def _record(self, case: dict, reminder: bool, jobs: dict, targets: dict, results: dict) -> tuple[list[dict], bool]:
        """One sending's outcomes, logged and appended to the case; and whether the queue took them."""
        outcomes = [{"channel": name, "target": targets[name], **results[name]} for name in jobs]
        if not outcomes:
            outcomes.append({"channel": "none", "target": None, "ok": False, "attempts": 0, "error": NO_CHANNEL})
        for outcome in outcomes:
            if reminder:  # the queue appends these beside the first notice's, which a failed reminder must not undo
                outcome["reminder"] = True
            if not outcome["ok"]:
                logger.error("escalation %s: %s notification failed after %d attempts: %s", case["case_id"],
                             outcome["channel"], outcome["attempts"], outcome.get("error"))
        if self.queue is None:
            return outcomes, False
        try:
            self.queue.record_notifications(case["case_id"], outcomes)
            return outcomes, True
        except Exception as exc:  # noqa: BLE001 - the queue may be locked; the log line above stays
            logger.error("escalation %s: notification outcome not recorded (%s)", case["case_id"], exc)
            return outcomes, False

    def send(self, case: dict, reminder: bool = False) -> list[dict]:
        """Send now (blocking, bounded by notify_timeout_s); returns one outcome per channel, each appended to the
        case's record (a reminder's marked ``reminder: true``)."""
        jobs, targets = self._plan(case, reminder)
        results = _send_each(jobs, self.config.retries, self.config.notify_timeout_s, self._stragglers) \
            if jobs else {}
        return self._record(case, reminder, jobs, targets, results)[0]

    def _workers(self, channel: str) -> ChannelWorkers:
        with self._channels_lock:
            if channel not in self._channels:
                self._channels[channel] = ChannelWorkers(channel)
            return self._channels[channel]

    def notify_async(self, case: dict, reminder: bool = False) -> concurrent.futures.Future:
        """``send`` in the background, each channel on its own workers (an urgent case ahead of those waiting):
        a hung webhook delays no e-mail. The future's result is the outcomes, recorded on the case together once
        every channel is done; its ``recorded`` says whether the queue took them. Whatever fails is logged, not
        left in a future nobody reads."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.recorded = False
        future.add_done_callback(lambda done: _log_crash(case, done))
        try:
            jobs, targets = self._plan(case, reminder)
        except Exception as exc:  # noqa: BLE001 - logged by the callback, as a failure while sending would be
            future.set_exception(exc)
            return future
        results: dict[str, dict] = {}
        lock = threading.Lock()

        def settle() -> None:
            try:
                outcomes, future.recorded = self._record(case, reminder, jobs, targets, results)
            except BaseException as exc:  # noqa: BLE001 - handed to the future, whose callback logs it
                future.set_exception(exc)
                return
            future.set_result(outcomes)

        def one(name: str) -> None:
            try:
                result = _send_each({name: jobs[name]}, self.config.retries, self.config.notify_timeout_s,
                                    self._stragglers)[name]
            except Exception as exc:  # noqa: BLE001 - recorded as that channel's failure
                result = {"attempts": 0, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            with lock:
                results[name] = result
                last = len(results) == len(jobs)
            if last:
                settle()

        if not jobs:
            self._pool.submit(settle)
        for name in jobs:
            self._workers(name).submit(is_urgent_case(case), lambda name=name: one(name))
        return future

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=False)
        with self._channels_lock:
            for workers in self._channels.values():
                workers.close()


def _log_crash(case: dict, future: concurrent.futures.Future) -> None:
    exc = None if future.cancelled() else future.exception()
    if exc is not None:
        logger.error("escalation %s: notification crashed, nobody may have been notified: %s: %s",
                     case.get("case_id"), type(exc).__name__, exc, exc_info=exc)
