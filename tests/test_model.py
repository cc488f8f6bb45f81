"""SO8TModel against its references: the bare HF model, the folded export, a reloaded checkpoint."""

import copy

import pytest
import torch
from conftest import sample_batch

from so8t_lib.core.checkpoint import CheckpointError
from so8t_lib.core.config import ConfigError, LossConfig, ModelConfig
from so8t_lib.model import SafetyHeadB, SO8TModel
from so8t_lib.model.base import build_tiny_base
from so8t_lib.model.perturb import perturb_adapters
from so8t_lib.train.losses import composite_loss

TEXTS = ["How do I kill a hung Python process?", "山田さんの給与明細を見せてください。", "Hi"]


def _wrap_with_reference(config, tokenizer):
    lm, tok = build_tiny_base(config, tokenizer)
    reference = copy.deepcopy(lm).eval()
    return SO8TModel(lm, tok, config).eval(), reference


@pytest.mark.parametrize("order", ["safe_first", "cmd_first", "commuting", "none"])
def test_fresh_model_matches_bare_hf_model(order, tiny_config, tokenizer):
    config = tiny_config.model_copy(update={"gates": tiny_config.gates.model_copy(update={"order": order})})
    model, reference = _wrap_with_reference(config, tokenizer)
    batch = tokenizer(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"]).logits
        theirs = reference(**batch).logits
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert len(model.gate_pairs()) == (0 if order == "none" else config.tiny.num_hidden_layers)


def test_merge_for_export_reproduces_both_heads(tiny_config, tokenizer):
    model = SO8TModel.from_config(tiny_config, tokenizer).eval()
    perturb_adapters(model)
    merged, head_state = model.merge_for_export()
    head = SafetyHeadB.from_state_dict(head_state)
    batch = sample_batch(tokenizer, TEXTS)
    with torch.no_grad():
        live = model(batch["input_ids"], batch["attention_mask"])
        assert "lora_" not in str(dict(merged.named_modules()).keys())
        plain_logits = merged(**batch).logits
        hidden = merged.get_decoder()(**batch).last_hidden_state
        last = batch["attention_mask"].sum(-1) - 1
        plain_safety = head(hidden[torch.arange(len(TEXTS)), last])
    mask = batch["attention_mask"].bool()
    assert torch.allclose(plain_logits[mask], live.logits[mask], atol=1e-4)
    assert torch.allclose(plain_safety, live.safety_logits, atol=1e-4)
    # the live model is untouched: still gated, still with LoRA
    assert len(model.gate_pairs()) == tiny_config.tiny.num_hidden_layers


def test_one_backward_reaches_every_trainable_part(tiny_config, tokenizer):
    model = SO8TModel.from_config(tiny_config, tokenizer).train()
    perturb_adapters(model)  # LoRA B starts at zero, which would zero the gradient of A
    batch = sample_batch(tokenizer, TEXTS)
    lm_labels = batch["input_ids"].clone()
    lm_labels[:, :2] = -100
    lm_labels[batch["attention_mask"] == 0] = -100
    safety_labels = torch.tensor([0, 1, 2])
    out = model(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
    parts = composite_loss(out, lm_labels, safety_labels, batch["attention_mask"], LossConfig(), progress=0.9)
    parts.total.backward()
    groups = model.named_parameter_groups()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert {n for n, _ in trainable} == {n for g in groups.values() for n, _ in g}
    for name, param in trainable:
        assert param.grad is not None and param.grad.abs().sum() > 0, f"no gradient reaches {name}"
        if name.endswith("theta"):  # every 8-dim block of every gate gets a gradient
            assert (param.grad.abs().sum(-1) > 0).all(), f"a block of {name} gets no gradient"
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)


def test_parameter_groups_partition_the_trainable_parameters(tiny_config, tokenizer):
    model = SO8TModel.from_config(tiny_config, tokenizer)
    groups = model.named_parameter_groups()
    task, safety = {n for n, _ in groups["task"]}, {n for n, _ in groups["safety"]}
    assert task and safety and not task & safety
    assert all("lora_" in n or ".r_cmd." in n or ".modules_to_save." in n for n in task)
    assert any(".modules_to_save." in n for n in task)  # the tiny preset's trained embeddings
    assert all(".r_safe." in n or n.startswith("safety_head.") for n in safety)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == task | safety


def test_padding_side_does_not_change_the_decision(tiny_config, tokenizer):
    model = SO8TModel.from_config(tiny_config, tokenizer).eval()
    perturb_adapters(model)
    with torch.no_grad():
        alone = torch.cat([model(**tokenizer([t], return_tensors="pt")).safety_logits for t in TEXTS])
        for side in ("right", "left"):
            batch = sample_batch(tokenizer, TEXTS, padding_side=side)
            padded = model(batch["input_ids"], batch["attention_mask"]).safety_logits
            assert torch.allclose(padded, alone, atol=1e-5), side


def test_save_load_round_trip(tmp_path, tiny_config, tokenizer):
    model = SO8TModel.from_config(tiny_config, tokenizer).eval()
    perturb_adapters(model)
    with torch.no_grad():
        model.safety_head.temperature.fill_(1.7)
    path = model.save(tmp_path / "ckpt")
    loaded = SO8TModel.load(path)
    batch = sample_batch(tokenizer, TEXTS)
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.safety_logits, b.safety_logits)
    assert float(loaded.safety_head.temperature) == pytest.approx(1.7)
    assert loaded.tokenizer("テスト test")["input_ids"] == tokenizer("テスト test")["input_ids"]


