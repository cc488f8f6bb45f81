"""Bad input on the training side is refused by name before it can train a wrong model: configs (non-finite numbers,
out-of-range seeds and betas, a key given twice, the working directory as the run folder), data files (not UTF-8,
an unquoted comma, ids shared by train and val, public benchmark prompts), checkpoints (a file the manifest does not
list, a damaged manifest, a damaged best/), resumes under another config, a run that diverges, and the frozen-state
cache's key (4-bit, a replaced local base)."""

from __future__ import annotations

import json
import re
import shutil
import stat
from pathlib import Path

import pytest
import torch
from test_train import ROOT, _config_file, _saved_step

from so8t_lib.cli import main as so8t
from so8t_lib.core.checkpoint import CheckpointError, resolve_checkpoint, verify_manifest
from so8t_lib.core.config import ConfigError, load_config
from so8t_lib.data.tables import DataError, load_table
from so8t_lib.data.training_split import training_tables
from so8t_lib.train.trainer import Trainer, TrainingDiverged

TINY = ROOT / "configs" / "tiny-training.yaml"


@pytest.mark.parametrize("override, says", [
    ("training.task_optimizer.lr=.inf", "finite number"), ("loss.class_weights.ALLOW=.nan", "finite number"),
    ("loss.pet.schedule=[[1.0,.nan]]", "finite number"), ("training.seed=-1", "greater than or equal to 0"),
    ("model.seed=4294967296", "less than 4294967296"), ("training.task_optimizer.betas=[1.5,0.9]", "betas"),
    ("loss.pet.layers=[]", "at least 1 item"), ("training.output_dir=.", "the working directory or above it"),
    ("training.output_dir=..", "the working directory or above it"),
    (f"training.output_dir={ROOT}", "the working directory or above it"),
    (f"training.output_dir=../{ROOT.name}", "the working directory or above it"),
    ("training.mixed_precision=fp16", "fp16 is not supported: .*share accelerate's one gradient scaler.*use bf16")])
def test_config_values_that_would_break_or_poison_a_run_are_refused_by_key(override, says):
    with pytest.raises(ConfigError, match=says):
        load_config(TINY, [override])


def test_a_config_file_with_a_key_twice_or_not_utf8_is_refused_by_name(tmp_path):
    twice = tmp_path / "twice.yaml"  # YAML keeps the last one: the first training section vanished
    twice.write_text(f"extends: {TINY}\ntraining:\n  max_steps: 20\nmodel:\n  name: x\ntraining:\n  batch_size: 4\n")
    with pytest.raises(ConfigError, match="twice.yaml: not valid YAML: the key 'training' is given twice"):
        load_config(twice)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("model:\n  name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin.yaml: not UTF-8 text"):
        load_config(latin)
    listed = tmp_path / "listed.yaml"
    listed.write_text("? [a, b]\n: 1\n")
    with pytest.raises(ConfigError, match="a key must be a plain name"):
        load_config(listed)


def test_data_files_that_cannot_be_read_as_written_are_refused_by_name(tmp_path):
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes('{"user_request": "caf\xe9", "label": "ALLOW"}\n'.encode("latin-1"))
    with pytest.raises(DataError, match="latin.jsonl: not UTF-8 text"):
        load_table(latin)
    comma = tmp_path / "comma.csv"  # the unquoted comma cut the context and dropped the rest without a word
    comma.write_text("user_request,label,context\nWipe the disk now,REFUSE,prod server, all of it\n")
    with pytest.raises(DataError, match="comma.csv:2: more fields than the header names"):
        load_table(comma)
    bom = tmp_path / "bom.csv"
    bom.write_text("\ufeffid,user_request,label\nrow-7,hello,ALLOW\nrow-8,hi,ALLOW\n", encoding="utf-8")
    assert list(load_table(bom)["id"]) == ["row-7", "row-8"]  # the byte order mark is not part of the first name


