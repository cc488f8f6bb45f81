"""A SafetyHeadB that pools its hidden layer over the prompt's tokens (``head.pooling: max``): against the HF
model's states computed by hand, the folded export, save/load, the split decoder and the frozen-state cache,
padding and batch order; its warm start learns a rule a mean cannot see."""

import json

import numpy as np
import pytest
import torch
from conftest import sample_batch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_model_families import FAMILIES, TEXTS, family_config

from so8t_lib.core.config import ModelConfig
from so8t_lib.model import SafetyHeadB, SO8TModel
from so8t_lib.model.perturb import perturb_adapters
from so8t_lib.model.so8t import position_ids_from_mask
from so8t_lib.train.head_init import fit_token_head, token_moments

MAX_HEAD = {"dropout": 0.0, "pooling": "max", "hidden_units": 16}


def max_model(arch: str, tokenizer, **head) -> SO8TModel:
    model = SO8TModel.from_config(family_config(arch, head={**MAX_HEAD, **head}, gates={"init_std": 0.05}),
                                  tokenizer).eval()
    perturb_adapters(model)
    with torch.no_grad():
        for p in model.safety_head.net.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.3)
    return model


def by_hand(head_state: dict, states: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """max over the kept tokens of GELU(W1 x + b1), then W2 h + b2: the folded weights, written out."""
    hidden = torch.nn.functional.gelu(states @ head_state["net.1.weight"].T + head_state["net.1.bias"],
                                      approximate="tanh")
    pooled = hidden.masked_fill(~keep[..., None], float("-inf")).amax(1)
    return pooled @ head_state["net.3.weight"].T + head_state["net.3.bias"]


def test_a_max_head_needs_a_hidden_layer():
    with pytest.raises(ValueError, match="hidden_units"):
        ModelConfig(head={"pooling": "max"})
    with pytest.raises(ValueError, match="hidden_units"):
        SafetyHeadB(8, hidden_units=0, pooling="max")
    with pytest.raises(ValueError, match="pooling"):
        SafetyHeadB(8, hidden_units=4, pooling="sum")


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("read_layers", [[], [4, 6]])
def test_the_folded_max_head_on_the_merged_models_states_gives_the_live_decision(arch, read_layers, tokenizer):
    model = max_model(arch, tokenizer, read_layers=read_layers)
    merged, head_state = model.merge_for_export()
    batch = sample_batch(tokenizer, TEXTS)
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        live = model(batch["input_ids"], batch["attention_mask"])
        states = merged.get_decoder()(**batch, output_hidden_states=True).hidden_states
        read = read_layers or [6]
        tokens = torch.cat([states[i] for i in read], -1)
        expected = by_hand(head_state, tokens, mask)
        rebuilt = SafetyHeadB.from_state_dict(head_state, pooling="max")
        assert torch.allclose(rebuilt(rebuilt.token_features(tokens, mask)), expected, atol=1e-5)
    assert torch.allclose(live.safety_logits, expected, atol=1e-4)
    assert live.pooled.shape == (3, 16) and model.decision_states(TEXTS).shape == (3, 16)
    assert model.decision_states([]).shape == (0, 16)


@pytest.mark.parametrize("arch", FAMILIES)
def test_save_load_split_and_left_padding_keep_the_max_heads_decisions(arch, tokenizer, tmp_path):
    model = max_model(arch, tokenizer, read_layers=[3, 6])
    model.save(tmp_path / "ckpt")
    again = SO8TModel.load(tmp_path / "ckpt")
    assert again.safety_head.pools_tokens
    assert torch.allclose(model.decide(TEXTS), again.decide(TEXTS), atol=1e-6)
    batch = sample_batch(tokenizer, TEXTS)
    left = sample_batch(tokenizer, TEXTS, padding_side="left")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    split = model.split(3)
    with torch.no_grad():
        full = model(ids, mask)
        part = model(ids, mask, states=split.below(ids, mask, position_ids_from_mask(mask)), split=split)
        padded_left = model(left["input_ids"], left["attention_mask"])
    assert torch.equal(full.safety_logits, part.safety_logits)
    assert torch.allclose(full.safety_logits, padded_left.safety_logits, atol=1e-4)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=6), st.integers(0, 5))
