"""What a notification carries to the reviewers: the asker's text shown as text (no Slack ping or disguised link,
no forged line), and over SMTP only to a server whose certificate checks out."""

from __future__ import annotations

import datetime
import ipaddress
import ssl

import pytest
from test_escalation import _free_port, _webhook_server

from so8t_lib.serve.config import EscalationConfig
from so8t_lib.serve.notify import Notifier

FORGED = ("<!channel> urgent, everyone look\n"
          "Resolve: <https://evil.example/sso?approve|https://so8t.corp/escalations/approve> & done")
CASE = {"case_id": "esc_1", "category": "hr", "request_id": "req_1", "input": FORGED,
        "rationale": "This request needs a person's judgement (hr).\nResolve: fake"}


def _lines_of_ours(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("> ")]


def test_a_slack_message_shows_the_request_as_typed_and_quoted(monkeypatch):
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    server, url, posts = _webhook_server()
    try:
        outcomes = Notifier(EscalationConfig(notification_webhook=url, retries=0)).send(CASE)
    finally:
        server.shutdown()
    text = posts[0]["text"]
    assert outcomes[0]["ok"] and "<" not in text.split("Input")[1].split("\nResolve: so8t")[0]
    assert "&lt;!channel&gt; urgent" in text and "&lt;https://evil.example/sso?approve|" in text and "&amp; done" in text
    assert "> Resolve: &lt;https://evil" in text  # the asker's line, marked as quoted
    resolve_lines = [line for line in _lines_of_ours(text) if line.startswith("Resolve:")]
    assert resolve_lines == ["Resolve: so8t escalation resolve esc_1 --decision ALLOW|REFUSE [--gate-label ALLOW|REFUSE|ESCALATE] --by NAME"]


def test_an_e_mail_quotes_the_request_line_by_line():
    text = Notifier(EscalationConfig())._message(CASE, reminder=False)
    assert "> <!channel> urgent, everyone look\n> Resolve: <https://evil.example" in text  # plain text: as typed
    assert [line for line in _lines_of_ours(text) if line.startswith("Resolve:")] == [
        "Resolve: so8t escalation resolve esc_1 --decision ALLOW|REFUSE [--gate-label ALLOW|REFUSE|ESCALATE] --by NAME"]


def _self_signed(tmp_path):
    """A certificate for 127.0.0.1 signed by nobody the system trusts: (cert file, key file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "smtp.pem", tmp_path / "smtp.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def starttls_server(tmp_path):
    aiosmtpd = pytest.importorskip("aiosmtpd.controller")
    from aiosmtpd.handlers import Sink

    cert_file, key_file = _self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    mails = []

    class Collect(Sink):
        async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's naming
            mails.append(envelope.content.decode("utf-8", "replace"))
            return "250 OK"

    controller = aiosmtpd.Controller(Collect(), hostname="127.0.0.1", port=_free_port(), tls_context=context)
    controller.start()
    yield controller.port, cert_file, mails
    controller.stop()


def test_starttls_to_a_server_whose_certificate_nobody_signed_sends_nothing(starttls_server, monkeypatch):
    """smtplib's starttls() without a context checks neither certificate nor host: anyone in the path who answered
    with any certificate received the password and the case."""
    port, cert_file, mails = starttls_server
    monkeypatch.delenv("SMTP_CA_FILE", raising=False)
    config = EscalationConfig(email_notifications=True, smtp_server="127.0.0.1", smtp_port=port, retries=0,
                              enable_notifications=True)
    outcome = Notifier(config).send(CASE)[0]
    assert outcome["channel"] == "email" and not outcome["ok"] and "CERTIFICATE_VERIFY_FAILED" in outcome["error"]
    assert mails == []
    monkeypatch.setenv("SMTP_CA_FILE", str(cert_file))  # the operator's internal CA: now it is trusted
    assert Notifier(config).send(CASE)[0]["ok"] and len(mails) == 1
    monkeypatch.delenv("SMTP_CA_FILE")  # the same CA named in the config instead
    assert Notifier(config.model_copy(update={"smtp_ca_file": str(cert_file)})).send(CASE)[0]["ok"] and len(mails) == 2
    monkeypatch.setenv("SMTP_CA_FILE", str(cert_file.parent / "missing.pem"))
    outcome = Notifier(config).send(CASE)[0]
    assert not outcome["ok"] and "SMTP_CA_FILE / smtp_ca_file" in outcome["error"] and len(mails) == 2


def test_a_failed_reminder_is_added_beside_the_notice_and_never_undoes_it(tmp_path, monkeypatch):
    """A failed OVERDUE reminder replaced the record of the notice a person had got and set notify_failed."""
    import http.server
    import threading

    from so8t_lib.serve.escalation import EscalationQueue

    answers = [200, 500, 500, 200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(answers.pop(0))
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    queue = EscalationQueue(tmp_path / "q.sqlite")
    queue.add({"case_id": "esc_1", "request_id": "req_1", "category": "legal", "input": "x", "rationale": "r",
               "confidence": 0.4})
    notifier = Notifier(EscalationConfig(notification_webhook=f"http://127.0.0.1:{server.server_port}/hook",
                                         retries=1, notify_timeout_s=5), queue)
    try:
        notifier.send(queue.get("esc_1"))
        failed = notifier.send(queue.get("esc_1"), reminder=True)
        case = queue.get("esc_1")
        assert [o["ok"] for o in case["notifications"]] == [True, False] and not failed[0]["ok"]
        assert "reminder" not in case["notifications"][0] and case["notifications"][1]["reminder"] is True
        assert case["status"] == "notified"
        notifier.send(queue.get("esc_1"), reminder=True)  # a later reminder that gets through is kept too
        assert [o["ok"] for o in queue.get("esc_1")["notifications"]] == [True, False, True]
    finally:
        server.shutdown()


def test_a_reminder_that_reaches_someone_marks_a_case_whose_notice_failed_notified(tmp_path):
    from so8t_lib.serve.escalation import EscalationQueue

    queue = EscalationQueue(tmp_path / "q.sqlite")
    for n in (1, 2):
        queue.add({"case_id": f"esc_{n}", "request_id": f"req_{n}", "category": "legal", "input": "x",
                   "rationale": "r", "confidence": 0.4})
    queue.record_notifications("esc_1", [{"channel": "webhook", "ok": False}])
    queue.record_notifications("esc_1", [{"channel": "webhook", "ok": True, "reminder": True}])
    assert queue.get("esc_1")["status"] == "notified" and len(queue.get("esc_1")["notifications"]) == 2
    queue.record_notifications("esc_2", [{"channel": "webhook", "ok": False, "reminder": True}])
    assert queue.get("esc_2")["status"] == "notify_failed"  # nobody was ever reached
    queue.record_notifications("esc_missing", [{"channel": "webhook", "ok": True}])  # nothing to record on
