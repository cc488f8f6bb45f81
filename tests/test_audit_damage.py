"""A hand-edited or damaged audit log is named by verify and the report, never a traceback: a line nested too deep
to parse, a lone surrogate, badly typed anchor or record fields, an outside checkpoint rotated away."""

from __future__ import annotations

import hashlib
import json

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.serve.audit import AuditLog, read_records, verify
from so8t_lib.serve.audit_files import parse_record, read_anchor, record_hash
from so8t_lib.serve.audit_verify import verify_chains

WHEN = "2026-11-02T10:00:00.000000Z"


def _record(i: int, **extra) -> dict:
    return {"event": "decision", "timestamp": WHEN, "request_id": f"req_{i}", "decision": "ALLOW",
            "category": "finance", "model_version": "m@1", "test": False, "input": f"request {i}", **extra}


def _log(tmp_path, n: int = 5, **kwargs) -> AuditLog:
    log = AuditLog(tmp_path / "audit.jsonl", **kwargs)
    for i in range(n):
        log.append(_record(i))
    return log


def _edit_line(path, index: int, edit) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[index] = edit(lines[index])
    path.write_bytes(b"".join(lines))


# ----- 2. nesting too deep to parse --------------------------------------------------------------------------------
def test_a_deeply_nested_last_line_is_a_torn_tail_the_writer_sets_aside(tmp_path):
    _log(tmp_path, 3)
    with open(tmp_path / "audit.jsonl", "ab") as handle:
        handle.write(b"[" * 100_000 + b"\n")
    assert parse_record(b"[" * 100_000) is None
    log = AuditLog(tmp_path / "audit.jsonl")  # raised RecursionError: the gate could not start
    assert log.open_error is None and len(log.set_aside) == 1
    assert log.append(_record(3))["seq"] == 3
    report = verify(tmp_path)
    assert report["errors"] == [] and report["records"] == 4 and len(report["set_aside"]) == 1


def test_a_deeply_nested_line_in_the_middle_fails_verify_naming_the_line(tmp_path):
    _log(tmp_path, 4)
    _edit_line(tmp_path / "audit.jsonl", 1, lambda line: b"[" * 100_000 + b"\n")
    report = verify(tmp_path)
    assert "audit.jsonl:2: not a complete audit record" in report["errors"]
    assert [r["seq"] for r in read_records(tmp_path)] == [0, 2, 3]
    with pytest.raises(SystemExit) as exc:
        so8t(["audit", "verify", str(tmp_path)])
    assert exc.value.code == 1


# ----- 3. a lone surrogate -------------------------------------------------------------------------------------------
def test_a_lone_surrogate_is_an_incomplete_record_for_verify_and_the_report(tmp_path, capsys):
    _log(tmp_path, 5)
    _edit_line(tmp_path / "audit.jsonl", 2, lambda line: line.replace(b'"request 2"', b'"request \\ud800"'))
    report = verify(tmp_path)
    assert "audit.jsonl:3: not a complete audit record" in report["errors"]
    with pytest.raises(SystemExit) as exc:
        so8t(["audit", "verify", str(tmp_path)])
    assert exc.value.code == 1 and "FAIL audit.jsonl:3" in capsys.readouterr().out
    code = so8t(["report", "--logs", str(tmp_path), "--from", "2026-11-01", "--to", "2026-11-30", "--out",
                 str(tmp_path / "out")])
    assert code == 1 and capsys.readouterr().out.startswith("AUDIT CHAIN VERIFICATION FAILED")
    summary = json.loads(next((tmp_path / "out").glob("*/summary.json")).read_text(encoding="utf-8"))
    assert summary["verification_problems"] and summary["summary"]["decisions"] == 4


def test_escapes_the_writer_can_hold_still_parse_and_hashes_are_unchanged(tmp_path):
    log = _log(tmp_path, 1)
    log.append(_record(1, input="tab\x01 and 経費 and \U0001F600"))
    report = verify(tmp_path)
    assert report["errors"] == [] and report["records"] == 2
    pair = json.dumps({"seq": 0, "hash": "h", "prev_hash": "p", "x": "\U0001F600"})  # an escaped pair: valid text
    assert b"\\ud83d" in pair.encode() and parse_record(pair.encode())["x"] == "\U0001F600"
    body = {"seq": 0, "prev_hash": "0" * 64, "x": "経費"}  # the writer's hash of a valid record, as before
    canonical = '{"prev_hash":"' + "0" * 64 + '","seq":0,"x":"経費"}'
    assert record_hash(body) == hashlib.sha256(("0" * 64 + canonical).encode("utf-8")).hexdigest()



