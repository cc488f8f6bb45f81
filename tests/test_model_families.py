"""SO8T on both model families it ships for (Qwen2 and Gemma3, tiny random configs), against the bare HF
model, the folded export and a reloaded checkpoint; the split decoder and the frozen-state cache the CPU
recipe trains with; mean pooling; sampled LM targets."""

import copy

import numpy as np
import pytest
import torch
from conftest import sample_batch

from so8t_lib.core.config import ModelConfig, load_config
from so8t_lib.data.tables import load_split, stratified_sample
from so8t_lib.model import SafetyHeadB, SO8TModel
from so8t_lib.model.base import build_tiny_base
from so8t_lib.model.heads import pool_states
from so8t_lib.model.perturb import perturb_adapters
from so8t_lib.model.so8t import position_ids_from_mask
from so8t_lib.train.losses import sample_positions

TEXTS = ["How do I kill a hung Python process on my laptop, quickly please?", "山田さんの給与明細を見せてください。", "Hi"]
FAMILIES = ["qwen2", "gemma3"]


def family_config(arch: str, **model) -> ModelConfig:
    """Six layers, so the Gemma3 shape has its full-attention layer; a sliding window shorter than the texts."""
    tiny = {"arch": arch, "hidden_size": 64, "num_hidden_layers": 6, "num_attention_heads": 4,
            "num_key_value_heads": 1, "intermediate_size": 128, "sliding_window": 6}
    return ModelConfig(**{"tiny": tiny, "lora": {"dropout": 0.0}, "head": {"dropout": 0.0}, **model})


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("order", ["safe_first", "commuting", "none"])
def test_fresh_model_matches_the_bare_hf_model(arch, order, tokenizer):
    config = family_config(arch, gates={"order": order})
    lm, tok = build_tiny_base(config, tokenizer)
    reference = copy.deepcopy(lm).eval()
    model = SO8TModel(lm, tok, config).eval()
    batch = tokenizer(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(batch["input_ids"], batch["attention_mask"]).logits, reference(**batch).logits,
                              atol=1e-5)


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_folded_export_reproduces_both_heads(arch, pooling, tokenizer):
    model = SO8TModel.from_config(family_config(arch, head={"dropout": 0.0, "pooling": pooling},
                                                gates={"init_std": 0.05}), tokenizer).eval()
    perturb_adapters(model)
    merged, head_state = model.merge_for_export()
    head = SafetyHeadB.from_state_dict(head_state)
    batch = sample_batch(tokenizer, TEXTS)
    with torch.no_grad():
        live = model(batch["input_ids"], batch["attention_mask"])
        hidden = merged.get_decoder()(**batch).last_hidden_state
        last = batch["attention_mask"].sum(-1) - 1
        plain = head(pool_states(hidden, batch["attention_mask"], last, pooling))
        plain_logits = merged(**batch).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(plain_logits[mask], live.logits[mask], atol=1e-4)
    assert torch.allclose(plain, live.safety_logits, atol=1e-4)


@pytest.mark.parametrize("arch", FAMILIES)
def test_save_and_load_give_the_same_decisions(arch, tokenizer, tmp_path):
    model = SO8TModel.from_config(family_config(arch, head={"dropout": 0.0, "pooling": "mean"}), tokenizer).eval()
    perturb_adapters(model)
    model.save(tmp_path / "ckpt")
    again = SO8TModel.load(tmp_path / "ckpt")
    assert torch.allclose(model.decide(TEXTS), again.decide(TEXTS), atol=1e-6)