def test_token_features_ignore_padding_and_the_rest_of_the_batch(lengths, extra):
    """A row's decision state depends on its own prompt tokens only: not on pad positions (whatever they hold),
    nor on how long the batch is, nor on its neighbours."""
    torch.manual_seed(len(lengths) * 10 + extra)
    head = SafetyHeadB(5, hidden_units=7, dropout=0.0, pooling="max").eval()
    width = max(lengths) + extra
    tokens = torch.randn(len(lengths), width, 5) * 3
    keep = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    garbage = tokens.masked_fill(~keep[..., None], 1e6)
    together = head.token_features(garbage, keep)
    for i, n in enumerate(lengths):
        alone = head.token_features(tokens[i:i + 1, :n], keep[i:i + 1, :n])
        assert torch.allclose(together[i], alone[0], atol=1e-5)


def test_a_row_without_prompt_tokens_is_refused():
    head = SafetyHeadB(4, hidden_units=3, pooling="max")
    with pytest.raises(ValueError, match="at least one prompt token"):
        head.token_features(torch.zeros(2, 3, 4), torch.tensor([[1, 1, 0], [0, 0, 0]]))


def test_the_warm_start_learns_a_one_token_rule_that_a_mean_loses():
    """Label 1 iff one of the (up to 40) tokens carries a marker direction; the marker is a small share of the
    mean. The max head fits it; a linear model on the mean does much worse on the same rows."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    marker = rng.normal(size=16) * 2
    tokens, labels = [], []
    for i in range(400):
        n = int(rng.integers(10, 40))
        x = rng.normal(size=(n, 16))
        label = i % 2
        if label:
            x[rng.integers(n)] += marker
        tokens.append(torch.tensor(x, dtype=torch.float32))
        labels.append(label)
    labels = np.array(labels)
    head = SafetyHeadB(16, hidden_units=32, dropout=0.0, n_labels=2, pooling="max")
    train_accuracy = fit_token_head(head, tokens[:300], labels[:300], [1.0, 1.0], epochs=40, lr=3e-3)
    head.eval()
    with torch.no_grad():
        test = [head(head.token_features(t[None], torch.ones(1, len(t), dtype=torch.bool))).argmax(-1).item()
                for t in tokens[300:]]
    max_accuracy = float(np.mean(np.array(test) == labels[300:]))
    means = np.stack([t.mean(0).numpy() for t in tokens])
    mean_accuracy = LogisticRegression().fit(means[:300], labels[:300]).score(means[300:], labels[300:])
    assert train_accuracy > 0.9 and max_accuracy > 0.85, (train_accuracy, max_accuracy)
    assert max_accuracy > mean_accuracy + 0.1, (max_accuracy, mean_accuracy)


def test_a_max_head_trains_from_the_cache_after_a_warm_start_on_the_same_token_states(tmp_path, monkeypatch):
    """The CPU recipe with a max head: its warm start reads the prompt's token states (the same through the
    cache as without it), fits the head on them, and the steps that follow decide from the cache as decide()."""
    from test_model_families import _recipe

    from so8t_lib.train.head_init import prompt_token_states
    from so8t_lib.train.state_cache import decide_from_states
    from so8t_lib.train.trainer import Trainer

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    config = _recipe(tmp_path, "max", True)
    config.model.head.hidden_units, config.model.head.pooling, config.model.head.read_layers = 16, "max", [3, 6]
    config.training.head_warm_start, config.training.head_warm_start_epochs = True, 2
    untrained = Trainer(config.model_copy(update={"training": config.training.model_copy(
        update={"head_warm_start": False, "output_dir": str(tmp_path / "cold")})}))
    rows = untrained.train_rows[:12]
    plain = prompt_token_states(untrained.model, rows, untrained.collate, batch_size=5, progress=False)
    cached = prompt_token_states(untrained.model, rows, untrained.collate, batch_size=5, frozen=untrained.frozen,
                                 split=untrained.split, progress=False)
    assert [t.shape for t in plain] == [t.shape for t in cached] and all(t.shape[1] == 2 * 64 for t in plain)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(plain, cached))

    trainer = Trainer(config)
    cold_head = untrained.model.safety_head.net[1].weight
    assert not torch.allclose(trainer.model.safety_head.net[1].weight, cold_head), "the warm start fitted the head"
    assert "head_warm_start_s" in trainer.setup_seconds
    trainer.run()
    val = trainer.val_rows
    probs = trainer.model.decide([r["user_request"] for r in val], [r["context"] or None for r in val]).numpy()
    assert np.allclose(probs, decide_from_states(trainer.model, trainer.split, trainer.frozen, val, trainer.collate),
                       atol=1e-5)


@pytest.mark.parametrize("arch", FAMILIES)
def test_prompt_tokens_of_the_cached_layer_itself_skip_the_layers_above_and_equal_a_full_pass(arch, tokenizer):
    model = max_model(arch, tokenizer, read_layers=[3])
    batch = sample_batch(tokenizer, TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    positions = mask.sum(-1) - 1
    split = model.split(3)
    with torch.no_grad():
        full, keep = model.prompt_tokens(ids, mask, positions)
        cached, keep_cached = model.prompt_tokens(ids, mask, positions,
                                                  states=split.below(ids, mask, position_ids_from_mask(mask)),
                                                  split=split)
        logits = model(ids, mask).safety_logits
    assert torch.equal(keep, keep_cached) and torch.allclose(full, cached, atol=1e-5)
    head = model.safety_head
    with torch.no_grad():
        assert torch.allclose(head(head.token_features(cached, keep_cached)), logits, atol=1e-5)


@pytest.mark.parametrize("arch", FAMILIES)
@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_deciding_from_a_lower_read_layer_skips_the_layers_above_and_keeps_the_decision(arch, pooling, tokenizer):
    head = {"pooling": pooling, "hidden_units": 16 if pooling == "max" else 0, "read_layers": [2, 4]}
    model = max_model(arch, tokenizer, **head)  # LoRA and gates on every layer, the lower ones included
    batch = model.tokenizer([model.format_prompt(t) for t in TEXTS], return_tensors="pt", padding=True,
                            add_special_tokens=False)  # as decide() tokenizes
    with torch.no_grad():
        whole = model.safety_head.probabilities(model(batch["input_ids"], batch["attention_mask"]).safety_logits)
    ran = []
    hooks = [layer.register_forward_hook(lambda *_, i=i: ran.append(i)) for i, layer in enumerate(model.decoder_layers)]
    try:
        decided = model.decide(TEXTS)
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.allclose(decided, whole, atol=1e-5)
    assert sorted(set(ran)) == [0, 1, 2, 3]  # layers 4 and 5 feed nothing the head reads


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(1, 7), min_size=1, max_size=12), st.integers(1, 5))
def test_token_moments_chunked_equal_the_whole_concatenation(lengths, chunk_rows):
    """The warm start's standardiser statistics are summed a few rows at a time (memory); they must equal the
    moments of all the tokens at once."""
    generator = torch.Generator().manual_seed(sum(lengths))
    tokens = [torch.randn(n, 4, generator=generator) * 3 + 1 for n in lengths]
    mean, sq_mean = token_moments(tokens, chunk_rows=chunk_rows)
    every = torch.cat(tokens).double()
    torch.testing.assert_close(mean, every.mean(0))
    torch.testing.assert_close(sq_mean, every.square().mean(0))


def test_the_cache_keeps_the_shared_prefix_once_and_gives_back_whole_rows_cut_ones_included(tmp_path, monkeypatch):
    """Rows store only their tokens after the prefix every prompt shares; a row cut from the left (longer than
    max_length) shares nothing and keeps all of its own. Either way a batch of the cache is what the lower layers
    give for the whole rows."""
    from test_model_families import _recipe

    from so8t_lib.train.state_cache import FrozenStates
    from so8t_lib.train.trainer import Trainer

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    config = _recipe(tmp_path, "prefix-cache", False)
    config.training.max_length = 72  # the longest rows lose their start
    trainer = Trainer(config)
    model, collate, rows = trainer.model.eval(), trainer.collate, trainer.train_rows[:24]
    split = model.split(3)
    frozen = FrozenStates.build(model, split, rows, collate, batch_size=5, progress=False)
    encoded = [collate.encode(r)[0] for r in rows]
    shared = [frozen.stored[r["id"]][2] for r in rows]
    assert frozen.prefix_length > 10 and any(shared) and not all(shared), "some rows were cut from the left"
    assert frozen.states.shape[0] == frozen.prefix_length + sum(
        len(ids) - frozen.prefix_length * s for ids, s in zip(encoded, shared))
    batch = collate(rows)
    with torch.no_grad():
        whole = split.below(batch["input_ids"], batch["attention_mask"],
                            position_ids_from_mask(batch["attention_mask"]))
    cached = frozen.batch(rows, batch["input_ids"].shape[1])
    mask = batch["attention_mask"].bool()
    assert torch.allclose(cached[mask], whole[mask], atol=1e-5) and not cached[~mask].any()
    assert torch.equal(FrozenStates(frozen.folder).batch(rows[:3], 9), cached[:3, :9]), "reopened: the same"
    from so8t_lib.train.state_cache import CACHE_VERSION
    from so8t_lib.workbench.cache_inventory import inventory

    listed = {e.path: e for e in inventory()}[frozen.folder]  # what `so8t cache` says of it
    assert listed.status == "current" and "layers 0-2" in listed.detail and f"{len(rows)} rows" in listed.detail
    index = json.loads((frozen.folder / "index.json").read_text())
    assert index["version"] == CACHE_VERSION and index["base"] == model.config.preset


def test_the_warm_start_on_the_cached_layer_reads_the_prefix_once_and_fits_the_same_head(tmp_path, monkeypatch):
    """A max head that reads the cached layer warm-starts from the rows' own prompt tokens and the shared prefix's
    states once per batch: the same head and accuracy as fitting on every row's whole prompt."""
    import copy

    from test_model_families import _recipe

    from so8t_lib.core.schema import LABELS
    from so8t_lib.train.head_init import cached_prompt_tokens, prompt_token_states
    from so8t_lib.train.trainer import Trainer

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    config = _recipe(tmp_path, "prefix-warm", True)
    config.model.head.hidden_units, config.model.head.pooling, config.model.head.read_layers = 16, "max", [3]
    trainer = Trainer(config)
    model, rows = trainer.model, trainer.train_rows
    tokens, prefixed, prefix = cached_prompt_tokens(model, rows, trainer.collate, trainer.frozen)
    whole = prompt_token_states(model, rows, trainer.collate, 8, trainer.frozen, trainer.split, progress=False)
    assert prefixed.all() and len(prefix) == trainer.frozen.prefix_length
    assert all(torch.allclose(torch.cat([prefix, own]), full, atol=1e-6) for own, full in zip(tokens, whole))
    labels = np.array([LABELS.index(r["label"]) for r in rows])
    weights = config.loss.class_weight_list()
    heads = [copy.deepcopy(model.safety_head) for _ in range(2)]
    accuracies = [fit_token_head(heads[0], whole, labels, weights, epochs=3, progress=False),
                  fit_token_head(heads[1], tokens, labels, weights, epochs=3, progress=False, prefix=prefix,
                                 prefixed=prefixed)]
    assert accuracies[0] == accuracies[1]
    mean, _ = token_moments(whole)  # the warm start's statistics are the whole sample's, not the last batches'
    assert torch.allclose(heads[1].standardizer.mean, mean) and torch.allclose(heads[0].standardizer.mean, mean)
    for a, b in zip(heads[0].state_dict().values(), heads[1].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-4)