def test_a_lone_surrogate_in_a_key_is_stored_as_utf8_and_the_chain_verifies(tmp_path):
    """The writer cleaned values of lone surrogates but cut keys only to 64 characters: a caller's detail dict with
    such a key made record_hash raise, so the decision could not be recorded (and failed closed)."""
    log = _log(tmp_path, 1)
    stored = log.append(_record(1, detail={"bad\udc80key": 1}))
    assert list(stored["detail"]) == ["bad\ufffdkey"]
    assert verify(tmp_path)["errors"] == [] and verify(tmp_path)["records"] == 2

# ----- 4. badly typed anchor and record fields ------------------------------------------------------------------------
@pytest.mark.parametrize("patch", [{"last_seq": "4"}, {"first_seq": "0"}, {"first_seq": True}, {"last_hash": 5},
                                   {"mac": 5}, None])
def test_a_badly_typed_anchor_is_an_unreadable_anchor(tmp_path, patch):
    _log(tmp_path, 5, hmac_key="k")
    path = tmp_path / "audit.jsonl.anchor"
    anchor = json.loads(path.read_text())
    path.write_text("[1, 2]" if patch is None else json.dumps({**anchor, **patch}))
    report = verify(tmp_path, hmac_key="k")
    assert len(report["errors"]) == 1 and "unreadable anchor" in report["errors"][0]
    with pytest.raises(ValueError, match="unreadable anchor"):
        read_anchor(tmp_path / "audit.jsonl")


def test_a_non_ascii_anchor_signature_does_not_match(tmp_path):
    _log(tmp_path, 3, hmac_key="k")
    path = tmp_path / "audit.jsonl.anchor"
    path.write_text(json.dumps({**json.loads(path.read_text()), "mac": "é"}))
    assert verify(tmp_path, hmac_key="k")["errors"] == [
        "audit.jsonl.anchor: the signature does not match (the anchor was forged or the key is wrong)"]


@pytest.mark.parametrize("field, value", [("mac", "é" * 64), ("mac", 5), ("mac", None), ("hash", "é" * 64)])
def test_a_badly_typed_record_signature_or_hash_is_named(tmp_path, field, value):
    _log(tmp_path, 4, hmac_key="k")
    _edit_line(tmp_path / "audit.jsonl", 1, lambda line: json.dumps(
        {**json.loads(line), field: value}, ensure_ascii=False).encode() + b"\n")
    errors = verify(tmp_path, hmac_key="k")["errors"]
    assert "audit.jsonl:2: record seq 1 has no valid signature (added or re-hashed without the key)" in errors
    if field == "hash":
        assert "audit.jsonl:2: record seq 1 was edited (its hash does not match its content)" in errors


# ----- 6. a checkpoint rotated away ---------------------------------------------------------------------------------
@pytest.fixture
def rotated(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl", backup_count=2)
    for i in range(6):
        log.append(_record(i))
        log.rotate()
    log.append(_record(6))
    assert verify(tmp_path)["first_seq"] == 4
    return tmp_path


def test_expect_naming_a_rotated_away_seq_is_an_error_saying_so(rotated, capsys):
    report = verify(rotated, expect=(1, "deadbeef"))
    assert len(report["errors"]) == 1 and "seq 1, which was rotated away" in report["errors"][0]
    with pytest.raises(SystemExit) as exc:
        so8t(["audit", "verify", str(rotated), "--expect", "1:deadbeef"])
    assert exc.value.code == 1 and "rotated away" in capsys.readouterr().out


def test_heads_naming_a_rotated_away_seq_is_a_note(rotated):
    report = verify_chains(rotated, expect_for=lambda chain: (1, "deadbeef"))[str(rotated / "audit.jsonl")]
    assert report["errors"] == [] and any("seq 1, which was rotated away" in note for note in report["notes"])


def test_expect_refuses_a_negative_seq(rotated, capsys):
    with pytest.raises(SystemExit) as exc:
        so8t(["audit", "verify", str(rotated), "--expect=-1:deadbeef"])
    assert exc.value.code == 2 and "0 or more" in capsys.readouterr().err


def test_only_the_start_of_one_record_reads_as_a_torn_first_write():
    """A file with no complete record is set aside as a torn tail only when it can be the writer's first line cut
    by a crash; anything else (a config, the anchor, a key) is another file, which the writer must leave alone."""
    from so8t_lib.serve.audit_files import encode_line, not_a_torn_write

    line = encode_line({"seq": 0, "prev_hash": "0" * 64, "hash": "a" * 64, "decision": "ALLOW"})
    assert not not_a_torn_write(line[:25]) and not not_a_torn_write(line.rstrip(b"\n"))  # cut, or cut at its newline
    for other in (b'{"first_seq": 0, "last_seq": 3}', b"c2VjcmV0", b"runtime:\n  threshold: 0.8\n", b"{}\n{}",
                  b"SQLite format 3\x00"):
        assert not_a_torn_write(other), other
