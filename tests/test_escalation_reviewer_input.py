"""What a reviewer types when resolving a case: the note is stored as the audit log stores it (masked, bounded),
the name must be one a reader can see, an empty path option is refused instead of meaning the default queue,
and text that is not valid UTF-8 is named by its argument. Each refusal writes nothing."""

from __future__ import annotations

import json
import sqlite3

import pydantic
import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.serve.audit import AuditLog
from so8t_lib.serve.escalation import EscalationQueue, checked_name, unseen
from so8t_lib.serve.http.schemas import NAME_TEXT, ResolveRequest
from so8t_lib.serve.resolutions import resolve_audited

NOTE = "called 田中さん at tanaka@example.com / 090-1234-5678 " + "x" * 20000
PERSONAL = ("田中", "tanaka@example.com", "090-1234-5678")
INVISIBLE_NAMES = ["\u200b\u200b", "\u2060", "\u00ad", "\ufeff", "\u034f", " \u200b\u3000", "\U000e0041"]


@pytest.fixture(autouse=True)
def _no_queue_from_the_environment(monkeypatch):
    for name in ("SO8T_LOG_DIR", "SO8T_ESCALATION_DB", "SO8T_ESCALATION_URL", "SO8T_REPLICA"):
        monkeypatch.delenv(name, raising=False)


def _queue(path, **settings) -> EscalationQueue:
    queue = EscalationQueue(path, **settings)
    queue.add({"case_id": "esc_1", "request_id": "req_1", "category": "legal", "input": "x", "rationale": "r",
               "confidence": 0.4})
    return queue


def _audit_records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _raw_notes(db) -> list:
    with sqlite3.connect(db) as raw:
        return [raw.execute("SELECT note FROM cases").fetchone()[0],
                *(row[0] for row in raw.execute("SELECT note FROM resolutions"))]


# ----- the note ---------------------------------------------------------------------------------------------------
def test_a_note_is_stored_masked_and_bounded_as_its_audit_record_is(tmp_path):
    db, log = tmp_path / "q.sqlite", tmp_path / "audit.jsonl"
    queue = _queue(db)
    case = resolve_audited(queue, AuditLog(log), "esc_1", "REFUSE", "Sato", NOTE)
    record = _audit_records(log)[-1]
    assert case["note"] == case["history"][-1]["note"] == record["note"]
    assert len(case["note"]) <= 8192 + 48 and "[EMAIL]" in case["note"] and "[PHONE]" in case["note"]
    for stored in _raw_notes(db):  # the file itself, not only what the queue shows
        assert len(stored) <= 8192 + 48 and not any(text in stored for text in PERSONAL)


