"""Whether a notification reached a desk is recorded truthfully: a redirected webhook is not a sent one, one channel
that hangs or trickles neither starves the other nor outlasts notify_timeout_s (nor leaves a thread behind), and a
case whose category has no route still reaches a desk."""

from __future__ import annotations

import contextlib
import http.server
import logging
import socket
import socketserver
import threading
import time

import pytest
from test_escalation import _webhook_server

from so8t_lib.serve.config import EscalationConfig
from so8t_lib.serve.notify import MAX_STUCK_SENDERS, Notifier

CASE = {"case_id": "esc_1", "category": "hr", "request_id": "req_1", "input": "hello", "rationale": "r"}


@pytest.fixture(autouse=True)
def _no_shared_webhook(monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("SMTP_SERVER", raising=False)


def _serve(handler) -> tuple[http.server.HTTPServer, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@pytest.mark.parametrize("code", [301, 302, 303, 308])
def test_a_webhook_that_redirects_is_a_failure_naming_where_it_points(code):
    """urllib re-sent the POST as a GET without its body, and the target's 200 was recorded as a sent notice."""
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            requests.append(("POST", self.path))
            self.send_response(code)
            self.send_header("Location", "/landing?token=secret")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self):  # noqa: N802
            requests.append(("GET", self.path))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server, base = _serve(Handler)
    try:
        (outcome,) = Notifier(EscalationConfig(notification_webhook=base + "/old", retries=2)).send(CASE)
    finally:
        server.shutdown()
    assert not outcome["ok"] and outcome["attempts"] == 1  # a config to fix: not retried
    assert f"answered {code} to {base}/" in outcome["error"] and "final URL" in outcome["error"]
    assert "secret" not in outcome["error"]  # a webhook's path and query are its secret
    assert requests == [("POST", "/old")]


class _SlowSMTP(socketserver.StreamRequestHandler):
    """An SMTP server that works, taking 0.15 s per answer like a remote one; each message is counted."""

    def handle(self):
        def say(text):
            time.sleep(0.15)
            self.wfile.write(text.encode() + b"\r\n")

        say("220 slow")
        while line := self.rfile.readline().decode().strip():
            command = line.split()[0].upper()
            if command == "DATA":
                say("354 go")
                while self.rfile.readline().strip() != b".":
                    pass
                self.server.mails.append(1)
                say("250 queued")
            elif command == "QUIT":
                say("221 bye")
                return
            else:
                say("250 ok")


def test_a_hung_webhook_leaves_e_mail_its_whole_time():
    """The webhook used up the one shared deadline; e-mail got one 0.1 s try and the case reached nobody."""
    smtp = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SlowSMTP)
    smtp.daemon_threads, smtp.mails = True, []
    threading.Thread(target=smtp.serve_forever, daemon=True).start()
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(5)  # accepts, never answers
        config = EscalationConfig(notification_webhook=f"http://127.0.0.1:{hung.getsockname()[1]}/hook",
                                  email_notifications=True, smtp_server="127.0.0.1", smtp_port=smtp.server_address[1],
                                  smtp_require_tls=False, notify_timeout_s=2, retries=1)
        started = time.monotonic()
        try:
            webhook, email = Notifier(config).send(CASE)
        finally:
            smtp.shutdown()
    assert time.monotonic() - started < 3  # the channels share the time, not take turns
    assert not webhook["ok"] and email["ok"] and smtp.mails == [1]


def test_a_trickling_webhook_is_given_up_at_notify_timeout_s():
    """Each socket read waited its own timeout: a server sending a byte now and then held the sending for ever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    stop = threading.Event()

    def trickle():
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 100:
                if stop.wait(0.2):
                    return
                connection.sendall(bytes([byte]))

    threading.Thread(target=trickle, daemon=True).start()
    config = EscalationConfig(notification_webhook=f"http://127.0.0.1:{listener.getsockname()[1]}/hook",
                              notify_timeout_s=1, retries=0)
    started = time.monotonic()
    try:
        (outcome,) = Notifier(config).send(CASE)
    finally:
        stop.set()
        listener.close()
    assert time.monotonic() - started < 2
    assert not outcome["ok"] and "no answer within notify_timeout_s (1 s)" in outcome["error"]


def _trickling_server(greeting: bytes, line: bytes) -> tuple[socket.socket, threading.Event, list]:
    """A server that sends ``greeting``, then ``line`` over and over, a byte every 0.1 s, for as long as the
    client listens; each connection's end is appended to the list it returns."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    stop, ended = threading.Event(), []

    def trickle(connection):
        with connection:
            try:
                if greeting.startswith(b"HTTP"):
                    connection.recv(65536)
                connection.sendall(greeting)
                while not stop.wait(0.1):
                    for byte in line:
                        connection.sendall(bytes([byte]))
                        if stop.wait(0.1):
                            return
            except OSError:
                ended.append(1)

    def accept():
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=trickle, args=(listener.accept()[0],), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener, stop, ended