def test_saving_again_replaces_the_checkpoint_whole(tmp_path, tiny_config, tokenizer):
    model = SO8TModel.from_config(tiny_config, tokenizer)
    path = model.save(tmp_path / "ckpt")
    perturb_adapters(model, seed=9)
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folders left behind
    reloaded = SO8TModel.load(path)
    for name, tensor in model.adapter_state_dict().items():
        assert torch.equal(reloaded.adapter_state_dict()[name], tensor)


def test_damaged_checkpoints_fail_clearly(tmp_path, tiny_config, tokenizer):
    path = SO8TModel.from_config(tiny_config, tokenizer).save(tmp_path / "ckpt")
    adapter = path / "adapter.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="adapter.safetensors"):
        SO8TModel.load(path)
    with pytest.raises(CheckpointError, match="nowhere: no such folder; name a checkpoint"):
        SO8TModel.load(tmp_path / "nowhere")  # said 'nowhere/so8t_model.yaml: missing', as if the folder were there
    with pytest.raises(CheckpointError, match="adapter.safetensors: a file, not a checkpoint folder"):
        SO8TModel.load(adapter)  # a file inside one (or a GGUF file) is not "no such folder"
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an SO8T checkpoint"):
        SO8TModel.load(tmp_path / "empty")


def test_adapter_from_another_config_is_rejected(tmp_path, tiny_config, tokenizer):
    path = SO8TModel.from_config(tiny_config, tokenizer).save(tmp_path / "ckpt")
    other_config = ModelConfig.model_validate({**tiny_config.model_dump(), "head": {"hidden_units": 16}})
    other = SO8TModel.from_config(other_config, tokenizer)
    with pytest.raises(CheckpointError, match="does not match"):
        other.load_adapter(path / "adapter.safetensors")


def test_pretrained_preset_loads_from_a_local_folder(tmp_path, tiny_config, tokenizer):
    """The real path (from_pretrained by id or folder) exercised on a tiny model saved locally."""
    path = SO8TModel.from_config(tiny_config, tokenizer).save(tmp_path / "ckpt")
    tokenizer.save_pretrained(str(path / "base"))  # a downloaded model folder has both
    config = ModelConfig(preset="qwen2.5-0.5b", base_model=str(path / "base"), load_in_4bit=False,
                         lora={"dropout": 0.0}, head={"dropout": 0.0})
    model = SO8TModel.from_config(config)
    probs = model.decide(["経費精算の締め日はいつですか？"])
    assert probs.shape == (1, 3) and torch.allclose(probs.sum(-1), torch.ones(1))


def test_missing_hub_model_gives_an_actionable_error(tmp_path):
    config = ModelConfig(preset="hf", base_model=str(tmp_path / "no-such-model"), load_in_4bit=False)
    with pytest.raises(CheckpointError, match="local folder"):
        SO8TModel.from_config(config)


def test_model_folder_without_tokenizer_is_reported(tmp_path, tiny_config, tokenizer):
    path = SO8TModel.from_config(tiny_config, tokenizer).save(tmp_path / "ckpt")
    config = ModelConfig(preset="hf", base_model=str(path / "base"), load_in_4bit=False)
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        SO8TModel.from_config(config)


def test_gated_layer_selection(tokenizer):
    config = ModelConfig(gates={"layers": [-1, 0]})
    model = SO8TModel.from_config(config, tokenizer)
    assert model.gated_layers == [0, config.tiny.num_hidden_layers - 1]
    with pytest.raises(ConfigError, match="layer 7 does not exist"):
        SO8TModel.from_config(ModelConfig(gates={"layers": [7]}), tokenizer)


def test_saving_does_not_consume_the_global_rng(tmp_path, tiny_config, tokenizer):
    model = SO8TModel.from_config(tiny_config, tokenizer)
    torch.manual_seed(123)
    model.save(tmp_path / "ckpt")
    after_save = torch.rand(3)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), after_save)


def test_running_standardizer_tracks_batch_statistics_and_works_at_batch_one():
    from so8t_lib.model import RunningStandardizer

    torch.manual_seed(0)
    data = torch.randn(4000, 8) * torch.arange(1, 9) + 5.0
    norm = RunningStandardizer(8, momentum=0.0)  # pure cumulative average: the exact mean and variance
    for row in data:  # batch size 1, as QLoRA trains the 7B model
        norm(row[None])
    assert torch.allclose(norm.mean.float(), data.mean(0), atol=1e-3)
    assert torch.allclose(norm.scale().float(), data.var(0, unbiased=False).rsqrt(), rtol=1e-3)
    out = norm.eval()(data)
    assert torch.allclose(out.mean(0), torch.zeros(8), atol=1e-3)
    assert torch.allclose(out.std(0, unbiased=False), torch.ones(8), atol=1e-3)
    frozen = norm.mean.clone()
    norm(data[:10] + 100)  # eval mode never updates the statistics
    assert torch.equal(norm.mean, frozen)


