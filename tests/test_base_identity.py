"""A checkpoint names the pretrained base it was trained on. The manifest's hash changes with the transformers
version stamped into config.json, so a checkpoint refused to load on the very same weights converted under another
version; the identity leaves such stamps out, and checkpoints that predate it are still compared by manifest hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from so8t_lib.core.checkpoint import CheckpointError, write_manifest
from so8t_lib.core.config import ModelConfig
from so8t_lib.core.schema import MODEL_CONFIG_FILE
from so8t_lib.model.base import build_tiny_base
from so8t_lib.model.pretrained import base_fingerprint, base_identity, base_mismatch
from so8t_lib.model.so8t import SO8TModel


def _hf_base(folder: Path, seed: int) -> Path:
    """A tiny random base saved as a converted pretrained base is: an HF folder with a manifest."""
    lm, tokenizer = build_tiny_base(ModelConfig(preset="tiny", seed=seed), None)
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_manifest(folder)
    return folder


def _restamp(folder: Path, **changes) -> None:
    """Rewrite config.json as another transformers version would, then its manifest, as a new conversion has."""
    config_file = folder / "config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config.update(changes)
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    write_manifest(folder)


def _config(base: Path) -> ModelConfig:
    return ModelConfig(preset="hf", base_model=str(base), load_in_4bit=False, lora={"dropout": 0.0},
                       head={"dropout": 0.0})


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint and the base it was made on (the base is rewritten by the tests: each restores it)."""
    root = tmp_path_factory.mktemp("identity")
    base = _hf_base(root / "base", seed=0)
    return SO8TModel.from_config(_config(base)).save(root / "checkpoint"), base


def test_the_identity_ignores_version_stamps_and_sees_weights_and_settings(tmp_path):
    base = _hf_base(tmp_path / "base", seed=0)
    fingerprint, identity = base_fingerprint(base), base_identity(base)
    _restamp(base, transformers_version="9.99.0", torch_dtype="float32")
    assert base_fingerprint(base) != fingerprint and base_identity(base) == identity
    _restamp(base, rms_norm_eps=1e-3)  # a setting the model computes with
    assert base_identity(base) != identity
    assert base_identity(_hf_base(tmp_path / "other", seed=1)) != identity  # other weights
    assert base_identity(tmp_path) is None  # no manifest: nothing to tell


def test_a_checkpoint_loads_on_its_base_converted_under_another_transformers_version(trained):
    checkpoint, base = trained
    recorded = yaml.safe_load((checkpoint / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    assert recorded["base_identity"] == base_identity(base) and recorded["base_fingerprint"] == base_fingerprint(base)
    original = {name: (base / name).read_bytes() for name in ("config.json", "manifest.json")}
    try:
        _restamp(base, transformers_version="9.99.0")
        assert base_fingerprint(base) != recorded["base_fingerprint"]
        assert SO8TModel.load(checkpoint).base_identity == recorded["base_identity"]
    finally:
        for name, data in original.items():
            (base / name).write_bytes(data)


def test_another_base_is_still_refused_and_named(trained, tmp_path):
    checkpoint, base = trained
    other = _hf_base(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointError, match=f"another base than {other} \\(identity .* vs .*\\).*model.base_model"):
        SO8TModel.load(checkpoint, base_model=str(other))


def test_a_checkpoint_from_before_the_identity_is_compared_by_its_manifest_hash(trained, tmp_path):
    """Such a checkpoint records only base_fingerprint: its own base loads, another is refused, as before."""
    checkpoint, base = trained
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for file in checkpoint.rglob("*"):
        if file.is_file():
            (legacy / file.relative_to(checkpoint)).parent.mkdir(parents=True, exist_ok=True)
            (legacy / file.relative_to(checkpoint)).write_bytes(file.read_bytes())
    meta = yaml.safe_load((legacy / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    del meta["base_identity"]
    (legacy / MODEL_CONFIG_FILE).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    write_manifest(legacy)
    assert SO8TModel.load(legacy).base_fingerprint == meta["base_fingerprint"]
    other = _hf_base(tmp_path / "other", seed=1)
    with pytest.raises(CheckpointError, match="another base .*manifest sha256"):
        SO8TModel.load(legacy, base_model=str(other))


def test_the_identity_decides_when_both_sides_have_one():
    assert base_mismatch({"base_identity": "a" * 64, "base_fingerprint": "b" * 64},
                         {"base_identity": "a" * 64, "base_fingerprint": "c" * 64}) is None
    assert "identity" in base_mismatch({"base_identity": "a" * 64}, {"base_identity": "d" * 64})
    assert "manifest sha256" in base_mismatch({"base_fingerprint": "b" * 64},
                                              {"base_identity": "a" * 64, "base_fingerprint": "c" * 64})
    assert base_mismatch({}, {"base_identity": "a" * 64}) is None  # a random base's checkpoint: nothing recorded


def test_an_unreadable_base_config_is_named(tmp_path):
    base = _hf_base(tmp_path / "base", seed=0)
    (base / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=f"{base}: its manifest or configs are unreadable"):
        base_identity(base)