def _senders(channel: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == f"so8t-notify-{channel}"]


@pytest.mark.parametrize("channel", ["webhook", "email"])
def test_a_sender_given_up_is_cut_off_and_its_thread_ends(channel):
    """urllib's and smtplib's timeouts are per read: each given-up send left its thread and socket behind for
    as long as the server trickled, one more for every notice and reminder."""
    webhook = channel == "webhook"
    listener, stop, ended = _trickling_server(*((b"HTTP/1.1 200 OK\r\n", b"X-Slow: a\r\n") if webhook else
                                                (b"220-", b"slow\r\n220-")))
    port = listener.getsockname()[1]
    config = EscalationConfig(notify_timeout_s=0.5, retries=0, **(
        {"notification_webhook": f"http://127.0.0.1:{port}/hook"} if webhook else
        {"email_notifications": True, "smtp_server": "127.0.0.1", "smtp_port": port, "smtp_require_tls": False}))
    try:
        for n in range(3):
            (outcome,) = Notifier(config).send({**CASE, "case_id": f"esc_{n}"})
            assert outcome["channel"] == channel and not outcome["ok"] and "given up" in outcome["error"]
        for _ in range(50):  # within a second of the last deadline
            if not _senders(channel) and len(ended) == 3:
                break
            time.sleep(0.02)
        assert _senders(channel) == [] and len(ended) == 3  # no thread left, each connection closed
    finally:
        stop.set()
        listener.close()


def test_a_channel_whose_given_up_senders_stay_stuck_fails_at_once_starting_no_thread(monkeypatch):
    """Where no cut-off reaches (a DNS look-up that hangs, say), each notice and reminder added one more thread."""
    release, calls = threading.Event(), []

    def hang(case, *args):
        calls.append(case["case_id"])
        release.wait(30)

    notifier = Notifier(EscalationConfig(notification_webhook="http://127.0.0.1:9/hook", notify_timeout_s=0.2,
                                         retries=0))
    monkeypatch.setattr(notifier, "_webhook", hang)
    try:
        for n in range(MAX_STUCK_SENDERS):
            assert "given up" in notifier.send({**CASE, "case_id": f"esc_{n}"})[0]["error"]
        started = time.monotonic()
        (outcome,) = notifier.send({**CASE, "case_id": "esc_next"})
        assert len(calls) == MAX_STUCK_SENDERS and len(_senders("webhook")) == MAX_STUCK_SENDERS
        assert time.monotonic() - started < 0.1 and not outcome["ok"] and outcome["attempts"] == 0
        assert f"the webhook channel is stuck: {MAX_STUCK_SENDERS} earlier sends" in outcome["error"]
        assert notifier.stuck_senders("webhook") == MAX_STUCK_SENDERS
    finally:
        release.set()
    for _ in range(100):
        if not notifier.stuck_senders("webhook"):
            break
        time.sleep(0.02)
    assert notifier.send({**CASE, "case_id": "esc_after"})[0]["ok"]  # unstuck, the channel is tried again


@pytest.mark.parametrize("category", [None, "payroll"])
def test_a_case_whose_category_has_no_route_goes_to_the_fallback_desk(category, caplog):
    """The lookup raised before anything was sent or recorded, inside a future nobody read: no log, no record."""
    server, url, posts = _webhook_server()
    try:
        with caplog.at_level(logging.WARNING, logger="so8t.escalation"):
            (outcome,) = Notifier(EscalationConfig(notification_webhook=url, retries=0)).send(
                {**CASE, "category": category})
    finally:
        server.shutdown()
    assert outcome["ok"] and outcome["target"] == "#general-escalation" and posts[0]["channel"] == "#general-escalation"
    assert f"no route for category {category!r}" in caplog.text


def test_a_sending_that_crashes_in_the_background_is_logged(monkeypatch, caplog):
    notifier = Notifier(EscalationConfig())

    def crash(case, *args):
        raise KeyError("case_id")

    monkeypatch.setattr(notifier, "_record", crash)  # the background part of a sending
    with caplog.at_level(logging.ERROR, logger="so8t.escalation"):
        future = notifier.notify_async(CASE)
        with pytest.raises(KeyError):
            future.result(timeout=5)
        for _ in range(100):  # the done-callback runs right after the result is set
            if "crashed" in caplog.text:
                break
            time.sleep(0.02)
    notifier.close()
    assert "esc_1: notification crashed" in caplog.text and "KeyError" in caplog.text
