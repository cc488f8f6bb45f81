"""Training runs that must end in a state a person can act on: a signal to one process of two (both stop after the
same step, last/ saved), a resume under another process count (refused), a resumed retraining run (bit for bit the
uninterrupted one), a diverged model (never scored nor saved as best/), an early-stopping metric the val rows cannot
measure (refused before the first step), a damaged frozen-state cache (rebuilt), a retraining row that contradicts
the corpus but for a "?" (dropped by preprocess), an empty config.yaml (refused), and so8t train's errors (one line,
no traceback)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_train import ROOT, _config_file, _saved_step

from so8t_lib.cli import main as so8t
from so8t_lib.core.checkpoint import CheckpointError
from so8t_lib.core.config import ConfigError, load_config
from so8t_lib.core.paths import CORPUS_DIR
from so8t_lib.train.resume import check_same_world
from so8t_lib.train.state_cache import INDEX_FILE, STATES_FILE, STATES_SHA256, FrozenStates
from so8t_lib.train.trainer import Trainer, TrainingDiverged
from so8t_lib.workbench import retrain
from so8t_lib.workbench.pipeline import config_of_run

SMALL = ["model.tiny.num_hidden_layers=2", "model.tiny.hidden_size=64", "model.tiny.intermediate_size=128",
         "model.tiny.num_attention_heads=2", "model.tiny.num_key_value_heads=1", "training.train_max_rows=64",
         "training.max_length=64", "training.calibrate_temperature=false"]


def _small(tmp_path: Path, run_dir: Path, *overrides: str) -> Path:
    return _config_file(tmp_path, run_dir, *SMALL, *overrides)


def _val_without_refuse(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for split in ("train", "test"):
        (folder / f"{split}.jsonl").write_text((CORPUS_DIR / f"{split}.jsonl").read_text(encoding="utf-8"))
    val = [line for line in (CORPUS_DIR / "val.jsonl").read_text(encoding="utf-8").splitlines()
           if json.loads(line)["label"] != "REFUSE"]
    (folder / "val.jsonl").write_text("\n".join(val[:40]) + "\n")
    return folder


def test_a_signal_to_one_of_two_processes_stops_both_after_the_same_step_and_saves_last(tmp_path):
    """torchrun delivers SIGTERM to each worker at its own moment: a worker that stopped alone waited at the save's
    barrier while the other trained on, until torchrun SIGKILLed both with no last/ written. The signal here reaches
    one worker only, the hardest case; then that last/ refuses a resume on one process (its data position counts
    batches of two processes' rows)."""
    run_dir = tmp_path / "ddp"
    config = _small(tmp_path, run_dir, "training.max_steps=400")
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             "29561", "-m", "so8t_lib.train", "--config", str(config)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    workers: list[str] = []
    try:
        deadline = time.monotonic() + 240
        while '"step": 2,' not in ((run_dir / "metrics.jsonl").read_text() if (run_dir / "metrics.jsonl").exists()
                                   else ""):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        os.kill(int(workers[-1]), signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)  # a deadlock waits here for gloo's 30-minute timeout
    finally:
        if proc.poll() is None:  # torchrun starts its workers in sessions of their own: each is killed by its id
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert out.count(f"stopped by signal {int(signal.SIGTERM)} at step") == 2, out  # both ranks, at the same step
    steps = set(re.findall(r"stopped by signal \d+ at step (\d+)", out))
    assert len(steps) == 1 and _saved_step(run_dir) == int(steps.pop()) >= 2, out
    with pytest.raises(CheckpointError, match="trained on 2 process.*this resume runs on 1.*Resume on 2 process"):
        Trainer(load_config(config), resume=True)


def test_a_state_saved_before_the_process_count_was_recorded_is_resumed_with_a_note(tmp_path):
    with pytest.warns(UserWarning, match="records no process count"):
        check_same_world(None, 1, tmp_path / "last")
    check_same_world(1, 1, tmp_path / "last")


def test_a_resumed_retraining_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path, monkeypatch):
    """ContinuedTrainer loaded the serving checkpoint after the resume had restored the RNG states, and loading
    draws from them: the resumed steps drew other dropout masks (loss 1.0621 instead of 1.0107 at step 4)."""
    serving = Trainer(load_config(_small(tmp_path, tmp_path / "serving", "training.max_steps=2"))).run()

    def config(name: str):
        return retrain.retrain_config(ROOT / "configs" / "tiny-training.yaml", serving, CORPUS_DIR, tmp_path / name,
                                      [*SMALL, "training.batch_size=4", "training.eval_every=1000",
                                       "training.eval_max_rows=16", "training.log_every=1", "training.max_steps=6",
                                       "training.save_every_steps=3"])

    straight = retrain.train_from_serving(config("straight"), serving)
    broken = retrain.ContinuedTrainer(config("broken"), serving)
    real = broken.train_step

    def killed():
        if broken.state.step == 3:  # after the autosave at step 3, as a SIGKILL would leave it
            raise RuntimeError("killed")
        return real()

    monkeypatch.setattr(broken, "train_step", killed)
    monkeypatch.setattr("so8t_lib.workbench.retrain.train.ContinuedTrainer", lambda *a, **k: broken)
    with pytest.raises(RuntimeError, match="killed"):
        retrain.train_from_serving(config("broken"), serving)
    monkeypatch.undo()
    assert _saved_step(tmp_path / "broken") == 3
    resumed = retrain.train_from_serving(config("broken"), serving, resume=True)
    a, b = load_file(straight / "last" / "adapter.safetensors"), load_file(resumed / "last" / "adapter.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def losses(run):
        return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r["kind"] == "train"]

    assert losses(straight) == losses(resumed)