def _splits(tmp_path, train_rows, val_rows):
    folder = tmp_path / "data"
    folder.mkdir(exist_ok=True)
    for name, rows in (("train.jsonl", train_rows), ("val.jsonl", val_rows)):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return folder


def test_train_and_val_sharing_an_id_or_holding_a_benchmark_prompt_are_refused(tmp_path):
    """The frozen-state cache keys rows by id: a train row shared its id with a val row and was trained on the val
    row's states. And a public benchmark prompt in the training data would make its evaluation meaningless."""
    row = {"user_request": "How do I book a meeting room?", "label": "ALLOW"}
    folder = _splits(tmp_path, [{**row, "id": "1"}], [{**row, "user_request": "Where is the form?", "id": "1"}])
    with pytest.raises(DataError, match="1 row id.* in both train.jsonl and val.jsonl"):
        training_tables(folder, None, None, 0)
    sst = (ROOT.parent / "shared" / "benchmarks" / "simplesafetytests" / "sst_test_cases.csv")
    if not sst.is_file():
        pytest.skip("the public benchmarks are not beside the repository")
    import csv

    prompt = next(csv.DictReader(sst.open(encoding="utf-8")))["prompts_final"]
    folder = _splits(tmp_path, [{**row, "id": "t1"}, {"id": "t2", "user_request": prompt, "label": "REFUSE",
                                                      "category": "general"}], [{**row, "id": "v1"}])
    with pytest.raises(DataError, match="train.jsonl: 1 row.* public benchmark prompts .*evaluation only"):
        training_tables(folder, None, None, 0)
    # the same prompt with its punctuation changed, or given as a row's context, is still the benchmark's
    for changed in ({"user_request": prompt.rstrip("?.!") + "??"}, {"user_request": "Please read this.",
                                                                     "context": prompt.upper()}):
        folder = _splits(tmp_path, [{**row, "id": "t1"}, {"id": "t2", "label": "REFUSE", "category": "general",
                                                          **changed}], [{**row, "id": "v1"}])
        with pytest.raises(DataError, match="public benchmark prompts"):
            training_tables(folder, None, None, 0)


def test_a_val_row_asking_what_a_train_row_asks_is_refused_naming_both(tmp_path):
    """Only ids were compared: a val row asking a train row's question under another id (even with the other label)
    was scored at every evaluation, and best/ and early stopping selected on rows the model trained on."""
    train = [{"id": "t1", "user_request": "How do I disable the office alarm?", "label": "REFUSE",
              "category": "security"},
             {"id": "t2", "user_request": "Summarise this.", "context": "Q3 sales rose.", "label": "ALLOW"}]
    same = {"id": "v1", "user_request": "how do I disable the office\u200b alarm??", "label": "ALLOW"}
    other_context = {"id": "v2", "user_request": "Summarise this.", "context": "Q4 sales fell.", "label": "ALLOW"}
    with pytest.raises(DataError, match="1 val row.* ask what a train row asks .*'v1' and train.jsonl 't1'"):
        training_tables(_splits(tmp_path, train, [same, other_context]), None, None, 0)
    _, val = training_tables(_splits(tmp_path, train, [other_context]), None, None, 0)  # another question
    assert list(val["id"]) == ["v2"]


def test_a_checkpoint_file_not_in_its_manifest_or_a_damaged_manifest_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    Trainer(load_config(_config_file(tmp_path, run_dir, "training.max_steps=2", "training.eval_every=2"))).run()
    best = run_dir / "best"
    assert stat.S_IMODE(best.stat().st_mode) & 0o055 == 0o055  # not mkdtemp's 0700: the service user reads it
    verify_manifest(best)
    added = best / "tokenizer" / "added_tokens.json"  # the loader would read it: other decisions, same version
    added.write_text(json.dumps({"e": 5}))
    with pytest.raises(CheckpointError, match="added_tokens.json: not in the manifest"):
        verify_manifest(best)
    added.unlink()
    manifest = best / "manifest.json"
    for damaged in ("[]", "null", '{"files": []}', '{"files": {"a.txt": {}}}'):
        manifest.write_text(damaged)
        with pytest.raises(CheckpointError, match="unreadable manifest"):
            verify_manifest(best)
    (best / "so8t_model.yaml").unlink()
    with pytest.raises(CheckpointError, match="best checkpoint is damaged; name .*last"):
        resolve_checkpoint(run_dir)  # it used to load last/ without a word


