"""Validation from the frozen-state cache decides what ``model.decide`` (test scoring, the runtime) decides, val
prompts longer than ``training.max_length`` included: the cache holds only their last ``max_length`` tokens, and
best/ selection and early stopping went by decisions on those cut prompts."""

from __future__ import annotations

import numpy as np
from test_train import QUICK, ROOT

from so8t_lib.core.config import load_config
from so8t_lib.data.tables import requests_and_contexts
from so8t_lib.train.state_cache import decide_from_states
from so8t_lib.train.trainer import Trainer

CACHED = ["training.freeze_below=2", "training.cache_frozen_states=true", "model.lora.modules_to_save=[]",
          "model.lora.layers=[2,3]", "model.gates.layers=[2,3]", "training.train_max_rows=16",
          "training.eval_max_rows=24", "training.max_length=112", "training.max_steps=1"]


def test_cached_validation_decides_whole_prompts_as_model_decide_does(tmp_path):
    config = load_config(ROOT / "configs" / "tiny-training.yaml",
                         [*QUICK, *CACHED, f"training.output_dir={tmp_path / 'run'}"])
    trainer = Trainer(config)
    try:
        rows, collate = trainer.val_rows, trainer.collate
        cut = [len(collate.prompt_ids(row)) > collate.max_length for row in rows]
        assert any(cut) and not all(cut)  # both kinds of row: cut ones decided whole, the others from the cache
        cached = decide_from_states(trainer.model, trainer.split, trainer.frozen, rows, collate, 8)
        whole = trainer.model.decide(*requests_and_contexts(rows), batch_size=8).numpy()
        assert np.allclose(cached, whole, atol=1e-5, rtol=0)
        assert (cached.argmax(-1) == whole.argmax(-1)).all()
    finally:
        trainer.release_lock()
