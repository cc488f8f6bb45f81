"""How a backup opens each audit chain: as verify and read_records do (``consistent_view`` and ``open_files``), so
it shares their bounded wait for the lock and their way of reading a folder where the lock cannot be taken. And what
a backup with --config takes: the chain, queue and spool that config's service writes (under --logs when given),
restored under their names; signed chains are not restored unchecked without saying so; configs of one name clash."""

from __future__ import annotations

import fcntl
import json
import shutil

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.serve.audit import AuditLog, read_records
from so8t_lib.serve.audit_files import AuditLockTimeout, encode_line, lock_path, record_hash
from so8t_lib.serve.config import load_runtime_config, runtime_paths
from so8t_lib.serve.escalation import EscalationQueue
from so8t_lib.serve.spool import SUFFIX as SPOOL_SUFFIX
from so8t_lib.workbench.backup import BackupError, backup, check_backup, restore
from so8t_lib.workbench.backup.snapshot import file_entries


@pytest.fixture
def logs(tmp_path):
    folder = tmp_path / "logs"
    log = AuditLog(folder / "audit.jsonl", max_bytes=1024)
    for i in range(12):  # rotated files too
        log.append({"request_id": f"req_{i}", "decision": "REFUSE", "input": f"request {i} " * 10})
    assert log.wait_for_compression(60)
    return folder


def test_a_backup_behind_a_writer_that_hung_holding_the_lock_gives_up_and_leaves_nothing(tmp_path, logs):
    """The backup's own loop waited for the shared lock without a limit: a writer that hung holding the lock
    hung the backup with it."""
    with open(lock_path(logs / "audit.jsonl"), "a") as hung_writer:
        fcntl.flock(hung_writer, fcntl.LOCK_EX)
        with pytest.raises(AuditLockTimeout, match=r"audit\.jsonl: cannot read the audit log.*fuser -v"):
            backup(tmp_path / "b", logs, lock_timeout=0.3)
    assert [p.name for p in tmp_path.iterdir()] == ["logs"]  # no backup, no half-made folder
    made = backup(tmp_path / "b", logs, lock_timeout=0.3)
    assert made["chains"]["audit.jsonl"]["records"] == 12 and check_backup(tmp_path / "b")["problems"] == []


def test_a_folder_whose_lock_cannot_be_taken_is_backed_up_without_it(tmp_path, logs):
    """Where the lock file cannot be made (a folder the backup may only read, a copy without a lock file; here a
    link to nowhere, which root cannot write through either), readers read without the lock, and now so does
    the backup: it stopped with the lock file's error."""
    lock = lock_path(logs / "audit.jsonl")
    lock.unlink()
    lock.symlink_to(tmp_path / "nowhere" / "audit.jsonl.lock")
    made = backup(tmp_path / "b", logs)
    assert made["chains"]["audit.jsonl"]["records"] == 12 and made["chains"]["audit.jsonl"]["errors"] == []
    assert check_backup(tmp_path / "b")["problems"] == []
    assert [r["request_id"] for r in read_records(tmp_path / "b" / "logs")] == [f"req_{i}" for i in range(12)]


def _config(path, audit_log="logs/audit.jsonl", queue_db="logs/escalations.sqlite", extra=""):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"model: {{checkpoint_path: none}}\nlogging: {{audit_log: {audit_log}{extra}}}\n"
                    f"escalation: {{queue_db: {queue_db}}}\n", encoding="utf-8")
    return path


def _queue(path, cases=3):
    queue = EscalationQueue(path)
    for i in range(cases):
        queue.add({"case_id": f"esc_{i}", "request_id": f"r{i}", "input": "x"})
    queue.close()


def test_backup_takes_the_chain_the_config_names_and_refuses_when_it_is_not_there(tmp_path, monkeypatch):
    """Backup looked only for audit.jsonl: with logging.audit_log logs/gate.jsonl it copied a leftover audit.jsonl
    (or failed with nothing), and exited 0."""
    monkeypatch.chdir(tmp_path)
    AuditLog("logs/audit.jsonl").append({"event": "decision", "decision": "ALLOW"})  # a leftover, not in service
    for _ in range(3):
        AuditLog("logs/gate.jsonl").append({"event": "decision", "decision": "REFUSE"})
    AuditLog("logs/gate-r2.jsonl").append({"event": "decision", "decision": "REFUSE"})  # a replica of it
    _queue(tmp_path / "logs" / "escalations.sqlite")
    _config(tmp_path / "gate.yaml", audit_log="logs/gate.jsonl")
    assert so8t(["backup", "--config", "gate.yaml", "--configs", "gate.yaml", "--out", "b"]) == 0
    made = json.loads((tmp_path / "b" / "BACKUP.json").read_text())
    assert list(made["chains"]) == ["gate.jsonl", "gate-r2.jsonl"] and made["chains"]["gate.jsonl"]["records"] == 3
    assert not [f for f in made["files"] if f.startswith("logs/audit.jsonl")]
    restore("b", "into")
    assert len(list(read_records(tmp_path / "into" / "logs", "gate.jsonl"))) == 3
    _config(tmp_path / "other.yaml", audit_log="logs/other.jsonl")
    with pytest.raises(SystemExit, match=r"no audit log other\.jsonl in logs.*audit\.jsonl there is another log"):
        so8t(["backup", "--config", "other.yaml", "--configs", "other.yaml", "--out", "b2"])
    assert not (tmp_path / "b2").exists()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gate.yml").write_text("a config named .yml is not taken\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=r"no config \(\*\.yaml\) in conf \(--configs"):  # a mistyped folder
        so8t(["backup", "--config", "gate.yaml", "--configs", "conf", "--out", "b3"])
    assert not (tmp_path / "b3").exists() and not list(tmp_path.glob(".b3.tmp-*"))
    (tmp_path / "configs").mkdir()  # the default folder, holding no config: the --config file is still backed up
    assert so8t(["backup", "--config", "gate.yaml", "--out", "b4"]) == 0
    assert json.loads((tmp_path / "b4" / "BACKUP.json").read_text())["configs"] == ["gate.yaml"]


