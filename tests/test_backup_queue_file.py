"""The backup's copy of a SQLite queue is one file: SQLite's side files (-wal, -shm, -journal), which whoever opens
the copy makes and deletes, are never listed, so looking at a backup (sqlite3 read-only, `so8t escalation list`)
cannot make it fail its checks. Backups that listed them still restore: what they listed held no data."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from fault_agent import make_agent

from so8t_lib.cli import main as so8t
from so8t_lib.core.io import sha256_file
from so8t_lib.serve.escalation import EscalationQueue
from so8t_lib.workbench.backup import backup, check_backup, restore

SIDES = ("-wal", "-shm", "-journal")


@pytest.fixture
def made(tmp_path) -> Path:
    """A backup of a gate's logs whose queue is in WAL mode and was written to."""
    agent = make_agent(tmp_path / "logs")
    agent.desk.background = False
    agent.run_batch([{"user_request": "please escalate this"}, {"user_request": "please allow this"}])
    agent.close()
    backup(tmp_path / "b", tmp_path / "logs")
    return tmp_path / "b"


def _listed(folder: Path) -> dict:
    return json.loads((folder / "BACKUP.json").read_text(encoding="utf-8"))["files"]


def _read_only_look(queue: Path) -> int:
    db = sqlite3.connect(f"file:{queue}?mode=ro", uri=True)  # a plain read-only open: SQLite makes -shm and -wal
    try:
        return db.execute("SELECT count(*) FROM cases").fetchone()[0]
    finally:
        db.close()


def test_a_new_backup_lists_one_queue_file_and_restores_after_it_was_looked_at(made, tmp_path, capsys):
    queue = made / "logs" / "escalations.sqlite"
    assert not [name for name in _listed(made) if name.endswith(SIDES)]
    assert sorted(p.name for p in queue.parent.glob("escalations.sqlite*")) == ["escalations.sqlite"]
    assert _read_only_look(queue) == 1
    assert check_backup(made)["problems"] == []
    assert so8t(["escalation", "list", "--db", str(queue)]) in (0, None)  # opens it read-write, in WAL mode
    assert "please escalate this" in capsys.readouterr().out
    assert _read_only_look(queue) == 1  # leaves its -shm and -wal this time
    assert check_backup(made)["problems"] == []
    restore(made, tmp_path / "restored")
    restored = tmp_path / "restored" / "logs"
    assert sorted(p.name for p in restored.glob("escalations.sqlite*")) == ["escalations.sqlite"]
    assert EscalationQueue(restored / "escalations.sqlite", create=False).count()["cases"] == 1


def _as_an_older_backup(folder: Path, wal_bytes: int = 0) -> None:
    """BACKUP.json as backups before this fix wrote it: the -shm and (empty) -wal its own check left, listed."""
    queue = folder / "logs" / "escalations.sqlite"
    _read_only_look(queue)
    manifest = json.loads((folder / "BACKUP.json").read_text(encoding="utf-8"))
    for side in ("-shm", "-wal"):
        path = queue.with_name(queue.name + side)
        manifest["files"][f"logs/{path.name}"] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    if wal_bytes:
        manifest["files"]["logs/escalations.sqlite-wal"] = {"sha256": "0" * 64, "bytes": wal_bytes}
    (folder / "BACKUP.json").write_text(json.dumps(manifest), encoding="utf-8")


def test_an_older_backup_that_lists_side_files_gone_since_still_restores(made, tmp_path):
    _as_an_older_backup(made)
    assert {"logs/escalations.sqlite-shm", "logs/escalations.sqlite-wal"} <= set(_listed(made))
    for side in ("-shm", "-wal"):  # what `so8t escalation list` did to such a backup: its close deleted them
        (made / "logs" / f"escalations.sqlite{side}").unlink()
    checks = check_backup(made)
    assert checks["problems"] == []
    assert any("escalations.sqlite-wal: SQLite's side file" in note for note in checks["notes"])
    restore(made, tmp_path / "restored")
    assert EscalationQueue(tmp_path / "restored" / "logs" / "escalations.sqlite", create=False).count()["cases"] == 1


def test_a_listed_wal_that_held_data_is_not_passed_over_when_missing(made, tmp_path):
    _as_an_older_backup(made, wal_bytes=4152)
    (made / "logs" / "escalations.sqlite-wal").unlink()
    problems = check_backup(made)["problems"]
    assert any("escalations.sqlite-wal: missing from the backup; it held 4152 bytes of changes not yet in "
               "logs/escalations.sqlite" in p for p in problems), problems
    with pytest.raises(Exception, match="nothing was restored"):
        restore(made, tmp_path / "restored")


def test_a_write_to_the_backups_queue_still_open_in_its_wal_is_a_problem(made):
    db = sqlite3.connect(made / "logs" / "escalations.sqlite", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("UPDATE cases SET status = 'resolved'")  # in the -wal until the last connection closes
        problems = check_backup(made)["problems"]
        assert any("escalations.sqlite-wal:" in p and "written to the backup's copy after the backup" in p
                   for p in problems), problems
    finally:
        db.close()
