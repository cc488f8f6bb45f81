"""What SO8TModel.load checks before it trusts a checkpoint: its format number, the files of a pretrained base
named by model.base_model, and that files another user wrote can be read (or a CheckpointError says why not)."""

from __future__ import annotations

import pytest
import yaml

from so8t_lib.core.checkpoint import CheckpointError, write_manifest
from so8t_lib.core.schema import CHECKPOINT_FORMAT, MANIFEST_FILE, MODEL_CONFIG_FILE
from so8t_lib.model import SO8TModel


@pytest.fixture
def checkpoint(tmp_path, tiny_config, tokenizer):
    return SO8TModel.from_config(tiny_config, tokenizer).save(tmp_path / "ckpt")


@pytest.mark.parametrize("written", [CHECKPOINT_FORMAT + 1, None])
def test_a_checkpoint_of_another_format_is_refused_naming_the_format_read(checkpoint, written):
    """The format number was written but never read: a newer layout loaded as if it were this one."""
    meta = yaml.safe_load((checkpoint / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    meta["format"] = written
    (checkpoint / MODEL_CONFIG_FILE).write_text(yaml.safe_dump(meta, sort_keys=False), encoding="utf-8")
    (checkpoint / MANIFEST_FILE).unlink()
    write_manifest(checkpoint)  # as the version that wrote it would have
    with pytest.raises(CheckpointError, match=f"format {written}; this version of so8t reads format "
                                              f"{CHECKPOINT_FORMAT} only"):
        SO8TModel.load(checkpoint)
