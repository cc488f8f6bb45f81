"""so8t retrain deploy: the test-mode run's audit log is read and verified with the keys the runtime config names
(encrypted and signed chains, as production writes them); a key variable that is not set, or a step that fails,
is an `error: ...` with exit 2, never a traceback and never the gate's refusal code (1). The files placed are
the model the gate promoted, even when the checkpoint is rewritten after the gate's record was checked."""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from cryptography.fernet import Fernet
from ops_fixtures import TextDecider

from so8t_lib.cli import main as so8t
from so8t_lib.core.config import ConfigError, ModelConfig
from so8t_lib.model import SO8TModel
from so8t_lib.serve.audit_verify import read_chains
from so8t_lib.serve.runtime import Agent
from so8t_lib.workbench import retrain

ROOT = Path(__file__).resolve().parents[1]
deploy_module = importlib.import_module("so8t_lib.workbench.retrain.deploy")  # the package's deploy is a function
FERNET_KEY = Fernet.generate_key().decode()
HMAC_KEY = "a-long-enough-hmac-key-for-the-audit-anchor-0123456789"


def _runtime_config(tmp_path: Path, *switched_on: str) -> Path:
    """configs/basic.yaml with its commented ``logging.<setting>`` lines switched on."""
    text = (ROOT / "configs" / "basic.yaml").read_text(encoding="utf-8")
    for setting in switched_on:
        assert f"# {setting}:" in text
        text = text.replace(f"# {setting}:", f"{setting}:")
    path = tmp_path / f"runtime-{'-'.join(switched_on) or 'plain'}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def stand_in_model(monkeypatch):
    """The smoke test's Agent with a stand-in decider instead of the GGUF file; all else as deploy builds it."""
    real = Agent.from_config.__func__

    def with_stand_in(cls, path, overrides=(), **kwargs):
        return real(cls, path, [o for o in overrides if not o.startswith("model.")], decider=TextDecider(), **kwargs)

    monkeypatch.setattr(deploy_module.Agent, "from_config", classmethod(with_stand_in))


@pytest.fixture
def promoted(tmp_path, tokenizer):
    """A candidate checkpoint and a gate record that promoted it."""
    folder = SO8TModel.from_config(ModelConfig(name="so8t-cand"), tokenizer).save(tmp_path / "cand")
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"promote": True, "refusals": [],
                                "candidate": {"version": SO8TModel.load(folder).model_version}}))
    return folder, gate


@pytest.mark.parametrize("settings", [("encryption_key_env",), ("hmac_key_env", "encryption_key_env")])
def test_the_smoke_test_reads_an_encrypted_chain_with_the_configs_key(settings, tmp_path, monkeypatch,
                                                                      stand_in_model):
    """The test-mode agent encrypted its chain with the key the config names, and the smoke test read it without
    one: `ValueError: records are encrypted`, so every deploy under production's config crashed."""
    monkeypatch.setenv("SO8T_AUDIT_KEY", FERNET_KEY)
    monkeypatch.setenv("SO8T_AUDIT_HMAC_KEY", HMAC_KEY)
    config = _runtime_config(tmp_path, *settings)
    version, results, records = deploy_module._smoke_test(tmp_path / "x.gguf", config, tmp_path / "smoke", None)
    assert version == TextDecider.model_version and records == len(results) == 4
    with pytest.raises(ValueError, match="records are encrypted"):  # it is encrypted: read only with the key
        list(read_chains(tmp_path / "smoke"))
    assert len(list(read_chains(tmp_path / "smoke", key=FERNET_KEY))) >= 4


def test_production_configs_smoke_test_passes_with_its_keys(tmp_path, monkeypatch, stand_in_model):
    monkeypatch.setenv("SO8T_AUDIT_KEY", FERNET_KEY)
    monkeypatch.setenv("SO8T_AUDIT_HMAC_KEY", HMAC_KEY)
    _, _, records = deploy_module._smoke_test(tmp_path / "x.gguf", ROOT / "configs" / "production.yaml",
                                              tmp_path / "smoke", None)
    assert records == 4


def test_the_smoke_test_checks_the_chains_signatures_with_the_configs_hmac_key(tmp_path, monkeypatch,
                                                                             stand_in_model):
    """With hmac_key_env the chain was verified without the key, so its signatures were never checked: records
    signed with another key (here an earlier run's, into the same folder) passed."""
    config, smoke = _runtime_config(tmp_path, "hmac_key_env"), tmp_path / "smoke"
    monkeypatch.setenv("SO8T_AUDIT_HMAC_KEY", HMAC_KEY)
    assert deploy_module._smoke_test(tmp_path / "x.gguf", config, smoke, None)[2] == 4
    monkeypatch.setenv("SO8T_AUDIT_HMAC_KEY", HMAC_KEY[::-1])
    with pytest.raises(ConfigError, match="does not verify.*has no valid signature"):
        deploy_module._smoke_test(tmp_path / "x.gguf", config, smoke, None)