def test_backup_with_logs_takes_the_queue_the_service_keeps_there_and_refuses_without_it(tmp_path, monkeypatch):
    """`so8t serve --config c.yaml --log-dir srv/logs` keeps its queue in srv/logs; backup with --logs srv/logs
    looked for it at the config's own path and backed up no queue, exit 0."""
    monkeypatch.chdir(tmp_path)
    AuditLog("srv/logs/audit.jsonl").append({"event": "decision", "decision": "ESCALATE"})
    _queue(tmp_path / "srv" / "logs" / "queue.sqlite")
    _config(tmp_path / "c.yaml", queue_db="logs/queue.sqlite")
    assert so8t(["backup", "--config", "c.yaml", "--logs", "srv/logs", "--out", "b"]) == 0
    made = json.loads((tmp_path / "b" / "BACKUP.json").read_text())
    assert made["queue"]["kind"] == "sqlite" and made["queue"]["cases"] == 3 and made["queue"]["file"] == "queue.sqlite"
    (tmp_path / "srv" / "logs" / "queue.sqlite").unlink()
    with pytest.raises(SystemExit, match=r"no escalation queue at srv/logs/queue\.sqlite .*--no-queue"):
        so8t(["backup", "--config", "c.yaml", "--logs", "srv/logs", "--out", "b2"])
    assert so8t(["backup", "--config", "c.yaml", "--logs", "srv/logs", "--out", "b3", "--no-queue"]) == 0
    assert json.loads((tmp_path / "b3" / "BACKUP.json").read_text())["queue"] == {"kind": "none"}


def test_restore_puts_the_queue_and_spool_back_under_the_configured_names(tmp_path, monkeypatch):
    """Restore wrote every queue as logs/escalations.sqlite: with queue_db logs/queue.sqlite the restarted service
    opened a new, empty queue (and never saw the spool)."""
    monkeypatch.chdir(tmp_path)
    AuditLog("logs/audit.jsonl").append({"event": "decision", "decision": "ESCALATE"})
    _queue(tmp_path / "logs" / "queue.sqlite")
    (tmp_path / "logs" / "queue.sqlite.spool").mkdir()
    (tmp_path / "logs" / "queue.sqlite.spool" / f"esc_9{SPOOL_SUFFIX}").write_text("{}\n")
    _config(tmp_path / "configs" / "c.yaml", queue_db="logs/queue.sqlite")
    assert so8t(["backup", "--config", "configs/c.yaml", "--out", "b"]) == 0
    assert so8t(["restore", "b", "--into", "into"]) == 0
    paths = runtime_paths(load_runtime_config(tmp_path / "into" / "configs" / "c.yaml"), tmp_path / "into" / "logs")
    assert EscalationQueue(paths.queue, create=False).count()["cases"] == 3
    assert (paths.spool / f"esc_9{SPOOL_SUFFIX}").is_file() and not (paths.queue.parent / "escalations.sqlite").exists()
    # a backup made before the names were recorded holds and restores the queue under the fixed name
    old = tmp_path / "old"
    AuditLog(old / "logs" / "audit.jsonl").append({"event": "decision", "decision": "ESCALATE"})
    _queue(old / "logs" / "escalations.sqlite")
    backup(old / "b", old / "logs")
    manifest = json.loads((old / "b" / "BACKUP.json").read_text())
    del manifest["queue"]["file"], manifest["spool"]["name"]
    (old / "b" / "BACKUP.json").write_text(json.dumps(manifest))
    restore(old / "b", old / "into")
    assert EscalationQueue(old / "into" / "logs" / "escalations.sqlite", create=False).count()["cases"] == 3


