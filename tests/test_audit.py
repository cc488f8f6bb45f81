"""Audit log: nothing lost under concurrent writers, rotation keeps every record, tampering is found."""

import errno
import gzip
import json
import multiprocessing as mp
import os
import threading

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.core.config import parse_size
from so8t_lib.serve import audit
from so8t_lib.serve.audit_files import set_aside_files


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
    assert log.wait_for_compression(60)
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
    assert log.wait_for_compression(60)
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


# ----- issue 14: torn writes, deletions at either end, re-hashed chains -------------------------------------
def _fill(folder, n, **kwargs):
    """A log of n records, its rotated files gzipped (the gzip runs in the background: tests that edit files
    by hand start from a settled folder)."""
    log = audit.AuditLog(folder / "audit.jsonl", **kwargs)
    for i in range(n):
        log.append(_record(i))
    assert log.wait_for_compression(60)
    return log


def _lines_of(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_a_crash_during_a_write_is_set_aside_and_the_chain_continues(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(tmp_path, 5)
    torn = b'{"timestamp":"2026-11-21T00:00:00Z","request_id":"req_torn","user_id":"u0","inp'
    with path.open("ab") as handle:  # what a kill -9 or a full disk leaves: no newline, no anchor update
        handle.write(torn)
    before = audit.verify(tmp_path)
    assert before["errors"] == [] and any("torn tail" in n for n in before["notes"])
    log = audit.AuditLog(path)  # set aside on open
    assert [p.read_bytes() for p in log.set_aside] == [torn]
    written = log.append(_record(5))
    report = audit.verify(tmp_path)
    assert written["seq"] == 5 and report["errors"] == [] and report["records"] == 6
    assert any(".torn-" in n and "set aside" in n for n in report["notes"])


def test_a_cut_last_record_does_not_stop_the_log_and_is_reported(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(tmp_path, 10)
    os.truncate(path, path.stat().st_size - 50)  # truncate -s -50: seq 9 is no longer complete
    log = audit.AuditLog(path)
    assert log.append(_record(10))["seq"] == 10  # no JSONDecodeError: the next request is recorded
    errors = audit.verify(tmp_path)["errors"]
    assert any("seq 10 follows seq 8" in e for e in errors)  # the lost record stays visible as a gap
    assert len(set_aside_files(tmp_path)) == 1


def test_a_failed_write_leaves_no_partial_record(tmp_path, monkeypatch):
    path = tmp_path / "audit.jsonl"
    log = _fill(tmp_path, 3)
    size = path.stat().st_size
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 100:  # the record: half of it lands, then the disk is full
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(audit.os, "write", half_then_full)
    with pytest.raises(audit.AuditWriteError, match="could not be written whole.*No space left"):
        log.append(_record(3))
    monkeypatch.undo()
    assert path.stat().st_size == size and audit.verify(tmp_path)["errors"] == []
    assert log.append(_record(4))["seq"] == 3


def _rewrite_lines(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in records),
                    encoding="utf-8")


def _rehash(records, start_index):
    """Edit one record and recompute every hash after it: a chain that is valid on its own."""
    records[start_index]["decision"] = "ALLOW"
    for i in range(start_index, len(records)):
        if i:
            records[i]["prev_hash"] = records[i - 1]["hash"]
        records[i]["hash"] = audit.record_hash(records[i])
    return records


@pytest.mark.parametrize("damage, message", [
    ("first_lines", "records before seq 5 are missing"),
    ("last_line", "records after seq 58 are missing"),
    ("live_file", "records after seq"),
    ("oldest_gz", "records before seq"),
    ("rehash", "chain was rewritten and re-hashed"),
    ("anchor", "anchor is missing"),
])
def test_deletions_at_either_end_and_a_rehashed_chain_are_found(tmp_path, damage, message):
    _fill(tmp_path, 60, max_bytes=4096, backup_count=50)
    files = audit.log_files(tmp_path)
    live = tmp_path / "audit.jsonl"
    assert audit.verify(tmp_path)["errors"] == []
    if damage == "first_lines":
        oldest = files[0]
        lines = gzip.decompress(oldest.read_bytes()).splitlines(keepends=True)
        oldest.write_bytes(gzip.compress(b"".join(lines[5:])))
    elif damage == "last_line":
        _rewrite_lines(live, _lines_of(live)[:-1])
    elif damage == "live_file":
        live.unlink()
    elif damage == "oldest_gz":
        files[0].unlink()
    elif damage == "rehash":
        _rewrite_lines(live, _rehash(_lines_of(live), 1))
    else:
        (tmp_path / "audit.jsonl.anchor").unlink()
    errors = audit.verify(tmp_path)["errors"]
    assert any(message in e for e in errors), errors
    with pytest.raises(SystemExit) as exit_info:
        so8t(["audit", "verify", str(tmp_path)])
    assert exit_info.value.code == 1


def test_a_rewritten_anchor_is_found_with_the_hmac_key(tmp_path, monkeypatch):
    _fill(tmp_path, 10, hmac_key="s3cret")
    live = tmp_path / "audit.jsonl"
    records = _rehash(_lines_of(live), 2)
    _rewrite_lines(live, records)
    anchor_file = tmp_path / "audit.jsonl.anchor"
    anchor = json.loads(anchor_file.read_text())
    anchor["last_hash"] = records[-1]["hash"]  # the forger re-anchors too, without the key
    anchor_file.write_text(json.dumps(anchor))
    assert audit.verify(tmp_path)["errors"] == []  # without the key this is indistinguishable (documented)
    errors = audit.verify(tmp_path, hmac_key="s3cret")["errors"]
    assert any("signature does not match" in e for e in errors)
    monkeypatch.setenv("SO8T_AUDIT_HMAC_KEY", "s3cret")
    with pytest.raises(SystemExit):
        so8t(["audit", "verify", str(tmp_path)])


def test_a_rollback_is_found_against_an_outside_checkpoint(tmp_path, capsys):
    _fill(tmp_path, 5)
    saved = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    _fill(tmp_path, 3)
    so8t(["audit", "verify", str(tmp_path)])
    checkpoint = capsys.readouterr().out.strip().splitlines()[-1].split("anchor: ")[1]  # kept outside the folder
    assert checkpoint.startswith("7:")
    so8t(["audit", "verify", str(tmp_path), "--expect", checkpoint])
    for name, data in saved.items():  # the folder, anchor included, rolled back to an earlier valid state
        (tmp_path / name).write_bytes(data)
    assert audit.verify(tmp_path)["errors"] == []  # consistent on its own ...
    with pytest.raises(SystemExit):  # ... but not with what was seen before
        so8t(["audit", "verify", str(tmp_path), "--expect", checkpoint])
    assert "rolled back" in capsys.readouterr().out


def test_a_re_created_anchor_is_reported_until_a_person_accepts_it(tmp_path, capsys):
    _fill(tmp_path, 4)
    (tmp_path / "audit.jsonl.anchor").unlink()
    audit.AuditLog(tmp_path / "audit.jsonl").append(_record(4))  # the writer re-creates it
    assert any("re-created by the writer" in e for e in audit.verify(tmp_path)["errors"])
    so8t(["audit", "accept-anchor", str(tmp_path), "--by", "Sato (audit)"])
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and any("accepted by Sato (audit)" in n for n in report["notes"])
    anchor = (tmp_path / "audit.jsonl.anchor").read_bytes()
    for by, said in (("Ito", "accepted by Sato \\(audit\\) at .* already"),  # the first reviewer's name is kept
                     ("\u200b", "name the person who decided")):  # a name that shows nothing names nobody
        with pytest.raises(SystemExit, match=said):
            so8t(["audit", "accept-anchor", str(tmp_path), "--by", by])
    assert (tmp_path / "audit.jsonl.anchor").read_bytes() == anchor


def test_a_signed_re_created_anchor_is_not_accepted_without_its_key(tmp_path, monkeypatch):
    key = b"k" * 32
    _fill(tmp_path, 2, hmac_key=key)
    (tmp_path / "audit.jsonl.anchor").unlink()
    audit.AuditLog(tmp_path / "audit.jsonl", hmac_key=key).append(_record(2))  # re-created, signed
    with pytest.raises(SystemExit, match="anchor is signed: set the HMAC key"):  # it would be written unsigned
        so8t(["audit", "accept-anchor", str(tmp_path), "--by", "Sato"])
    monkeypatch.setenv("SO8T_AUDIT_HMAC_KEY", "another key")  # re-signed with it, verify with the right key failed
    with pytest.raises(SystemExit, match="anchor is signed: set the HMAC key it is signed with"):
        so8t(["audit", "accept-anchor", str(tmp_path), "--by", "Sato"])
    monkeypatch.setenv("SO8T_AUDIT_HMAC_KEY", key.decode())
    so8t(["audit", "accept-anchor", str(tmp_path), "--by", "Sato"])
    report = audit.verify(tmp_path, hmac_key=key)
    assert report["errors"] == [] and any("accepted by Sato" in n for n in report["notes"])


def test_a_clear_writer_cannot_append_to_an_encrypted_log(tmp_path):
    fernet = pytest.importorskip("cryptography.fernet")
    key = fernet.Fernet.generate_key()
    _fill(tmp_path, 2, encryption_key=key)
    clear = audit.AuditLog(tmp_path / "audit.jsonl")
    assert "encrypted and no key is set" in clear.open_error  # at open: readiness and serve --check say so
    with pytest.raises(audit.AuditWriteError, match="the log is encrypted"):
        clear.append(_record(2))
    assert audit.AuditLog(tmp_path / "audit.jsonl", encryption_key=key).open_error is None


def test_an_interrupted_rotation_leaves_no_duplicate(tmp_path):
    _fill(tmp_path, 20, max_bytes=2048)
    live = tmp_path / "audit.jsonl"
    newest = tmp_path / "audit.jsonl.1.gz"
    for n in range(9, 0, -1):  # redo the shift, then stop before the live file is removed
        if (tmp_path / f"audit.jsonl.{n}.gz").exists():
            os.replace(tmp_path / f"audit.jsonl.{n}.gz", tmp_path / f"audit.jsonl.{n + 1}.gz")
    newest.write_bytes(gzip.compress(live.read_bytes()))
    audit.AuditLog(live, max_bytes=2048)
    assert not live.exists() and audit.verify(tmp_path)["errors"] == []


def test_stored_fields_are_bounded_and_a_user_id_with_an_address_is_pseudonymised(tmp_path):
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_field_chars=1000)
    written = log.append({**_record(0), "input": "x" * 1_000_000, "user_id": "tanaka@example.com", "error": "e" * 5000})
    assert len(written["input"]) < 1100 and "1000000 chars, sha256" in written["input"]
    assert written["user_id"].startswith("[EMAIL]#") and "tanaka" not in (tmp_path / "audit.jsonl").read_text()
    assert len(written["error"]) < 1100


def test_masking_a_bounded_text_keeps_its_truncation_note(tmp_path):
    """The runtime bounds a request before the log masks it; a note whose digest was all digits came back as
    "sha256 [CARD]", and retraining no longer saw that the text was cut (the label belongs to the whole text)."""
    from so8t_lib.serve.fields import bounded, masked_bounded

    cut = bounded("call 090-1234-5678 " + "x" * 5000, 100)
    assert masked_bounded(cut, 100) == cut.replace("090-1234-5678", "[PHONE]")
    note = "…[9000 chars, sha256 0123456789012345]"
    head = "call 090-1234-5678 " + "x" * 81  # exactly the bound long, as bounded() writes it
    assert masked_bounded(head + note, 100) == "call [PHONE] " + "x" * 81 + note
    written = audit.AuditLog(tmp_path / "audit.jsonl", max_field_chars=100).append({**_record(0), "context": head + note})
    assert written["context"] == "call [PHONE] " + "x" * 81 + note
    # a note a person typed is no note: its count or digest could carry a card number past the masking
    for forged in ("hi …[4111111111111111 chars, sha256 0123456789abcdef]", "hi …[41 chars, sha256 4111111111111111]"):
        assert "4111111111111111" not in masked_bounded(forged, 100)


def test_with_the_hmac_key_a_record_added_without_it_is_found(tmp_path):
    _fill(tmp_path, 3, hmac_key="s3cret")
    audit.AuditLog(tmp_path / "audit.jsonl").append(_record(3))  # write access to the folder, but not the key
    assert audit.verify(tmp_path)["errors"] == []  # a valid chain to anyone without the key
    errors = audit.verify(tmp_path, hmac_key="s3cret")["errors"]
    assert any("seq 3 has no valid signature" in e for e in errors) and any("not signed" in e for e in errors)


def test_verify_reads_a_snapshot_and_lets_writers_append_and_rotate_while_it_walks(tmp_path, monkeypatch):
    """The daily verification must not stall the gate: the shared lock covers only opening the files and reading
    the anchor. A writer that appends and rotates during the walk neither waits for it nor makes it fail: the walk
    reads the files as they were when opened, and the anchor of that moment."""
    from so8t_lib.serve import audit_verify

    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=1 << 20, backup_count=3)
    for i in range(5):
        log.append(_record(i))
    walk, writer_done = audit_verify._walk, threading.Event()

    def busy_gate(*args, **kwargs):
        def write():
            for i in range(5, 8):
                log.append(_record(i))
            log.rotate()  # the live file the walk is about to read is gzipped away and deleted
            log.append(_record(8))
            writer_done.set()

        writer = threading.Thread(target=write)
        writer.start()
        writer.join(timeout=30)
        assert writer_done.is_set(), "the writer waited for the verification's lock"
        return walk(*args, **kwargs)

    monkeypatch.setattr(audit_verify, "_walk", busy_gate)
    report = audit.verify(tmp_path)
    assert report["errors"] == [] and report["records"] == 5 and report["last_seq"] == 4
    monkeypatch.setattr(audit_verify, "_walk", walk)
    after = audit.verify(tmp_path)
    assert after["errors"] == [] and after["records"] == 9


