"""A tiny run's resume continues on the tokenizer and base saved in last/, not on those today's corpus and seed
would build: rebuilt from an edited corpus, the same text encodes to other ids than the ones the run trained on."""

from __future__ import annotations

import pytest
import torch
from test_train import _config_file

import so8t_lib.model.base as base_module
from so8t_lib.core.config import load_config
from so8t_lib.model.tokenizer import load_tokenizer, train_tokenizer
from so8t_lib.train.trainer import Trainer

TEXT = "How do I reset my password for the expense system?"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("run")
    config = load_config(_config_file(tmp_path, tmp_path / "run", "training.max_steps=2"))
    Trainer(config).run()
    return config, tmp_path / "run" / "last"


def test_a_resume_after_the_corpus_changed_keeps_the_runs_tokenizer(finished_run, monkeypatch):
    config, last = finished_run
    saved = load_tokenizer(last / "tokenizer")
    other = train_tokenizer(["an edited corpus " * 3, "with other merges and words"] * 50, vocab_size=400)
    monkeypatch.setattr(base_module, "tiny_tokenizer", lambda *args, **kwargs: other)
    resumed = Trainer(config, resume=True)
    assert resumed.state.step == 2
    assert resumed.model.tokenizer.get_vocab() == saved.get_vocab()
    assert resumed.model.tokenizer(TEXT)["input_ids"] == saved(TEXT)["input_ids"]
    assert resumed.collate.tokenizer.get_vocab() == saved.get_vocab()
    assert resumed.model.matches_saved_base(last / "base")


def test_a_resume_whose_seed_builds_another_base_takes_the_saved_one(finished_run, monkeypatch):
    """Another library version may initialise the seed's base differently (and a retraining run's base is its
    serving checkpoint's): the adapters go on training on the base they were fitted to."""
    config, last = finished_run
    real = base_module.build_tiny_base

    def shifted(cfg, tokenizer=None):
        lm, tok = real(cfg, tokenizer)
        with torch.no_grad():
            lm.get_input_embeddings().weight.add_(1.0)
        return lm, tok

    monkeypatch.setattr(base_module, "build_tiny_base", shifted)
    monkeypatch.setattr("so8t_lib.model.so8t.build_tiny_base", shifted)
    resumed = Trainer(config, resume=True)
    assert resumed.model.matches_saved_base(last / "base")
