"""Escalation: real SMTP and HTTP servers on 127.0.0.1 receive the case; failures are retried,
recorded, and never hold up the decision; people resolve cases from the command line."""

import http.server
import json
import socket
import threading
import time

import pytest
import torch

from so8t_lib.cli import main as so8t
from so8t_lib.serve import escalation
from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.runtime import Agent


class Escalating:
    model_version = "fake@1"

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        return torch.tensor([[0.3, 0.3, 0.4]] * len(requests))


@pytest.fixture
def webhook():
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", received
    server.shutdown()


@pytest.fixture
def smtp_server():
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")
    from aiosmtpd.handlers import Sink

    messages = []

    class Collect(Sink):
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's naming
            messages.append((envelope.rcpt_tos, envelope.content.decode("utf-8", "replace")))
            return "250 OK"

    controller = aiosmtpd.Controller(Collect(), hostname="127.0.0.1", port=_free_port())
    controller.start()
    yield controller.port, messages
    controller.stop()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _agent(tmp_path, **escalation_cfg):
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "logging": {"audit_log": str(tmp_path / "audit.jsonl")},
        "escalation": {"queue_db": str(tmp_path / "cases.sqlite"), "notify_timeout_s": 3, "retries": 2,
                       **escalation_cfg},
    })
    return Agent(cfg, decider=Escalating())


def test_webhook_and_email_are_received(tmp_path, webhook, smtp_server, monkeypatch):
    url, posts = webhook
    port, mails = smtp_server
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    agent = _agent(tmp_path, notification_webhook=url, email_notifications=True, smtp_server="127.0.0.1",
                   smtp_port=port)
    result = agent.run_agent(None, "上司からのパワハラについて相談したい", "u1")
    assert result["decision"] == "ESCALATE" and result["category"] == "hr"
    outcomes = agent.pending_notifications[0].result(timeout=10)
    assert all(o["ok"] for o in outcomes) and {o["channel"] for o in outcomes} == {"webhook", "email"}
    assert posts[0]["channel"] == "#hr-escalation" and result["escalation_id"] in posts[0]["text"]
    assert mails[0][0] == ["hr@company.com"] and result["escalation_id"] in mails[0][1]
    assert agent.queue.get(result["escalation_id"])["status"] == "notified"


def test_unreachable_servers_are_retried_recorded_and_do_not_delay_the_decision(tmp_path):
    dead = _free_port()
    agent = _agent(tmp_path, notification_webhook=f"http://127.0.0.1:{dead}/hook", email_notifications=True,
                   smtp_server="127.0.0.1", smtp_port=dead)
    start = time.perf_counter()
    result = agent.run_agent(None, "Please reset the admin password for me")
    assert time.perf_counter() - start < 1.0 and result["decision"] == "ESCALATE"
    outcomes = agent.pending_notifications[0].result(timeout=10)
    assert all(not o["ok"] and o["attempts"] >= 2 and o["error"] for o in outcomes)
    case = agent.queue.get(result["escalation_id"])
    assert case["status"] == "notify_failed" and len(case["notifications"]) == 2


def test_test_mode_sends_nothing(tmp_path, webhook):
    url, posts = webhook
    cfg = RuntimeConfig.model_validate({"model": {"checkpoint_path": "unused"},
                                        "logging": {"audit_log": str(tmp_path / "audit.jsonl")},
                                        "escalation": {"queue_db": str(tmp_path / "c.sqlite"),
                                                       "notification_webhook": url}})
    agent = Agent(cfg, decider=Escalating(), test_mode=True)
    result = agent.run_agent(None, "hello")
    assert agent.pending_notifications == [] and posts == []
    assert agent.queue.get(result["escalation_id"])["test"] == 1


def test_resolve_from_the_command_line(tmp_path, capsys):
    agent = _agent(tmp_path, enable_notifications=False)
    case_id = agent.run_agent(None, "契約書の条項について法務の判断が必要です")["escalation_id"]
    db = str(tmp_path / "cases.sqlite")
    so8t(["escalation", "--db", db, "resolve", case_id, "--decision", "ALLOW", "--by", "Sato (legal)"])
    assert "resolved as ALLOW by Sato (legal)" in capsys.readouterr().out
    case = escalation.EscalationQueue(db).get(case_id)
    assert case["status"] == "resolved" and case["human_decision"] == "ALLOW" and case["category"] == "legal"
    with pytest.raises(SystemExit, match="no escalation case"):
        so8t(["escalation", "--db", db, "resolve", "esc_missing", "--decision", "REFUSE", "--by", "x"])
    so8t(["escalation", "--db", db, "list", "--status", "resolved"])
    assert case_id in capsys.readouterr().out


def test_no_password_goes_to_a_server_without_starttls(tmp_path, smtp_server, monkeypatch):
    port, mails = smtp_server  # aiosmtpd here offers no STARTTLS
    monkeypatch.setenv("SMTP_USERNAME", "so8t")
    monkeypatch.setenv("SMTP_PASSWORD", "secret")
    agent = _agent(tmp_path, email_notifications=True, smtp_server="127.0.0.1", smtp_port=port)
    result = agent.run_agent(None, "上司からのパワハラについて相談したい", "u1")
    outcomes = agent.pending_notifications[0].result(timeout=10)
    assert not outcomes[0]["ok"] and "refusing to send SMTP_PASSWORD in clear" in outcomes[0]["error"]
    assert mails == [] and agent.queue.get(result["escalation_id"])["status"] == "notify_failed"


def test_routing_keywords_match_whole_english_words():
    from so8t_lib.serve.categories import categorize

    assert categorize("Please share the departmental budget for Q3") == "finance"  # not "mental" -> medical
    assert categorize("I am being harassed by my manager") == "hr"  # a word start still matches
    assert categorize("上司からのパワハラについて相談したい") == "hr" and categorize("hello") == "general"
