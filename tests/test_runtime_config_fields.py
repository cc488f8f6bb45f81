"""Runtime config keys the runtime would quietly not honour are refused by name: an empty or folder path for a
file it reads or writes, a variable's name that is no variable name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from so8t_lib.core.config import ConfigError
from so8t_lib.serve.config import load_runtime_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _load(tmp_path, section, key, value):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {"checkpoint_path": "x"}, section: {key: value}}), encoding="utf-8")
    return load_runtime_config(path)


@pytest.mark.parametrize("section,key", [("service", "emergency_flag_file"), ("logging", "audit_log"),
                                         ("escalation", "queue_db")])
@pytest.mark.parametrize("value,problem", [("", "empty: name the file"), ("   ", "empty: name the file"),
                                           ("logs/", "names a folder, not a file"),
                                           ("logs/..", "names a folder, not a file"),
                                           ("FOLDER", "names a folder, not a file")])
def test_a_file_key_without_a_file_name_is_refused_by_name(tmp_path, section, key, value, problem):
    """An empty service.emergency_flag_file was accepted and the flag file was never seen (the runtime looked
    at '.', a folder, which is no file): the emergency switch was off without a word."""
    value = str(tmp_path) if value == "FOLDER" else value
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: Value error, .*{problem}"):
        _load(tmp_path, section, key, value)


@pytest.mark.parametrize("section,key", [("logging", "encryption_key_env"), ("logging", "hmac_key_env"),
                                         ("service", "client_keys_env"), ("service", "reviewer_keys_env")])
@pytest.mark.parametrize("value", ["", "A B", "1KEY", "gAAAAABk-secret="])
def test_a_key_variable_that_is_no_variable_name_is_refused(tmp_path, section, key, value):
    """An empty logging.encryption_key_env was accepted and the audit log written unencrypted."""
    with pytest.raises(ConfigError, match=rf"{section}\.{key}: .*is not an environment variable name"):
        _load(tmp_path, section, key, value)


def test_files_and_variables_as_the_manual_writes_them_still_load(tmp_path):
    config = _load(tmp_path, "logging", "encryption_key_env", "SO8T_AUDIT_KEY")
    assert config.logging.encryption_key_env == "SO8T_AUDIT_KEY"
    assert _load(tmp_path, "service", "emergency_flag_file", str(tmp_path / "STOP")).service.emergency_flag_file
    for shipped in sorted(CONFIGS.glob("*.yaml")):
        text = shipped.read_text(encoding="utf-8")
        if "inference" in text and "escalation" in text:
            load_runtime_config(shipped)


@pytest.mark.parametrize("value", [1e300, 1000, 60.5, float("inf"), float("nan")])
def test_a_flag_poll_too_long_to_notice_an_emergency_is_refused(tmp_path, value):
    """service.flag_poll_s had no upper bound: 1e300 was accepted and the flag file never looked for again."""
    with pytest.raises(ConfigError, match=r"service\.flag_poll_s: "):
        _load(tmp_path, "service", "flag_poll_s", value)
    assert _load(tmp_path, "service", "flag_poll_s", 60).service.flag_poll_s == 60
    assert "noticed within 60 s" in str(pytest.raises(ConfigError, _load, tmp_path, "service", "flag_poll_s",
                                                      1000).value)


def test_a_postgresql_queue_named_by_the_environment_with_a_wait_under_its_connect_floor_is_refused_at_start(
        tmp_path, monkeypatch):
    """The config's queue_url is checked at load; $SO8T_ESCALATION_URL arrives only at start, and every escalation
    to a hung server then waited libpq's 2 s whatever queue_timeout_s said."""
    from ops_fixtures import TextDecider, runtime_config

    from so8t_lib.serve.runtime import Agent

    config = runtime_config(tmp_path, queue_timeout_s=0.5)
    monkeypatch.setenv("SO8T_ESCALATION_URL", "postgresql://so8t@127.0.0.1:9/so8t")
    with pytest.raises(ConfigError, match=r"PostgreSQL \(SO8T_ESCALATION_URL\).*queue_timeout_s is 0.5 s: set it to 2"):
        Agent(config, decider=TextDecider())
    monkeypatch.delenv("SO8T_ESCALATION_URL")
    Agent(config, decider=TextDecider()).close()  # the SQLite queue's busy wait has no such floor