def test_a_resume_under_another_config_is_refused_naming_what_changed(tmp_path, capsys):
    run_dir = tmp_path / "run"
    started = _config_file(tmp_path, run_dir, "training.max_steps=4", "training.save_every_steps=2")
    Trainer(load_config(started)).run()
    other = load_config(started, ["model.gates.order=cmd_first"])
    with pytest.raises(CheckpointError, match="trained under another config \\(changed: model.gates.order\\)"):
        Trainer(other, resume=True)
    with pytest.raises(SystemExit, match="these differ from it: training.task_optimizer.lr. Resume with --config"):
        so8t(["train", "--config", str(started), "--resume", "training.task_optimizer.lr=1e-5"])
    edited = run_dir / "config.yaml"  # edited after the run started: the CLI loads it and so agreed with it
    text = edited.read_text(encoding="utf-8")
    edited.write_text(text.replace("alpha: 1.0", "alpha: 5.0"), encoding="utf-8")
    assert "alpha: 5.0" in edited.read_text(encoding="utf-8")
    with pytest.raises(SystemExit, match=r"changed: loss.alpha\).*was config.yaml edited"):
        so8t(["train", "--config", str(edited), "--resume"])
    edited.write_text(text, encoding="utf-8")
    shutil.rmtree(run_dir / "last")  # a run killed before its first autosave: best/ and the log, no last/
    with pytest.raises(FileExistsError, match="saved no last/ checkpoint, so nothing can be resumed"):
        Trainer(load_config(_config_file(tmp_path, run_dir, "training.max_steps=4")))


def test_a_diverging_run_stops_before_a_nan_reaches_a_weight(tmp_path, monkeypatch):
    import so8t_lib.train.trainer as trainer_module

    run_dir = tmp_path / "run"
    trainer = Trainer(load_config(_config_file(tmp_path, run_dir, "training.max_steps=6", "training.eval_every=1")))
    real, calls = trainer_module.composite_loss, []

    def diverging(*args, **kwargs):
        parts = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 3:
            parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(trainer_module, "composite_loss", diverging)
    with pytest.raises(TrainingDiverged, match="step 3: loss nan.*the run diverged"):
        trainer.run()
    assert _saved_step(run_dir) == 2  # the emergency save holds the last finite step
    weights = torch.load(run_dir / "last" / "trainer_state.pt", weights_only=False)
    assert weights["state"]["batch_in_epoch"] == 2  # the failed step's rows are taken again on resume
    from safetensors.torch import load_file

    for folder in ("last", "best"):
        assert all(torch.isfinite(t).all() for t in load_file(run_dir / folder / "adapter.safetensors").values())


def test_an_error_after_a_finished_step_saves_that_step_as_it_is(tmp_path, monkeypatch):
    """The emergency save rewinds the data position only for an error inside a step: after it (an evaluation that
    fails), the weights are the finished step's and a resume must not train its rows again."""
    run_dir = tmp_path / "run"
    trainer = Trainer(load_config(_config_file(tmp_path, run_dir, "training.max_steps=6", "training.eval_every=2")))
    def failing(select=True):
        raise RuntimeError("out of memory while evaluating")

    monkeypatch.setattr(trainer, "evaluate", failing)
    with pytest.raises(RuntimeError, match="while evaluating"):
        trainer.run()
    saved = torch.load(run_dir / "last" / "trainer_state.pt", weights_only=False)["state"]
    assert saved["step"] == 2 and saved["batch_in_epoch"] == 2
    assert saved["eval_pending"]  # the resume evaluates step 2 before it trains step 3


