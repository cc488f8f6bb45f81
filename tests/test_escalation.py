"""Escalation: real SMTP and HTTP servers on 127.0.0.1 receive the case; failures are retried,
recorded, and never hold up the decision; people resolve cases from the command line."""

import datetime as dt
import http.server
import json
import logging
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
import torch

from so8t_lib.cli import main as so8t
from so8t_lib.serve import audit, escalation
from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.runtime import Agent


class Escalating:
    model_version = "fake@1"

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        return torch.tensor([[0.3, 0.3, 0.4]] * len(requests))


def _webhook_server(path: str = "/hook"):
    """A local Slack-compatible endpoint: (server, url, the JSON bodies it received)."""
    received = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}{path}", received


@pytest.fixture
def webhook():
    server, url, received = _webhook_server()
    yield url, received
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


def _agent(tmp_path, logging=None, test_mode=False, **escalation_cfg):
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "logging": {"audit_log": str(tmp_path / "audit.jsonl"), **(logging or {})},
        "escalation": {"queue_db": str(tmp_path / "cases.sqlite"), "notify_timeout_s": 3, "retries": 2,
                       **escalation_cfg},
    })
    return Agent(cfg, decider=Escalating(), test_mode=test_mode)


def test_webhook_and_email_are_received(tmp_path, webhook, smtp_server, monkeypatch):
    url, posts = webhook
    port, mails = smtp_server
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    agent = _agent(tmp_path, notification_webhook=url, email_notifications=True, smtp_server="127.0.0.1",
                   smtp_port=port, smtp_require_tls=False)  # aiosmtpd here offers no STARTTLS
    result = agent.run_agent(None, "上司からのパワハラについて相談したい", "u1")
    assert result["decision"] == "ESCALATE" and result["category"] == "hr"
    outcomes = agent.pending_notifications[0].result(timeout=10)
    assert all(o["ok"] for o in outcomes) and {o["channel"] for o in outcomes} == {"webhook", "email"}
    assert posts[0]["channel"] == "#hr-escalation" and result["escalation_id"] in posts[0]["text"]
    assert mails[0][0] == ["hr@company.com"] and result["escalation_id"] in mails[0][1]
    assert agent.queue.get(result["escalation_id"])["status"] == "notified"


def test_a_route_with_its_own_webhook_posts_there_and_the_rest_use_the_shared_one(tmp_path, webhook, monkeypatch):
    url, shared_posts = webhook
    server, medical_url, medical_posts = _webhook_server("/medical")
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.setenv("SO8T_TEST_MEDICAL_HOOK", medical_url)
    routes = {c: {"notify": c} for c in ("legal", "hr", "security", "finance", "general")}
    routes["medical"] = {"notify": "medical staff", "webhook_env": "SO8T_TEST_MEDICAL_HOOK"}
    try:
        agent = _agent(tmp_path, notification_webhook=url, routes=routes)
        outcomes = []
        for request in ("健康診断の結果について相談したい", "上司からのパワハラについて相談したい"):
            outcomes.append((agent.run_agent(None, request, "u1"), agent.pending_notifications[-1].result(timeout=10)))
        (medical, (to_medical,)), (hr, (to_shared,)) = outcomes
        assert medical["category"] == "medical" and hr["category"] == "hr"
        assert to_medical["target"] == "SO8T_TEST_MEDICAL_HOOK" and to_medical["ok"] and to_shared["ok"]
        assert len(medical_posts) == 1 and medical["escalation_id"] in medical_posts[0]["text"]
        assert len(shared_posts) == 1 and hr["escalation_id"] in shared_posts[0]["text"]
        # without the shared webhook a route whose variable is unset fails by name, and the case says so
        monkeypatch.delenv("SO8T_TEST_MEDICAL_HOOK")
        monkeypatch.setenv("SO8T_TEST_LEGAL_HOOK", medical_url)
        routes["legal"] = {"notify": "legal", "webhook_env": "SO8T_TEST_LEGAL_HOOK"}
        agent = _agent(tmp_path / "second", routes=routes)
        assert agent.notifier.unset_route_webhooks() == ["SO8T_TEST_MEDICAL_HOOK"]
        failed = agent.run_agent(None, "健康診断の結果について相談したい", "u3")
        (outcome,) = agent.pending_notifications[-1].result(timeout=10)
        assert not outcome["ok"] and "no webhook for route medical: set SO8T_TEST_MEDICAL_HOOK" in outcome["error"]
        assert agent.queue.get(failed["escalation_id"])["status"] == "notify_failed"
    finally:
        server.shutdown()