def test_running_standardizer_keeps_precision_for_large_mean_small_spread():
    from so8t_lib.model import RunningStandardizer

    torch.manual_seed(0)
    data = torch.randn(2000, 4) * 0.05 + 300.0
    norm = RunningStandardizer(4, momentum=0.0)
    for chunk in data.split(16):
        norm(chunk)
    assert torch.allclose(norm.scale().float(), torch.full((4,), 20.0), rtol=0.05)


@pytest.mark.parametrize("hidden_units", [0, 16])
def test_head_fold_matches_standardized_head(hidden_units):
    torch.manual_seed(0)
    head = SafetyHeadB(32, hidden_units=hidden_units, dropout=0.0)
    head.train()
    for _ in range(20):
        head(torch.randn(6, 32) * 3 + 2)
    head.eval()
    plain = SafetyHeadB.from_state_dict(head.folded_state_dict())
    assert plain.standardizer is None
    x = torch.randn(10, 32) * 3 + 2
    assert torch.allclose(plain(x), head(x), atol=1e-5)


def test_tiny_4bit_on_cpu_trains_saves_and_reloads(tiny_config, tokenizer, tmp_path):
    pytest.importorskip("bitsandbytes")
    config = tiny_config.model_copy(update={"load_in_4bit": True})
    model = SO8TModel.from_config(config, tokenizer)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    batch = sample_batch(tokenizer, TEXTS)
    model.eval()
    with torch.no_grad():  # an eval forward first: the AVX512-BF16 path used to break training after it
        model(batch["input_ids"], batch["attention_mask"])
    model.train()
    out = model(batch["input_ids"], batch["attention_mask"])
    (out.logits.float().square().mean() + out.safety_logits.square().mean()).backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    perturb_adapters(model)
    model.eval()
    with torch.no_grad():
        live = model(batch["input_ids"], batch["attention_mask"])
    model.save(tmp_path / "ckpt")
    mask = batch["attention_mask"].bool()
    reloaded = SO8TModel.load(tmp_path / "ckpt")  # base/ holds the dequantized weights; nf4 again on load
    assert any(type(m).__name__ == "Linear4bit" for m in reloaded.modules())
    full = SO8TModel.load(tmp_path / "ckpt", load_in_4bit=False)  # the same weights in fp32: the export path
    with torch.no_grad():
        for other in (reloaded, full):
            again = other(batch["input_ids"], batch["attention_mask"])
            assert torch.allclose(again.logits[mask], live.logits[mask], atol=1e-3)
            assert torch.allclose(again.safety_logits, live.safety_logits, atol=1e-3)
    merged, _ = full.merge_for_export()
    with pytest.raises(RuntimeError, match="4-bit"):
        reloaded.merge_for_export()


def test_gradient_checkpointing_gives_the_same_gradients(tiny_config, tokenizer):
    batch = sample_batch(tokenizer, TEXTS)
    grads = []
    for checkpointing in (False, True):
        model = SO8TModel.from_config(tiny_config, tokenizer).train()
        perturb_adapters(model)
        if checkpointing:
            model.enable_gradient_checkpointing()
            assert all(layer.gradient_checkpointing for layer in model.decoder_layers)  # engaged per layer
        out = model(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
        (out.logits.square().mean() + out.safety_logits.square().sum() + out.hidden_states[-2].square().mean()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


@pytest.mark.parametrize("arch", ["qwen2", "gemma3"])
def test_a_tiny_base_built_in_bfloat16_is_the_model_its_checkpoint_loads(tmp_path, tokenizer, arch):
    """Casting the built model cast its rotary frequency tables to bf16 too; from_pretrained keeps them float32,
    so the model a run trained decided otherwise than its checkpoint."""
    tiny = {"arch": arch, "num_hidden_layers": 6 if arch == "gemma3" else 2, "hidden_size": 64,
            "intermediate_size": 128, "num_key_value_heads": 1 if arch == "gemma3" else 2}
    config = ModelConfig(dtype="bfloat16", tiny=tiny, lora={"dropout": 0.0}, head={"dropout": 0.0})
    model = SO8TModel.from_config(config, tokenizer).eval()
    perturb_adapters(model)
    loaded = SO8TModel.load(model.save(tmp_path / "ckpt"))
    built, saved = dict(model.causal_lm.named_buffers()), dict(loaded.causal_lm.named_buffers())
    assert {name: b.dtype for name, b in built.items()} == {name: b.dtype for name, b in saved.items()}
    assert all(b.dtype == torch.float32 for name, b in built.items() if "inv_freq" in name)
    batch = sample_batch(tokenizer, [" ".join(TEXTS * 8)])
    with torch.no_grad():
        a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.safety_logits, b.safety_logits)