def test_a_smoke_log_encrypted_with_another_key_is_named_not_a_traceback(tmp_path, monkeypatch, stand_in_model):
    config, smoke = _runtime_config(tmp_path, "encryption_key_env"), tmp_path / "smoke"
    monkeypatch.setenv("SO8T_AUDIT_KEY", FERNET_KEY)
    deploy_module._smoke_test(tmp_path / "x.gguf", config, smoke, None)
    monkeypatch.setenv("SO8T_AUDIT_KEY", Fernet.generate_key().decode())
    with pytest.raises(ConfigError):
        deploy_module._smoke_test(tmp_path / "x.gguf", config, smoke, None)


@pytest.mark.parametrize("setting, variable", [("encryption_key_env", "SO8T_AUDIT_KEY"),
                                               ("hmac_key_env", "SO8T_AUDIT_HMAC_KEY")])
def test_deploy_names_a_key_variable_that_is_not_set_before_the_export(setting, variable, promoted, tmp_path,
                                                                       monkeypatch, capsys):
    monkeypatch.delenv(variable, raising=False)
    candidate, gate = promoted
    code = so8t(["retrain", "deploy", "--candidate", str(candidate), "--gate", str(gate), "--dist",
                 str(tmp_path / "dist"), "--runtime-config", str(_runtime_config(tmp_path, setting))])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and f"environment variable {variable}, but it is not set" in err
    assert "Traceback" not in err and not (tmp_path / "dist").exists()  # stopped before the export


@pytest.mark.parametrize("raised, code", [
    (retrain.NotPromoted("the gate refused to promote this model: macro_f1"), 1),
    (ConfigError("the runtime could not load so8t-cand-f16.gguf"), 2),
    (ValueError("audit.jsonl: seq 3 cannot be decrypted with this key"), 2),
    (OSError("No space left on device"), 2)])
def test_a_failing_deploy_exits_with_a_code_other_than_the_gates_refusal(raised, code, tmp_path, monkeypatch,
                                                                         capsys):
    def failing(*args, **kwargs):
        raise raised

    monkeypatch.setattr(retrain, "deploy", failing)
    assert so8t(["retrain", "deploy", "--candidate", "c", "--gate", "g", "--dist", str(tmp_path / "d")]) == code
    assert capsys.readouterr().err == f"error: {raised}\n"


def test_deploy_under_a_config_that_encrypts_its_audit_log(promoted, tmp_path, monkeypatch, capsys):
    """The reviewer's repro: so8t retrain deploy with basic.yaml's encryption_key_env switched on crashed with a
    ValueError traceback after the export; now it deploys, and the smoke log is encrypted with that key."""
    pytest.importorskip("llama_cpp")
    monkeypatch.setenv("SO8T_AUDIT_KEY", FERNET_KEY)
    candidate, gate = promoted
    dist = tmp_path / "dist"
    code = so8t(["retrain", "deploy", "--candidate", str(candidate), "--gate", str(gate), "--dist", str(dist),
                 "--runtime-config", str(_runtime_config(tmp_path, "encryption_key_env"))])
    assert code == 0, capsys.readouterr().err
    assert (dist / "so8t-cand-f16.gguf").is_file()
    records = [r for _, r in read_chains(dist / "smoke-logs", key=FERNET_KEY) if r.get("event") == "decision"]
    assert len(records) == 4 and all(r["test"] for r in records)


def test_deploy_refuses_a_checkpoint_rewritten_after_the_gates_record_was_checked(tmp_path, tokenizer, monkeypatch,
                                                                                 capsys):
    """The version was checked once, before the export: a best/ that a concurrent `retrain train --resume` saved
    in between was exported, smoke-tested and placed in dist, though the gate never saw it."""
    run = tmp_path / "run"
    best = SO8TModel.from_config(ModelConfig(name="so8t-cand"), tokenizer).save(run / "best")
    promoted = SO8TModel.load(best).model_version
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps({"promote": True, "refusals": [], "candidate": {"version": promoted}}))
    other = SO8TModel.from_config(ModelConfig(name="so8t-cand"), tokenizer)  # what the training run saves next
    with torch.no_grad():
        [m for m in other.safety_head.modules() if isinstance(m, torch.nn.Linear)][-1].bias.copy_(
            torch.tensor([8.0, -8.0, 0.0]))
    unseen = other.save(tmp_path / "unseen")
    real_check = deploy_module.checked_gate

    def check_then_training_saves(gate_file, candidate):
        checked = real_check(gate_file, candidate)  # the gate's version matches now...
        shutil.rmtree(best)
        shutil.copytree(unseen, best)  # ...then best/ is replaced, as a save would
        return checked

    monkeypatch.setattr(deploy_module, "checked_gate", check_then_training_saves)
    dist, smoke = tmp_path / "dist", tmp_path / "smoke"
    code = so8t(["retrain", "deploy", "--candidate", str(run), "--gate", str(gate), "--dist", str(dist),
                 "--smoke-logs", str(smoke)])
    err = capsys.readouterr().err
    assert code == 1 and f"error: the gate promoted {promoted}, but so8t-cand-f16.gguf is so8t-cand@" in err
    assert SO8TModel.load(unseen).model_version in err and "nothing was placed" in err
    assert list(dist.iterdir()) == [] and not smoke.exists()  # nothing placed, staging gone, no test run


