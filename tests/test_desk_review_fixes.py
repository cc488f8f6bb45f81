"""Review mends of the escalation desk, its notifier and its queue: a hung channel delays no other channel's notices,
a notice a crash cut short is sent again after a restart, a locked queue costs one bounded wait, and so on."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import socket
import socketserver
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from desk_support import scratch_desk, spooled_case

from so8t_lib.serve.config import EscalationConfig
from so8t_lib.serve.notify import Notifier
from so8t_lib.serve.notify_transport import ChannelWorkers

TESTS = Path(__file__).parent
CASE = {"case_id": "esc_1", "category": "hr", "request_id": "req_1", "input": "hello", "rationale": "r"}


@pytest.fixture(autouse=True)
def _no_shared_webhook(monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("SMTP_SERVER", raising=False)


class _SMTP(socketserver.StreamRequestHandler):
    """A plain SMTP server that answers at once; each message's case id goes to ``server.mails``."""

    def handle(self):
        self.wfile.write(b"220 ok\r\n")
        while line := self.rfile.readline().decode().strip():
            command = line.split()[0].upper()
            if command == "DATA":
                self.wfile.write(b"354 go\r\n")
                subject = ""
                while (body := self.rfile.readline()).strip() != b".":
                    if body.startswith(b"Subject:"):
                        subject = body.decode()
                with self.server.arrived:
                    self.server.mails.append(subject.split()[-2])
                    self.server.arrived.notify_all()
                self.wfile.write(b"250 queued\r\n")
            elif command == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.mark.timeout(60)
def test_a_hung_webhook_delays_no_e_mail_of_a_burst():
    """Each case's sending held one of two pool workers until its webhook gave up: the third case's e-mail waited
    a whole notify_timeout_s, the tenth's four of them."""
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTP)
    smtp.daemon_threads, smtp.mails, smtp.arrived = True, [], threading.Condition()
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    hung, held = socket.socket(), []
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)

    def accept():  # takes every webhook connection and never answers it
        with contextlib.suppress(OSError):
            while True:
                held.append(hung.accept()[0])

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    config = EscalationConfig(notification_webhook=f"http://127.0.0.1:{hung.getsockname()[1]}/hook",
                              email_notifications=True, smtp_server="127.0.0.1", smtp_port=smtp.server_address[1],
                              smtp_require_tls=False, notify_timeout_s=600, retries=0)
    notifier = Notifier(config)
    futures = [notifier.notify_async({**CASE, "case_id": f"esc_{n}"}) for n in range(6)]
    try:
        with smtp.arrived:  # the webhooks hang for 600 s; the e-mails may not wait for them
            smtp.arrived.wait_for(lambda: len(smtp.mails) == 6, timeout=45)
        assert sorted(smtp.mails) == [f"esc_{n}" for n in range(6)]
        assert not any(future.done() for future in futures)  # each case's outcomes are recorded together, later
    finally:
        hung.shutdown(socket.SHUT_RDWR)
        hung.close()
        acceptor.join(30)
        for connection in held:  # the webhooks fail now, and the sendings end
            connection.close()
        notifier.close()
        smtp.shutdown()
    for future in futures:
        webhook, email = future.result(timeout=30)
        assert not webhook["ok"] and email["ok"]


def test_an_urgent_case_is_sent_before_the_others_waiting_on_its_channel():
    workers, busy, release, order = ChannelWorkers("webhook", workers=1), threading.Event(), threading.Event(), []
    workers.submit(False, lambda: (busy.set(), release.wait(30)))
    assert busy.wait(30)
    workers.submit(False, lambda: order.append("routine"))
    workers.submit(True, lambda: order.append("urgent"))
    workers.close()  # what waits still goes out
    release.set()
    for thread in workers._threads:
        thread.join(30)
    assert order == ["urgent", "routine"]


