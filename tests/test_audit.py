"""Audit log: nothing lost under concurrent writers, rotation keeps every record, tampering is found."""

import gzip
import json
import multiprocessing as mp
import threading

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.core.config import parse_size
from so8t_lib.serve import audit


def _record(i, writer=0):
    return {"timestamp": "2026-11-21T00:00:00Z", "request_id": f"req_{writer}_{i}", "user_id": f"u{writer}",
            "input": f"request {i} from writer {writer}", "decision": "ESCALATE", "rationale": "needs a human",
            "human_required": True, "model_version": "so8t-test", "processing_time_ms": 1.0,
            "confidence_score": 0.5, "category": "general"}


def _writer(path, writer, n):
    log = audit.AuditLog(path)
    for i in range(n):
        log.append(_record(i, writer))


def test_eight_processes_lose_nothing(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 500)) for w in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 4000 and [r["seq"] for r in lines] == list(range(4000))
    assert len({r["request_id"] for r in lines}) == 4000
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and report["records"] == 4000


def test_threads_lose_nothing(tmp_path):
    path = tmp_path / "audit.jsonl"
    threads = [threading.Thread(target=_writer, args=(path, w, 100)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert audit.verify(tmp_path)["records"] == 800 and audit.verify(tmp_path)["errors"] == []


def test_rotation_keeps_every_record_across_gzip_files(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=4096, backup_count=100)
    for i in range(300):
        log.append(_record(i))
    files = audit.log_files(tmp_path)
    assert len(files) > 5 and all(f.suffix == ".gz" for f in files[:-1])
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and report["records"] == 300 and report["first_seq"] == 0
    assert all(f.stat().st_size <= 4096 for f in files if f.suffix != ".gz")


def test_rotation_beyond_backup_count_drops_only_the_oldest_files(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=2048, backup_count=2)
    for i in range(200):
        log.append(_record(i))
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and report["last_seq"] == 199 and report["first_seq"] > 0
    assert len(audit.log_files(tmp_path)) == 3


def _rewrite(path, lines):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines), encoding="utf-8")


@pytest.mark.parametrize("tamper", ["edit", "drop", "swap"])
def test_tampering_is_found(tmp_path, tamper):
    path = tmp_path / "audit.jsonl"
    log = audit.AuditLog(path)
    for i in range(10):
        log.append(_record(i))
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    if tamper == "edit":
        lines[4]["decision"] = "ALLOW"
    elif tamper == "drop":
        del lines[4]
    else:
        lines[4], lines[5] = lines[5], lines[4]
    _rewrite(path, lines)
    errors = audit.verify(tmp_path)["errors"]
    assert errors and "audit.jsonl:5" in errors[0]
    with pytest.raises(SystemExit) as exit_info:
        so8t(["audit", "verify", str(tmp_path)])
    assert exit_info.value.code == 1


def test_tampering_inside_a_rotated_file_is_found(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=2048, backup_count=10)
    for i in range(60):
        log.append(_record(i))
    rotated = audit.log_files(tmp_path)[0]
    lines = [json.loads(line) for line in gzip.open(rotated, "rt", encoding="utf-8")]
    lines[1]["rationale"] = "changed later"
    with gzip.open(rotated, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in lines)
    assert any("edited" in e for e in audit.verify(tmp_path)["errors"])


def test_personal_data_is_masked_in_the_input_by_default(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl")
    written = log.append({**_record(0), "input": "田中さん(tanaka@example.com, 090-1234-5678)の番号は123456789012"})
    assert written["input"] == "[NAME]さん([EMAIL], [PHONE])の番号は[MY_NUMBER]"
    raw = audit.AuditLog(tmp_path / "raw.jsonl", mask_input=False).append({**_record(0), "input": "a@b.co"})
    assert raw["input"] == "a@b.co"


def test_cli_ok_and_sizes(tmp_path, capsys):
    audit.AuditLog(tmp_path / "audit.jsonl").append(_record(0))
    so8t(["audit", "verify", str(tmp_path)])
    assert capsys.readouterr().out.startswith("OK: 1 records")
    assert parse_size("100MB") == 100 * 2**20 and parse_size("1GB") == 2**30
    with pytest.raises(ValueError, match="100MB"):
        parse_size("lots")


def test_encryption_at_rest(tmp_path, capsys, monkeypatch):
    fernet = pytest.importorskip("cryptography.fernet")
    key = fernet.Fernet.generate_key().decode()
    log = audit.AuditLog(tmp_path / "audit.jsonl", encryption_key=key)
    for i in range(5):
        log.append({**_record(i), "input": f"秘密の相談 {i}"})
    raw = (tmp_path / "audit.jsonl").read_text(encoding="utf-8")
    assert "秘密" not in raw and "ESCALATE" not in raw
    assert audit.verify(tmp_path)["errors"] == []  # the chain is checked without the key
    records = list(audit.read_records(tmp_path, key=key))
    assert [r["input"] for r in records] == [f"秘密の相談 {i}" for i in range(5)]
    with pytest.raises(ValueError, match="encrypted"):
        list(audit.read_records(tmp_path))
    with pytest.raises(ValueError, match="cannot be decrypted"):
        list(audit.read_records(tmp_path, key=fernet.Fernet.generate_key()))
    with pytest.raises(ValueError, match="not a Fernet key"):
        audit.AuditLog(tmp_path / "x.jsonl", encryption_key="short")
    monkeypatch.setenv("SO8T_AUDIT_KEY", key)
    so8t(["audit", "show", str(tmp_path)])
    assert capsys.readouterr().out.count("秘密の相談") == 5
