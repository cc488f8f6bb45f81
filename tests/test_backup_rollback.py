"""A restore that cannot move every part into place takes the moved ones back, leaves the empty folders the operator
had prepared as they were, and names the part it stopped at."""

from __future__ import annotations

import os
import re

import pytest

from so8t_lib.serve.audit import AuditLog
from so8t_lib.workbench.backup import BackupError, backup, restore


def test_a_failed_restore_names_the_part_and_puts_back_the_prepared_empty_folder(tmp_path, monkeypatch):
    """The prepared logs/ was removed to make room and never made again, and the message named logs/ (the rollback
    loop reused the failing part's variable) when configs/ had failed."""
    AuditLog(tmp_path / "logs" / "audit.jsonl").append({"event": "decision", "decision": "REFUSE"})
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "serve.yaml").write_text("model: {checkpoint_path: x}\n")
    backup(tmp_path / "b", tmp_path / "logs", configs=[tmp_path / "cfg"])
    into = tmp_path / "into"
    (into / "logs").mkdir(parents=True)  # prepared by the operator, empty (a mount point's folder)
    (into / "logs").chmod(0o750)
    real = os.replace

    def no_room_for_configs(source, target):
        if os.path.basename(target) == "configs":
            raise OSError(28, "No space left on device")
        return real(source, target)

    with monkeypatch.context() as patched:
        patched.setattr(os, "replace", no_room_for_configs)
        with pytest.raises(BackupError, match=rf"restore stopped at {re.escape(str(into / 'configs'))} \(.*No space left.*nothing "
                                              "was restored"):
            restore(tmp_path / "b", into)
    assert [p.name for p in into.iterdir()] == ["logs"] and list((into / "logs").iterdir()) == []
    assert (into / "logs").stat().st_mode & 0o777 == 0o750
    restore(tmp_path / "b", into)  # and it can be run again
    assert (into / "configs" / "serve.yaml").is_file() and (into / "logs" / "audit.jsonl").is_file()