_DIES_BEFORE_THE_NOTICE = """
import concurrent.futures, os, signal, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from desk_support import scratch_desk, spooled_case
desk = scratch_desk(Path({folder!r}))
desk.notify = True
desk.notifier.notify_async = lambda case, reminder=False: concurrent.futures.Future()  # never sent: killed first
case, record = spooled_case(1)
ticket = desk.open(case, desk.audit.prepare(record))
assert desk.try_queue(ticket) == "queued"
desk.audit.append(record)
desk.finish(ticket, True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_process_killed_before_its_notice_was_recorded_leaves_the_case_to_be_notified_again(tmp_path):
    """finish() handed the notice to the pool and deleted the spool entry at once: killed before the pool sent
    it, the case stayed open with no notification and nothing left to replay."""
    script = textwrap.dedent(_DIES_BEFORE_THE_NOTICE).format(tests=str(TESTS), folder=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(TESTS.parent)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    desk = scratch_desk(tmp_path, record_notices=True)  # the next process on the folder
    assert desk.replay()["finished"] == ["esc_00001"]
    assert desk.sent == ["esc_00001"] and desk.spool.count() == 0
    assert desk.replay()["finished"] == [] and desk.sent == ["esc_00001"]


def test_a_notice_recorded_on_the_case_lets_its_spool_entry_go_and_is_never_sent_twice(tmp_path):
    desk = scratch_desk(tmp_path)
    desk.notify = True  # no channel configured: the failed "none" outcome is recorded, as a notice
    case, record = spooled_case(1)
    ticket = desk.open(case, desk.audit.prepare(record))
    desk.try_queue(ticket)
    desk.audit.append(record)
    desk.finish(ticket, True)
    (outcome,) = desk.notifications[-1].result(timeout=30)
    assert outcome["channel"] == "none" and desk.store.get(case["case_id"])["status"] == "notify_failed"
    assert desk.spool.count() == 0
    nxt = scratch_desk(tmp_path, record_notices=True)
    assert nxt.replay()["finished"] == [] and nxt.sent == []


def test_a_notice_the_queue_did_not_take_leaves_the_entry_for_the_replay(tmp_path):
    desk = scratch_desk(tmp_path)
    desk.notify = True
    case, record = spooled_case(1)
    ticket = desk.open(case, desk.audit.prepare(record))
    desk.try_queue(ticket)
    desk.audit.append(record)
    real = desk.store.record_notifications
    desk.store.record_notifications = lambda *args: (_ for _ in ()).throw(OSError("database is locked"))
    desk.finish(ticket, True)
    desk.notifications[-1].result(timeout=30)
    assert desk.spool.count() == 1  # released, not deleted: nobody can tell it was sent
    desk.store.record_notifications = real
    nxt = scratch_desk(tmp_path, record_notices=True)
    assert nxt.replay()["finished"] == ["esc_00001"] and nxt.sent == ["esc_00001"]


def test_a_replay_keeps_the_entry_until_the_notice_it_sends_is_recorded(tmp_path):
    desk = scratch_desk(tmp_path)
    case, record = spooled_case(1)
    desk.open(case, desk.audit.prepare(record)).entry.release()  # killed before anything else
    desk.notify = True
    pending: concurrent.futures.Future = concurrent.futures.Future()
    desk.notifier.notify_async = lambda case, reminder=False: pending
    assert desk.replay()["finished"] == ["esc_00001"]
    assert desk.spool.count() == 1 and desk.replay()["finished"] == []  # still held: not replayed twice
    pending.recorded = True
    pending.set_result([])
    assert desk.spool.count() == 0


def test_a_locked_queue_costs_the_first_escalation_one_wait_not_two(tmp_path, monkeypatch):
    """The queue opened at the first escalation tried its schema (waiting queue_timeout_s, the error kept quiet),
    then add() tried it again: that escalation waited twice queue_timeout_s before it was spooled."""
    import sqlite3

    from so8t_lib.serve import queue_sql
    from so8t_lib.serve.escalation import EscalationQueue, QueueUnavailable

    path = tmp_path / "escalations.sqlite"
    EscalationQueue(path)
    real, tries = queue_sql.has_queue_tables, []
    monkeypatch.setattr(queue_sql, "has_queue_tables", lambda engine: (tries.append(1), real(engine))[1])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        queue = EscalationQueue(path, timeout_s=0.2)
        with pytest.raises(QueueUnavailable, match="locked"):
            queue.add(CASE)
        assert len(tries) == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert queue.add(CASE) and queue.get("esc_1")["status"] == "open"  # free again: tried, not the old error


def _runtime(escalation: dict, decision_timeout_s: float | None = None):
    from so8t_lib.serve.config import RuntimeConfig

    inference = {} if decision_timeout_s is None else {"decision_timeout_s": decision_timeout_s}
    return RuntimeConfig.model_validate({"model": {"checkpoint_path": "x"}, "inference": inference,
                                         "escalation": escalation})


def test_a_postgresql_queue_with_a_wait_shorter_than_its_connect_floor_is_refused_at_load():
    """libpq waits at least 2 s for a connection: every escalation to a hung server blocked 2 s while the config
    said 0.5 s, and the error said "within 0.5s"."""
    from pydantic import ValidationError

    url = {"queue_url": "postgresql://so8t@db/so8t"}
    with pytest.raises(ValidationError, match=r"queue_timeout_s \(0.5 s\) is shorter than the 2 s a PostgreSQL"):
        _runtime({**url, "queue_timeout_s": 0.5})
    with pytest.raises(ValidationError, match=r"\(1.5 s, the default\)"):  # the default follows decision_timeout_s
        _runtime(url, decision_timeout_s=1.5)
    assert _runtime({**url, "queue_timeout_s": 2}, decision_timeout_s=5).queue_wait_s() == 2
    assert _runtime({"queue_timeout_s": 0.5}).queue_wait_s() == 0.5  # SQLite's busy wait has no floor


@pytest.mark.timeout(60)
def test_a_postgresql_server_that_never_answers_is_reported_with_the_wait_it_took():
    from so8t_lib.serve.escalation import EscalationQueue, QueueUnavailable

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)  # accepts, never answers
        queue = EscalationQueue(f"postgresql://so8t@127.0.0.1:{hung.getsockname()[1]}/so8t", timeout_s=0.5)
        with pytest.raises(QueueUnavailable) as raised:
            queue.add(CASE)
    assert "does not answer (no connection within 2s" in str(raised.value)
    assert "within 0.5s" not in str(raised.value)


BAD_WEBHOOKS = ["file:///etc/hostname", "data:,ok", "ftp://127.0.0.1:1/x", "http:///hook", "hooks.example/x"]


@pytest.mark.parametrize("url", BAD_WEBHOOKS)
def test_a_webhook_url_that_is_no_http_url_with_a_host_is_refused_at_load(url):
    """file:, data: and ftp: URLs were opened by urllib and failed later, at each notice, with meaningless errors
    (a data: URL even 'succeeded')."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must be an http:// or https:// URL with a host"):
        EscalationConfig(notification_webhook=url)
    assert EscalationConfig(notification_webhook="https://hooks.example/services/T/B/X").notification_webhook