def test_a_diverged_model_is_neither_scored_nor_saved_as_best(tmp_path):
    """At lr 1e30 the first update leaves the decisions NaN; their argmax read as ALLOW, scored, and became best/."""
    run_dir = tmp_path / "run"
    config = load_config(_small(tmp_path, run_dir, "training.max_steps=3", "training.eval_every=1",
                                "training.task_optimizer.lr=1e30", "training.safety_optimizer.lr=1e30"))
    with pytest.raises(TrainingDiverged, match="not finite numbers: the run diverged"):
        Trainer(config).run()
    assert not (run_dir / "best").exists() and not (run_dir / "last").exists()
    assert '"eval"' not in (run_dir / "metrics.jsonl").read_text()


@pytest.mark.parametrize("metric", ["refuse_recall", "safety_score"])
def test_an_early_stopping_metric_the_val_rows_cannot_measure_is_refused_before_the_first_step(tmp_path, metric):
    folder = _val_without_refuse(tmp_path)
    run_dir = tmp_path / "run"
    config = load_config(_small(tmp_path, run_dir, "training.max_steps=4", "training.eval_every=2",
                                f"training.data_dir={folder}", f"training.early_stopping.metric={metric}"))
    with pytest.raises(ConfigError, match=f"{metric} cannot be measured on the 16 val rows.*needs gold REFUSE rows"):
        Trainer(config)
    assert not run_dir.exists()  # nothing to resume, nothing in the way of a corrected run (the lock's folder gone)
    Trainer(load_config(_small(tmp_path, run_dir, f"training.data_dir={folder}",
                               "training.early_stopping.metric=macro_f1")))