def test_token_moments_count_a_left_out_prefix_once_per_row_that_shares_it():
    rng = np.random.default_rng(3)
    prefix = torch.tensor(rng.normal(size=(4, 5)), dtype=torch.float32)
    own = [torch.tensor(rng.normal(size=(n, 5)), dtype=torch.float32) for n in (2, 7, 3)]
    mean, sq = token_moments(own, prefix=prefix, prefix_rows=2)
    every = torch.cat([prefix, own[0], prefix, own[1], own[2]]).double()
    assert torch.allclose(mean, every.mean(0)) and torch.allclose(sq, every.square().mean(0))


def test_the_warm_start_draws_its_batch_order_from_the_runs_seed(tmp_path, monkeypatch):
    """A seed sweep varies the warm start too (it is most of what a max head learns): the same training.seed gives
    the same head, another seed another head, with model.seed (the head's initial weights) held fixed."""
    from test_model_families import _recipe

    from so8t_lib.train.trainer import Trainer

    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    heads = []
    for run, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = _recipe(tmp_path, f"seed-{run}", True)
        config.model.head.hidden_units, config.model.head.pooling, config.model.head.read_layers = 16, "max", [3]
        config.training.head_warm_start, config.training.head_warm_start_epochs = True, 2
        config.training.seed, config.training.sample_seed = seed, 0
        heads.append(Trainer(config).model.safety_head.net[1].weight.detach().clone())
    assert torch.equal(heads[0], heads[1]) and not torch.allclose(heads[0], heads[2])


def test_the_key_value_cache_goes_by_the_keyword_the_installed_transformers_takes():
    """transformers renamed the decoder's ``past_key_values`` to ``cache``; the split asks the signature."""
    from so8t_lib.model.split import cache_argument

    class Newer(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, cache=None, use_cache=None):
            return input_ids

    class Older(torch.nn.Module):
        def forward(self, input_ids=None, attention_mask=None, past_key_values=None, use_cache=None):
            return input_ids

    assert cache_argument(Newer()) == "cache" and cache_argument(Older()) == "past_key_values"
