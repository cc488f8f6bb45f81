"""Where an export and the demo may write, and how they refuse: an --out inside the checkpoint it reads (every later
load refused the checkpoint), the empty --out a stopped export left, a demo that continued a run under another
config without a word, and the demo's own refusals ending in tracebacks (exit 1) or found only after training."""

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.core.checkpoint import verify_manifest
from so8t_lib.core.config import load_config
from so8t_lib.export import quantize
from so8t_lib.export.gguf_meta import GGUFError
from so8t_lib.model import SO8TModel
from so8t_lib.workbench import pipeline
from tests.test_export_boundaries import SLOW_EXPORT

TINY = "configs/tiny-training.yaml"


def _tree(root):
    """Every path under ``root`` with its bytes (None for a folder): what a refusal must leave as it was."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tokenizer):
    """A run folder as training leaves it: config.yaml, best/ and last/ (each a checkpoint with its manifest)."""
    from so8t_lib.core.config import ModelConfig

    root = tmp_path_factory.mktemp("edge") / "run"
    SO8TModel.from_config(ModelConfig(name="so8t-edge"), tokenizer).save(root / "best")
    shutil.copytree(root / "best", root / "last")
    (root / "config.yaml").write_text(load_config(TINY, [f"training.output_dir={root}"]).to_yaml(), encoding="utf-8")
    return root


@pytest.mark.parametrize("checkpoint", ["best", "."])  # the checkpoint, or the run folder (which means its best/)
@pytest.mark.parametrize("out", ["best", "best/gguf", "last", ".", "dist"])
def test_an_out_inside_the_checkpoint_or_its_run_is_refused_before_loading(run, checkpoint, out, monkeypatch,
                                                                              capsys):
    """so8t export ckA/best --out ckA/best exited 0 and every later load refused the checkpoint (a GGUF not in its
    manifest); --out <run>/last broke --resume. Now exit 2, nothing loaded, nothing written."""
    before = _tree(run)
    monkeypatch.setattr(quantize.SO8TModel, "load", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    assert so8t(["export", str(run / checkpoint), "--out", str(run / out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Name a folder outside it" in err, err
    assert _tree(run) == before
    monkeypatch.undo()
    verify_manifest(run / "best")
    verify_manifest(run / "last")


def test_only_the_checkpoint_and_its_run_are_kept_from_exports(run, tmp_path, tokenizer):
    """A checkpoint of no run (even one named best/) keeps only itself; an --out beside the run is fine."""
    assert quantize.run_folder_of(run / "best") == run and quantize.run_folder_of(run / "last") == run
    lone = tmp_path / "models" / "best"
    shutil.copytree(run / "best", lone)
    assert quantize.run_folder_of(lone) == lone
    quantize.check_out_outside(tmp_path / "models" / "dist", lone)
    quantize.check_out_outside(run.parent / "dist", run)
    quantize.check_out_outside(run.parent / "run-dist", run)  # a sibling whose name starts like the run's
    with pytest.raises(GGUFError, match="is the folder"):
        quantize.check_out_outside(lone / ".." / "best", lone)


def test_an_out_under_a_file_is_refused_before_loading(run, tmp_path, monkeypatch, capsys):
    (tmp_path / "notes").write_text("a file")
    monkeypatch.setattr(quantize.SO8TModel, "load", lambda *a, **k: pytest.fail("the checkpoint was loaded"))
    assert so8t(["export", str(run), "--out", str(tmp_path / "notes" / "dist")]) == 2
    assert f"{tmp_path / 'notes'} is a file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]


def test_a_failed_export_removes_the_out_folders_it_made_only(run, tmp_path, monkeypatch):
    """The export made --out (and its parents) before failing, and left them empty."""
    def failing(*args, **kwargs):
        raise GGUFError("the f16 file could not be written")

    monkeypatch.setattr(quantize, "write_gguf", failing)
    with pytest.raises(GGUFError):
        quantize.export(run, tmp_path / "new" / "dist", progress=False)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()  # a folder that was there before stays, empty or not
    with pytest.raises(GGUFError):
        quantize.export(run, tmp_path / "kept", progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


STOPPED_EXPORT = SLOW_EXPORT  # an export that waits once its first file is staged (SIGTERM then)


def test_sigterm_during_an_export_removes_the_out_folder_it_made(run, tmp_path):
    """SIGTERM removed the staging folder but left the empty --out the export had made."""
    pytest.importorskip("gguf")
    out = tmp_path / "new" / "dist"
    process = subprocess.Popen([sys.executable, "-c", STOPPED_EXPORT, str(run), str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().strip() == "staged"
        assert out.is_dir()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        process.kill()
        process.wait()
    assert list(tmp_path.iterdir()) == []


def _no_training(monkeypatch):
    monkeypatch.setattr(pipeline, "train_and_calibrate", lambda *a, **k: pytest.fail("training started"))


def _demo_refused(args, capsys) -> str:
    """The demo's stderr, after checking it ended with exit 2 and no traceback."""
    with pytest.raises(SystemExit) as stopped:
        so8t(["demo", "--bootstrap", "0", *args])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("dist", ["notes", "notes/dist", "run", "run/best", "run/dist"])
def test_the_demo_refuses_a_dist_it_could_not_write_before_training(dist, tmp_path, monkeypatch, capsys):
    """--dist naming a file was found only after training and scoring; --dist <run>/best broke the checkpoint."""
    _no_training(monkeypatch)
    (tmp_path / "notes").write_text("a file")
    err = _demo_refused(["--config", TINY, "--dist", str(tmp_path / dist), f"training.output_dir={tmp_path / 'run'}"],
                        capsys)
    assert str(tmp_path / dist) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes"]  # the run folder not even made