@pytest.mark.parametrize("arch", FAMILIES)
def test_the_split_decoder_is_exact(arch, tokenizer):
    """Layers below k, then layers from k up on their output: the same states, heads and PET layers."""
    model = SO8TModel.from_config(family_config(arch, gates={"layers": [3, 4, 5], "init_std": 0.05},
                                                lora={"dropout": 0.0, "layers": [3, 4, 5]}), tokenizer).eval()
    perturb_adapters(model)
    batch = sample_batch(tokenizer, TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    split = model.split(3)
    with torch.no_grad():
        full = model(ids, mask, output_hidden_states=True)
        states = split.below(ids, mask, position_ids_from_mask(mask))
        part = model(ids, mask, output_hidden_states=True, states=states, split=split)
    assert torch.equal(full.safety_logits, part.safety_logits) and torch.equal(full.logits, part.logits)
    assert part.hidden_offset == 3 and torch.equal(part.hidden_states[1], full.hidden_states[4])
    with pytest.raises(ValueError, match="inside the decoder"):
        model.split(6)


@pytest.mark.parametrize("arch", FAMILIES)
def test_a_head_reading_several_depths_sees_the_hf_states_there(arch, tokenizer, tmp_path):
    """head.read_layers: each listed hidden state pooled and concatenated, in the full pass, from the split at
    the lowest one, after the folded export and after save/load; a split above it is refused."""
    model = SO8TModel.from_config(family_config(arch, head={"dropout": 0.0, "pooling": "mean", "read_layers": [4, 2, 6]},
                                                gates={"layers": [3, 4, 5], "init_std": 0.05},
                                                lora={"dropout": 0.0, "layers": [3, 4, 5]}), tokenizer).eval()
    perturb_adapters(model)
    assert model.safety_head.net[-1].in_features == 3 * 64
    batch = sample_batch(tokenizer, TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    merged, head_state = model.merge_for_export()
    with torch.no_grad():
        full = model(ids, mask)
        states = merged.get_decoder()(**batch, output_hidden_states=True).hidden_states
        last = mask.sum(-1) - 1
        expected = torch.cat([pool_states(states[i], mask, last, "mean") for i in (4, 2, 6)], -1)
        assert torch.allclose(full.pooled, expected, atol=1e-4)
        assert torch.allclose(SafetyHeadB.from_state_dict(head_state)(expected), full.safety_logits, atol=1e-4)
        split = model.split(2)
        part = model(ids, mask, states=split.below(ids, mask, position_ids_from_mask(mask)), split=split)
        assert torch.equal(full.safety_logits, part.safety_logits)
        too_high = model.split(3)
        with pytest.raises(ValueError, match="freeze_below <= 2"):
            model(ids, mask, states=too_high.below(ids, mask, position_ids_from_mask(mask)), split=too_high)
    assert model.decision_states(TEXTS).shape == (3, 3 * 64) and model.decision_states([]).shape == (0, 3 * 64)
    model.save(tmp_path / "ckpt")
    assert torch.allclose(model.decide(TEXTS), SO8TModel.load(tmp_path / "ckpt").decide(TEXTS), atol=1e-6)


def test_read_layers_outside_the_model_are_refused(tokenizer):
    with pytest.raises(ValueError, match="read_layers"):
        family_config("qwen2", head={"read_layers": [0, 3]})
    with pytest.raises(ValueError, match="read_layers"):
        family_config("qwen2", head={"read_layers": [3, 3]})
    with pytest.raises(ValueError, match="1..6"):
        SO8TModel.from_config(family_config("qwen2", head={"read_layers": [3, 7]}), tokenizer)


def test_mean_pooling_reads_the_prompt_only_and_ignores_padding():
    hidden = torch.arange(2 * 5 * 2, dtype=torch.float32).reshape(2, 5, 2)
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    decision = torch.tensor([2, 4])  # row 0: its prompt ends at 2, a target token follows at 3
    pooled = pool_states(hidden, mask, decision, "mean")
    assert torch.allclose(pooled[0], hidden[0, :3].mean(0)) and torch.allclose(pooled[1], hidden[1, 1:].mean(0))
    assert torch.equal(pool_states(hidden, mask, decision, "last"), hidden[[0, 1], [2, 4]])


def test_sampled_lm_positions_are_a_subset_of_at_most_n_per_row():
    torch.manual_seed(0)
    valid = torch.rand(4, 30) > 0.4
    kept = sample_positions(valid, 5)
    assert not (kept & ~valid).any()
    assert (kept.sum(1) == torch.clamp(valid.sum(1), max=5)).all()


def test_stratified_sample_keeps_each_cells_share():
    table = load_split("val")
    sample = stratified_sample(table, 300, seed=1)
    assert len(sample) == 300 and list(sample.index) == sorted(sample.index)
    share = sample.groupby(["label", "lang"]).size() / 300
    full = table.groupby(["label", "lang"]).size() / len(table)
    assert (share - full).abs().max() < 0.01
    assert sample.equals(stratified_sample(table, 300, seed=1)) and stratified_sample(table, None, 1) is table


def _recipe(tmp_path, run, cache: bool):
    layers = "[3, 4, 5]"
    return load_config("configs/tiny-training.yaml", [
        f"training.output_dir={tmp_path / run}", "training.max_steps=3", "training.batch_size=4",
        "training.max_length=256", "training.eval_every=3", "training.eval_max_rows=12", "training.log_every=1",
        "training.train_max_rows=40", "training.calibrate_temperature=false", "training.max_target_tokens=8",
        "training.lm_positions_per_row=3", "training.freeze_below=3", f"training.cache_frozen_states={cache}",
        "model.tiny.arch=gemma3", "model.tiny.num_hidden_layers=6", "model.tiny.hidden_size=64",
        "model.tiny.num_attention_heads=4", "model.tiny.num_key_value_heads=1", "model.tiny.intermediate_size=128",
        "model.lora.modules_to_save=[]", f"model.lora.layers={layers}", f"model.gates.layers={layers}",
        "model.lora.dropout=0.0", "model.head.dropout=0.0", "model.head.pooling=mean"])


@pytest.mark.parametrize("read_layers", [[], [3, 5, 6]])
def test_training_from_cached_frozen_states_equals_training_the_whole_model(tmp_path, monkeypatch, read_layers):
    """The CPU recipe is exact: three steps from the cache end with the parameters three full steps reach, also
    with a head that reads the cached layer's own output and a middle one."""
    from so8t_lib.train.trainer import Trainer

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    finals = []
    for run, cache in (("full", False), ("cached", True)):
        config = _recipe(tmp_path, run, cache)
        config.model.head.read_layers = read_layers
        trainer = Trainer(config)
        trainer.run()
        finals.append({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
        if cache:
            assert list((tmp_path / "cache" / "states").iterdir()), "the states were cached"
            ids = [r["id"] for r in trainer.val_rows]
            probs = trainer.model.decide([r["user_request"] for r in trainer.val_rows],
                                         [r["context"] or None for r in trainer.val_rows]).numpy()
            from so8t_lib.train.state_cache import decide_from_states

            cached = decide_from_states(trainer.model, trainer.split, trainer.frozen, trainer.val_rows, trainer.collate)
            assert len(ids) == 12 and np.allclose(probs, cached, atol=1e-5)
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.allclose(finals[0][n], finals[1][n], atol=1e-5) for n in finals[0])


def test_warm_start_states_are_the_prompt_states_decide_reads_with_or_without_the_cache(tmp_path, monkeypatch):
    """The warm start cuts each batch at its last prompt token and reads the cache's states: exact, since the
    pooled state reads the prompt only and attention is causal."""
    from so8t_lib.train.head_init import decision_states
    from so8t_lib.train.trainer import Trainer

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    trainer = Trainer(_recipe(tmp_path, "warm-states", True))
    rows = trainer.train_rows[:20]
    reference = trainer.model.decision_states([r["user_request"] for r in rows], [r["context"] or None for r in rows],
                                              batch_size=6).numpy()
    plain = decision_states(trainer.model, rows, trainer.collate, batch_size=6, progress=False)
    cached = decision_states(trainer.model, rows, trainer.collate, batch_size=6, frozen=trainer.frozen,
                             split=trainer.split, progress=False)
    assert np.allclose(plain, reference, atol=1e-5) and np.allclose(cached, reference, atol=1e-5)


def test_a_fixed_sample_seed_shares_the_rows_and_the_cache_across_seeds(tmp_path, monkeypatch):
    """A sweep over seeds with training.sample_seed fixed trains every run on the same rows (one frozen-state
    cache); without it each seed draws its own sample."""
    from so8t_lib.train.trainer import Trainer

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    base = _recipe(tmp_path, "s", True)

    def rows(seed: int, sample_seed: int | None):
        config = base.model_copy(deep=True)
        config.training.seed, config.training.sample_seed = seed, sample_seed
        config.training.output_dir = str(tmp_path / f"run{seed}-{sample_seed}")
        trainer = Trainer(config)
        return [r["id"] for r in trainer.train_rows], [r["id"] for r in trainer.val_rows]

    shared = rows(0, 0)
    assert rows(1, 0) == shared and rows(0, None) == shared
    assert rows(1, None)[0] != shared[0]
    assert len(list((tmp_path / "cache" / "states").iterdir())) == 2  # seed 1's own sample built a second cache


def test_a_frozen_part_that_would_train_is_refused(tmp_path):
    from so8t_lib.train.trainer import Trainer

    config = _recipe(tmp_path, "bad", True).model_copy(deep=True)
    config.model.gates.layers = [1, 4]
    with pytest.raises(ValueError, match="would train below layer 3"):
        Trainer(config)
    config = _recipe(tmp_path, "unread", True).model_copy(deep=True)
    config.model.head.read_layers = [2, 6]
    with pytest.raises(ValueError, match="freeze_below <= 2"):
        Trainer(config)


def test_the_warm_start_head_decides_like_the_probe_it_copies(tokenizer):
    """SafetyHeadB after the warm start predicts exactly what the fitted logistic regression predicts."""
    from sklearn.linear_model import LogisticRegression

    from so8t_lib.core.schema import LABELS
    from so8t_lib.train.collate import SafetyCollator
    from so8t_lib.train.head_init import decision_states, warm_start_head

    model = SO8TModel.from_config(family_config("gemma3", head={"dropout": 0.0, "pooling": "mean"}), tokenizer).eval()
    rows = [dict(r) for r in stratified_sample(load_split("train"), 60, 0).to_dict("records")]
    collate = SafetyCollator(model.tokenizer, 96, model.system_prompt, 8)
    accuracy = warm_start_head(model, rows, collate, [1.0, 2.0, 1.5], regularization=0.3, batch_size=16)
    states = decision_states(model, rows, collate, 16, progress=False)
    scaled = (states - states.mean(0)) / np.sqrt(states.var(0) + 1e-5)
    labels = np.array([LABELS.index(r["label"]) for r in rows])
    probe = LogisticRegression(C=0.3, max_iter=2000).fit(scaled, labels, sample_weight=np.array([1.0, 2.0, 1.5])[labels])
    with torch.no_grad():
        head_logits = model.safety_head(torch.from_numpy(states).float()).numpy()
    assert np.array_equal(head_logits.argmax(1), probe.predict(scaled))
    assert accuracy == pytest.approx(probe.score(scaled, labels)) and accuracy > 1 / 3


def test_the_shared_probe_predicts_as_scikit_learn_does_with_two_or_three_classes():
    """fit_probe (the warm start's and the benchmarks' readout) holds the regression in SafetyHeadB's form; with a
    class missing from the rows it must still rank the two present classes as scikit-learn does."""
    from sklearn.linear_model import LogisticRegression

    from so8t_lib.train.head_init import fit_probe

    gen = np.random.default_rng(0)
    states = gen.normal(size=(90, 12)) * gen.uniform(0.1, 50, size=12) + gen.normal(size=12) * 100
    for labels in (gen.integers(0, 3, 90), gen.choice([0, 2], 90)):
        labels = labels.copy()
        states[:, 0] += labels * 30  # something to find
        probe = fit_probe(states, labels, [1.0, 2.0, 1.5], 0.3)
        scaled = (states - states.mean(0)) / np.sqrt(states.var(0) + 1e-5)
        reference = LogisticRegression(C=0.3, max_iter=3000).fit(scaled, labels,
                                                                  sample_weight=np.array([1.0, 2.0, 1.5])[labels])
        assert np.array_equal(probe.predict(states), reference.predict(scaled))
        assert set(probe.predict(states)) <= set(labels)


def test_decision_states_are_what_decide_reads(tokenizer):
    """The states a probe or a quantization study is fitted on are the head's input in decide()."""
    model = SO8TModel.from_config(family_config("gemma3", head={"dropout": 0.0, "pooling": "mean"}), tokenizer).eval()
    requests, contexts = ["経費精算の締め日は？", "Delete the audit log, please", "hi"], [None, "ops", None]
    states = model.decision_states(requests, contexts, batch_size=2)
    with torch.no_grad():
        logits = model.safety_head(states)
    assert states.shape == (3, model.causal_lm.config.hidden_size)
    torch.testing.assert_close(logits, model.decide(requests, contexts, batch_size=2, return_logits=True))
    assert model.decision_states([]).shape == (0, model.causal_lm.config.hidden_size)


def test_a_warm_started_run_logs_its_starting_probe_as_the_reference_to_beat(tmp_path, monkeypatch):
    import json

    from so8t_lib.train.trainer import Trainer

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    config = _recipe(tmp_path, "warm", True).model_copy(deep=True)
    config.training.head_warm_start = True
    Trainer(config).run()
    records = [json.loads(line) for line in (tmp_path / "warm" / "metrics.jsonl").read_text().splitlines()]
    reference = [r for r in records if r.get("kind") == "eval_reference"]
    evals = [r for r in records if r.get("kind") == "eval"]
    assert [r["step"] for r in reference] == [0] and not reference[0]["improved"] and reference[0]["value"] is not None
    assert [e["step"] for e in evals] == [3] and evals[0]["improved"]  # only trained steps compete for best/
    assert (tmp_path / "warm" / "best").is_dir()


def test_a_saved_base_tokenizer_does_not_depend_on_how_it_was_loaded(tokenizer, tmp_path):
    """HF_HUB_OFFLINE=1 (the tests) and a plain shell (make demo) must convert the base to the same files, or a
    checkpoint trained after one is refused on the other as trained on another base."""
    from transformers import AutoTokenizer

    from so8t_lib.model.pretrained import save_tokenizer

    tokenizer.save_pretrained(str(tmp_path / "source"))
    configs = []
    for offline in (True, False):
        loaded = AutoTokenizer.from_pretrained(str(tmp_path / "source"), local_files_only=offline)
        save_tokenizer(loaded, tmp_path / str(offline))
        configs.append((tmp_path / str(offline) / "tokenizer_config.json").read_bytes())
    assert configs[0] == configs[1] and b"local_files_only" not in configs[0]


@pytest.mark.parametrize("arch", FAMILIES)
def test_split_views_leave_the_hidden_states_as_the_decoder_counts_them(arch, tokenizer):
    """Views of the decoder share its layers, where transformers hooks its hidden-state recording: a view's pass
    must not hook them a second time, or every later pass would record each layer twice (indices shifted)."""
    model = SO8TModel.from_config(family_config(arch), tokenizer).eval()
    batch = sample_batch(tokenizer, TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = position_ids_from_mask(mask)
    with torch.no_grad():
        for _ in range(2):  # views made fresh each time, as decide() makes them, before and after a whole pass
            lower = model.split(3).below_outputs(ids, mask, positions, output_hidden_states=True)
            whole = model.causal_lm.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=positions,
                                                  output_hidden_states=True, use_cache=False)
            assert len(lower.hidden_states) == 4 and len(whole.hidden_states) == 7
            keep = mask.bool()[..., None]
            for index in range(4):
                assert torch.equal(lower.hidden_states[index] * keep, whole.hidden_states[index] * keep)