@pytest.mark.parametrize("variable", ["SLACK_WEBHOOK_URL", "HR_WEBHOOK"])
def test_a_webhook_variable_that_is_no_http_url_stops_the_start_naming_it(variable, monkeypatch):
    from so8t_lib.core.config import ConfigError
    from so8t_lib.serve.config import RouteConfig

    routes = {**EscalationConfig().routes, "hr": RouteConfig(email="hr@x", slack_channel="#hr", webhook_env="HR_WEBHOOK")}
    monkeypatch.setenv(variable, "data:,ok")
    with pytest.raises(ConfigError, match=f"{variable} must be an http:// or https:// URL with a host, got a data:"):
        Notifier(EscalationConfig(routes=routes))
    Notifier(EscalationConfig(routes=routes, enable_notifications=False))  # nothing is sent: nothing to refuse


def test_a_webhook_variable_set_after_the_start_is_checked_before_anything_is_opened(tmp_path, monkeypatch):
    from so8t_lib.serve.notify_transport import _Connections, webhook_opener

    notifier = Notifier(EscalationConfig(retries=3))
    secret = tmp_path / "secret.txt"
    secret.write_text("not for a webhook")
    monkeypatch.setenv("SLACK_WEBHOOK_URL", secret.as_uri())
    (outcome,) = notifier.send(CASE)
    assert not outcome["ok"] and outcome["attempts"] == 1  # a configuration to fix: not retried
    assert "SLACK_WEBHOOK_URL must be an http:// or https:// URL with a host, got a file: URL" in outcome["error"]
    import urllib.error

    for url in (secret.as_uri(), "data:,ok", "ftp://127.0.0.1:1/x"):  # the opener itself knows only HTTP(S)
        with pytest.raises(urllib.error.URLError, match="unknown url type"):
            webhook_opener(_Connections()).open(url, timeout=1)