def test_a_partial_last_log_line_does_not_stop_a_resume(tmp_path):
    run_dir = tmp_path / "run"
    config = load_config(_config_file(tmp_path, run_dir, "training.max_steps=2"))
    Trainer(config).run()
    with (run_dir / "metrics.jsonl").open("a") as log:
        log.write('{"step": 3, "kind": "tra')  # a crash mid-line
    Trainer(config, resume=True)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert all(json.loads(line)["step"] <= 2 for line in lines)


def test_an_early_stopping_metric_the_val_rows_cannot_measure_is_refused(tmp_path):
    rows = [json.loads(line) for line in (ROOT / "data" / "so8t_safety" / "val.jsonl").read_text().splitlines()]
    train = [json.loads(line) for line in (ROOT / "data" / "so8t_safety" / "train.jsonl").read_text().splitlines()[:64]]
    folder = _splits(tmp_path, train, [r for r in rows if r["label"] != "REFUSE"][:30])
    config = load_config(_config_file(tmp_path, tmp_path / "run", "training.max_steps=2", "training.eval_every=1",
                                      f"training.data_dir={folder}", "training.early_stopping.metric=refuse_recall"))
    with pytest.raises(ConfigError, match="refuse_recall cannot be measured on the 16 val rows"):
        Trainer(config)  # before the first step (test_training_boundaries_runs.py: safety_score too)


def test_the_frozen_state_cache_is_another_for_4bit_and_for_a_replaced_local_base(tmp_path):
    from so8t_lib.model.base import build_tiny_base
    from so8t_lib.model.so8t import SO8TModel
    from so8t_lib.train.state_cache import base_key

    plain = SO8TModel.from_config(load_config(TINY).model)
    config = load_config(TINY, ["model.load_in_4bit=true"]).model
    assert base_key(plain) != base_key(type("Quantized", (), {"config": config, "base_fingerprint": None, "base_identity": None})())
    base = tmp_path / "hf_base"
    keys = []
    for seed in (0, 1):
        shutil.rmtree(base, ignore_errors=True)
        lm, tokenizer = build_tiny_base(load_config(TINY, [f"model.seed={seed}"]).model, None)
        lm.save_pretrained(base)
        tokenizer.save_pretrained(base)
        hf = load_config(TINY, ["model.preset=hf", f"model.base_model={base}"]).model
        keys.append(base_key(type("Local", (), {"config": hf, "base_fingerprint": None, "base_identity": None})()))
    assert keys[0] != keys[1]  # the same path, other weights: another cache


def test_a_pet_layer_the_model_does_not_have_is_named(tmp_path):
    config = load_config(_config_file(tmp_path, tmp_path / "run", "training.max_steps=2", "loss.pet.layers=[99]"))
    with pytest.raises(ValueError, match=r"loss.pet.layers \[99\]: this model has \d+ hidden states"):
        Trainer(config).run()


def test_a_checkpoint_is_on_disk_before_the_old_one_is_let_go(tmp_path, monkeypatch):
    """No power-cut test here: the swap is checked to fsync every file and folder of the new copy before it
    replaces the old one, and the parent folder after."""
    import os

    from so8t_lib.core import checkpoint

    synced, real = [], os.fsync

    def recording(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), (tmp_path / "ckpt").exists()))
        return real(fd)

    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "old.txt").write_text("the previous checkpoint")
    checkpoint.write_manifest(tmp_path / "ckpt")  # an earlier output, which the swap may replace
    monkeypatch.setattr(checkpoint.os, "fsync", recording)
    with checkpoint.atomic_folder(tmp_path / "ckpt") as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "weights.bin").write_bytes(b"\0" * 64)
    names = [Path(path).name for path, _ in synced]
    assert {"weights.bin", "manifest.json", "sub"} <= set(names)
    assert names.index("weights.bin") < names.index(tmp_path.name)  # the files, then the parent after the swap
    assert (tmp_path / "ckpt" / "sub" / "weights.bin").is_file() and not (tmp_path / "ckpt" / "old.txt").exists()


