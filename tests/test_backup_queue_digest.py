"""A backup's SQLite queue copy is judged by its rows when its bytes changed: every so8t command that opens a
queue migrates its schema, so looking at an older backup with a newer so8t (`so8t escalation list --db`) adds
columns to the copy; restore accepts it, saying so, when the rows (the columns recorded at backup time) are those
backed up, and refuses it, naming the file, when any row differs. A backup without the digest is judged by its
sha256 alone, as before."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from fault_agent import make_agent

from so8t_lib.cli import main as so8t
from so8t_lib.core.io import sha256_file
from so8t_lib.serve import queue_sql
from so8t_lib.serve.escalation import EscalationQueue
from so8t_lib.workbench.backup import BackupError, backup, check_backup, restore

QUEUE = "logs/escalations.sqlite"


def _columns(path: Path, table: str) -> list[str]:
    db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    try:
        return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
    finally:
        db.close()


@pytest.fixture
def older(tmp_path, monkeypatch) -> Path:
    """A backup made by a version whose resolutions had no ``via`` column: two cases, one resolved."""
    logs = tmp_path / "logs"
    agent = make_agent(logs)
    agent.desk.background = False
    agent.run_batch([{"user_request": "please escalate this"}, {"user_request": "please escalate that too"}])
    agent.close()
    queue = EscalationQueue(logs / "escalations.sqlite", create=False)
    queue.resolve(queue.list()[0]["case_id"], "REFUSE", "Sato")
    queue.close()
    db = sqlite3.connect(logs / "escalations.sqlite")
    db.execute("ALTER TABLE resolutions DROP COLUMN via")
    db.commit()
    db.close()
    with monkeypatch.context() as older_so8t:  # that version's schema check knew no via to add
        older_so8t.setattr(queue_sql, "ensure_schema", lambda engine: None)
        manifest = backup(tmp_path / "b", logs)
    assert manifest["queue"]["cases"] == 2 and manifest["queue"]["resolutions"] == 1
    assert "via" not in manifest["queue_digest"]["resolutions"]["columns"]
    assert "via" not in _columns(tmp_path / "b" / QUEUE, "resolutions")
    return tmp_path / "b"


def _look_with_newer_so8t(folder: Path, capsys) -> None:
    """What an operator does: `so8t escalation list --db` on the backup's queue, which migrates it."""
    queue = folder / QUEUE
    before = sha256_file(queue)
    assert so8t(["escalation", "list", "--db", str(queue)]) in (0, None)
    assert "please escalate" in capsys.readouterr().out
    assert "via" in _columns(queue, "resolutions")
    assert sha256_file(queue) != before


def test_a_queue_copy_a_newer_so8t_added_columns_to_still_restores_and_says_so(older, tmp_path, capsys):
    _look_with_newer_so8t(older, capsys)
    migrated = sha256_file(older / QUEUE)
    checks = check_backup(older)
    assert checks["problems"] == []
    assert any(note.startswith(f"{QUEUE}: its bytes changed") and "rows are those backed up" in note
               for note in checks["notes"]), checks["notes"]
    assert so8t(["restore", str(older), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"note {QUEUE}: its bytes changed since the backup was made" in out and "FAIL" not in out
    done = restore(older, tmp_path / "restored")
    assert any("rows are those backed up" in note for note in done["notes"])
    assert sha256_file(older / QUEUE) == migrated  # the checks never wrote to the backup
    restored = tmp_path / "restored" / QUEUE
    assert sha256_file(restored) == migrated  # copied as it is; the live so8t migrates it on open anyway
    queue = EscalationQueue(restored, create=False)
    assert queue.count()["cases"] == 2 and queue.count()["resolutions"] == 1
    queue.close()


@pytest.mark.parametrize("change, what", [
    ("UPDATE cases SET status = 'resolved' WHERE case_id = (SELECT case_id FROM cases WHERE status <> 'resolved')",
     "the rows of cases differ from those backed up"),
    ("ALTER TABLE cases DROP COLUMN note", "cases lacks the column(s) note it had"),
])
def test_a_queue_copy_whose_rows_changed_is_refused_by_name_and_nothing_is_restored(older, tmp_path, capsys, change,
                                                                                    what):
    _look_with_newer_so8t(older, capsys)  # columns added as well: not what refuses it
    db = sqlite3.connect(older / QUEUE)
    assert db.execute(change).rowcount in (1, -1)  # one case's status (an ALTER counts no rows)
    db.commit()
    db.close()
    problems = check_backup(older)["problems"]
    assert problems == [f"{QUEUE}: changed since the backup was made (sha256 does not match; {what})"]
    with pytest.raises(BackupError, match=f"nothing was restored:\n  {QUEUE}: changed since the backup"):
        restore(older, tmp_path / "restored")
    assert not (tmp_path / "restored" / "logs").exists()


def test_a_backup_without_the_digest_is_judged_by_its_sha256_as_before(older, tmp_path, capsys):
    manifest = json.loads((older / "BACKUP.json").read_text(encoding="utf-8"))
    del manifest["queue_digest"]  # as backups before the digest wrote it (BACKUP.json carries no checksum)
    (older / "BACKUP.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    assert check_backup(older)["problems"] == []
    _look_with_newer_so8t(older, capsys)
    checks = check_backup(older)
    assert checks["problems"] == [f"{QUEUE}: changed since the backup was made (sha256 does not match)"]
    assert not any("rows are those backed up" in note for note in checks["notes"])
    with pytest.raises(BackupError, match="nothing was restored"):
        restore(older, tmp_path / "restored")
    assert not (tmp_path / "restored" / "logs").exists()


def test_a_digest_edited_into_another_shape_is_refused_before_it_is_read(older):
    manifest = json.loads((older / "BACKUP.json").read_text(encoding="utf-8"))
    manifest["queue_digest"]["cases"]["columns"].append('x" FROM cases; --')
    (older / "BACKUP.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    with pytest.raises(BackupError, match="the queue's digest is not a table of cases, resolutions"):
        check_backup(older)