def test_deploy_refuses_when_the_runtime_reports_another_model_than_the_gate_promoted(promoted, tmp_path,
                                                                                      monkeypatch):
    candidate, gate = promoted
    monkeypatch.setattr(deploy_module, "_smoke_test", lambda *args: ("so8t-cand@000000000000", [], 0))
    with pytest.raises(retrain.NotPromoted, match="as the runtime loaded it is so8t-cand@000000000000"):
        retrain.deploy(candidate, gate, tmp_path / "dist", log_dir=tmp_path / "smoke")
    assert list((tmp_path / "dist").iterdir()) == []


def test_a_killed_deploys_staging_folder_is_removed_by_the_next_and_a_running_ones_kept(tmp_path, capsys):
    """A deploy killed between its export and its clean-up left a whole hidden GGUF ladder in dist for good. It
    stages with the export's locked folders now: an unlocked one with its owner file (a dead process's) goes, a
    locked one (running) stays."""
    import fcntl
    import os

    from so8t_lib.export.quantize import OWNER_FILE, staging_folder

    dist = tmp_path / "dist"
    dead, running = dist / ".deploy-dead", dist / ".deploy-running"
    for folder in (dead, running):
        folder.mkdir(parents=True)
        (folder / "so8t-f16.gguf").write_bytes(b"GGUF" + b"\0" * 64)
        (folder / OWNER_FILE).write_text("1\n")
    handle = os.open(running, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        with staging_folder(dist, ".deploy-") as staging:
            assert staging.name.startswith(".deploy-") and staging.is_dir()
    finally:
        os.close(handle)
    assert not dead.exists() and running.is_dir() and not staging.exists()
    assert f"removed {dead}" in capsys.readouterr().err


def test_placing_the_files_is_all_or_none_and_a_folder_in_the_way_is_named_first(tmp_path):
    """The files were moved one by one, sidecar first: a folder where the second rung's sidecar goes left dist with
    the first rung only and raised a bare IsADirectoryError."""
    from so8t_lib.export.gguf_file import GGUFError
    from so8t_lib.export.gguf_meta import sidecar_path
    from so8t_lib.workbench.retrain.deploy import _place

    staging, dist = tmp_path / ".deploy-x", tmp_path / "dist"
    staging.mkdir()
    dist.mkdir()
    staged = [staging / "m-f16.gguf", staging / "m-q8_0.gguf"]
    for path in staged:
        path.write_bytes(path.name.encode())
        sidecar_path(path).write_text(f"digest  {path.name}\n", encoding="utf-8")
    (dist / "m-q8_0.gguf.sha256").mkdir()
    with pytest.raises(GGUFError, match=r"m-q8_0.gguf.sha256 is a folder"):
        _place(staged, dist, staging)
    assert sorted(p.name for p in dist.iterdir()) == ["m-q8_0.gguf.sha256"]  # nothing moved in
    (dist / "m-q8_0.gguf.sha256").rmdir()
    (dist / "m-f16.gguf").write_bytes(b"the model in service")
    with pytest.raises(ConfigError, match="m-f16.gguf already exist with other contents"):
        _place(staged, dist, staging)
    (dist / "m-f16.gguf").unlink()
    assert _place(staged, dist, staging) == [dist / "m-f16.gguf", dist / "m-q8_0.gguf"]
    assert sorted(p.name for p in dist.iterdir()) == ["m-f16.gguf", "m-f16.gguf.sha256", "m-q8_0.gguf",
                                                      "m-q8_0.gguf.sha256"]


def test_a_folder_in_the_way_of_the_run_steps_deploy_is_an_error_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    """The placement's GGUFError is a ValueError, which the command named for its deploy step only: `retrain run`
    (which deploys too) ended in a traceback."""
    from so8t_lib.cli import retrain as retrain_cli
    from so8t_lib.export.gguf_file import GGUFError

    def deploy_meets_a_folder(*args, **kwargs):
        raise GGUFError(f"{tmp_path}/dist/m-f16.gguf.sha256 is a folder, which the export's file of that name "
                        "cannot replace")

    monkeypatch.setattr(retrain, "run_flow", deploy_meets_a_folder)
    assert retrain_cli.main(["run", "--logs", "l", "--serving", "s", "--work", str(tmp_path)]) == 2
    assert "error: " in capsys.readouterr().err
