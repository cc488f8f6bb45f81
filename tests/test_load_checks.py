"""What a model build or a checkpoint load refuses (so8t_lib/model/checks.py): a head temperature that reverses the
decision, base weights transformers would fill at random or drop, a recorded base loaded on one that cannot be
checked, damaged files under the unverified override, and model keys that would only fail at the first step."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from so8t_lib.core.checkpoint import UNVERIFIED_ENV, UNVERIFIED_MARK, CheckpointError, write_manifest
from so8t_lib.core.config import ConfigError, ModelConfig
from so8t_lib.core.schema import ADAPTER_FILE, MANIFEST_FILE, MODEL_CONFIG_FILE
from so8t_lib.model.base import build_tiny_base
from so8t_lib.model.so8t import SO8TModel

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 128}


def _config(**changes) -> ModelConfig:
    return ModelConfig(**{"lora": {"dropout": 0.0}, "head": {"dropout": 0.0}, "tiny": TINY, "load_in_4bit": False,
                          **changes})


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """A saved tiny checkpoint (copied by each test that damages it)."""
    return SO8TModel.from_config(_config(), tokenizer).save(tmp_path_factory.mktemp("saved") / "ckpt")


def _copy(saved, tmp_path, manifest: bool = True):
    folder = shutil.copytree(saved, tmp_path / "ckpt")
    if not manifest:
        (folder / MANIFEST_FILE).unlink()
    return folder


@pytest.mark.parametrize("temperature", [-1.0, 0.0, math.nan, math.inf, 1e-40])  # 1e-40: 0 in float32
def test_a_head_temperature_that_reverses_the_decision_is_refused(saved, tmp_path, tokenizer, temperature):
    """load_adapter checked keys and shapes only: at T = -1 the head's ranking turned over and harmful requests got
    ALLOW; save() wrote a manifest for such a model too."""
    folder = _copy(saved, tmp_path)
    state = load_file(str(folder / ADAPTER_FILE))
    state["safety_head.temperature"] = torch.tensor(temperature)
    save_file(state, str(folder / ADAPTER_FILE), metadata={"format": "1"})
    (folder / MANIFEST_FILE).unlink()
    write_manifest(folder)  # a consistent folder: the manifest cannot tell
    with pytest.raises(CheckpointError, match=r"adapter.safetensors: safety_head.temperature is .* not a finite"):
        SO8TModel.load(folder)

    model = SO8TModel.from_config(_config(), tokenizer)
    with torch.no_grad():
        model.safety_head.temperature.fill_(temperature)
    with pytest.raises(CheckpointError, match="nothing was written"):
        model.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no staging folder left


@pytest.mark.parametrize("key", ["lora_A", "gate", "safety_head"])
def test_an_adapter_weight_that_is_not_finite_is_refused_by_name(saved, tmp_path, key):
    """A NaN in a LoRA or gate weight (a diverged step saved with a consistent manifest) loaded and decided NaN for
    every request, and so8t export merged it into a GGUF that replaced the working one."""
    folder = _copy(saved, tmp_path)
    state = load_file(str(folder / ADAPTER_FILE))
    name = next(n for n in sorted(state) if key in n and state[n].is_floating_point() and state[n].numel() > 1)
    state[name] = state[name].clone()
    state[name].view(-1)[0] = math.nan
    save_file(state, str(folder / ADAPTER_FILE), metadata={"format": "1"})
    (folder / MANIFEST_FILE).unlink()
    write_manifest(folder)
    with pytest.raises(CheckpointError, match=rf"adapter.safetensors: {re.escape(name)} holds values that are not"):
        SO8TModel.load(folder)


@pytest.mark.parametrize("change", ["drop model.norm.weight", "drop lm_head.weight", "add model.bogus.weight"])
def test_base_weights_transformers_would_fill_at_random_or_drop_are_refused(saved, tmp_path, change):
    """from_pretrained filled a missing base weight at random and the checkpoint loaded (its decisions moved)."""
    folder = _copy(saved, tmp_path)
    weights = folder / "base" / "model.safetensors"
    state = load_file(str(weights))
    action, name = change.split()
    if action == "drop":
        del state[name]
    else:
        state[name] = torch.zeros(3)
    save_file(state, str(weights), metadata={"format": "pt"})
    (folder / MANIFEST_FILE).unlink()
    write_manifest(folder)
    with pytest.raises(CheckpointError, match=rf"/base: base model weights {name} are "
                                              rf"{'missing' if action == 'drop' else 'not part of this model'}"):
        SO8TModel.load(folder)


def test_a_device_out_of_memory_is_not_called_a_damaged_base(saved, monkeypatch):
    """An out-of-memory RuntimeError became "base model weights are missing or damaged": a GPU user was sent to
    restore a healthy base."""
    from so8t_lib.model import base

    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(base.AutoModelForCausalLM, "from_pretrained", full)
    with pytest.raises(torch.OutOfMemoryError):
        SO8TModel.load(saved)


def _hf_base(folder, seed: int, tokenizer, manifest: bool):
    lm, _ = build_tiny_base(ModelConfig(preset="tiny", seed=seed, tiny=TINY), tokenizer)
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    if manifest:
        write_manifest(folder)
    return folder


def test_a_recorded_base_is_not_loaded_on_one_without_a_manifest_unless_allowed(tmp_path, tokenizer, monkeypatch):
    """A checkpoint that recorded its base loaded on another base with no manifest, with only a warning."""
    base = _hf_base(tmp_path / "base", 0, tokenizer, manifest=True)
    checkpoint = SO8TModel.from_config(_config(preset="hf", base_model=str(base))).save(tmp_path / "ckpt")
    other = str(_hf_base(tmp_path / "other", 1, tokenizer, manifest=False))
    monkeypatch.delenv(UNVERIFIED_ENV, raising=False)
    with pytest.raises(CheckpointError, match=f"{other}: no manifest.json, so it cannot be checked to be the base"):
        SO8TModel.load(checkpoint, base_model=other)
    monkeypatch.setenv(UNVERIFIED_ENV, "1")
    with pytest.warns(UserWarning, match="no manifest.json"):
        model = SO8TModel.load(checkpoint, base_model=other)
    assert model.model_version.endswith(UNVERIFIED_MARK)
    assert not SO8TModel.load(checkpoint).model_version.endswith(UNVERIFIED_MARK)


def _truncate(name):
    def damage(folder):
        path = folder / name
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return damage


def _base_config(key, value):
    def damage(folder):
        path = folder / "base" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    return damage


@pytest.mark.parametrize("damage, named", [
    (_truncate("base/model.safetensors"), "/base: base model weights are missing or damaged"),
    (_truncate("base/config.json"), "/base: base model weights are missing or damaged"),
    (_base_config("hidden_size", 128), "/base: base model weights are missing or damaged"),
    (_base_config("vocab_size", 100), "/base: base model weights are missing or damaged"),
    (_base_config("num_hidden_layers", 3), "/base: base model weights are missing or damaged"),
    (_truncate("tokenizer/tokenizer.json"), "/tokenizer: the checkpoint's tokenizer is missing or damaged"),
    (lambda folder: shutil.rmtree(folder / "base"), "/base: missing; a tiny-preset checkpoint keeps its base"),
], ids=["truncated-weights", "truncated-config", "config-hidden", "config-vocab", "config-layers", "truncated-tokenizer",
        "no-base"])
def test_damaged_files_under_the_unverified_override_name_the_folder(saved, tmp_path, monkeypatch, damage, named):
    """With SO8T_ALLOW_UNVERIFIED_MODEL=1 (no manifest to catch them) these ended in raw tracebacks, and a tiny
    checkpoint without base/ asked for model.base_model."""
    folder = _copy(saved, tmp_path, manifest=False)
    damage(folder)
    monkeypatch.setenv(UNVERIFIED_ENV, "1")
    with pytest.raises(CheckpointError, match=named):
        SO8TModel.load(folder)


@pytest.mark.parametrize("change, named", [
    ({"gates": {"target": "self_attn.k_proj"}}, r"model.gates.target 'self_attn.k_proj' has 32 outputs; .*\(64\)"),
    ({"gates": {"target": "self_attn.bogus"}}, "model.gates.target 'self_attn.bogus': the decoder layers"),
    ({"gates": {"target": "self_attn"}}, "model.gates.target 'self_attn' is a Qwen2Attention, not a linear"),
    ({"head": {"read_layers": [99]}}, r"model.head.read_layers \[99\]: this base has hidden-state indices 1..2"),
    ({"lora": {"target_modules": ["bogus_proj"]}}, r"model.lora.target_modules \['bogus_proj'\]: no module"),
], ids=["gate-width", "gate-missing", "gate-not-linear", "read-layers", "lora-targets"])
def test_model_keys_that_would_fail_at_the_first_step_are_config_errors_at_build(tokenizer, change, named):
    """A gate on a projection of another width built fine and failed at the first forward, after the run folder's
    config.yaml and metrics.jsonl were written: a folder that could neither restart nor resume."""
    with pytest.raises(ConfigError, match=named):
        SO8TModel.from_config(_config(**change), tokenizer)


def test_lora_targets_are_checked_before_peft_whose_other_errors_are_not_renamed(tokenizer, monkeypatch):
    """pyproject allows peft >= 0.17; before 0.21 peft reports an unmatched target with a plain ValueError, and
    catching every ValueError there reported any peft failure as a target_modules mistake. The targets are matched
    before peft runs; what peft raises for another reason reaches the user as peft worded it."""
    import sys

    import peft

    with pytest.raises(ConfigError, match=r"model.lora.target_modules \['bogus_proj'\]: no module"):
        SO8TModel.from_config(_config(lora={"target_modules": ["bogus_proj"]}), tokenizer)

    def fails(*args, **kwargs):
        raise ValueError("a peft failure of another kind")

    monkeypatch.setattr(peft, "get_peft_model", fails)
    with pytest.raises(ValueError, match="a peft failure of another kind"):  # with peft's own error class
        SO8TModel.from_config(_config(), tokenizer)
    monkeypatch.setitem(sys.modules, "peft.utils.error", None)  # as on peft < 0.21: no error class to import
    with pytest.raises(ValueError, match="a peft failure of another kind"):
        SO8TModel.from_config(_config(), tokenizer)
    monkeypatch.undo()
    SO8TModel.from_config(_config(), tokenizer)  # and a good config still builds


def test_lora_targets_peft_matches_only_outside_the_lora_layers_are_a_config_error(tokenizer):
    """A name can exist in the base and still match nothing peft may wrap (only in layers lora.layers leaves out):
    peft's own error is a config error naming model.lora, not a traceback."""
    with pytest.raises(ConfigError, match="model.lora: "):
        SO8TModel.from_config(_config(lora={"target_modules": ["embed_tokens"], "layers": [1]}), tokenizer)


def test_gates_the_config_does_not_build_are_named(saved):
    """Loading a gated checkpoint with gates.order none listed 'missing' LoRA keys (renamed under the gate)."""
    with pytest.raises(CheckpointError, match="it holds SO\\(8\\) gates this config does not build"):
        SO8TModel.load(saved, gates={"order": "none"})


def test_the_format_is_read_before_the_config_is_validated(saved, tmp_path):
    """A newer format whose model config this version cannot validate got 'unreadable or invalid', not the format."""
    folder = _copy(saved, tmp_path)
    meta = yaml.safe_load((folder / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    meta["format"], meta["model"]["new_key"] = 2, 1
    (folder / MODEL_CONFIG_FILE).write_text(yaml.safe_dump(meta), encoding="utf-8")
    (folder / MANIFEST_FILE).unlink()
    write_manifest(folder)
    with pytest.raises(CheckpointError, match="checkpoint format 2; this version of so8t reads format 1 only"):
        SO8TModel.load(folder)