def test_one_queue_error_in_the_overdue_sweep_costs_no_other_case_its_reminder(tmp_path):
    """The sweep marked every due case overdue in one commit, then read them one by one: one failed read raised
    out of the loop, and that case and every one after it never got a reminder (the next sweep skips marked ones)."""
    import datetime as dt

    from so8t_lib.serve.escalation import QueueUnavailable

    desk = scratch_desk(tmp_path, record_notices=True)
    for n in range(3):
        desk.store.add(spooled_case(n)[0])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    real_get, reads = desk.store.get, []

    def flaky(case_id):
        reads.append(case_id)
        if len(reads) == 2:
            raise QueueUnavailable("the escalation queue is locked by another process (waited 2s)")
        return real_get(case_id)

    desk.store.get = flaky
    assert desk.sweep_overdue(later) == ["esc_00000", "esc_00001", "esc_00002"]
    assert desk.sent == ["esc_00000", "esc_00002"]
    desk.store.get = real_get
    assert desk.sweep_overdue(later) == []  # nothing newly overdue, but the missed reminder goes now
    assert desk.sent == ["esc_00000", "esc_00002", "esc_00001"]
    desk.sweep_overdue(later)
    assert desk.sent == ["esc_00000", "esc_00002", "esc_00001"]  # once


def _agent_with_webhook(folder: Path, url: str, test_mode: bool = False):
    from fault_agent import KeywordDecider

    from so8t_lib.serve.config import RuntimeConfig
    from so8t_lib.serve.runtime import Agent

    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"}, "inference": {"generate_responses": False, "decision_timeout_s": 10},
        "logging": {"audit_log": str(folder / "audit.jsonl")},
        "escalation": {"queue_db": str(folder / "escalations.sqlite"), "enable_notifications": True,
                       "queue_timeout_s": 0.5, "retry_interval_s": 3600, "notification_webhook": url,
                       "notify_timeout_s": 10}})
    return Agent(cfg, decider=KeywordDecider(), test_mode=test_mode)


@pytest.mark.timeout(60)
def test_a_clean_exit_waits_for_the_notice_in_flight_so_it_is_sent_once_and_recorded(tmp_path):
    """The channels' workers are daemon threads: `so8t runtime` closed its agent and exited before the notice went
    out, left its spool entry held, and every later start sent it again without recording it."""
    import http.server

    from so8t_lib.serve.escalation import EscalationQueue

    answer, posts = threading.Event(), []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            posts.append(self.path)
            answer.wait(10)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        agent = _agent_with_webhook(tmp_path, f"http://127.0.0.1:{server.server_port}/hook")
        case_id = agent.run_batch([{"user_request": "please escalate this"}])[0]["escalation_id"]
        while not posts:  # the notice is being sent: its spool entry is held, the case is in the queue
            threading.Event().wait(0.01)
        assert agent.desk.spool.count() == 1 and agent.desk.waiting_in_spool() == 0
        threading.Timer(0.3, answer.set).start()
        agent.close()
        assert posts == ["/hook"] and agent.desk.spool.count() == 0
        queue = EscalationQueue(tmp_path / "escalations.sqlite")
        assert [n["ok"] for n in queue.get(case_id)["notifications"]] == [True]
        queue.close()
        _agent_with_webhook(tmp_path, f"http://127.0.0.1:{server.server_port}/hook").close()
        assert posts == ["/hook"]  # the next start has nothing to send again
        answer.clear()  # a server stopping with a notice still unanswered: its budget says how long to wait
        late = _agent_with_webhook(tmp_path / "late", f"http://127.0.0.1:{server.server_port}/late")
        late.run_batch([{"user_request": "please escalate this"}])
        while "/late" not in posts:
            threading.Event().wait(0.01)
        late.close(notice_wait_s=0)
        assert late.desk.spool.count() == 1  # left for the next start, which sends it (at least once)
        answer.set()
    finally:
        server.shutdown()