def test_a_frozen_state_cache_damaged_at_its_size_is_rebuilt_and_an_older_one_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    frozen = ["model.lora.layers=[1]", "model.gates.layers=[1]", "model.lora.modules_to_save=[]",
              "training.freeze_below=1", "training.cache_frozen_states=true"]
    trainer = Trainer(load_config(_small(tmp_path, tmp_path / "run", *frozen)))
    folder, reference = trainer.frozen.folder, np.array(trainer.frozen.states)
    assert json.loads((folder / INDEX_FILE).read_text())[STATES_SHA256]

    def build():
        return FrozenStates.build(trainer.model, trainer.split, trainer.train_rows + trainer.val_rows, trainer.collate,
                                  16, progress=False)

    data = bytearray((folder / STATES_FILE).read_bytes())
    data[len(data) // 2:] = b"\0" * (len(data) - len(data) // 2)  # same size: the row count still matches
    (folder / STATES_FILE).write_bytes(bytes(data))
    assert np.array_equal(np.array(build().states), reference)
    assert "does not match the sha256 its index recorded" in capsys.readouterr().out
    index = json.loads((folder / INDEX_FILE).read_text())
    del index[STATES_SHA256]  # written before the hash was recorded: kept, not rebuilt, its hash recorded
    (folder / INDEX_FILE).write_text(json.dumps(index))
    inode = (folder / STATES_FILE).stat().st_ino
    os.utime(folder / STATES_FILE)  # as another process would find it: not yet hashed
    assert np.array_equal(np.array(build().states), reference)
    assert (folder / STATES_FILE).stat().st_ino == inode and "building it again" not in capsys.readouterr().out
    assert STATES_SHA256 in json.loads((folder / INDEX_FILE).read_text())


def test_preprocess_drops_a_row_that_contradicts_the_corpus_but_for_a_question_mark(tmp_path):
    row = json.loads((CORPUS_DIR / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert row["label"] != "ALLOW" and row["user_request"].endswith("?")
    new = {"id": "ops-req-1", "request_id": "req-1", "context": row["context"], "label": "ALLOW",
           "user_request": row["user_request"].rstrip("?"), "category": row["category"], "lang": row["lang"],
           "origin": "review"}
    (tmp_path / "extra.jsonl").write_text(json.dumps(new) + "\n")
    report = retrain.preprocess(tmp_path / "extra.jsonl", tmp_path / "data", benchmarks_dir=None)
    assert report["dropped"]["contradicts_corpus"] == ["ops-req-1"] and report["kept"] == 0


def test_an_empty_or_listed_config_yaml_of_a_run_is_refused(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for text, says in (("", "empty"), ("- 1\n", "not a mapping of settings \\(list\\)"),
                       ("a: [\n", "unreadable")):
        (run_dir / "config.yaml").write_text(text)
        with pytest.raises(CheckpointError, match=f"config.yaml is {says}.*Delete it and resume"):
            config_of_run(run_dir)
    with pytest.raises(SystemExit, match="^error: .*config.yaml is unreadable"):
        so8t(["train", "--config", str(_small(tmp_path, run_dir)), "--resume"])
    (run_dir / "last").mkdir()
    (run_dir / "config.yaml").write_text("")  # named itself: it would load as all defaults, another run folder
    with pytest.raises(SystemExit, match="^error: .*config.yaml is empty"):
        so8t(["train", "--config", str(run_dir / "config.yaml"), "--resume"])


def test_so8t_train_names_a_users_mistake_in_one_line(tmp_path, capsys):
    listed = tmp_path / "listed.yaml"
    listed.write_text("- training\n")
    run_dir = tmp_path / "run"
    config = str(_small(tmp_path, run_dir))
    cases = [(["--config", str(listed)], "listed.yaml"), (["--config", config, "training.nope=1"], "unknown key"),
             (["--config", config, "training.task_optimizer.lr=.nan"], "finite number"),
             (["--config", config, "--resume"], "nothing to resume"),
             (["--config", config, f"training.data_dir={tmp_path / 'none'}"], "none")]
    for argv, says in cases:
        with pytest.raises(SystemExit, match=f"(?s)^error: .*{says}"):
            so8t(["train", *argv])
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("")
    with pytest.raises(SystemExit, match="^error: .*saved no last/ checkpoint"):
        so8t(["train", "--config", config])
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize("overrides, says", [
    (["training.train_max_rows=3", "training.batch_size=4"], "3 training row.* cannot fill one batch of 4 .*train_max_rows"),
    (["training.freeze_below=7"], r"training.freeze_below must lie in 1\.\.1 for this 2-layer model, got 7"),
    (["training.freeze_below=1", "model.lora.modules_to_save=[]"], "would train below layer 1: set model.lora.layers"),
    (["model.lora.r=0", "model.gates.order=none", "model.lora.modules_to_save=[]"],
     "task side has no trainable parameters .*model.lora.layers"),
])
def test_a_setup_the_config_cannot_run_is_named_in_one_line_and_leaves_no_folder(tmp_path, capsys, overrides, says):
    """Found at the first step (too few rows for a batch), it came as a traceback after config.yaml and the log were
    written: a folder that could neither start over nor resume. A freeze_below outside the model or below a trained
    layer, and a side with nothing to train, came as tracebacks too."""
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match=f"(?s)^error: .*{says}"):
        so8t(["train", "--config", str(_small(tmp_path, run_dir)), *overrides])
    assert not run_dir.exists()
    assert "Traceback" not in capsys.readouterr().err


def test_a_second_trainer_is_kept_out_of_a_run_folder_one_is_writing(tmp_path):
    """Two trainers on one folder interleaved metrics.jsonl and each overwrote the other's last/. Trainers of one
    process share the lock (a notebook builds a new one before the old is collected)."""
    run_dir = tmp_path / "run"
    config = load_config(_small(tmp_path, run_dir, "training.max_steps=1"))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from so8t_lib.train.run_folder import RunLock; "
                               f"RunLock({str(run_dir)!r}); print('held', flush=True); time.sleep(120)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FileExistsError, match=f"being written by another trainer \\(process {holder.pid}"):
            Trainer(config)
    finally:
        holder.kill()
        holder.wait()
    first = Trainer(config)  # the kernel let go of the killed holder's lock; its file stays behind
    Trainer(config).release_lock()  # this process's own: shared
    first.run()
    assert not (run_dir / ".training.lock").exists()  # released with the run


def _hold_lock(run_dir: Path) -> subprocess.Popen:
    """Another process holding a run folder's lock, as a live trainer does (killed by the caller)."""
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from so8t_lib.train.run_folder import RunLock; "
                               f"RunLock({str(run_dir)!r}); print('held', flush=True); time.sleep(120)"],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("retrain", [False, True])
def test_the_demo_never_empties_a_folder_another_process_is_training(tmp_path, retrain):
    """A live run before its first save holds config.yaml and metrics.jsonl: the demo read it as a run killed
    before it saved anything (or, with --retrain, any run) and deleted it under the running trainer."""
    from so8t_lib.workbench.pipeline import run_demo

    run_dir = tmp_path / "run"
    config = _small(tmp_path, run_dir, "training.max_steps=1")
    holder = _hold_lock(run_dir)
    try:
        (run_dir / "config.yaml").write_text(Path(config).read_text())
        (run_dir / "metrics.jsonl").write_text("")
        with pytest.raises(FileExistsError, match=f"being written by another trainer \\(process {holder.pid}"):
            run_demo(config, retrain=retrain, gguf=False)
        assert sorted(p.name for p in run_dir.iterdir()) == [".training.lock", "config.yaml", "metrics.jsonl"]
    finally:
        holder.kill()
        holder.wait()


def test_demo_retrain_starts_over_a_folder_a_trainer_killed_in_its_setup_left(tmp_path, monkeypatch):
    """The lock's file is made when a trainer is set up: killed then (the cache build takes minutes), it left a folder
    holding only .training.lock, which --retrain refused as 'not a run'."""
    from so8t_lib.workbench import pipeline

    run_dir = tmp_path / "run"
    holder = _hold_lock(run_dir)
    holder.kill()
    holder.wait()
    assert [p.name for p in run_dir.iterdir()] == [".training.lock"]
    trained = []
    monkeypatch.setattr(pipeline, "train_and_calibrate", lambda config, resume: trained.append(resume))
    monkeypatch.setattr(pipeline, "load_decider", lambda run: (_ for _ in ()).throw(RuntimeError("stop here")))
    with pytest.raises(RuntimeError, match="stop here"):
        pipeline.run_demo(_small(tmp_path, run_dir, "training.max_steps=1"), retrain=True, gguf=False)
    assert trained == [False] and not (run_dir / ".training.lock").exists()


def test_a_run_that_fails_before_its_loop_lets_go_of_the_folder_and_the_signal_handlers(tmp_path, monkeypatch):
    """An error in the warm start's reference evaluation, before the loop's try, kept the lock (a notebook keeps the
    failed trainer alive) and left the trainer's SIGINT handler installed."""
    run_dir = tmp_path / "run"
    trainer = Trainer(load_config(_small(tmp_path, run_dir, "training.max_steps=1", "training.head_warm_start=true")))
    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(trainer, "evaluate", lambda select=True: (_ for _ in ()).throw(RuntimeError("val broke")))
    with pytest.raises(RuntimeError, match="val broke"):
        trainer.run()
    assert signal.getsignal(signal.SIGINT) == handler and not (run_dir / ".training.lock").exists()


def test_a_finished_run_of_another_process_count_can_still_be_scored(tmp_path):
    """The process count only matters to steps still to train: the demo and notebook 01 reopen a finished run to
    score and export it, which a torchrun-trained run refused on one process."""
    run_dir = tmp_path / "run"
    config = load_config(_small(tmp_path, run_dir, "training.max_steps=1"))
    Trainer(config).run()
    state_file = run_dir / "last" / "trainer_state.pt"
    state = torch.load(state_file, weights_only=False)
    state["world_size"] = 2
    torch.save(state, state_file)
    from so8t_lib.core.checkpoint import write_manifest

    write_manifest(run_dir / "last")
    Trainer(config, resume=True).release_lock()  # finished: nothing to train, nothing to refuse
    state["state"]["step"] = 0  # the same run with its step still to train
    torch.save(state, state_file)
    write_manifest(run_dir / "last")
    with pytest.raises(CheckpointError, match="trained on 2 process"):
        Trainer(config, resume=True)


def test_an_update_that_makes_a_weight_not_finite_ends_the_run_without_saving_it(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    trainer = Trainer(load_config(_small(tmp_path, run_dir, "training.max_steps=2", "training.eval_every=5")))
    step = trainer.opt_task.step

    def overflowing(*args, **kwargs):
        result = step(*args, **kwargs)
        with torch.no_grad():
            next(p for p in trainer.model.parameters() if p.requires_grad).view(-1)[0] = float("inf")
        return result

    monkeypatch.setattr(trainer.opt_task, "step", overflowing)
    with pytest.raises(TrainingDiverged, match="the update made weights that are not finite numbers"):
        trainer.run()
    assert not (run_dir / "best").exists() and not (run_dir / "last").exists()
