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
    with pytest.raises(ConfigError, match="is a folder; name the config file in it"):
        load_config(tmp_path)  # it exists: "not found" sent people looking for a missing file
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


def _gate_args(*argv):
    import argparse

    from so8t_lib.cli.gate_options import add_gate_options, gate_overrides

    parser = argparse.ArgumentParser()
    add_gate_options(parser)
    parser.add_argument("overrides", nargs="*")
    return gate_overrides(parser.parse_args(list(argv)))


@pytest.mark.parametrize("path", ["checkpoints/run #3", "checkpoints/run #3/model.gguf", "20240601", "a: b", "~",
                                  "'quoted'", " lead", "null.gguf", "日本語/モデル", "x\"y\\z"])
def test_model_path_is_a_path_never_yaml(path):
    """`run #3` lost '#3' to a YAML comment (and another checkpoint loaded), 20240601 became a number, ~ None."""
    from so8t_lib.serve.config import load_runtime_config

    model = load_runtime_config(CONFIGS / "basic.yaml", _gate_args("--model-path", path)).model
    assert model.checkpoint_path == path
    assert model.use_gguf == path.endswith(".gguf")
    if path.endswith(".gguf"):
        assert model.gguf_path == path and model.model_path() == path


def test_a_text_override_keeps_its_text_and_a_dropped_comment_is_refused():
    from so8t_lib.serve.config import load_runtime_config

    cfg = load_config(CONFIGS / "tiny.yaml", ["training.output_dir=checkpoints/run #3", "model.name=20240601",
                                              "training.mixed_precision=no", "model.base_model='a b'",
                                              "model.system_prompt=~"])
    assert cfg.training.output_dir == "checkpoints/run #3" and cfg.model.name == "20240601"
    assert cfg.training.mixed_precision == "no" and cfg.model.base_model == "a b" and cfg.model.system_prompt is None
    assert load_runtime_config(CONFIGS / "basic.yaml", ["model.checkpoint_path=~"]).model.checkpoint_path == "~"
    assert load_config(CONFIGS / "tiny.yaml", ["training.max_steps=12"]).training.max_steps == 12
    with pytest.raises(ConfigError, match="drop '# ten' as a comment"):
        load_config(CONFIGS / "tiny.yaml", ["training.max_steps=10 # ten"])
    with pytest.raises(ConfigError, match=r"training\.mixed_precision"):
        load_config(CONFIGS / "tiny.yaml", ["training.mixed_precision=true"])
    for override, says in (("escalation.queue_db=null", "cannot be empty"),
                            ("escalation.queue_db=[a, b]", "takes text, not a list")):
        with pytest.raises(ConfigError, match=says):  # a queue file named "null" or "[a, b]" was made
            load_runtime_config(CONFIGS / "basic.yaml", [override])
    with pytest.raises(ConfigError, match="cannot be empty"):
        load_config(CONFIGS / "tiny.yaml", ["training.output_dir=null"])
    assert load_config(CONFIGS / "tiny.yaml", ["training.output_dir='null'"]).training.output_dir == "null"


def test_mixed_precision_no_as_yaml_reads_it_and_true_is_refused(tmp_path):
    cfg = load_config(_write(tmp_path, "training:\n  mixed_precision: no\n"))
    assert cfg.training.mixed_precision == "no"
    for word in ("yes", "true"):
        with pytest.raises(ConfigError, match="true is not a precision"):
            load_config(_write(tmp_path, f"training:\n  mixed_precision: {word}\n"))