def test_a_test_mode_agent_does_not_check_webhook_variables_it_never_sends_to(tmp_path, monkeypatch):
    """The retrain deploy's smoke test (test mode) failed to start on a host whose SLACK_WEBHOOK_URL is malformed."""
    from so8t_lib.core.config import ConfigError

    monkeypatch.setenv("SLACK_WEBHOOK_URL", "hooks.slack.example/services/x")
    _agent_with_webhook(tmp_path, "http://127.0.0.1:9/hook", test_mode=True).close()
    with pytest.raises(ConfigError, match="SLACK_WEBHOOK_URL"):
        _agent_with_webhook(tmp_path, "http://127.0.0.1:9/hook")


def _finished_cases(desk, count: int, pending: list) -> None:
    """``count`` cases queued, audited and finished on ``desk``, each notice a future that is never settled."""
    desk.notify = True

    def hold(case, reminder=False):
        pending.append(concurrent.futures.Future())
        return pending[-1]

    desk.notifier.notify_async = hold
    for n in range(1, count + 1):
        case, record = spooled_case(n)
        ticket = desk.open(case, desk.audit.prepare(record))
        desk.try_queue(ticket)
        desk.audit.append(record)
        desk.finish(ticket, True)


def test_past_the_cap_of_held_notices_a_spool_entry_goes_at_once_and_says_so(tmp_path, monkeypatch, caplog):
    """Held entries keep a file and a lock each: past MAX_HELD_NOTICES the entry goes before its notice is
    recorded (a crash then loses the notice), with a warning, rather than growing without a bound."""
    from so8t_lib.serve import escalation_desk

    monkeypatch.setattr(escalation_desk, "MAX_HELD_NOTICES", 2)
    desk, pending = scratch_desk(tmp_path), []
    _finished_cases(desk, 3, pending)
    assert len(pending) == 3 and desk.spool.count() == 2 and desk._held_notices == 2
    assert "esc_00003: 2 notices in flight" in caplog.text
    for future in pending:
        future.recorded = True
        future.set_result([])
    assert desk.spool.count() == 0 and desk._held_notices == 0


def test_close_waits_for_an_unanswered_notice_no_longer_than_its_timeout_and_a_grace(tmp_path):
    """A notice that never settles holds close() for notify_timeout_s + NOTICE_CLOSE_GRACE_S, then its entry stays
    for the next start; a smaller budget (a server's stop) bounds it further."""
    import time

    from so8t_lib.serve.escalation_desk import NOTICE_CLOSE_GRACE_S

    desk, pending = scratch_desk(tmp_path), []
    desk.notifier.config.notify_timeout_s = 0.5
    _finished_cases(desk, 1, pending)
    started = time.monotonic()
    desk.close()
    waited = time.monotonic() - started
    assert 0.5 + NOTICE_CLOSE_GRACE_S <= waited < 0.5 + NOTICE_CLOSE_GRACE_S + 5  # bounded, not hung
    assert desk.spool.count() == 1 and not pending[0].done()  # left for the next start, which sends it again
    other, more = scratch_desk(tmp_path / "other"), []
    other.notifier.config.notify_timeout_s = 30
    _finished_cases(other, 1, more)
    started = time.monotonic()
    other.close(notice_wait_s=0.2)
    assert 0.2 <= time.monotonic() - started < 5
