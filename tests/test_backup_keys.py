"""Which HMAC key restore checks a backup's chains with: BACKUP.json is not signed, so the variable it records may
add a place to look for the key but never switch the check off."""

from __future__ import annotations

import json
import shutil

import pytest
from test_backup_chains import _forge

from so8t_lib.cli import main as so8t
from so8t_lib.serve.audit import AuditLog
from so8t_lib.serve.config import AUDIT_HMAC_KEY_ENV
from so8t_lib.workbench.backup import backup, check_backup
from so8t_lib.workbench.backup.snapshot import file_entries


def _edit(folder, **fields):
    """Change BACKUP.json's fields and the chain's anchor as a forger without the key would, the sha256 list
    recomputed: the anchor's signature dropped, the chain recorded unsigned."""
    anchor_file = folder / "logs" / "audit.jsonl.anchor"
    anchor = json.loads(anchor_file.read_text())
    anchor.pop("mac", None)
    anchor_file.write_text(json.dumps(anchor))
    manifest = json.loads((folder / "BACKUP.json").read_text())
    manifest["chains"]["audit.jsonl"]["signed"] = False
    manifest.update(fields, files=file_entries(folder))
    (folder / "BACKUP.json").write_text(json.dumps(manifest))


@pytest.fixture
def signed_backup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(AUDIT_HMAC_KEY_ENV, raising=False)
    for decision in ("REFUSE", "ALLOW", "REFUSE"):
        AuditLog("logs/audit.jsonl", hmac_key="s3cret").append({"event": "decision", "decision": decision})
    backup("b", "logs", hmac_key="s3cret", hmac_key_env=AUDIT_HMAC_KEY_ENV)
    return tmp_path / "b"


def test_a_forged_backup_naming_an_unset_variable_is_still_checked_with_the_key(signed_backup, monkeypatch, capsys):
    """Restore read the key only from the variable BACKUP.json named: a chain re-hashed without the key, its
    record pointed at an unset variable, passed --check while $SO8T_AUDIT_HMAC_KEY held the key."""
    forged = signed_backup.parent / "forged"
    shutil.copytree(signed_backup, forged)
    _forge(forged)
    _edit(forged, hmac_key_env="SO8T_UNSET_VARIABLE")
    monkeypatch.setenv(AUDIT_HMAC_KEY_ENV, "s3cret")
    capsys.readouterr()
    assert so8t(["restore", "forged", "--check"]) == 1
    assert "audit.jsonl.anchor is not signed, but an HMAC key was given" in capsys.readouterr().out
    assert so8t(["restore", "b", "--check"]) == 0  # the real one, with the same key


def test_a_recorded_variable_holding_another_key_needs_the_operator_to_choose(signed_backup, monkeypatch, capsys):
    """A forger who knows some variable's value (HOME, USER) could sign with it and name it in BACKUP.json."""
    forged = signed_backup.parent / "forged"
    shutil.copytree(signed_backup, forged)
    _edit(forged, hmac_key_env="GUESSABLE")
    monkeypatch.setenv("GUESSABLE", "/home/so8t")
    monkeypatch.setenv(AUDIT_HMAC_KEY_ENV, "s3cret")
    with pytest.raises(SystemExit, match=r"records \$GUESSABLE.*\$SO8T_AUDIT_HMAC_KEY holds another key.*"
                                         r"--hmac-key-env"):
        so8t(["restore", "forged", "--check"])
    capsys.readouterr()
    assert so8t(["restore", "forged", "--check", "--hmac-key-env", AUDIT_HMAC_KEY_ENV]) == 1
    assert "is not signed, but an HMAC key was given" in capsys.readouterr().out


def test_without_any_key_an_unsigned_chain_restores_with_a_note_saying_nothing_was_checked(signed_backup,
                                                                                            monkeypatch, capsys):
    """No key anywhere: nothing can tell a chain whose signatures were stripped (BACKUP.json is not signed either),
    so restore says so on every chain instead of refusing; backups made before this version recorded
    $SO8T_AUDIT_HMAC_KEY for every chain, signed or not, and must still restore."""
    _forge(signed_backup)
    _edit(signed_backup, hmac_key_env="MY_HMAC")
    checks = check_backup(signed_backup)
    assert checks["problems"] == []
    assert any("signatures NOT checked: no HMAC key was read" in n and "$MY_HMAC" in n for n in checks["notes"])
    old = signed_backup.parent / "old"  # as the previous so8t backup wrote an unsigned chain's record
    AuditLog(old / "logs" / "audit.jsonl").append({"event": "decision", "decision": "REFUSE"})
    backup(old / "b", old / "logs", hmac_key_env=AUDIT_HMAC_KEY_ENV)
    manifest = json.loads((old / "b" / "BACKUP.json").read_text())
    manifest["hmac_key_env"] = AUDIT_HMAC_KEY_ENV
    (old / "b" / "BACKUP.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert so8t(["restore", str(old / "b"), "--check"]) == 0
    assert "signatures NOT checked" in capsys.readouterr().out


def test_a_signed_chain_without_its_key_is_refused_unless_the_operator_opts_out(signed_backup, capsys):
    problems = check_backup(signed_backup)["problems"]
    assert any("the chain is signed and no HMAC key was given" in p and "--unchecked-signatures" in p
               for p in problems), problems
    capsys.readouterr()
    assert so8t(["restore", "b", "--check"]) == 1
    assert so8t(["restore", "b", "--check", "--unchecked-signatures"]) == 0
    assert "signed, but its signatures were NOT checked" in capsys.readouterr().out


def test_an_unsigned_backup_records_no_key_variable_and_restores_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv(AUDIT_HMAC_KEY_ENV, raising=False)
    AuditLog(tmp_path / "logs" / "audit.jsonl").append({"event": "decision", "decision": "REFUSE"})
    made = backup(tmp_path / "b", tmp_path / "logs", hmac_key_env=AUDIT_HMAC_KEY_ENV)
    assert made["hmac_key_env"] is None
    assert check_backup(tmp_path / "b")["problems"] == []