def test_sizes_take_bytes_and_refuse_zero():
    from so8t_lib.core.config import parse_size
    from so8t_lib.serve.config import load_runtime_config

    cfg = load_runtime_config(CONFIGS / "basic.yaml", ["service.max_body_bytes=1048576",
                                                       "logging.max_log_size=104857600"])
    assert parse_size(cfg.service.max_body_bytes) == 2**20 and parse_size(cfg.logging.max_log_size) == 100 * 2**20
    for override, message in [("logging.max_log_size=0MB", "more than 0"), ("logging.max_log_size=1KB", "4KB"),
                              ("logging.max_log_size=0", "more than 0"), ("service.max_body_bytes=0", "more than 0")]:
        with pytest.raises(ConfigError, match=message):
            load_runtime_config(CONFIGS / "basic.yaml", [override])
    for bad in (0, "0KB", "0.0001KB", True, -1):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_an_override_under_an_alias_changes_only_its_own_key(tmp_path):
    from so8t_lib.core.config import apply_overrides

    path = _write(tmp_path, "training:\n  task_optimizer: &opt {lr: 0.0003, warmup_steps: 5}\n"
                            "  safety_optimizer: *opt\n")
    cfg = load_config(path, ["training.safety_optimizer.lr=0.002"])
    assert cfg.training.task_optimizer.lr == pytest.approx(3e-4) and cfg.training.safety_optimizer.lr == 0.002
    data = {"a": {"b": 1}}
    assert apply_overrides(data, ["a.b=2"]) == {"a": {"b": 2}} and data == {"a": {"b": 1}}


def test_merge_keys_work_and_duplicates_are_still_refused(tmp_path):
    cfg = load_config(_write(tmp_path, "training:\n  task_optimizer: &opt {lr: 0.001, warmup_steps: 5}\n"
                                       "  safety_optimizer:\n    <<: *opt\n    lr: 0.002\n"))
    assert cfg.training.safety_optimizer.warmup_steps == 5 and cfg.training.safety_optimizer.lr == 0.002
    assert cfg.training.task_optimizer.lr == 0.001
    for text in ("training:\n  task_optimizer: &opt {lr: 0.001}\n  safety_optimizer: {<<: *opt, lr: 1, lr: 2}\n",
                 "training:\n  max_steps: 1\n  max_steps: 2\n"):
        with pytest.raises(ConfigError, match="given twice"):
            load_config(_write(tmp_path, text))


def test_exponent_without_a_dot_is_a_number_as_in_yaml_1_2():
    from so8t_lib.core.config_files import load_yaml_strict

    read = load_yaml_strict("lr: 1e-3\ngrid: [3E-4, -2e+2]\nquoted: '1e-3'\nword: 1e\ndate: 20240601\n")
    assert read == {"lr": 0.001, "grid": [0.0003, -200.0], "quoted": "1e-3", "word": "1e", "date": 20240601}
    import yaml

    assert yaml.safe_load("lr: 1e-3") == {"lr": "1e-3"}  # SafeLoader itself is left as it was
    from so8t_lib.core.config_files import apply_overrides

    assert apply_overrides({}, ["params.lr=1e-3", "params.tag='1e-3'"]) == {"params": {"lr": 0.001, "tag": "1e-3"}}


def test_one_route_override_starts_from_the_default_routes():
    from so8t_lib.serve.config import load_runtime_config

    routes = load_runtime_config(CONFIGS / "basic.yaml", ["escalation.routes.medical.email=x@y"]).escalation.routes
    assert routes["medical"].email == "x@y" and routes["medical"].slack_channel == "#medical-escalation"
    assert routes["legal"].email == "legal@company.com"
    with pytest.raises(ConfigError, match=r"unknown categories \['medial'\]"):
        load_runtime_config(CONFIGS / "basic.yaml", ["escalation.routes.medial={email: a@b}"])


def test_an_optimizer_given_in_part_keeps_its_sides_own_lr_as_an_override_does(tmp_path):
    empty = _write(tmp_path, "")
    for side, lr in (("task_optimizer", 3e-4), ("safety_optimizer", 2e-3)):
        in_file = load_config(_write(tmp_path, f"training:\n  {side}:\n    warmup_steps: 5\n")).training
        as_override = load_config(empty, [f"training.{side}.warmup_steps=5"]).training
        assert getattr(in_file, side).lr == getattr(as_override, side).lr == pytest.approx(lr)
        assert getattr(in_file, side).warmup_steps == 5 and in_file == as_override
    explicit = load_config(_write(tmp_path, "training:\n  safety_optimizer: {lr: 0.0001, warmup_steps: 5}\n"))
    assert explicit.training.safety_optimizer.lr == 0.0001 and explicit.training.task_optimizer.lr == 3e-4
    mapped = load_config(explicit_path := _write(tmp_path, "training:\n  safety_optimizer: {lr: 0.0001}\n"),
                         ["training.safety_optimizer={warmup_steps: 7}"]).training.safety_optimizer
    assert (mapped.lr, mapped.warmup_steps) == (0.0001, 7), f"the file's lr in {explicit_path} was dropped"


