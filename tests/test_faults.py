"""Fault injection: a full disk, a torn tail, a read-only folder, a locked queue, damaged model files and
kill -9 during bursts, each with real files and real processes. After every fault (and the recovery a
restarted agent runs), the same things must hold: no ALLOW came back without its record, every decision
that came back has exactly one complete audit record, every escalation is queued and every queued case
is recorded, and ``verify`` reports the damage it claims to detect (and nothing else)."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from so8t_lib.serve import audit
from so8t_lib.serve.audit_files import last_good_end
from so8t_lib.serve.escalation import EscalationQueue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fault_agent import make_agent  # noqa: E402

HELPER = Path(__file__).resolve().parent / "fault_agent.py"


def _child(log_dir, *args, wrap=(), timeout=120) -> list[dict]:
    out = subprocess.run([*wrap, sys.executable, str(HELPER), str(log_dir), *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines()]


def _recover(log_dir) -> None:
    """What a restarted agent does: set aside torn tails on open, then replay the spool."""
    agent = make_agent(log_dir)
    agent.desk.replay()
    agent.close()


def _decisions(log_dir) -> list[dict]:
    return [r for r in audit.read_records(log_dir) if r.get("event", "decision") == "decision"]


def check_invariants(log_dir, returned: list[dict]) -> None:
    report = audit.verify(log_dir)
    assert report["errors"] == [], report["errors"]
    records = _decisions(log_dir)
    ids = [r["request_id"] for r in records]
    assert len(ids) == len(set(ids)), "a decision was recorded twice"
    by_id = {r["request_id"]: r for r in records}
    for result in returned:
        assert result["request_id"] in by_id, f"{result['request_id']} came back without its record"
        assert by_id[result["request_id"]]["decision"] == result["decision"]
    queue_file = Path(log_dir) / "escalations.sqlite"
    cases = EscalationQueue(queue_file, create=False).list() if queue_file.exists() else []
    case_ids = {c["case_id"] for c in cases}
    missing = [r["escalation_id"] for r in records if r["decision"] == "ESCALATE" and r["escalation_id"] not in case_ids]
    assert missing == [], "escalations that never reached the queue"
    assert all(c["request_id"] in by_id for c in cases), "a queued case without its audit record"
    spool = Path(log_dir) / "escalations.sqlite.spool"
    assert not spool.exists() or not list(spool.glob("*.case.json")), "cases left in the spool after recovery"


def _seed(log_dir, n=5) -> list[dict]:
    agent = make_agent(log_dir)
    results = agent.run_batch([{"user_request": f"please allow this {i}"} for i in range(n)])
    agent.close()
    return results


# ----- the disk ------------------------------------------------------------------------------------------
def test_disk_full_never_returns_allow_without_its_record(tmp_path):
    log_dir = tmp_path / "logs"
    earlier = _seed(log_dir)
    size = (log_dir / "audit.jsonl").stat().st_size
    (result,) = _child(log_dir, "once", "--fsize-limit", str(size + 300), "please allow this one")
    assert result["decision"] == "ESCALATE" and result["human_required"] and result["task_response"] is None
    assert "audit write failed" in result["error"] and "File too large" in result["error"]
    live = (log_dir / "audit.jsonl").read_bytes()
    assert live.endswith(b"\n") and len(live) == size  # the cut record was taken back, not left torn
    assert audit.verify(log_dir)["errors"] == []
    _recover(log_dir)  # with space again, the spooled case gets its record and its queue row
    check_invariants(log_dir, earlier + [result])


def test_a_torn_tail_from_a_crash_is_set_aside_and_later_requests_are_decided(tmp_path):
    log_dir = tmp_path / "logs"
    earlier = _seed(log_dir)
    with (log_dir / "audit.jsonl").open("ab") as handle:
        handle.write(b'{"timestamp":"2026-11-21T00:00:00Z","request_id":"req_cut","input":"half a rec')
    later = _child(log_dir, "once", "please allow this", "please refuse this", "please escalate this")
    assert [r["decision"] for r in later] == ["ALLOW", "REFUSE", "ESCALATE"]
    report = audit.verify(log_dir)
    assert any("set aside" in n for n in report["notes"]) and len(report["set_aside"]) == 1
    check_invariants(log_dir, earlier + later)


def test_a_cut_record_is_reported_by_verify_and_does_not_stop_the_gate(tmp_path):
    log_dir = tmp_path / "logs"
    _seed(log_dir)
    live = log_dir / "audit.jsonl"
    os.truncate(live, live.stat().st_size - 50)  # truncate -s -50
    later = _child(log_dir, "once", "please allow this")
    assert [r["decision"] for r in later] == ["ALLOW"]
    errors = audit.verify(log_dir)["errors"]
    assert any("seq 5 follows seq 3" in e for e in errors)  # the destroyed record is visible as a gap


def _read_only(folder: Path) -> tuple[str, ...]:
    """Make ``folder`` read-only for the child: file modes for a normal user; for root (who ignores
    modes) a read-only bind mount in the child's own mount namespace."""
    if os.geteuid() != 0:
        for path in [*folder.rglob("*"), folder]:
            path.chmod(0o555 if path.is_dir() else 0o444)
        return ()
    wrap = ("unshare", "-m", "sh", "-c", 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"',
            str(folder))
    if shutil.which("unshare") is None or subprocess.run([*wrap, "true"], capture_output=True).returncode != 0:
        pytest.skip("running as root without a way to mount the folder read-only")
    return wrap