def test_start_up_names_route_webhook_variables_that_are_not_set(tmp_path, monkeypatch, caplog):
    """An operator who gave a desk its own webhook variable but did not set it hears so at start-up, with where
    that desk's cases go instead; with every variable set, or in test mode, nothing is said."""
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    monkeypatch.delenv("SO8T_TEST_MEDICAL_HOOK", raising=False)
    monkeypatch.setenv("SO8T_TEST_HR_HOOK", "http://127.0.0.1:9/hr")
    routes = {c: {"notify": c} for c in ("legal", "security", "finance", "general")}
    routes["medical"] = {"notify": "medical", "webhook_env": "SO8T_TEST_MEDICAL_HOOK"}
    routes["hr"] = {"notify": "hr", "webhook_env": "SO8T_TEST_HR_HOOK"}

    def start_up_warnings(folder, **escalation_cfg) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="so8t.runtime"):
            _agent(tmp_path / folder, routes=routes, **escalation_cfg)
        return [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]

    (shared,) = start_up_warnings("shared", notification_webhook="http://127.0.0.1:9/shared")
    assert "use the shared webhook: SO8T_TEST_MEDICAL_HOOK" in shared and "SO8T_TEST_HR_HOOK" not in shared
    (alone,) = start_up_warnings("alone")  # the hr hook is a channel, so cases can be sent; medical's cannot
    assert "have no webhook (their cases are notified by e-mail, if at all): SO8T_TEST_MEDICAL_HOOK" in alone
    monkeypatch.setenv("SO8T_TEST_MEDICAL_HOOK", "http://127.0.0.1:9/medical")
    assert start_up_warnings("all set") == []
    monkeypatch.delenv("SO8T_TEST_MEDICAL_HOOK")
    assert start_up_warnings("test mode", test_mode=True) == []


def test_a_route_webhook_is_named_by_a_variable_never_written_in_the_config():
    with pytest.raises(ValueError, match="not an environment variable name"):
        RuntimeConfig.model_validate({"model": {"checkpoint_path": "x"}, "escalation": {"routes": {
            c: {"webhook_env": "https://hooks.example.com/T000/B000/XXXX"} for c in
            ("medical", "legal", "hr", "security", "finance", "general")}}})


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


def test_redact_blanks_old_resolved_texts_keeps_the_decisions_and_is_audited(tmp_path, capsys):
    agent = _agent(tmp_path, enable_notifications=False)
    resolved = agent.run_agent(None, "田中さんの契約書の条項について法務の判断が必要です", "tanaka@example.com")
    still_open = agent.run_agent(None, "契約書の条項について法務の判断が必要です", "u2")
    db = str(tmp_path / "cases.sqlite")
    so8t(["escalation", "--db", db, "resolve", resolved["escalation_id"], "--decision", "ALLOW", "--by", "Sato",
          "--note", "signed by Tanaka-san"])
    tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).date().isoformat()
    queue = escalation.EscalationQueue(db)
    before = {c["case_id"]: c for c in queue.list()}
    so8t(["escalation", "--db", db, "redact", "--resolved-before", tomorrow, "--dry-run"])
    assert "would blank the texts of 1 case(s)" in capsys.readouterr().out
    assert {c["case_id"]: c for c in queue.list()} == before                      # a dry run changes nothing
    so8t(["escalation", "--db", db, "redact", "--resolved-before", "2000-01-01"])
    assert "blanked the texts of 0 case(s)" in capsys.readouterr().out
    so8t(["escalation", "--db", db, "redact", "--resolved-before", tomorrow])
    assert resolved["escalation_id"] in capsys.readouterr().out
    case = queue.get(resolved["escalation_id"])
    assert case["input"] is case["user_id"] is case["note"] is case["rationale"] is None
    assert (case["status"], case["human_decision"], case["resolved_by"], case["category"]) == (
        "resolved", "ALLOW", "Sato", "legal")
    assert [h["note"] for h in queue.history(resolved["escalation_id"])] == [None]
    assert queue.get(still_open["escalation_id"])["input"] == before[still_open["escalation_id"]]["input"]
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    assert records[-1]["event"] == "redaction" and records[-1]["case_ids"] == [resolved["escalation_id"]]
    assert so8t(["audit", "verify", str(tmp_path)]) in (0, None)                   # the chain still holds
    with pytest.raises(SystemExit):
        so8t(["escalation", "--db", db, "redact", "--resolved-before", "last year"])
    kept = queue.list()  # a mistyped year would blank cases resolved minutes ago, for good
    assert so8t(["escalation", "--db", db, "redact", "--resolved-before", "2099-01-01"]) == 2
    assert "is in the future" in capsys.readouterr().err and queue.list() == kept


