"""What a resume continues from: an emergency save after an error inside a step describes the last finished step
(SafetyHeadB's running statistics included), and a resume refuses to go on under another base or other data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import ROOT, _config_file, _saved_step

from so8t_lib.core.checkpoint import CheckpointError
from so8t_lib.core.config import load_config
from so8t_lib.train.trainer import Trainer, TrainingDiverged

TINY = ROOT / "configs" / "tiny-training.yaml"
STATISTICS = ("safety_head.standardizer.mean", "safety_head.standardizer.sq_mean", "safety_head.standardizer.count")


def _adapter(run_dir: Path, folder: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / folder / "adapter.safetensors"))


def _assert_same_adapter(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.allclose(a[name].double(), b[name].double(), atol=1e-6,
                                                                 rtol=0), name


def test_an_error_in_backward_saves_the_finished_step_and_the_resume_equals_a_straight_run(tmp_path, monkeypatch):
    """The failed step's forward had folded its batch into the standardiser already: the save counted that batch,
    and the resume, which takes the batch again, counted it twice."""
    steps = "training.max_steps=4"
    straight = Trainer(load_config(_config_file(tmp_path, tmp_path / "straight", steps))).run()
    run_dir = tmp_path / "broken"
    config = load_config(_config_file(tmp_path, run_dir, steps))
    trainer = Trainer(config)
    real = trainer.accelerator.backward

    def backward(loss, **kwargs):
        if trainer.state.step == 2:  # inside step 3
            raise RuntimeError("simulated out of memory in backward")
        return real(loss, **kwargs)

    monkeypatch.setattr(trainer.accelerator, "backward", backward)
    with pytest.raises(RuntimeError, match="simulated out of memory"):
        trainer.run()
    assert _saved_step(run_dir) == 2 and int(_adapter(run_dir)["safety_head.standardizer.count"]) == 2
    Trainer(config, resume=True).run()
    resumed = _adapter(run_dir)
    assert int(resumed["safety_head.standardizer.count"]) == 4  # one observation per step, none twice
    _assert_same_adapter(_adapter(straight), resumed)


def test_an_overflow_inside_a_step_leaves_last_with_the_finished_steps_statistics(tmp_path):
    """A step that overflowed had put inf into the running statistics before the loss showed it: last/ then decided
    NaN for every request."""
    run_dir = tmp_path / "run"
    trainer = Trainer(load_config(_config_file(tmp_path, run_dir, "training.max_steps=4")))
    head = trainer.model.safety_head
    before = {}

    def overflow(module, args):
        if trainer.state.step == 2 and module.training:  # step 3
            before.update({k: v.clone() for k, v in module.state_dict().items() if k.startswith("standardizer.")})
            return (args[0] * float("inf"),)
        return None

    head.register_forward_pre_hook(overflow)
    with pytest.raises(TrainingDiverged, match="step 3"):
        trainer.run()
    saved = _adapter(run_dir)
    assert _saved_step(run_dir) == 2
    for name in STATISTICS:
        assert torch.isfinite(saved[name].double()).all(), name
        assert torch.equal(saved[name], before[name.removeprefix("safety_head.")]), name


def _local_base(folder: Path, seed: int) -> str:
    """A tiny base saved as a plain HF folder with a manifest, as a converted pretrained base is; its identity."""
    from so8t_lib.core.checkpoint import write_manifest
    from so8t_lib.model.base import build_tiny_base
    from so8t_lib.model.pretrained import base_identity

    shutil.rmtree(folder, ignore_errors=True)
    lm, tokenizer = build_tiny_base(load_config(TINY, [f"model.seed={seed}"]).model, None)
    lm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_manifest(folder)
    return base_identity(folder)


def test_a_resume_on_another_base_is_refused_naming_both_fingerprints(tmp_path):
    """The run folder records the base's fingerprint and SO8TModel.load checks it, but a resume went on training
    the saved adapters on whatever base model.base_model now held."""
    base = tmp_path / "base"
    started_on = _local_base(base, seed=0)
    config = load_config(_config_file(tmp_path, tmp_path / "run", "training.max_steps=2", "model.preset=hf",
                                      f"model.base_model={base}"))
    Trainer(config).run()
    swapped = _local_base(base, seed=1)
    assert swapped != started_on
    with pytest.raises(CheckpointError, match=f"another base.*identity {started_on[:12]} vs {swapped[:12]}.*model.base_model"):
        Trainer(config, resume=True)
    assert _local_base(base, seed=0) == started_on
    assert Trainer(config, resume=True).state.step == 2  # its own base: the resume goes on


def _data_folder(tmp_path: Path, train: list[str], val: list[str]) -> Path:
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    (folder / "train.jsonl").write_text("".join(line + "\n" for line in train), encoding="utf-8")
    (folder / "val.jsonl").write_text("".join(line + "\n" for line in val), encoding="utf-8")
    return folder


def _rewrite_trainer_state(run_dir: Path, change) -> None:
    """Edit last/trainer_state.pt as another version would have written it (the manifest follows)."""
    from so8t_lib.core.checkpoint import write_manifest

    file = run_dir / "last" / "trainer_state.pt"
    saved = torch.load(file, weights_only=False)
    change(saved)
    torch.save(saved, file)
    write_manifest(run_dir / "last")


def test_a_resume_on_changed_training_data_is_refused_and_an_older_state_file_is_read_or_named(tmp_path):
    """The data order is a function of (seed, epoch, index) over the training rows: with an edited train.jsonl
    the resumed steps trained other rows than the run would have, and nothing said so."""
    corpus = ROOT / "data" / "so8t_safety"
    train = (corpus / "train.jsonl").read_text(encoding="utf-8").splitlines()[:64]
    val = (corpus / "val.jsonl").read_text(encoding="utf-8").splitlines()[:30]
    folder = _data_folder(tmp_path, train, val)
    run_dir = tmp_path / "run"
    config = load_config(_config_file(tmp_path, run_dir, "training.max_steps=2", f"training.data_dir={folder}"))
    Trainer(config).run()
    edited = json.loads(train[5])
    edited["user_request"] += " Also, today."
    _data_folder(tmp_path, [*train[:5], json.dumps(edited), *train[6:]], val)
    with pytest.raises(CheckpointError, match=r"training rows changed since the run started \(the same 64 row ids, "
                                              r"other contents\).*start a new run in another training.output_dir"):
        Trainer(config, resume=True)
    _data_folder(tmp_path, train[:-1], val)
    with pytest.raises(CheckpointError, match=r"training rows changed .*\(64 rows then, 63 now\)"):
        Trainer(config, resume=True)
    _data_folder(tmp_path, train, val)
    assert Trainer(config, resume=True).state.step == 2  # the rows it started on: the resume goes on

    recorded = {}
    _rewrite_trainer_state(run_dir, lambda saved: recorded.update(saved.pop("data_fingerprint")))  # an older version's
    with pytest.warns(UserWarning, match="records no data fingerprint"):
        Trainer(config, resume=True)

    def newer(saved):
        saved.update(data_fingerprint=recorded)
        saved["state"]["warmup_done"] = True

    _rewrite_trainer_state(run_dir, newer)
    with pytest.raises(CheckpointError, match="trainer_state.pt: .*another version of so8t .*warmup_done"):
        Trainer(config, resume=True)


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["kind"] == "train"}


def _evals(run_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["value"]) for r in records if r["kind"] == "eval"]


@pytest.mark.parametrize("max_steps, failing", [(4, "evaluation"), (2, "evaluation"), (4, "best save"), (4, "log")])
def test_an_evaluation_that_failed_is_done_first_on_resume(tmp_path, monkeypatch, max_steps, failing):
    """An evaluation that failed after step k left last/ at k, and the resume went on at k + 1 without it: at
    k = max_steps the resumed run did nothing and ended without best/. And the state claimed a best step whose
    best/ had failed to save. An error between the step and its evaluation (step k's metrics.jsonl line) saved the
    evaluation as not pending, so the resume skipped it and chose another best/."""
    import so8t_lib.train.trainer as trainer_module

    overrides = (f"training.max_steps={max_steps}", "training.eval_every=2")
    straight = Trainer(load_config(_config_file(tmp_path, tmp_path / "straight", *overrides))).run()
    run_dir = tmp_path / "broken"
    config = load_config(_config_file(tmp_path, run_dir, *overrides))
    trainer = Trainer(config)
    real_metrics, real_save = trainer_module.val_metrics, trainer.save

    def metrics(*args, **kwargs):
        if trainer.state.step == 2:
            raise RuntimeError("out of memory while evaluating")
        return real_metrics(*args, **kwargs)

    def save(name, *args, **kwargs):
        if name == "best" and trainer.state.step == 2:
            raise OSError("no space left on the device while writing best/")
        return real_save(name, *args, **kwargs)

    def log(record):
        if record["kind"] == "train" and record["step"] == 2:
            raise OSError("no space left on the device while writing metrics.jsonl")
        return real_log(record)

    real_log = trainer.log
    if failing == "evaluation":
        monkeypatch.setattr(trainer_module, "val_metrics", metrics)
    elif failing == "log":
        monkeypatch.setattr(trainer, "log", log)
    else:
        monkeypatch.setattr(trainer, "save", save)
    with pytest.raises((RuntimeError, OSError), match="while"):
        trainer.run()
    saved = torch.load(run_dir / "last" / "trainer_state.pt", weights_only=False)["state"]
    assert saved["step"] == 2 and saved["eval_pending"] and saved["best_step"] is None
    assert not (run_dir / "best").exists()
    monkeypatch.undo()
    Trainer(config, resume=True).run()
    assert _evals(run_dir) == _evals(straight)  # step 2 evaluated once, before the resumed steps
    losses = {step: loss for step, loss in _losses(straight).items() if (failing, step) != ("log", 2)}
    assert _losses(run_dir) == losses  # the line that failed to be written is the one missing
    for folder in ("best", "last"):
        _assert_same_adapter(_adapter(straight, folder), _adapter(run_dir, folder))
    saved = torch.load(run_dir / "last" / "trainer_state.pt", weights_only=False)["state"]
    assert not saved["eval_pending"] and saved["step"] == max_steps and saved["best_step"] is not None


def test_a_finished_run_without_best_is_reported_not_claimed(tmp_path, monkeypatch, capsys):
    from so8t_lib.cli import main as so8t
    from so8t_lib.workbench import pipeline

    run_dir = tmp_path / "run"
    config = _config_file(tmp_path, run_dir, "training.max_steps=2")
    (run_dir / "last").mkdir(parents=True)
    assert pipeline.calibrate_run(run_dir, load_config(config)) is None
    assert "no best/ checkpoint" in capsys.readouterr().err  # said, not skipped in silence
    monkeypatch.setattr("so8t_lib.cli.train.train_and_calibrate", lambda cfg, resume=False: run_dir)
    with pytest.raises(SystemExit, match=f"{run_dir} holds no best checkpoint"):
        so8t(["train", "--config", str(config)])
    assert "best checkpoint: " not in capsys.readouterr().out