def test_the_config_in_service_wins_over_a_folders_file_of_its_name_and_two_alike_are_refused(tmp_path, monkeypatch,
                                                                                            caplog):
    """Two configs named production.yaml were both listed in BACKUP.json and only one was kept, exit 0. The
    deployed service runs /etc/so8t/production.yaml beside a checkout whose configs/ holds one of that name: the
    running one is kept and the other named; two folders (or two files named on their own) alike are refused."""
    monkeypatch.chdir(tmp_path)
    AuditLog("logs/audit.jsonl").append({"event": "decision", "decision": "ALLOW"})
    _config(tmp_path / "configs" / "production.yaml")
    _config(tmp_path / "etc" / "production.yaml", extra=", log_level: WARNING")
    _queue(tmp_path / "logs" / "escalations.sqlite")
    with caplog.at_level("WARNING", logger="so8t.backup"):
        so8t(["backup", "--config", "etc/production.yaml", "--configs", "configs", "--out", "b"])
    assert "log_level: WARNING" in (tmp_path / "b" / "configs" / "production.yaml").read_text()
    assert "keeping etc/production.yaml (named on its own), leaving out configs/production.yaml" in caplog.text
    with pytest.raises(SystemExit, match=r"two configs named production\.yaml: configs/production\.yaml and "
                                         r"etc/production\.yaml"):
        so8t(["backup", "--logs", "logs", "--configs", "configs", "--configs", "etc", "--out", "c"])
    assert not (tmp_path / "c").exists()
    made = backup("d", "logs", configs=["etc/production.yaml", "etc", "etc/production.yaml"])
    assert made["configs"] == ["production.yaml"]


def _forge(folder):
    """Turn every decision of a backed-up chain into ALLOW and re-hash it all (the signatures cannot be redone)."""
    path = folder / "logs" / "audit.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    prev = records[0]["prev_hash"]
    for record in records:
        record.update(decision="ALLOW", prev_hash=prev)
        record["hash"] = prev = record_hash(record)
    path.write_bytes(b"".join(encode_line(r) for r in records))
    anchor = json.loads((folder / "logs" / "audit.jsonl.anchor").read_text())
    anchor["last_hash"] = prev
    (folder / "logs" / "audit.jsonl.anchor").write_text(json.dumps(anchor))
    manifest = json.loads((folder / "BACKUP.json").read_text())
    manifest["chains"]["audit.jsonl"]["head"] = f"{records[-1]['seq']}:{prev}"
    manifest["files"] = file_entries(folder)
    (folder / "BACKUP.json").write_text(json.dumps(manifest))


def test_a_signed_chain_is_checked_with_the_recorded_key_and_never_passed_unchecked_silently(tmp_path, monkeypatch,
                                                                                            capsys):
    """Restore read only $SO8T_AUDIT_HMAC_KEY: with the service's key in another variable a forged, re-hashed chain
    passed with "ok", nothing said about the signatures it had not checked."""
    monkeypatch.chdir(tmp_path)
    for _ in range(3):
        AuditLog("logs/audit.jsonl", hmac_key="s3cret").append({"event": "decision", "decision": "REFUSE"})
    _config(tmp_path / "c.yaml", extra=", hmac_key_env: MY_HMAC")
    _queue(tmp_path / "logs" / "escalations.sqlite", cases=0)
    monkeypatch.setenv("MY_HMAC", "s3cret")
    assert so8t(["backup", "--config", "c.yaml", "--configs", "c.yaml", "--out", "b"]) == 0
    shutil.copytree(tmp_path / "b", tmp_path / "forged")
    _forge(tmp_path / "forged")
    capsys.readouterr()
    assert so8t(["restore", "forged", "--check"]) == 1  # the key found where the backup says the service had it
    assert "has no valid signature" in capsys.readouterr().out
    made = json.loads((tmp_path / "b" / "BACKUP.json").read_text())
    assert made["hmac_key_env"] == "MY_HMAC" and made["chains"]["audit.jsonl"]["signed"] is True
    assert so8t(["restore", "b", "--check"]) == 0
    monkeypatch.delenv("MY_HMAC")
    assert so8t(["restore", "b", "--check"]) == 1
    assert "the chain is signed and no HMAC key was given ($MY_HMAC is not set)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"\$MY_HMAC is not set.*--unchecked-signatures"):
        so8t(["restore", "b", "--into", "into"])
    assert not (tmp_path / "into" / "logs").exists()
    assert so8t(["restore", "b", "--into", "into", "--unchecked-signatures"]) == 0
    assert "signatures were NOT checked" in capsys.readouterr().out
    with pytest.raises(BackupError, match="MY_HMAC"):
        restore("b", "into2")


def test_a_queue_record_without_its_counts_is_named_not_a_traceback(tmp_path):
    logs = tmp_path / "logs"
    AuditLog(logs / "audit.jsonl").append({"event": "decision", "decision": "ESCALATE"})
    _queue(logs / "escalations.sqlite")
    backup(tmp_path / "b", logs)
    manifest = json.loads((tmp_path / "b" / "BACKUP.json").read_text())
    del manifest["queue"]["cases"]
    (tmp_path / "b" / "BACKUP.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match="does not record how many cases and resolutions"):
        check_backup(tmp_path / "b")