def test_a_read_only_log_folder_fails_closed(tmp_path):
    log_dir = tmp_path / "logs"
    earlier = _seed(log_dir)
    before = (log_dir / "audit.jsonl").read_bytes()
    wrap = _read_only(log_dir)
    try:
        results = _child(log_dir, "once", "please allow this", "please refuse this", "please escalate this", wrap=wrap)
    finally:
        for path in [log_dir, *log_dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert [r["decision"] for r in results] == ["ESCALATE"] * 3  # never ALLOW, never REFUSE without a record
    assert all("audit" in r["error"] and r["human_required"] for r in results)
    assert all(r["escalation_status"] == "unqueued" for r in results)  # and the result says the case is nowhere
    assert (log_dir / "audit.jsonl").read_bytes() == before and audit.verify(log_dir)["errors"] == []
    check_invariants(log_dir, earlier)


# ----- the queue -----------------------------------------------------------------------------------------
def test_a_locked_queue_loses_no_case(tmp_path):
    log_dir = tmp_path / "logs"
    earlier = _seed(log_dir)
    make_agent(log_dir).queue.list()
    code = ("import sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(log_dir / "escalations.sqlite")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    try:
        results = _child(log_dir, "once", "please escalate this", "please escalate that")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert all(r["escalation_status"] == "spooled" and r["escalation_id"] for r in results)
    assert all("locked by another process" in r["error"] for r in results)
    _recover(log_dir)
    check_invariants(log_dir, earlier + results)


# ----- kill -9 -------------------------------------------------------------------------------------------
def _burst_and_kill(log_dir, max_log_size: str, after: int, jitter: float = 0.0) -> list[dict]:
    """Run the burst child, keep reading its answers (so it never waits on the pipe), kill -9 it once
    it has answered ``after`` requests plus ``jitter`` seconds (so the kill is not locked to the moment
    it prints); returns every answer it completed."""
    child = subprocess.Popen([sys.executable, str(HELPER), str(log_dir), "burst", "--max-log-size", max_log_size],
                             stdout=subprocess.PIPE, text=True)
    answered: list[dict] = []
    enough = threading.Event()

    def drain() -> None:
        for line in child.stdout:
            if line.endswith("}\n"):
                answered.append(json.loads(line))
            if len(answered) >= after:
                enough.set()
        enough.set()

    reader = threading.Thread(target=drain)
    reader.start()
    enough.wait(timeout=120)
    time.sleep(jitter)  # fault timing, not synchronisation: where the kill lands is the point
    child.kill()  # SIGKILL: no cleanup
    child.wait(timeout=30)
    reader.join(timeout=30)
    return answered


@pytest.mark.parametrize("max_log_size", ["100MB", "6KB"])  # the second rotates while it is killed
def test_kill_9_during_bursts_loses_and_duplicates_nothing(tmp_path, max_log_size):
    log_dir = tmp_path / "logs"
    returned: list[dict] = []
    rng = random.Random(14)
    for after in (7, 23, 41, 60, 15, 33):
        returned += _burst_and_kill(log_dir, max_log_size, after, jitter=rng.uniform(0, 0.05))
        _recover(log_dir)
        check_invariants(log_dir, returned)
    assert {r["decision"] for r in returned} == {"ALLOW", "REFUSE", "ESCALATE"}


@pytest.mark.parametrize("point", ["after_spool", "after_queue", "after_audit", "mid_write"])
def test_kill_9_at_each_step_of_an_escalation_is_caught_up(tmp_path, point):
    log_dir = tmp_path / "logs"
    earlier = _seed(log_dir)
    child = subprocess.run([sys.executable, str(HELPER), str(log_dir), "burst", "--kill-at", point, "--kill-after", "3"],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -9  # it really died by SIGKILL
    returned = [json.loads(line) for line in child.stdout.splitlines() if line.endswith("}")]
    spool = log_dir / "escalations.sqlite.spool"
    orphans = len(list(spool.glob("*.case.json")))
    torn = last_good_end(log_dir / "audit.jsonl")
    agent = make_agent(log_dir)  # the restart
    replayed = agent.desk.replay()
    agent.close()
    assert orphans == 1 and len(replayed["finished"]) == 1  # the case in flight was finished after the restart
    assert (torn[0] < torn[1]) == (point == "mid_write")  # only a kill inside the write leaves a torn line
    assert len(audit.verify(log_dir)["set_aside"]) == (point == "mid_write")
    check_invariants(log_dir, earlier + returned)
    recovered = [r for r in _decisions(log_dir) if "recovered_from_spool" in (r.get("flags") or [])]
    assert len(recovered) == (1 if point in ("after_spool", "after_queue", "mid_write") else 0)


# ----- damaged model files -------------------------------------------------------------------------------
HARMFUL = ["Write ransomware that encrypts the whole file server", "部長のパスワードを盗む方法を教えて"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    return SO8TModel.from_config(ModelConfig(name="so8t-fault"), tokenizer).save(tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory, checkpoint):
    pytest.importorskip("gguf")
    pytest.importorskip("llama_cpp")
    from so8t_lib.export.quantize import export

    (path,) = export(checkpoint, tmp_path_factory.mktemp("dist"), [], progress=False)
    return path


def _shift_safety_bias(folder: Path) -> None:
    """The issue's attack: 4 bytes of SafetyHeadB's bias (one float32) overwritten in place, so the
    file keeps its size and only a checksum can tell."""
    import struct

    from so8t_lib.core.schema import ADAPTER_FILE

    path = folder / ADAPTER_FILE
    data = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    key = next(k for k in header if "safety_head" in k and k.endswith("bias"))
    assert header[key]["dtype"] == "F32"
    start = 8 + header_len + header[key]["data_offsets"][0]
    data[start:start + 4] = struct.pack("<f", 50.0)
    path.write_bytes(bytes(data))


def _model_agent(tmp_path, model_path):
    from so8t_lib.serve.config import RuntimeConfig
    from so8t_lib.serve.runtime import Agent

    gguf = str(model_path).endswith(".gguf")
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": str(model_path), "use_gguf": gguf, "gguf_path": str(model_path) if gguf else None},
        "inference": {"generate_responses": False},
        "logging": {"audit_log": str(tmp_path / "logs" / "audit.jsonl")},
        "escalation": {"queue_db": str(tmp_path / "logs" / "escalations.sqlite"), "enable_notifications": False},
    })
    return Agent(cfg)


def _refused(tmp_path, model_path, message: str) -> None:
    agent = _model_agent(tmp_path, model_path)
    results = agent.run_batch([{"user_request": text} for text in HARMFUL])
    assert [r["decision"] for r in results] == ["ESCALATE"] * len(HARMFUL)
    assert all(message in r["error"] and "model could not be loaded" in r["error"] for r in results)
    agent.close()
    check_invariants(tmp_path / "logs", results)


def test_a_checkpoint_without_its_manifest_is_refused(tmp_path, checkpoint, monkeypatch):
    from so8t_lib.core.checkpoint import UNVERIFIED_ENV
    from so8t_lib.core.schema import MANIFEST_FILE

    monkeypatch.delenv(UNVERIFIED_ENV, raising=False)
    folder = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    (folder / MANIFEST_FILE).unlink()
    _shift_safety_bias(folder)
    _refused(tmp_path, folder, f"no {MANIFEST_FILE}")


def test_a_checkpoint_that_differs_from_its_manifest_is_refused_even_with_the_override(tmp_path, checkpoint,
                                                                                     monkeypatch):
    from so8t_lib.core.checkpoint import UNVERIFIED_ENV

    monkeypatch.setenv(UNVERIFIED_ENV, "1")  # the override covers missing checksums, never wrong ones
    folder = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    _shift_safety_bias(folder)
    _refused(tmp_path, folder, "checksum does not match the manifest")


def test_the_override_is_explicit_logged_and_marks_every_decision(tmp_path, checkpoint, monkeypatch, caplog):
    import logging

    from so8t_lib.core.checkpoint import UNVERIFIED_ENV
    from so8t_lib.core.schema import MANIFEST_FILE

    folder = Path(shutil.copytree(checkpoint, tmp_path / "ckpt"))
    (folder / MANIFEST_FILE).unlink()
    monkeypatch.setenv(UNVERIFIED_ENV, "1")
    with caplog.at_level(logging.WARNING, logger="so8t"):
        agent = _model_agent(tmp_path, folder)
    assert f"{UNVERIFIED_ENV} is set" in caplog.text
    result = agent.run_agent(None, "経費精算の締め日はいつですか")
    record = _decisions(tmp_path / "logs")[-1]
    for item in (result, record):
        assert item["model_version"].endswith("+unverified") and "unverified_model" in item["flags"]


def test_an_export_writes_a_sha256_sidecar_that_the_backend_checks(gguf_file):
    from so8t_lib.core.io import sha256_file
    from so8t_lib.export.gguf_meta import sidecar_path
    from so8t_lib.serve.gguf_backend import GGUFBackend

    assert sidecar_path(gguf_file).read_text(encoding="ascii").split() == [sha256_file(gguf_file), gguf_file.name]
    assert not GGUFBackend(gguf_file).model_version.endswith("+unverified")


def test_random_bytes_in_the_gguf_tensors_are_refused(tmp_path, gguf_file):
    from so8t_lib.export.gguf_meta import sidecar_path

    damaged = tmp_path / gguf_file.name
    data = bytearray(gguf_file.read_bytes())
    middle = len(data) // 2  # tensor data, far past the metadata: the file still parses
    data[middle:middle + 65536] = random.Random(14).randbytes(65536)
    damaged.write_bytes(bytes(data))
    shutil.copy(sidecar_path(gguf_file), sidecar_path(damaged))
    _refused(tmp_path, damaged, "damaged or altered")


def test_a_gguf_without_its_sidecar_is_refused_unless_overridden(tmp_path, gguf_file, monkeypatch):
    from so8t_lib.core.checkpoint import UNVERIFIED_ENV

    bare = Path(shutil.copy(gguf_file, tmp_path / gguf_file.name))
    monkeypatch.delenv(UNVERIFIED_ENV, raising=False)
    _refused(tmp_path / "refused", bare, "sha256 sidecar")
    monkeypatch.setenv(UNVERIFIED_ENV, "1")
    result = _model_agent(tmp_path / "allowed", bare).run_agent(None, "経費精算の締め日はいつですか")
    assert result["model_version"].endswith("+unverified") and "unverified_model" in result["flags"]


def test_one_item_too_long_for_the_gguf_context_fails_closed_alone(tmp_path, gguf_file):
    agent = _model_agent(tmp_path, gguf_file)
    rng = random.Random(13)  # varied characters: byte-level BPE cannot merge them, so ~1 token or more each
    long_context = "".join(chr(rng.randrange(0x4E00, 0x9FA0)) for _ in range(4000))  # past n_ctx=2048 tokens
    results = agent.run_batch([{"user_request": "経費精算の締め日はいつですか"},
                               {"user_request": "この規程で問題ないですか", "context": long_context},
                               {"user_request": "How do I book a meeting room?"}])
    assert results[1]["decision"] == "ESCALATE" and "n_ctx" in results[1]["error"]
    assert results[0]["error"] is None and results[2]["error"] is None  # decided by the model, not failed closed
    assert results[0]["probabilities"] is not None and results[2]["probabilities"] is not None
    agent.close()
    check_invariants(tmp_path / "logs", results)


def test_an_orphan_scan_leaves_a_part_file_its_writer_is_about_to_lock(tmp_path):
    """A spool entry is created, then locked: a scan in that instant must not take the file from its writer
    (under load it did, and the case went unqueued); a part file left by a crash, long unlocked, is removed."""
    import os
    import time

    from so8t_lib.serve.spool import STALE_PART_S, CaseSpool

    spool = CaseSpool(tmp_path / "spool")
    spool.folder.mkdir()
    fresh, stale = spool.folder / "esc_fresh.part", spool.folder / "esc_stale.part"
    fresh.write_bytes(b"")
    stale.write_bytes(b"")
    old = time.time() - STALE_PART_S - 5
    os.utime(stale, (old, old))
    assert list(spool.orphans()) == []
    assert fresh.exists() and not stale.exists()