def test_verify_walks_a_long_log_in_memory_that_does_not_grow_with_it(tmp_path):
    """The production setting keeps ten files of 1 GB: the walk streams them, keeping the first and last record and
    the few seqs it was asked about, never every line or every record."""
    import tracemalloc

    from so8t_lib.serve.audit_files import GENESIS, encode_line, record_hash, write_anchor

    path, prev, n = tmp_path / "audit.jsonl", GENESIS, 40_000
    with open(path, "wb") as out:
        for seq in range(n):
            record = {**_record(seq), "input": "x" * 300, "seq": seq, "prev_hash": prev}
            record["hash"] = prev = record_hash(record)
            out.write(encode_line(record))
    write_anchor(path, {"first_seq": 0, "first_prev_hash": GENESIS, "last_seq": n - 1, "last_hash": prev})
    tracemalloc.start()
    try:
        report = audit.verify(tmp_path, expect=(123, "not-the-hash"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report["records"] == n and report["last_seq"] == n - 1
    assert report["errors"] == ["seq 123 has another hash than the outside checkpoint (the chain was rewritten)"]
    assert peak < path.stat().st_size / 20, (peak, path.stat().st_size)


def test_a_file_that_cannot_be_read_is_a_named_problem_not_a_traceback(tmp_path):
    """A rotated file that is a folder, or a .gz cut short: the chain fails naming the file, and what could be read
    is still checked."""
    log = audit.AuditLog(tmp_path / "audit.jsonl", max_bytes=1 << 20, backup_count=5)
    for i in range(6):
        log.append(_record(i))
        if i in (1, 3):
            log.rotate()  # .2.gz holds seq 0-1, .1.gz seq 2-3, the live file 4-5
    newer = audit.log_files(tmp_path)[1]
    newer.write_bytes(newer.read_bytes()[:-12])  # the gzip trailer and some data gone
    report = audit.verify(tmp_path)
    assert any(e.startswith(f"{newer.name}: cannot be read to the end") for e in report["errors"]), report["errors"]
    assert report["records"] >= 4 and report["last_seq"] == 5  # the files around it were still walked

    older = audit.log_files(tmp_path)[0]
    older.unlink()
    older.mkdir()
    report = audit.verify(tmp_path)
    assert f"{older.name}: cannot be read (Is a directory)" in report["errors"], report["errors"]


def test_a_verifier_that_may_not_write_to_the_log_folder_still_takes_the_lock(tmp_path):
    """The daily verification runs in a read-only sandbox (deploy/systemd/so8t-audit-verify.service): its shared
    lock opens the existing lock file read-only. As root this test drops to ``nobody``, since root may write
    anywhere; as another user, the read-only modes below are enough."""
    import contextlib
    import shutil
    import stat
    import tempfile

    from so8t_lib.serve import audit_verify

    folder = tempfile.mkdtemp(prefix="so8t-readonly-")  # /tmp, not pytest's folder: nobody cannot enter that one
    try:
        log = audit.AuditLog(os.path.join(folder, "audit.jsonl"))
        for i in range(3):
            log.append(_record(i))
        assert audit.verify(folder)["errors"] == []  # also loads, as root, every module the child needs
        for name in os.listdir(folder):
            os.chmod(os.path.join(folder, name), stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.chmod(folder, stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
        read_end, write_end = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked child
            status = 1
            try:
                os.close(read_end)
                if os.getuid() == 0:
                    os.setgid(65534)
                    os.setuid(65534)
                try:
                    open(os.path.join(folder, "audit.jsonl.lock"), "a").close()
                    writable = True
                except PermissionError:
                    writable = False
                taken = []  # verify goes on without the lock when it cannot take it (a read-only copy): see if it did

                @contextlib.contextmanager
                def watched_lock(*args, **kwargs):
                    with real_lock(*args, **kwargs):
                        taken.append(kwargs.get("shared", False))
                        yield

                real_lock, audit_verify.file_lock = audit_verify.file_lock, watched_lock
                report = audit.verify(folder)
                os.write(write_end, json.dumps({"errors": report["errors"], "records": report["records"],
                                                "uid": os.getuid(), "writable": writable, "locked": taken}).encode())
                status = 0
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                os.write(write_end, json.dumps({"crash": f"{type(exc).__name__}: {exc}"}).encode())
            finally:
                os._exit(status)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            seen = json.loads(pipe.read() or b"{}")
        os.waitpid(child, 0)
        assert "crash" not in seen, seen["crash"]
        assert seen["uid"] != 0 and not seen["writable"], seen  # the child really could not write there
        assert seen["locked"] == [True] and seen["errors"] == [] and seen["records"] == 3, seen
    finally:
        os.chmod(folder, stat.S_IRWXU)
        shutil.rmtree(folder, ignore_errors=True)
