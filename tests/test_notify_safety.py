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
    assert resolve_lines == ["Resolve: so8t escalation resolve esc_1 --decision ALLOW|REFUSE --by NAME"]


def test_an_e_mail_quotes_the_request_line_by_line():
    text = Notifier(EscalationConfig())._message(CASE, reminder=False)
    assert "> <!channel> urgent, everyone look\n> Resolve: <https://evil.example" in text  # plain text: as typed
    assert [line for line in _lines_of_ours(text) if line.startswith("Resolve:")] == [
        "Resolve: so8t escalation resolve esc_1 --decision ALLOW|REFUSE --by NAME"]


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
