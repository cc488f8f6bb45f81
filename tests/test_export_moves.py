"""Moving an export into --out all or none: Ctrl-C between two renames, a rename that fails, or a target that is
a folder left two model versions mixed there, every file passing its own sidecar check."""

import os
import signal

import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from test_export_boundaries import NAME, _copy_ladder, ladder  # noqa: E402, F401 (ladder: a fixture)

from so8t_lib.export import placement  # noqa: E402
from so8t_lib.export.gguf_meta import GGUFError, read_metadata, verify_sha256_sidecar  # noqa: E402
from so8t_lib.export.quantize import export  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402


def _contents(out):
    return {p.name: (p.read_bytes() if p.is_file() else "folder") for p in out.iterdir()}


@pytest.fixture
def earlier(ladder, tmp_path):  # noqa: F811
    """--out holding the first model version's f16, f32, q8_0 and q4_k_m, and the second version's checkpoint."""
    _, second, files = ladder
    out = tmp_path / "dist"
    _copy_ladder(files, out)
    return second, out, _contents(out)


def _patch_move(monkeypatch, then):
    """placement.move calling ``then(call number)`` after each rename it makes."""
    calls, rename = [], placement.move

    def move(source, target):
        if then(len(calls), before=True):
            raise OSError(28, "No space left on device", str(target))
        rename(source, target)
        calls.append(target)
        then(len(calls) - 1, before=False)

    monkeypatch.setattr(placement, "move", move)
    return calls


def test_ctrl_c_during_the_moves_waits_until_out_holds_the_new_export_only(earlier, monkeypatch):
    """KeyboardInterrupt came straight after the first rename: the new f16 beside the old q8_0 and q4_k_m."""
    second, out, _ = earlier
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Python's own Ctrl-C, as in a shell
    calls = _patch_move(monkeypatch, lambda n, before: not before and n == 0 and os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        export(second, out, ["Q8_0"], progress=False)
    assert len(calls) == 8  # f16, q8_0 and their sidecars in; the old f32, q4_k_m and theirs out
    assert sorted(_contents(out)) == sorted(f"{NAME}-{r}.gguf{s}" for r in ("f16", "q8_0") for s in ("", ".sha256"))
    version = SO8TModel.load(second).model_version
    for rung in ("f16", "q8_0"):
        path = out / f"{NAME}-{rung}.gguf"
        assert verify_sha256_sidecar(path) and read_metadata(path)["so8t.model_version"] == version


@pytest.mark.parametrize("failing", [0, 1, 3, 4, 7])  # the first rename, a sidecar, the last file in, stale ones out
def test_a_rename_that_fails_puts_the_earlier_export_back(earlier, monkeypatch, failing):
    second, out, before = earlier
    _patch_move(monkeypatch, lambda n, before: before and n == failing)
    with pytest.raises(OSError, match="No space left"):
        export(second, out, ["Q8_0"], progress=False)
    assert _contents(out) == before  # byte for byte, no staging folder left


def test_a_folder_where_a_file_goes_is_refused_before_anything_is_written(earlier, capsys):
    """The sidecar's rename onto a folder failed after the f16 and q8_0 were in: the old q4_k_m's sidecar and
    the new q8_0 mixed."""
    from so8t_lib.cli import main as so8t

    second, out, _ = earlier
    folder = out / f"{NAME}-q8_0.gguf.sha256"
    folder.unlink()
    folder.mkdir()
    before = _contents(out)
    assert so8t(["export", str(second), "--out", str(out), "--quant", "Q8_0"]) == 2
    err = capsys.readouterr().err
    assert f"error: {folder} is a folder" in err and "move it out" in err, err
    assert _contents(out) == before


def test_an_out_folder_this_user_may_not_write_in_is_named(tmp_path, monkeypatch):
    access = os.access
    monkeypatch.setattr(placement.os, "access", lambda path, mode: path != tmp_path and access(path, mode))
    with pytest.raises(GGUFError, match=f"{tmp_path}: this user .* may not create or replace files in it"):
        placement.check_targets(tmp_path, [tmp_path / "a.gguf"])