def test_with_masking_off_a_note_is_still_bounded_and_the_cli_takes_the_configs_settings(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    config = tmp_path / "runtime.yaml"
    config.write_text(json.dumps({"model": {"checkpoint_path": "unused"},
                                  "logging": {"audit_log": str(logs / "audit.jsonl"), "mask_personal_data": False,
                                              "max_field_chars": 300},
                                  "escalation": {"queue_db": str(logs / "escalations.sqlite")}}), encoding="utf-8")
    queue = _queue(logs / "escalations.sqlite")
    assert so8t(["escalation", "--config", str(config), "resolve", "esc_1", "--decision", "REFUSE", "--by", "Sato",
                 "--note", NOTE]) == 0
    stored = queue.history("esc_1")[-1]["note"]
    assert stored == _audit_records(logs / "audit.jsonl")[-1]["note"]
    assert stored.startswith("called 田中さん at tanaka@example.com") and len(stored) <= 300 + 48
    assert f"[{len(NOTE)} chars, sha256" in stored


# ----- the reviewer's name ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", INVISIBLE_NAMES, ids=ascii)
def test_a_name_no_one_can_see_is_refused_by_the_queue_and_the_schema(tmp_path, name):
    queue = _queue(tmp_path / "q.sqlite")
    with pytest.raises(ValueError, match="at least one visible character"):
        queue.resolve("esc_1", "ALLOW", name)
    with pytest.raises(pydantic.ValidationError):
        ResolveRequest(decision="ALLOW", by=name)
    assert queue.get("esc_1")["status"] == "open" and queue.history("esc_1") == []
    named = queue.resolve("esc_1", "ALLOW", f"{name}Sato")  # a visible character beside them is a name
    assert named["resolved_by"] == f"{name}Sato".strip()


def test_the_schema_and_the_queue_agree_on_every_character():
    """A name the schema lets through but the queue refuses would be an answer the schema does not describe (and
    one the schema refuses but the queue takes, a reviewer turned away): every code point, alone and beside a name."""
    import re

    pattern = re.compile(NAME_TEXT)  # as schemathesis reads it (fullmatch: JSON Schema's $ is the end, not a last newline)

    def queue_takes(name: str) -> bool:
        try:
            checked_name(name)
            return True
        except ValueError:
            return False

    unseen_chars = []
    for cp in range(0x110000):
        char = chr(cp)
        if 0xD800 <= cp <= 0xDFFF:
            continue
        alone, beside = pattern.fullmatch(char) is not None, pattern.fullmatch("Sato" + char) is not None
        assert (alone, beside) == (queue_takes(char), queue_takes("Sato" + char)), hex(cp)
        if unseen(char):
            unseen_chars.append(char)
    for char in unseen_chars:  # pydantic's own regex engine agrees
        with pytest.raises(pydantic.ValidationError):
            ResolveRequest(decision="ALLOW", by=char)


def test_a_name_is_at_most_128_characters_on_every_path(tmp_path, capsys):
    db = tmp_path / "q.sqlite"
    queue = _queue(db)
    with pytest.raises(ValueError, match="at most 128 characters, got 129"):
        queue.resolve("esc_1", "ALLOW", "S" * 129)
    with pytest.raises(SystemExit, match="at most 128 characters"):
        so8t(["escalation", "--db", str(db), "resolve", "esc_1", "--decision", "ALLOW", "--by", "S" * 129])
    with pytest.raises(pydantic.ValidationError):
        ResolveRequest(decision="ALLOW", by="S" * 129)
    assert queue.history("esc_1") == [] and not (tmp_path / "audit.jsonl").exists()
    assert queue.resolve("esc_1", "ALLOW", f"  {'S' * 128}  ")["resolved_by"] == "S" * 128


def test_the_cli_refuses_an_invisible_name_and_writes_nothing(tmp_path):
    db = tmp_path / "q.sqlite"
    queue = _queue(db)
    with pytest.raises(SystemExit, match="at least one visible character"):
        so8t(["escalation", "--db", str(db), "resolve", "esc_1", "--decision", "ALLOW", "--by", "\u200b\u200b"])
    assert queue.history("esc_1") == [] and queue.get("esc_1")["status"] == "open"
    assert not (tmp_path / "audit.jsonl").exists()


# ----- the command line's arguments ---------------------------------------------------------------------------------
@pytest.mark.parametrize("where", [["--db", ""], ["--config", ""], ["--audit-log", ""], ["--db", "  "]])
def test_an_empty_path_option_is_an_error_naming_it_not_the_default(tmp_path, monkeypatch, capsys, where):
    monkeypatch.chdir(tmp_path)  # the default queue is logs/escalations.sqlite here
    (tmp_path / "logs").mkdir()
    queue = _queue(tmp_path / "logs" / "escalations.sqlite")
    with pytest.raises(SystemExit) as stop:
        so8t(["escalation", "resolve", "esc_1", "--decision", "ALLOW", "--by", "Sato", *where])
    assert stop.value.code == 2
    assert f"argument {where[0]}: empty" in capsys.readouterr().err
    assert queue.get("esc_1")["status"] == "open" and not (tmp_path / "logs" / "audit.jsonl").exists()


@pytest.mark.parametrize("argument", ["--by", "--note", "case_id"])
def test_text_that_is_not_utf8_is_named_by_its_argument(tmp_path, capsys, argument):
    """Bytes that are not UTF-8 reach Python as lone surrogates (b"Sato\\xff" is "Sato\\udcff"); the error named
    no argument."""
    db = tmp_path / "q.sqlite"
    queue = _queue(db)
    args = {"case_id": "esc_1", "--by": "Sato", "--note": "ok"}
    args[argument] = (args[argument].encode() + b"\xff").decode("utf-8", "surrogateescape")
    with pytest.raises(SystemExit) as stop:
        so8t(["escalation", "--db", str(db), "resolve", args["case_id"], "--decision", "REFUSE", "--by", args["--by"],
              "--note", args["--note"]])
    assert stop.value.code == 2
    assert f"argument {argument}: not valid Unicode text" in capsys.readouterr().err
    assert queue.history("esc_1") == [] and not (tmp_path / "audit.jsonl").exists()


@pytest.mark.parametrize("mask", [True, False])
def test_the_services_queue_keeps_a_note_as_the_services_config_says(tmp_path, mask):
    """The runtime built its queue with the defaults: a config that turned masking off (or bounded notes tighter)
    had notes over HTTP stored masked at 8192 characters, unlike the same resolution's audit record."""
    from so8t_lib.serve.config import RuntimeConfig
    from so8t_lib.serve.runtime import Agent
    from tests.test_runtime import FakeDecider

    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "logging": {"audit_log": str(tmp_path / "logs" / "audit.jsonl"), "mask_personal_data": mask,
                    "max_field_chars": 300},
        "escalation": {"queue_db": str(tmp_path / "logs" / "escalations.sqlite"), "enable_notifications": False}})
    agent = Agent(cfg, decider=FakeDecider())
    try:
        queue = agent.desk.store
        queue.add({"case_id": "esc_1", "request_id": "req_1", "category": "legal", "input": "x", "rationale": "r",
                   "confidence": 0.4})
        case = resolve_audited(queue, agent.audit, "esc_1", "REFUSE", "Sato", NOTE)
    finally:
        agent.close()
    record = [r for r in _audit_records(tmp_path / "logs" / "audit.jsonl") if r.get("event") == "resolution"][-1]
    assert case["note"] == record["note"] and len(case["note"]) <= 300 + 48
    assert ("tanaka@example.com" in case["note"]) is (not mask)
