"""A checkpoint without manifest.json is not exported, even with SO8T_ALLOW_UNVERIFIED_MODEL=1: the export gave
its unchecked files fresh sidecars that verified with the override off, and a model_version of the bare name, so
the served file lost the +unverified mark and two such checkpoints of one name counted as one model version."""

import shutil

import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from test_gguf_guards import _checkpoint  # noqa: E402

from so8t_lib.core.checkpoint import UNVERIFIED_ENV, CheckpointError  # noqa: E402
from so8t_lib.export.gguf_meta import read_metadata  # noqa: E402
from so8t_lib.export.quantize import export  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402


@pytest.fixture
def no_manifest(tmp_path, tokenizer):
    folder = tmp_path / "no-manifest"
    shutil.copytree(_checkpoint(tmp_path, tokenizer, 0, name="so8t-unv"), folder)
    (folder / "manifest.json").unlink()
    return folder


@pytest.mark.parametrize("override", ["1", ""])
def test_a_checkpoint_without_its_manifest_is_refused_with_or_without_the_override(
        no_manifest, tmp_path, monkeypatch, capsys, override):
    from so8t_lib.cli import main as so8t

    monkeypatch.setenv(UNVERIFIED_ENV, override)
    out = tmp_path / "dist"
    out.mkdir()
    (out / "so8t-unv-f16.gguf").write_text("an earlier export's file")
    with pytest.raises(CheckpointError, match="no manifest.json.*Save the checkpoint again"):
        export(no_manifest, out, ["Q8_0"], progress=False)
    assert so8t(["export", str(no_manifest), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: {no_manifest}: no manifest.json" in err and "export the new folder" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["so8t-unv-f16.gguf"]  # nothing written, nothing removed


def test_saving_it_again_as_the_refusal_says_gives_an_export_with_the_adapter_hash(no_manifest, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setenv(UNVERIFIED_ENV, "1")
    saved = SO8TModel.load(no_manifest).save(tmp_path / "saved-again")
    monkeypatch.delenv(UNVERIFIED_ENV)
    (f16,) = export(saved, tmp_path / "dist", [], progress=False)
    assert read_metadata(f16)["so8t.model_version"] == SO8TModel.load(saved).model_version
    assert read_metadata(f16)["so8t.model_version"].startswith("so8t-unv@")
