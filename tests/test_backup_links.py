"""A backup holds only folders and regular files: a symbolic link (or a pipe) found in one was added later, and
restore refuses it by name instead of reading or copying through it."""

from __future__ import annotations

import os
import shutil

import pytest

from so8t_lib.serve.audit import AuditLog
from so8t_lib.workbench.backup import BackupError, backup, check_backup, restore


@pytest.fixture
def made(tmp_path):
    AuditLog(tmp_path / "logs" / "audit.jsonl").append({"event": "decision", "decision": "REFUSE"})
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "serve.yaml").write_text("model: {checkpoint_path: x}\n")
    backup(tmp_path / "b", tmp_path / "logs", configs=[tmp_path / "cfg"])
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "planted.txt").write_text("not part of the backup\n")
    (outside / "sub" / "more.jsonl").write_text("{}\n")
    return tmp_path / "b"


def test_a_folder_link_added_to_a_backup_is_refused_and_never_copied(made, tmp_path):
    """The check walked with rglob and is_file: a link to a folder was no file, so 'nothing was added' passed, and
    restore's copytree copied the folder it pointed to into the restored logs/."""
    os.symlink(tmp_path / "outside", made / "logs" / "extra")
    problems = check_backup(made)["problems"]
    assert any(p.startswith("logs/extra: a symbolic link") and "remove it" in p for p in problems), problems
    with pytest.raises(BackupError, match="logs/extra: a symbolic link"):
        restore(made, tmp_path / "into")
    assert not (tmp_path / "into" / "logs").exists()
    os.unlink(made / "logs" / "extra")
    restore(made, tmp_path / "into")
    assert not (tmp_path / "into" / "logs" / "extra").exists()


def test_a_listed_file_replaced_by_a_link_to_the_same_bytes_is_refused(made, tmp_path):
    config = made / "configs" / "serve.yaml"
    shutil.copy2(config, tmp_path / "outside" / "serve.yaml")
    config.unlink()
    os.symlink(tmp_path / "outside" / "serve.yaml", config)
    problems = check_backup(made)["problems"]
    assert "configs/serve.yaml: missing from the backup" in problems
    assert any(p.startswith("configs/serve.yaml: a symbolic link") for p in problems), problems


def test_a_side_file_link_and_a_pipe_are_refused_by_name(made, tmp_path):
    os.symlink(tmp_path / "outside" / "planted.txt", made / "logs" / "escalations.sqlite-wal")
    os.mkfifo(made / "logs" / "pipe")
    problems = check_backup(made)["problems"]
    assert any(p.startswith("logs/escalations.sqlite-wal: a symbolic link") for p in problems), problems
    assert "logs/pipe: not a regular file or folder, which no backup holds: added later; remove it" in problems
