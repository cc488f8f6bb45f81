"""One optimizer step: with gradient accumulation the gradient is that of the mean loss over the micro-batches, and
after ``freeze_safety_at`` the safety side (SafetyHeadB, its running statistics, R_safe) stays as it was."""

from __future__ import annotations

import pytest
from test_train import _config_file

import so8t_lib.train.trainer as trainer_module
from so8t_lib.core.config import load_config
from so8t_lib.train.trainer import Trainer


def _trainer(tmp_path, name: str, *overrides: str) -> Trainer:
    return Trainer(load_config(_config_file(tmp_path, tmp_path / name, *overrides)))


def test_with_grad_accum_the_gradient_is_that_of_the_logged_mean_loss(tmp_path, monkeypatch):
    """accelerate's backward divides by gradient_accumulation_steps itself; the trainer divided as well, so the
    gradient, the logged grad_norm and the clip threshold were off by that factor (16 in the 7B QLoRA config)."""
    k = 3
    overrides = (f"training.grad_accum={k}", "training.max_steps=2")
    real_loss, totals = trainer_module.composite_loss, []

    def recording(*args, **kwargs):
        parts = real_loss(*args, **kwargs)
        totals.append(parts.total)
        return parts

    monkeypatch.setattr(trainer_module, "composite_loss", recording)
    measured = _trainer(tmp_path, "accelerate", *overrides).train_step()
    reference = _trainer(tmp_path, "plain", *overrides)
    # the reference: plain autograd on each micro-batch's share of the mean loss, whatever the trainer passes
    monkeypatch.setattr(reference.accelerator, "backward", lambda loss, **kwargs: (totals[-1] / k).backward())
    expected = reference.train_step()
    assert len(totals) == 2 * k
    assert measured["loss"] == expected["loss"]  # the same rows and forward
    assert measured["grad_norm"] == pytest.approx(expected["grad_norm"], rel=1e-5)
