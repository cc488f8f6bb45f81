"""so8t backup and so8t restore: a backup holds every chain (rotated files too) with its head, the queue
(SQLite's online backup API, or the PostgreSQL tables), the spool, the configs and the models; restore
checks all of it before it writes anything, never overwrites, and so8t serve starts on what it restored,
continuing the same chains and queue."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest
import yaml
from ops_fixtures import ServeProcess, TextDecider, build_ops_logs, runtime_config
from pg_support import cluster
from service_support import CLIENT, REVIEWER

from so8t_lib.cli import main as so8t
from so8t_lib.serve.audit import AuditLog, read_records, verify
from so8t_lib.serve.audit_verify import verify_chains
from so8t_lib.serve.escalation import EscalationQueue
from so8t_lib.serve.runtime import Agent
from so8t_lib.workbench.backup import BackupError, backup, check_backup, restore


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from so8t_lib.core.config import ModelConfig
    from so8t_lib.model import SO8TModel

    return SO8TModel.from_config(ModelConfig(name="so8t-ops")).save(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def project(tmp_path, tiny_checkpoint, monkeypatch):
    """A working folder as an operator has it: configs/, checkpoints/, logs/ with two chains, one rotated."""
    root = tmp_path / "project"
    shutil.copytree(tiny_checkpoint, root / "checkpoints" / "tiny")
    (root / "configs").mkdir()
    config = {"model": {"checkpoint_path": "checkpoints/tiny"},
              "inference": {"generate_responses": False, "safety_threshold": 0.99, "decision_timeout_s": 60},
              "logging": {"audit_log": "logs/audit.jsonl", "log_level": "WARNING"},
              "escalation": {"queue_db": "logs/escalations.sqlite", "enable_notifications": False,
                             "retry_interval_s": 1},
              "service": {"flag_poll_s": 0.2}}
    (root / "configs" / "serve.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    build_ops_logs(root / "logs")
    AuditLog(root / "logs" / "audit.jsonl").rotate()
    monkeypatch.setenv("SO8T_REPLICA", "r2")
    agent = Agent(runtime_config(root / "logs"), decider=TextDecider())
    agent.run_agent(None, "契約書の秘密保持条項を確認してほしい")
    agent.close()
    monkeypatch.delenv("SO8T_REPLICA")
    monkeypatch.chdir(root)
    return root


def test_backup_then_restore_into_an_empty_folder_and_the_service_starts_on_it(project, tmp_path, capsys):
    assert so8t(["backup", "--config", "configs/serve.yaml", "--out", str(tmp_path / "b1"), "--include-models"]) == 0
    out = capsys.readouterr().out
    assert "audit audit.jsonl:" in out and "audit audit-r2.jsonl: 1 records, head 0:" in out
    manifest = json.loads((tmp_path / "b1" / "BACKUP.json").read_text())
    assert {"logs/audit.jsonl.1.gz", "logs/audit.jsonl.anchor", "logs/escalations.sqlite",
            "configs/serve.yaml"} <= set(manifest["files"])
    source_queue = EscalationQueue(project / "logs" / "escalations.sqlite")
    cases_before = source_queue.count()
    unresolved = sorted(c["case_id"] for c in source_queue.list(include_tests=False) if c["status"] != "resolved")
    assert manifest["queue"] == {"kind": "sqlite", "source": "logs/escalations.sqlite", "file": "escalations.sqlite",
                                 **cases_before}
    assert [m["path"] for m in manifest["models"]] == ["checkpoints/tiny"]

    into = tmp_path / "restored"
    assert so8t(["restore", str(tmp_path / "b1"), "--into", str(into)]) == 0
    assert "audit.jsonl: " in capsys.readouterr().out
    assert EscalationQueue(into / "logs" / "escalations.sqlite").count() == cases_before
    heads = {name: r["last_seq"] for name, r in verify_chains(into / "logs").items()}

    server = ServeProcess(into, "--config", "configs/serve.yaml", "--log-dir", "logs")
    try:
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200  # the restored model loaded
        listed = httpx.get(f"{server.url}/v1/escalations?status=unresolved", headers=REVIEWER, timeout=30).json()
        assert sorted(c["case_id"] for c in listed["cases"]) == unresolved  # the restored queue
        answer = httpx.post(f"{server.url}/v1/decide", json={"user_request": "経費精算の締め日は？"}, headers=CLIENT,
                            timeout=120).json()
        assert answer["decision"] == "ESCALATE" and answer["escalation_status"] == "queued"
    finally:
        assert server.stop() in (0, -15, 143)
    after = verify_chains(into / "logs")
    assert all(not r["errors"] for r in after.values())
    main = str(into / "logs" / "audit.jsonl")
    assert after[main]["last_seq"] == heads[main] + 1  # the chain continues where the backup ended


def test_the_escalation_router_is_backed_up_checked_and_restored(project, tmp_path):
    from test_router import _rows

    from so8t_lib.serve.router import fit_router, load_router

    fit_router(_rows()).save(project / "checkpoints" / "router.json")
    config = yaml.safe_load((project / "configs" / "serve.yaml").read_text(encoding="utf-8"))
    config["escalation"]["router"] = "checkpoints/router.json"
    (project / "configs" / "serve.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    assert so8t(["backup", "--config", "configs/serve.yaml", "--out", str(tmp_path / "b")]) == 0
    manifest = json.loads((tmp_path / "b" / "BACKUP.json").read_text())
    (router,) = [m for m in manifest["models"] if m["kind"] == "router"]
    assert router["path"] == "checkpoints/router.json" and router["included"]       # copied even without models
    assert check_backup(tmp_path / "b")["problems"] == []
    assert so8t(["restore", str(tmp_path / "b"), "--into", str(tmp_path / "restored")]) == 0
    restored = tmp_path / "restored" / "checkpoints" / "router.json"
    assert restored.read_bytes() == (project / "checkpoints" / "router.json").read_bytes()
    assert load_router(restored).classes
    # a router changed inside the backup, its listing and sha256 rewritten to match: the router's own check finds it
    stored = tmp_path / "b" / "models" / router["stored"]
    payload = json.loads(stored.read_text(encoding="utf-8"))
    payload["coef"][0][0] += 1.0                                  # valid JSON, its own sha256 field left as it was
    stored.write_text(json.dumps(payload), encoding="utf-8")
    _rewrite_manifest(tmp_path / "b", router["stored"])
    assert any(p.startswith("model checkpoints/router.json:") and "do not match its sha256" in p
               for p in check_backup(tmp_path / "b")["problems"])


def _rewrite_manifest(folder, stored_name, change=None):
    """Make BACKUP.json agree with what is in the folder now (as someone tampering with a backup would)."""
    from so8t_lib.core.io import sha256_file
    from so8t_lib.workbench.backup.snapshot import file_entries

    manifest = json.loads((folder / "BACKUP.json").read_text())
    for model in manifest["models"]:
        if model.get("stored") == stored_name and model["kind"] in ("router", "gguf"):
            model["sha256"] = sha256_file(folder / "models" / stored_name)
    if change:
        change(manifest)
    manifest["files"] = file_entries(folder)
    (folder / "BACKUP.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("change, problem", [
    (lambda m, r: r.__setitem__("stored", "/etc/hostname"), "not a file of this backup's models/"),
    (lambda m, r: r.__setitem__("stored", "../BACKUP.json"), "not a file of this backup's models/"),
    (lambda m, r: r.__setitem__("path", "logs/audit.jsonl"), "overlap"),
    (lambda m, r: r.__setitem__("path", "configs"), "overlap"),
])
def test_a_tampered_router_entry_cannot_reach_outside_or_replace_another_part(project, tmp_path, change, problem):
    from test_router import _rows

    from so8t_lib.serve.router import fit_router

    fit_router(_rows()).save(project / "checkpoints" / "router.json")
    made = backup(tmp_path / "b", project / "logs", configs=[project / "configs"],
                  models=[project / "checkpoints" / "router.json"])
    (router,) = made["models"]

    def edit(manifest):
        change(manifest, manifest["models"][0])

    _rewrite_manifest(tmp_path / "b", router["stored"], edit)
    assert any(problem in p for p in check_backup(tmp_path / "b")["problems"])
    with pytest.raises(SystemExit, match="nothing was restored"):
        so8t(["restore", str(tmp_path / "b"), "--into", str(tmp_path / "restored")])
    assert not (tmp_path / "restored" / "logs").exists()


def test_restore_checks_everything_before_it_writes_and_never_overwrites(project, tmp_path, capsys):
    made = backup(tmp_path / "b", project / "logs", configs=[project / "configs"])
    assert made["queue"]["kind"] == "sqlite" and not made["models"]
    assert check_backup(tmp_path / "b")["problems"] == []
    with pytest.raises(SystemExit, match="already exists"):
        so8t(["backup", "--logs", "logs", "--out", str(tmp_path / "b")])

    def damaged(change) -> list[str]:
        copy = tmp_path / f"copy-{len(list(tmp_path.glob('copy-*')))}"
        shutil.copytree(tmp_path / "b", copy)
        change(copy)
        target = tmp_path / f"into-{copy.name}"
        with pytest.raises(SystemExit, match="nothing was restored"):
            so8t(["restore", str(copy), "--into", str(target)])
        assert not (target / "logs").exists()
        assert so8t(["restore", str(copy), "--check"]) == 1
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAIL")]

    def edit_record(copy):
        live = copy / "logs" / "audit-r2.jsonl"
        live.write_text(live.read_text(encoding="utf-8").replace("ESCALATE", "ALLOW", 1), encoding="utf-8")

    assert any("audit-r2.jsonl: changed since the backup" in f for f in damaged(edit_record))
    assert any("audit.jsonl.1.gz: missing" in f for f in damaged(lambda c: (c / "logs" / "audit.jsonl.1.gz").unlink()))
    assert any("not part of the backup" in f for f in damaged(lambda c: (c / "logs" / "extra.txt").write_text("x")))

    def rehash_and_relist(copy):  # an edit that also fixes BACKUP.json's checksums is still refused: the chain
        live = copy / "logs" / "audit-r2.jsonl"  # no longer verifies against its anchor and head
        edit_record(copy)
        listing = json.loads((copy / "BACKUP.json").read_text())
        from so8t_lib.workbench.backup.snapshot import file_entries

        listing["files"] = file_entries(copy)
        (copy / "BACKUP.json").write_text(json.dumps(listing))
        assert live.is_file()

    assert any("was edited" in f for f in damaged(rehash_and_relist))
    (tmp_path / "busy" / "logs").mkdir(parents=True)
    (tmp_path / "busy" / "logs" / "audit.jsonl").write_text("{}\n")
    with pytest.raises(SystemExit, match="never overwrites"):
        so8t(["restore", str(tmp_path / "b"), "--into", str(tmp_path / "busy")])
    assert (tmp_path / "busy" / "logs" / "audit.jsonl").read_text() == "{}\n"
    live = {p.name: p.read_bytes() for p in (project / "logs").iterdir() if p.is_file()}
    with pytest.raises(SystemExit, match="holds a live log .*audit"):  # a second chain beside the first, split in two
        so8t(["restore", str(tmp_path / "b"), "--into", str(project / "logs")])
    (tmp_path / "proj").mkdir()  # a project folder's own notes are no live log
    (tmp_path / "proj" / "audit_notes.md").write_text("who reviewed what\n")
    assert so8t(["restore", str(tmp_path / "b"), "--into", str(tmp_path / "proj")]) == 0
    with pytest.raises(SystemExit, match="lies in the log folder"):  # lost with what it is meant to outlive
        so8t(["backup", "--logs", "logs", "--out", str(project / "logs" / "backup")])
    assert {p.name: p.read_bytes() for p in (project / "logs").iterdir() if p.is_file()} == live
    assert not (project / "logs" / "backup").exists() and not (project / "logs" / "logs").exists()


def test_two_gguf_files_of_one_name_are_both_kept_or_refused_before_anything_is_written(project, tmp_path):
    """A retrained GGUF keeps its name: stored under one name, the second copy overwrote the first and the backup
    could never be restored. Given by absolute paths, both would be restored to dist/<name>: refused at once."""
    for folder, content in (("dist/a", b"GGUF old"), ("dist/b", b"GGUF retrained")):
        (project / folder).mkdir(parents=True)
        (project / folder / "so8t-demo-q4_k_m.gguf").write_bytes(content)
    made = backup(tmp_path / "b", project / "logs", models=["dist/a/so8t-demo-q4_k_m.gguf",
                                                          "dist/b/so8t-demo-q4_k_m.gguf"], include_models=True)
    assert len({m["stored"] for m in made["models"]}) == 2 and check_backup(tmp_path / "b")["problems"] == []
    restored = tmp_path / "restored"
    so8t(["restore", str(tmp_path / "b"), "--into", str(restored)])
    assert (restored / "dist/a/so8t-demo-q4_k_m.gguf").read_bytes() == b"GGUF old"
    assert (restored / "dist/b/so8t-demo-q4_k_m.gguf").read_bytes() == b"GGUF retrained"
    with pytest.raises(BackupError, match="restore targets 'dist/so8t-demo-q4_k_m.gguf' and .* overlap"):
        backup(tmp_path / "b2", project / "logs", models=[project / "dist/a/so8t-demo-q4_k_m.gguf",
                                                          project / "dist/b/so8t-demo-q4_k_m.gguf"])
    assert not list(tmp_path.glob("*b2*"))  # nothing left behind, not even the folder it was written in


def test_a_restore_that_cannot_put_every_part_in_place_puts_none(project, tmp_path, monkeypatch):
    (project / "dist").mkdir()
    (project / "dist" / "m.gguf").write_bytes(b"GGUF")
    backup(tmp_path / "b", project / "logs", configs=[project / "configs"], models=["dist/m.gguf"],
           include_models=True)
    into = tmp_path / "into"
    into.mkdir()
    (into / "dist").write_text("a file where the models' folder goes")
    with pytest.raises(BackupError, match="is a file where a folder must be; nothing was restored"):
        restore(tmp_path / "b", into)
    assert sorted(p.name for p in into.iterdir()) == ["dist"]  # logs/ and configs/ were not moved in first

    import os

    real, calls = os.replace, []

    def fails_on_the_third(source, target):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real(source, target)

    (into / "dist").unlink()
    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", fails_on_the_third)
        with pytest.raises(BackupError, match="the parts already moved were taken back, nothing was restored"):
            restore(tmp_path / "b", into)
    assert list(into.iterdir()) == []  # nothing moved in, and no empty folder left behind (dist/ was made for it)
    with monkeypatch.context() as patched:  # into a folder that did not exist: it is not left behind either
        calls.clear()
        patched.setattr(os, "replace", fails_on_the_third)
        with pytest.raises(BackupError, match="nothing was restored"):
            restore(tmp_path / "b", tmp_path / "fresh" / "site")
    assert not (tmp_path / "fresh").exists()
    restore(tmp_path / "b", into)  # and it can be run again
    assert (into / "dist" / "m.gguf").read_bytes() == b"GGUF" and list((into / "logs").glob("audit*.jsonl*"))


def test_the_configured_emergency_flag_file_and_spool_are_backed_up(project, tmp_path, capsys):
    config = yaml.safe_load((project / "configs" / "serve.yaml").read_text(encoding="utf-8"))
    config["service"]["emergency_flag_file"] = "logs/STOP"
    (project / "configs" / "serve.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (project / "logs" / "STOP").write_text("incident 42\n")
    assert so8t(["backup", "--config", "configs/serve.yaml", "--out", str(tmp_path / "b")]) == 0
    assert "emergency flag file: logs/STOP" in capsys.readouterr().out
    made = json.loads((tmp_path / "b" / "BACKUP.json").read_text())
    assert made["emergency_flag"] == {"source": "logs/STOP", "stored": "logs/STOP"}
    assert (tmp_path / "b" / "logs" / "STOP").read_text() == "incident 42\n"


def test_the_admin_endpoints_emergency_holds_are_backed_up_and_restored(project, tmp_path, capsys):
    """A hold switched on through the endpoint outlives a restart (EMERGENCY.api.json), but the backup left it out:
    a gate restored from it answered ALLOW where the original was holding every request."""
    holds = {"EMERGENCY.api.json": '{"enabled": true}', "EMERGENCY.api-r2.json": '{"enabled": true, "r": 2}'}
    for name, text in holds.items():
        (project / "logs" / name).write_text(text, encoding="utf-8")
    assert so8t(["backup", "--config", "configs/serve.yaml", "--out", str(tmp_path / "b")]) == 0
    assert "emergency hold of the admin endpoint: logs/EMERGENCY.api.json" in capsys.readouterr().out
    made = json.loads((tmp_path / "b" / "BACKUP.json").read_text())
    assert [h["stored"] for h in made["emergency_holds"]] == ["logs/EMERGENCY.api-r2.json", "logs/EMERGENCY.api.json"]
    restore(tmp_path / "b", tmp_path / "site")
    assert {name: (tmp_path / "site" / "logs" / name).read_text(encoding="utf-8") for name in holds} == holds


@pytest.mark.parametrize("edit, problem", [
    (lambda m: m["chains"].__setitem__("../../elsewhere/planted.jsonl", {"head": None, "errors": []}),
     "is not an audit log's file name"),
    (lambda m: m["chains"]["audit.jsonl"].__setitem__("head", "12"), "its head '12' or errors are not as recorded"),
    (lambda m: m.__setitem__("files", ["logs/audit.jsonl"]), "'files' is not a table"),
    (lambda m: m.__setitem__("models", [{"kind": "gguf"}]), "'models' is not a list"),
    (lambda m: m["chains"].__setitem__("other.jsonl", {"head": None, "errors": []}), "has no file in the backup"),
])
def test_a_backup_record_changed_by_hand_is_refused_by_name_and_nothing_outside_is_touched(project, tmp_path, edit,
                                                                                           problem):
    backup(tmp_path / "b", project / "logs")
    (tmp_path / "elsewhere").mkdir()
    manifest = json.loads((tmp_path / "b" / "BACKUP.json").read_text())
    edit(manifest)
    (tmp_path / "b" / "BACKUP.json").write_text(json.dumps(manifest))
    with pytest.raises(BackupError, match=problem):
        check_backup(tmp_path / "b")
    with pytest.raises(SystemExit, match=problem):
        so8t(["restore", str(tmp_path / "b"), "--check"])
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_a_postgresql_queue_is_backed_up_and_restored_into_postgresql_or_sqlite(project, tmp_path):
    pg_url = cluster().database()  # PostgreSQL started by the tests (tests/pg_support.py)
    source_db = EscalationQueue(pg_url)
    for case in EscalationQueue(project / "logs" / "escalations.sqlite").list():  # move the cases to the server
        source_db.add({k: case[k] for k in ("case_id", "created_at", "request_id", "category", "input", "test")})
    source_db.resolve(source_db.list()[0]["case_id"], "REFUSE", "Sato")
    counts = source_db.count()
    source_db.close()
    made = backup(tmp_path / "b", project / "logs", queue=pg_url)
    assert made["queue"]["kind"] == "postgresql" and "so8t@127.0.0.1" in made["queue"]["source"]
    fresh = cluster().database()
    assert so8t(["restore", str(tmp_path / "b"), "--into", str(tmp_path / "r1"), "--queue-url", fresh]) == 0
    restored = EscalationQueue(fresh, create=False)
    assert restored.count() == counts and len(restored.history(restored.list()[0]["case_id"])) == 1
    restored.resolve(restored.list()[1]["case_id"], "ALLOW", "Ito")  # ids continue after the restored ones
    restored.close()
    assert so8t(["restore", str(tmp_path / "b"), "--into", str(tmp_path / "r2")]) == 0
    assert EscalationQueue(tmp_path / "r2" / "logs" / "escalations.sqlite").count() == counts
    assert verify(tmp_path / "r2" / "logs")["errors"] == []


def test_the_gate_appends_and_rotates_while_a_chain_is_copied_and_the_copy_is_whole(project, tmp_path, monkeypatch):
    """The shared lock covers only opening a chain's files and taking the live file's length: at the production
    setting (1 GB x 10) a copy under the lock would stall every decision for as long as it takes."""
    import threading

    from so8t_lib.workbench.backup import snapshot

    log = AuditLog(project / "logs" / "audit.jsonl", max_bytes=1 << 20, backup_count=5)
    for i in range(3):
        log.append({"event": "decision", "timestamp": "2026-12-05T00:00:00Z", "request_id": f"before_{i}"})
    copy, writer_done = snapshot._copy_prefix, threading.Event()

    def busy_gate(*args, **kwargs):
        if not writer_done.is_set():
            def write():
                for i in range(3):
                    log.append({"event": "decision", "timestamp": "2026-12-05T00:00:01Z", "request_id": f"during_{i}"})
                log.rotate()
                writer_done.set()

            writer = threading.Thread(target=write)
            writer.start()
            writer.join(30)
            assert writer_done.is_set(), "the gate waited for the backup's lock"
        return copy(*args, **kwargs)

    monkeypatch.setattr(snapshot, "_copy_prefix", busy_gate)
    made = backup(tmp_path / "b", project / "logs")
    assert writer_done.is_set() and all(not c["errors"] for c in made["chains"].values()), made["chains"]
    assert check_backup(tmp_path / "b")["problems"] == []
    copied = {r["request_id"] for r in read_records(tmp_path / "b" / "logs")}
    assert {"before_0", "before_2"} <= copied and not {"during_0", "during_2"} & copied  # the moment of the lock


def test_a_chain_opened_but_not_written_yet_backs_up_and_restores(tmp_path):
    """A replica that started and decided nothing has an anchor whose head is None:<genesis>: the manifest check
    refused such a backup as damaged."""
    logs = tmp_path / "logs"
    AuditLog(logs / "audit.jsonl")
    made = backup(tmp_path / "b", logs)
    assert made["chains"]["audit.jsonl"]["head"].startswith("None:")
    assert check_backup(tmp_path / "b")["problems"] == []
    restore(tmp_path / "b", tmp_path / "into")
    assert (tmp_path / "into" / "logs").is_dir()
