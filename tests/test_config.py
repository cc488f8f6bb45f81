"""Configs: the shipped files validate; bad ones name the key or the path."""

from pathlib import Path

import pytest

from so8t_lib.core.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_validate(name):
    from so8t_lib.serve.config import is_runtime_config, load_runtime_config

    if is_runtime_config(CONFIGS / name):
        cfg = load_runtime_config(CONFIGS / name)
        assert 0.5 <= cfg.inference.safety_threshold <= 1
    else:
        cfg = load_config(CONFIGS / name)
        assert cfg.model.name and len(cfg.fingerprint()) == 64
    assert "so8t " in (CONFIGS / name).read_text(encoding="utf-8").split("\nmodel:")[0], \
        "each config's header says how to run it"


def test_qlora_config_is_sized_for_a_12gb_gpu():
    cfg = load_config(CONFIGS / "qwen2.5-7b-qlora.yaml")
    assert cfg.model.load_in_4bit is True and cfg.training.gradient_checkpointing
    assert cfg.training.batch_size == 1 and cfg.training.max_length <= 512
    assert cfg.training.mixed_precision == "bf16"


def _write(tmp_path, text):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_key_is_named(tmp_path):
    path = _write(tmp_path, "model:\n  gates:\n    ordr: safe_first\n")
    with pytest.raises(ConfigError, match=r"model\.gates\.ordr: unknown key") as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_wrong_type_and_bad_value_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.lora\.r: .*integer.*'eight'"):
        load_config(_write(tmp_path, "model:\n  lora:\n    r: eight\n"))
    with pytest.raises(ConfigError, match=r"model\.gates\.order: .*'sideways'"):
        load_config(_write(tmp_path, "model:\n  gates:\n    order: sideways\n"))
    with pytest.raises(ConfigError, match=r"loss\.class_weights"):
        load_config(_write(tmp_path, "loss:\n  class_weights: {ALLOW: 1.0}\n"))
    with pytest.raises(ConfigError, match=r"model\.head\.hidden_units"):
        load_config(_write(tmp_path, "model:\n  head:\n    hidden_units: 4096\n"))


def test_missing_file_and_broken_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(_write(tmp_path, "- just\n- a list\n"))


def test_overrides_apply_and_are_validated():
    cfg = load_config(CONFIGS / "tiny.yaml", ["model.gates.order=cmd_first", "loss.pet.weight=1e-2"])
    assert cfg.model.gates.order == "cmd_first" and cfg.loss.pet.weight == pytest.approx(0.01)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(CONFIGS / "tiny.yaml", ["model.gates.order"])
    with pytest.raises(ConfigError, match=r"model\.gates\.order"):
        load_config(CONFIGS / "tiny.yaml", ["model.gates.order=upside_down"])


def test_fingerprint_changes_with_content():
    a = load_config(CONFIGS / "tiny.yaml")
    b = load_config(CONFIGS / "tiny.yaml", ["model.seed=1"])
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == load_config(CONFIGS / "tiny.yaml").fingerprint()


def test_extends_merges_section_by_section_and_refuses_loops(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {name: base-model, seed: 3}\ntraining: {max_steps: 7}\n")
    (tmp_path / "top.yaml").write_text("extends: base.yaml\nmodel: {name: top-model}\n")
    cfg = load_config(tmp_path / "top.yaml")
    assert cfg.model.name == "top-model" and cfg.model.seed == 3 and cfg.training.max_steps == 7
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing-parent.yaml")


def test_cache_root_reads_so8t_cache_and_treats_an_empty_value_as_unset(monkeypatch, tmp_path):
    from so8t_lib.core.paths import cache_root

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path))
    assert cache_root() == tmp_path
    monkeypatch.setenv("SO8T_CACHE", "")  # `SO8T_CACHE= make demo` must not convert the base into the cwd
    assert cache_root() == Path.home() / ".cache" / "so8t"