def test_the_demo_continues_a_run_a_kill_left_mid_save_and_never_deletes_one_it_cannot_continue(tmp_path,
                                                                                              monkeypatch):
    from so8t_lib.workbench import pipeline

    run_dir = tmp_path / "run"
    config = _config_file(tmp_path, run_dir, "training.max_steps=2", "training.eval_every=2")
    Trainer(load_config(config)).run()
    (run_dir / "last").rename(run_dir / ".last.old-4242")  # killed between the two renames of a save
    trained = []

    class Trained(Exception):
        pass

    def train_and_calibrate(cfg, resume):  # what the demo would train, then stop: the test is about what came before
        trained.append(resume)
        raise Trained

    monkeypatch.setattr(pipeline, "train_and_calibrate", train_and_calibrate)
    with pytest.raises(Trained):
        pipeline.run_demo(config, [])
    assert trained == [True] and (run_dir / "best").is_dir() and (run_dir / "last").is_dir()
    shutil.rmtree(run_dir / "last")
    with pytest.raises(ConfigError, match="holds a run without a last/ checkpoint .*--retrain starts it over"):
        pipeline.run_demo(config, [])
    assert (run_dir / "best").is_dir()


def test_a_pet_layer_in_the_frozen_part_is_refused_however_it_is_counted():
    """PET on a hidden state below freeze_below has no gradient: [2] was refused, but [-3], the same state of this
    4-layer model counted from the end, was accepted and trained nothing."""
    from so8t_lib.model.so8t import SO8TModel
    from so8t_lib.train.state_cache import check_frozen_below

    config = load_config(TINY, ["model.lora.layers=[2,3]", "model.gates.layers=[2,3]", "model.lora.modules_to_save=[]"])
    model = SO8TModel.from_config(config.model)
    assert len(model.decoder_layers) == 4  # hidden states 0 (embeddings) to 4 (final norm)
    for layers, states in (([-3], [2]), ([2], [2]), ([-5, -1], [0]), ([0], [0])):
        with pytest.raises(ValueError, match=re.escape(f"loss.pet.layers [{layers[0]}] (hidden states {states} of "
                                                       "0..4) lie in the frozen part (<= 2)")):
            check_frozen_below(model, 2, layers)
    for layers in ([3], [-2], [-1], [-6], [99]):  # above the frozen part, or not in the model (the loss names those)
        check_frozen_below(model, 2, layers)


def test_a_damaged_run_log_on_resume_is_named_and_only_a_cut_last_line_is_dropped(tmp_path):
    """A non-UTF-8 byte in metrics.jsonl was a traceback, and a line changed by hand in its middle was deleted
    without a word; only the line a crash cuts short (the last) may go."""
    from so8t_lib.train.run_folder import truncate_metrics

    log = tmp_path / "metrics.jsonl"
    good = ['{"step": 1, "kind": "train"}', '{"step": 2, "kind": "train"}', '{"step": 3, "kind": "train"}']
    log.write_text("\n".join(good) + '\n{"step": 4, "ki', encoding="utf-8")
    truncate_metrics(tmp_path, 2)
    assert log.read_text(encoding="utf-8").splitlines() == good[:2]  # past the checkpoint, and the cut line
    log.write_text(good[0] + "\nnote: restarted by hand\n" + good[1] + "\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="metrics.jsonl: line 2 is not a log record.*nothing was dropped"):
        truncate_metrics(tmp_path, 2)
    log.write_bytes(good[0].encode() + b"\n\xff\xfe\n")
    with pytest.raises(CheckpointError, match="metrics.jsonl: not UTF-8 text"):
        truncate_metrics(tmp_path, 2)
    assert log.read_bytes() == good[0].encode() + b"\n\xff\xfe\n"
