"""atomic_folder swaps a whole folder in for its target, so it must refuse a target the workbench did not write:
``model.save("checkpoints")`` or ``model.save(".")`` deleted everything there before."""

from __future__ import annotations

import pytest

from so8t_lib.core.checkpoint import CheckpointError, atomic_folder, verify_manifest
from so8t_lib.core.schema import MODEL_CONFIG_FILE
from so8t_lib.model import SO8TModel


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_saving_into_a_folder_with_other_files_is_refused_and_deletes_nothing(tmp_path, tiny_config, tokenizer):
    (tmp_path / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(CheckpointError, match="notes.txt.*would delete them"):
        SO8TModel.from_config(tiny_config, tokenizer).save(tmp_path)
    assert (tmp_path / "notes.txt").read_text(encoding="utf-8") == "mine"
    assert _names(tmp_path) == ["notes.txt"]  # no staging folder left beside it


def test_an_earlier_checkpoint_is_replaced_but_not_once_a_file_was_added_to_it(tmp_path, tiny_config, tokenizer):
    model = SO8TModel.from_config(tiny_config, tokenizer)
    folder = model.save(tmp_path / "ckpt")
    model.save(folder)  # an earlier output: replaced whole
    verify_manifest(folder)
    (folder / "README.md").write_text("how this run was made", encoding="utf-8")
    with pytest.raises(CheckpointError, match="README.md"):
        model.save(folder)
    assert (folder / "README.md").is_file() and (folder / MODEL_CONFIG_FILE).is_file()


def test_the_current_folder_is_refused_by_its_full_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("print('work')\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=f"{tmp_path} holds files .*train.py"):
        with atomic_folder("."):
            pass
    assert _names(tmp_path) == ["train.py"]


def test_a_folder_without_a_manifest_and_a_file_are_refused(tmp_path):
    old = tmp_path / "old_checkpoint"  # e.g. saved before manifests existed: move it away knowingly
    old.mkdir()
    (old / MODEL_CONFIG_FILE).write_text("format: 1\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=MODEL_CONFIG_FILE):
        with atomic_folder(old):
            pass
    (tmp_path / "plain").write_text("x", encoding="utf-8")
    with pytest.raises(CheckpointError, match="is a file, not a folder"):
        with atomic_folder(tmp_path / "plain"):
            pass
    assert (old / MODEL_CONFIG_FILE).is_file() and (tmp_path / "plain").read_text(encoding="utf-8") == "x"


def test_an_empty_folder_is_written_and_an_owned_one_is_replaced_whatever_it_holds(tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    with atomic_folder(empty) as staged:
        (staged / "a.txt").write_text("new", encoding="utf-8")
    verify_manifest(empty)
    (empty / "stray.txt").write_text("x", encoding="utf-8")
    with atomic_folder(empty, owned=True) as staged:  # e.g. a run's last/, the conversion cache
        (staged / "a.txt").write_text("newer", encoding="utf-8")
    assert _names(empty) == ["a.txt", "manifest.json"]


def test_a_file_dropped_in_while_the_caller_writes_is_kept_and_the_new_folder_dropped(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(CheckpointError, match="theirs.txt"):
        with atomic_folder(target) as staged:
            (staged / "ours.txt").write_text("new", encoding="utf-8")
            target.mkdir()
            (target / "theirs.txt").write_text("kept", encoding="utf-8")
    assert _names(target) == ["theirs.txt"]
    assert _names(tmp_path) == ["out"]  # the staging folder is gone
