"""What SO8TModel.load checks before it trusts a checkpoint: its format number, the files of a pretrained base
named by model.base_model, and that files another user wrote can be read (or a CheckpointError says why not)."""

from __future__ import annotations

import os
import stat

import pytest
import yaml

import so8t_lib.core.checkpoint as checkpoint_module
import so8t_lib.model.base as base_module
from so8t_lib.core.checkpoint import CheckpointError, write_manifest
from so8t_lib.core.config import ModelConfig
from so8t_lib.core.schema import CHECKPOINT_FORMAT, MANIFEST_FILE, MODEL_CONFIG_FILE
from so8t_lib.model import SO8TModel


@pytest.fixture
def checkpoint(tmp_path, tiny_config, tokenizer):
    return SO8TModel.from_config(tiny_config, tokenizer).save(tmp_path / "ckpt")


@pytest.mark.parametrize("written", [CHECKPOINT_FORMAT + 1, None])
def test_a_checkpoint_of_another_format_is_refused_naming_the_format_read(checkpoint, written):
    """The format number was written but never read: a newer layout loaded as if it were this one."""
    meta = yaml.safe_load((checkpoint / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    meta["format"] = written
    (checkpoint / MODEL_CONFIG_FILE).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    (checkpoint / MANIFEST_FILE).unlink()
    write_manifest(checkpoint)  # as the version that wrote it would have
    with pytest.raises(CheckpointError, match=f"format {written}; this version of so8t reads format "
                                              f"{CHECKPOINT_FORMAT} only"):
        SO8TModel.load(checkpoint)


def _local_base(checkpoint, tokenizer, manifest: bool):
    """A pretrained base folder as model.base_model names it: HF weights, tokenizer, and (converted) a manifest."""
    folder = checkpoint / "base"
    tokenizer.save_pretrained(str(folder))
    if manifest:
        write_manifest(folder)
    return folder


def test_a_base_whose_weights_differ_from_its_manifest_is_refused(tmp_path, checkpoint, tokenizer):
    """Only the manifest's hash was compared: weights changed under an unchanged manifest loaded as the base."""
    base = _local_base(checkpoint, tokenizer, manifest=True)
    config = ModelConfig(preset="hf", base_model=str(base), load_in_4bit=False, lora={"dropout": 0.0},
                         head={"dropout": 0.0})
    trained = SO8TModel.from_config(config).save(tmp_path / "on-base")
    assert SO8TModel.load(trained).base_fingerprint
    weights = base / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-4:] = bytes(4 * [0x3F])
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="base model .* differs from its manifest: .*model.safetensors"):
        SO8TModel.load(trained)
    with pytest.raises(CheckpointError, match="differs from its manifest"):
        SO8TModel.from_config(config)


def test_a_base_without_a_manifest_loads_with_a_warning(checkpoint, tokenizer):
    base = _local_base(checkpoint, tokenizer, manifest=False)
    config = ModelConfig(preset="hf", base_model=str(base), load_in_4bit=False)
    with pytest.warns(UserWarning, match="no manifest.json, so its files cannot be checked"):
        SO8TModel.from_config(config)


def test_the_converted_preset_base_is_verified_once(monkeypatch, checkpoint, tokenizer):
    """converted_base() verifies the cached conversion: a second pass would add ~1.6 s to every Gemma load."""
    base = _local_base(checkpoint, tokenizer, manifest=True)
    calls = []
    monkeypatch.setattr(base_module, "converted_base", lambda spec: base)
    monkeypatch.setattr(base_module, "verify_base", calls.append)
    SO8TModel.from_config(ModelConfig(preset="gemma3-270m", load_in_4bit=False))
    assert calls == []
    SO8TModel.from_config(ModelConfig(preset="hf", base_model=str(base), load_in_4bit=False))
    assert calls == [base]


def _modes(folder):
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def test_checkpoint_files_are_readable_by_the_services_user(tmp_path, tiny_config, tokenizer):
    """safetensors writes 0600: the service's user (another account) could not load a checkpoint saved by this one,
    and a calibration wrote the adapter 0600 again."""
    from so8t_lib.eval.calibration import calibrate_checkpoint

    umask = os.umask(0o027)
    try:
        folder = SO8TModel.from_config(tiny_config, tokenizer).save(tmp_path / "ckpt")
        expected = {name: 0o750 if (folder / name).is_dir() else 0o640 for name in _modes(folder)}
        assert _modes(folder) == expected
        calibrate_checkpoint(folder, "val", progress=False, max_rows=12)
        assert _modes(folder) == expected
    finally:
        os.umask(umask)


def test_a_file_this_user_may_not_read_is_a_checkpoint_error_naming_it(checkpoint, monkeypatch):
    def denied(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint_module, "sha256_file", denied)
    with pytest.raises(CheckpointError, match=r"adapter.safetensors: this user \(uid \d+\) may not read it.*chmod -R"):
        SO8TModel.load(checkpoint)


def test_a_calibration_killed_while_it_writes_leaves_the_old_checkpoint_whole(tmp_path, tiny_config, tokenizer,
                                                                              monkeypatch):
    """The new adapter was renamed into the live folder before the manifest was rewritten: a kill between the two
    left best/ 'damaged (checksum does not match the manifest)', and --resume, which calibrates it again, failed
    the same way for good."""
    import so8t_lib.eval.calibration as calibration

    folder = SO8TModel.from_config(tiny_config, tokenizer).save(tmp_path / "ckpt")
    (folder / "trainer_state.pt").write_bytes(b"a run's state, kept as it is")
    write_manifest(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    real_save = calibration.save_file

    def killed(state, path, metadata=None):
        real_save(state, path, metadata=metadata)
        raise KeyboardInterrupt  # the process dies after the new adapter is on disk, before anything else

    monkeypatch.setattr(calibration, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        calibration.calibrate_checkpoint(folder, "val", progress=False, max_rows=12)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging folder left behind
    SO8TModel.load(folder)  # the manifest still describes every file

    monkeypatch.setattr(calibration, "save_file", real_save)
    result = calibration.calibrate_checkpoint(folder, "val", progress=False, max_rows=12)
    model = SO8TModel.load(folder)  # the new adapter and a manifest that describes it
    assert float(model.safety_head.temperature) == pytest.approx(result["temperature"])
    assert (folder / "trainer_state.pt").read_bytes() == before["trainer_state.pt"]