def test_numbers_are_yaml_1_2s_so_none_changes_silently(tmp_path):
    from so8t_lib.core.config_files import load_yaml_strict

    read = load_yaml_strict("a: [0, -0, 10, 1_000, 0o17, 0x1F, -0x1f, 0b11, 1:30, 1:30.5, 0.5, 1.5e-3, .inf]\n")
    assert read == {"a": [0, 0, 10, 1000, 15, 31, -31, "0b11", "1:30", "1:30.5", 0.5, 0.0015, float("inf")]}
    for text, message in (("training:\n  max_steps: 1:30\n", r"max_steps: .*got '1:30'"),
                          ("training:\n  eval_every: 0b11\n", r"eval_every: .*got '0b11'"),
                          ("training:\n  seed: 010\n", r"010 has a leading zero.*write 10 .*0o10 \(octal\)"),
                          ("training:\n  seed: -007\n", r"write -7 \(decimal\)")):
        with pytest.raises(ConfigError, match=message):
            load_config(_write(tmp_path, text))
    with pytest.raises(ConfigError, match=r"override 'training.seed=010'.*leading zero"):
        load_config(_write(tmp_path, ""), ["training.seed=010"])
    cfg = load_config(_write(tmp_path, "training:\n  seed: 0o10\n  max_steps: 0x10\n"), ["model.name=007"])
    assert (cfg.training.seed, cfg.training.max_steps, cfg.model.name) == (8, 16, "007")


def test_a_config_nested_too_deep_is_a_config_error_naming_the_file(tmp_path):
    path = _write(tmp_path, "model:\n  tiny: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(ConfigError, match=rf"{path.name}: not valid YAML: nested too deep"):
        load_config(path)


def _alias_levels(count: int) -> str:
    """A target_modules list whose item i is nine aliases of item i - 1: 9**count strings once expanded."""
    levels = ["      - &l0 [" + ", ".join(['"x"'] * 9) + "]"]
    levels += [f"      - &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, count)]
    return "model:\n  lora:\n    target_modules:\n" + "\n".join(levels) + "\n"


def test_aliases_nested_in_aliases_are_refused_before_they_expand(tmp_path):
    """A 400-byte file of aliases of aliases expands to 9**9 values: validating it, or printing it in the error,
    took gigabytes and killed the process."""
    path = _write(tmp_path, _alias_levels(9))
    with pytest.raises(ConfigError, match=rf"{path.name}: not valid YAML: more than 1,000,000 values, counting each alias"):
        load_config(path)
    with pytest.raises(ConfigError) as refused:  # 9**5 values, within the cap: the wrong type, its value shown short
        load_config(_write(tmp_path, _alias_levels(5)))
    assert "model.lora.target_modules" in str(refused.value) and len(str(refused.value)) < 20_000  # not megabytes


@pytest.mark.parametrize("override", ["training.max_steps=true", "model.head.hidden_units=yes", "loss.alpha=false",
                                      "model.head.read_layers=[true]",
                                      "loss.class_weights={ALLOW: true, REFUSE: 1, ESCALATE: 1}"])
def test_true_or_false_where_a_number_belongs_is_refused(tmp_path, override):
    """pydantic's lax mode read true as 1: max_steps: yes trained one step without a word."""
    with pytest.raises(ConfigError, match=rf"{override.split('=')[0]}: .*a number is needed here"):
        load_config(_write(tmp_path, ""), [override])
    assert load_config(_write(tmp_path, ""), ["training.max_steps=3", "model.lora.dropout=0"]).training.max_steps == 3
