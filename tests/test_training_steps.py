"""One optimizer step: with gradient accumulation the gradient is that of the mean loss over the micro-batches, and
after ``freeze_safety_at`` the safety side (SafetyHeadB, its running statistics, R_safe) stays as it was."""

from __future__ import annotations

import pytest
import torch
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


def test_after_freeze_safety_at_the_safety_side_stays_as_it_was(tmp_path, monkeypatch):
    """The safety optimizer stopped at the freeze point, but SafetyHeadB's standardiser kept folding in batches (the
    decisions went on changing) and the frozen side's gradients still counted in the clipped norm."""
    trainer = _trainer(tmp_path, "frozen", "training.max_steps=4", "training.freeze_safety_at=0.5")
    model = trainer.model
    safety = [p for group in trainer.opt_safety.param_groups for p in group["params"]]

    def safety_side() -> dict[str, torch.Tensor]:
        head = {f"safety_head.{k}": v.clone() for k, v in model.safety_head.state_dict().items()}
        return {**head, **{n: p.detach().clone() for n, p in model.named_parameters() if ".r_safe." in n}}

    def lora() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}

    assert not any(trainer.train_step()["safety_frozen"] for _ in range(2))  # progress 0 and 0.25
    frozen_at, task_before = safety_side(), lora()
    real_clip, clipped = trainer.accelerator.clip_grad_norm_, []

    def clip(params, max_norm, *args, **kwargs):
        params = list(params)
        clipped.append((params, [p.grad for p in safety]))
        return real_clip(params, max_norm, *args, **kwargs)

    monkeypatch.setattr(trainer.accelerator, "clip_grad_norm_", clip)
    assert all(trainer.train_step()["safety_frozen"] for _ in range(2))  # progress 0.5 and 0.75
    after = safety_side()
    assert int(after["safety_head.standardizer.count"]) == 2  # two batches observed, both before the freeze
    for name, tensor in frozen_at.items():
        assert torch.equal(tensor, after[name]), name
    safety_ids = {id(p) for p in safety}
    for params, safety_grads in clipped:
        assert params and not {id(p) for p in params} & safety_ids  # the norm is the task side's alone
        assert all(grad is None for grad in safety_grads)
    assert any(not torch.equal(task_before[n], t) for n, t in lora().items())  # the task side goes on training