def test_the_demo_refuses_a_missing_config_and_a_retrain_of_no_run_with_status_2(tmp_path, monkeypatch, capsys):
    """Both were ConfigError tracebacks, exit 1."""
    _no_training(monkeypatch)
    assert "nothere.yaml" in _demo_refused(["--config", str(tmp_path / "nothere.yaml"), "--no-gguf"], capsys)
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("a person's file")
    err = _demo_refused(["--config", TINY, "--retrain", "--no-gguf", f"training.output_dir={folder}"], capsys)
    assert "does not hold a run" in err and (folder / "notes.txt").is_file()


def _run_folder(root, overrides):
    """A run folder as an interrupted run leaves it: its config.yaml and last/ (contents unread before training)."""
    (root / "last").mkdir(parents=True)
    config = load_config(TINY, [f"training.output_dir={root}", *overrides])
    (root / "config.yaml").write_text(config.to_yaml(), encoding="utf-8")
    return config


def test_the_demo_refuses_a_run_folder_whose_config_is_empty_with_status_2(tmp_path, monkeypatch, capsys):
    """A CheckpointError traceback, exit 1."""
    _no_training(monkeypatch)
    _run_folder(tmp_path / "run", [])
    (tmp_path / "run" / "config.yaml").write_text("")
    err = _demo_refused(["--config", TINY, "--no-gguf", f"training.output_dir={tmp_path / 'run'}"], capsys)
    assert "config.yaml is empty" in err


@pytest.mark.parametrize("config, overrides, differ", [
    (TINY, ["training.max_steps=4"], "training.max_steps"),
    ("configs/gemma3-270m.yaml", [], "model.preset"),
])
def test_the_demo_refuses_to_continue_a_run_under_another_config(config, overrides, differ, tmp_path, monkeypatch,
                                                                  capsys):
    """max_steps=4 on a folder of a max_steps=2 run resumed with 2 and exit 0; the Gemma config continued a tiny
    run. Now refused as so8t train --resume refuses it, naming the keys, before training."""
    _no_training(monkeypatch)
    run_dir = tmp_path / "run"
    _run_folder(run_dir, ["training.max_steps=2"])
    before = _tree(run_dir)
    err = _demo_refused(["--config", config, "--no-gguf", *overrides, f"training.output_dir={run_dir}"], capsys)
    assert f"differ from it: {differ}" in err or f", {differ}" in err, err
    assert "--retrain" in err and "training.output_dir" in err
    assert _tree(run_dir) == before


class _Trained(Exception):
    pass


def test_the_demo_continues_a_run_whose_config_matches(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    started = _run_folder(run_dir, ["training.max_steps=2"])
    calls = []

    def trained(config, resume=False):
        calls.append((config, resume))
        raise _Trained

    monkeypatch.setattr(pipeline, "train_and_calibrate", trained)
    with pytest.raises(_Trained):
        pipeline.run_demo(TINY, ["training.max_steps=2", f"training.output_dir={run_dir}"], bootstrap=0, gguf=False)
    with pytest.raises(_Trained):  # the run's own config.yaml, as so8t train --resume is told to use
        pipeline.run_demo(run_dir / "config.yaml", [], bootstrap=0, gguf=False)
    monkeypatch.chdir(tmp_path)  # the same folder written another way (relative, a trailing slash) is the same run
    for spelled in ("run", "./run/", f"{tmp_path}//run"):
        with pytest.raises(_Trained):
            pipeline.run_demo(Path(__file__).resolve().parents[1] / TINY, ["training.max_steps=2",
                              f"training.output_dir={spelled}"], bootstrap=0, gguf=False)
    assert [(c.to_dict(), resume) for c, resume in calls] == [(started.to_dict(), True)] * 5


def test_an_out_inside_another_run_or_checkpoint_is_refused_too(tmp_path):
    """`so8t export ck --out ckm/best` (another run) exited 0 and left ckm's checkpoint unloadable."""
    from so8t_lib.export.gguf_meta import GGUFError
    from so8t_lib.export.quantize import check_out_outside

    other = tmp_path / "ckm"
    (other / "best").mkdir(parents=True)
    (other / "config.yaml").write_text("model: {}\n")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "manifest.json").write_text("{}")
    for out in (other, other / "best", other / "best" / "x", lone, lone / "sub"):
        with pytest.raises(GGUFError, match="holds a checkpoint or a training run"):
            check_out_outside(out, tmp_path / "ck" / "best")
    check_out_outside(tmp_path / "dist", tmp_path / "ck" / "best")  # a folder of its own is fine


def test_every_resume_check_takes_the_run_folder_as_a_place(tmp_path, monkeypatch):
    """The demo, `so8t train --resume` and the trainer compare through run_differences: the same folder written
    another way is no difference, another folder or another setting is."""
    from so8t_lib.train.run_folder import run_differences

    monkeypatch.chdir(tmp_path)
    started = load_config(Path(__file__).resolve().parents[1] / TINY, [f"training.output_dir={tmp_path / 'ck'}"])
    again = [f"training.output_dir={spelled}" for spelled in ("ck", "./ck/", f"{tmp_path}//ck")]
    for override in again:
        assert run_differences(started, load_config(Path(__file__).resolve().parents[1] / TINY, [override])) == []
    other = load_config(Path(__file__).resolve().parents[1] / TINY, ["training.output_dir=other", "training.max_steps=3"])
    assert run_differences(started, other) == ["training.max_steps", "training.output_dir"]