def test_no_password_goes_to_a_server_without_starttls(tmp_path, smtp_server, monkeypatch):
    port, mails = smtp_server  # aiosmtpd here offers no STARTTLS
    monkeypatch.setenv("SMTP_USERNAME", "so8t")
    monkeypatch.setenv("SMTP_PASSWORD", "secret")
    agent = _agent(tmp_path, email_notifications=True, smtp_server="127.0.0.1", smtp_port=port, smtp_require_tls=False)
    result = agent.run_agent(None, "上司からのパワハラについて相談したい", "u1")
    outcomes = agent.pending_notifications[0].result(timeout=10)
    assert not outcomes[0]["ok"] and "refusing to send SMTP_PASSWORD in clear" in outcomes[0]["error"]
    assert mails == [] and agent.queue.get(result["escalation_id"])["status"] == "notify_failed"


def test_no_case_goes_in_clear_to_a_server_without_starttls_unless_the_operator_says_so(tmp_path, smtp_server,
                                                                                        monkeypatch):
    """Without credentials the case (HR, health) went in clear to any server that offered no STARTTLS."""
    port, mails = smtp_server  # aiosmtpd here offers no STARTTLS
    monkeypatch.delenv("SMTP_USERNAME", raising=False)
    agent = _agent(tmp_path, email_notifications=True, smtp_server="127.0.0.1", smtp_port=port)
    agent.run_agent(None, "上司からのパワハラについて相談したい", "u1")
    outcome = agent.pending_notifications[0].result(timeout=10)[0]
    assert not outcome["ok"] and "offers no STARTTLS; the case is not sent in clear" in outcome["error"]
    assert mails == []


def test_routing_keywords_match_whole_english_words():
    from so8t_lib.serve.categories import categorize

    assert categorize("Please share the departmental budget for Q3") == "finance"  # not "mental" -> medical
    assert categorize("I am being harassed by my manager") == "hr"  # a word start still matches
    assert categorize("上司からのパワハラについて相談したい") == "hr" and categorize("hello") == "general"


# ----- issue 14 -------------------------------------------------------------------------------------------
def _records(tmp_path):
    return list(audit.read_records(tmp_path))


def _hold_exclusive(db_path):
    """A second process that holds the queue EXCLUSIVE until its stdin closes."""
    code = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read(); db.execute('ROLLBACK')")
    proc = subprocess.Popen([sys.executable, "-c", code, str(db_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_queue_spools_the_case_and_it_is_queued_later(tmp_path):
    agent = _agent(tmp_path, enable_notifications=False, queue_timeout_s=0.3)
    agent.queue.list()  # the queue exists before the other process takes it
    holder = _hold_exclusive(tmp_path / "cases.sqlite")
    try:
        result = agent.run_agent(None, "上司からのパワハラについて相談したい", "u1")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    case_id = result["escalation_id"]
    assert result["decision"] == "ESCALATE" and case_id and result["escalation_status"] == "spooled"
    assert "locked by another process" in result["error"] and "escalation_spooled" in result["flags"]
    assert result["processing_time_ms"] >= 300  # the bounded wait is part of the time the request took
    record = _records(tmp_path)[-1]
    assert record["escalation_id"] == case_id and record["escalation_status"] == "spooled"
    agent.desk.replay()  # what the background thread does every retry_interval_s
    assert agent.queue.get(case_id)["category"] == "hr" and agent.desk.spool.count() == 0
    assert [r["request_id"] for r in _records(tmp_path)].count(result["request_id"]) == 1
    assert audit.verify(tmp_path)["errors"] == []


def test_a_second_resolution_needs_supersede_and_both_are_kept_and_audited(tmp_path, capsys):
    agent = _agent(tmp_path, enable_notifications=False)
    case_id = agent.run_agent(None, "契約書の条項について法務の判断が必要です")["escalation_id"]
    db = str(tmp_path / "cases.sqlite")
    with pytest.raises(SystemExit, match=f"{case_id} has no resolution.*resolve it without --supersede"):
        so8t(["escalation", "--db", db, "resolve", case_id, "--decision", "ALLOW", "--by", "Sato", "--supersede"])
    assert not [r for r in _records(tmp_path) if r.get("event") == "resolution"]
    so8t(["escalation", "--db", db, "resolve", case_id, "--decision", "ALLOW", "--by", "Sato", "--note", "first look"])
    with pytest.raises(SystemExit, match="already resolved as ALLOW by Sato.*--supersede"):
        so8t(["escalation", "--db", db, "resolve", case_id, "--decision", "REFUSE", "--by", "Suzuki"])
    so8t(["escalation", "--db", db, "resolve", case_id, "--decision", "REFUSE", "--by", "Suzuki", "--note",
          "on reflection", "--supersede"])
    assert "supersedes ALLOW by Sato" in capsys.readouterr().out
    queue = escalation.EscalationQueue(db)
    history = queue.history(case_id)
    assert [(h["decision"], h["decided_by"], h["note"]) for h in history] == [
        ("ALLOW", "Sato", "first look"), ("REFUSE", "Suzuki", "on reflection")]
    assert history[1]["supersedes"] == history[0]["id"] and queue.get(case_id)["human_decision"] == "REFUSE"
    resolutions = [r for r in _records(tmp_path) if r.get("event") == "resolution"]
    assert [(r["human_decision"], r["resolved_by"]) for r in resolutions] == [("ALLOW", "Sato"), ("REFUSE", "Suzuki")]
    assert resolutions[1]["supersedes"]["decision"] == "ALLOW" and audit.verify(tmp_path)["errors"] == []
    so8t(["escalation", "--db", db, "history", case_id])
    assert capsys.readouterr().out.count(case_id) == 2


def test_with_encryption_on_the_queue_holds_no_clear_text(tmp_path, monkeypatch, capsys):
    fernet = pytest.importorskip("cryptography.fernet")
    monkeypatch.setenv("SO8T_AUDIT_KEY", fernet.Fernet.generate_key().decode())
    agent = _agent(tmp_path, logging={"encryption_key_env": "SO8T_AUDIT_KEY"}, enable_notifications=False)
    case_id = agent.run_agent(None, "同僚の健康診断の結果を見せて、連絡は tanaka@example.com まで", "tanaka@example.com")[
        "escalation_id"]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("cases.sqlite*") if p.is_file())
    assert "健康診断".encode() not in raw and b"tanaka" not in raw and b"[EMAIL]" not in raw
    case = agent.queue.get(case_id)
    assert "健康診断" in case["input"] and "[EMAIL]" in case["input"] and case["user_id"].startswith("[EMAIL]#")
    so8t(["escalation", "--db", str(tmp_path / "cases.sqlite"), "list"])
    assert "健康診断" in capsys.readouterr().out  # the key is in the environment
    monkeypatch.delenv("SO8T_AUDIT_KEY")
    assert escalation.EscalationQueue(tmp_path / "cases.sqlite").get(case_id)["input"].startswith("[encrypted")


def test_the_cli_finds_the_queue_in_so8t_log_dir_and_marks_test_cases(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SO8T_LOG_DIR", str(tmp_path / "live"))
    monkeypatch.delenv("SO8T_ESCALATION_DB", raising=False)
    cfg = RuntimeConfig.model_validate({"model": {"checkpoint_path": "unused"},
                                        "escalation": {"enable_notifications": False}})
    case_id = Agent(cfg, decider=Escalating(), test_mode=True).run_agent(None, "hello")["escalation_id"]
    monkeypatch.chdir(tmp_path)  # logs/escalations.sqlite does not exist here
    so8t(["escalation", "list"])
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(c["case_id"], c["test"]) for c in listed] == [(case_id, True)]
    so8t(["escalation", "list", "--no-tests"])
    assert capsys.readouterr().out == ""


def test_a_mistyped_or_wrong_db_is_named_and_nothing_is_created(tmp_path):
    typo = tmp_path / "escalatoins.sqlite"
    with pytest.raises(SystemExit, match="no escalation queue at .*escalatoins.sqlite"):
        so8t(["escalation", "--db", str(typo), "list"])
    assert not typo.exists()
    text = tmp_path / "notes.txt"
    text.write_text("not a database " * 100, encoding="utf-8")
    with pytest.raises(SystemExit, match="not an escalation queue"):
        so8t(["escalation", "--db", str(text), "list"])
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)")
    with pytest.raises(SystemExit, match="not an escalation queue \\(no cases table\\)"):
        so8t(["escalation", "--db", str(other), "resolve", "esc_1", "--decision", "ALLOW", "--by", "x"])


def test_no_notification_channel_warns_and_the_case_says_so(tmp_path, monkeypatch, caplog):
    for name in ("SLACK_WEBHOOK_URL", "SMTP_SERVER"):
        monkeypatch.delenv(name, raising=False)
    with caplog.at_level(logging.WARNING, logger="so8t"):
        agent = _agent(tmp_path)
    assert "escalations will reach nobody" in caplog.text
    result = agent.run_agent(None, "上司からのパワハラについて相談したい")
    outcomes = agent.pending_notifications[-1].result(timeout=10)
    assert [(o["channel"], o["ok"]) for o in outcomes] == [("none", False)]
    assert agent.queue.get(result["escalation_id"])["status"] == "notify_failed"


def test_unresolved_lists_every_case_waiting_for_a_person_and_db_may_follow_the_subcommand(tmp_path, monkeypatch,
                                                                                               capsys):
    """``--status open`` (in the docs and the emergency alert's text) missed every case whose notification had been
    tried: ``notified`` or ``notify_failed``. And ``resolve ... --config X``, as docs/operations.md writes it, was
    refused: --db and --config were accepted only before the subcommand."""
    for name in ("SLACK_WEBHOOK_URL", "SMTP_SERVER"):
        monkeypatch.delenv(name, raising=False)
    agent = _agent(tmp_path)
    failed = agent.run_agent(None, "上司からのパワハラについて相談したい")["escalation_id"]
    agent.pending_notifications[-1].result(timeout=10)
    waiting = agent.run_agent(None, "契約書の条項について法務の判断が必要です")["escalation_id"]
    agent.pending_notifications[-1].result(timeout=10)
    db = str(tmp_path / "cases.sqlite")
    so8t(["escalation", "list", "--status", "open", "--db", db])
    assert capsys.readouterr().out == ""  # both were tried: neither is "open" any more
    so8t(["escalation", "list", "--status", "unresolved", "--db", db])
    assert sorted(json.loads(line)["case_id"] for line in capsys.readouterr().out.splitlines()) == sorted([failed, waiting])
    so8t(["escalation", "resolve", failed, "--decision", "REFUSE", "--by", "Sato", "--db", db])
    assert "resolved as REFUSE by Sato" in capsys.readouterr().out
    so8t(["escalation", "--db", db, "list", "--status", "unresolved"])
    assert [json.loads(line)["case_id"] for line in capsys.readouterr().out.splitlines()] == [waiting]


def test_a_case_past_escalation_timeout_is_marked_overdue_and_reminded(tmp_path, webhook, monkeypatch, capsys):
    url, posts = webhook
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    agent = _agent(tmp_path, notification_webhook=url, escalation_timeout=60)
    case_id = agent.run_agent(None, "経費の例外承認をお願いします")["escalation_id"]
    agent.pending_notifications[-1].result(timeout=10)
    assert agent.desk.sweep_overdue(now=escalation.utc_now()) == []  # not yet
    later = escalation.utc_now() + dt.timedelta(seconds=61)
    assert agent.desk.sweep_overdue(now=later) == [case_id]
    agent.pending_notifications[-1].result(timeout=10)
    assert posts[-1]["text"].count("OVERDUE") == 1 and case_id in posts[-1]["text"]
    assert agent.desk.sweep_overdue(now=later) == []  # reminded once
    so8t(["escalation", "--db", str(tmp_path / "cases.sqlite"), "list", "--overdue"])
    assert json.loads(capsys.readouterr().out)["case_id"] == case_id
    agent.queue.resolve(case_id, "ALLOW", "Sato")
    so8t(["escalation", "--db", str(tmp_path / "cases.sqlite"), "list", "--overdue"])
    assert capsys.readouterr().out == ""  # decided: no longer waiting for a person


def test_the_queue_offers_the_case_store_interface(tmp_path):
    assert isinstance(escalation.EscalationQueue(tmp_path / "q.sqlite"), escalation.CaseStore)
