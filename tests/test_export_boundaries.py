"""What an export leaves in --out: an earlier export's rungs beside the new ones (and the ladder comparison
that scored them), staging folders a killed or stopped export left."""

import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

from test_gguf_guards import _checkpoint as guards_checkpoint  # noqa: E402

from so8t_lib.data.tables import load_split  # noqa: E402
from so8t_lib.export.gguf_meta import GGUFError, read_metadata, verify_sha256_sidecar  # noqa: E402
from so8t_lib.export.quantize import OWNER_FILE, UNLOCKED_STALE_S, export  # noqa: E402
from so8t_lib.model import SO8TModel  # noqa: E402

NAME = "so8t-bound"


def _checkpoint(root, tokenizer, seed: int):
    """test_gguf_guards' tiny checkpoint; every seed has the same name (two model versions of one model)."""
    return guards_checkpoint(root, tokenizer, seed, name=NAME)


@pytest.fixture(scope="module")
def ladder(tmp_path_factory, tokenizer):
    """Two checkpoints of one name (two model versions) and the first one's f16, f32, Q8_0 and Q4_K_M."""
    root = tmp_path_factory.mktemp("boundaries")
    first, second = _checkpoint(root, tokenizer, 0), _checkpoint(root, tokenizer, 1)
    files = export(first, root / "first", ["Q8_0", "Q4_K_M"], f32=True, progress=False)
    return first, second, {p.name.rsplit("-", 1)[-1].removesuffix(".gguf"): p for p in files}


def _copy_ladder(files, out):
    """The first export's files (and sidecars), as an earlier export left them in ``out``."""
    out.mkdir()
    for path in files.values():
        for part in (path, path.with_name(path.name + ".sha256")):
            (out / part.name).write_bytes(part.read_bytes())


def test_an_export_removes_the_rungs_an_earlier_export_left_and_says_so(ladder, tmp_path, capsys):
    """Exporting another model version with fewer rungs into the same --out left the old f32 and q4_k_m beside
    the new f16 and q8_0, each verifying against its own sidecar: served, compared and listed as current."""
    from so8t_lib.cli import main as so8t

    _, second, files = ladder
    out = tmp_path / "dist"
    _copy_ladder(files, out)
    unrelated = [out / f"{NAME}-mean-f16.gguf", out / "other-q4_k_m.gguf", out / f"{NAME}-notes.txt"]
    for path in unrelated:  # another model's files and a person's, which the export never wrote
        path.write_text("keep")
    (out / f"{NAME}-q4_k_s.gguf.sha256").write_text("an orphaned sidecar")
    assert so8t(["export", str(second), "--out", str(out), "--quant", "Q8_0"]) == 0
    err = capsys.readouterr().err
    kept = sorted(p.name for p in out.iterdir())
    assert kept == sorted([f"{NAME}-f16.gguf", f"{NAME}-f16.gguf.sha256", f"{NAME}-q8_0.gguf",
                           f"{NAME}-q8_0.gguf.sha256"] + [p.name for p in unrelated])
    for gone in ("f32.gguf", "f32.gguf.sha256", "q4_k_m.gguf", "q4_k_m.gguf.sha256", "q4_k_s.gguf.sha256"):
        assert f"removed {out / f'{NAME}-{gone}'}:" in err, err
    version = SO8TModel.load(second).model_version
    for path in out.glob(f"{NAME}-*.gguf"):
        if path.name.count("-") == 2:
            assert verify_sha256_sidecar(path) and read_metadata(path)["so8t.model_version"] == version
    # a rung of this very model version, exported one type at a time, stays beside the next one
    assert so8t(["export", str(second), "--out", str(out), "--quant", "Q4_K_M"]) == 0
    assert "removed" not in capsys.readouterr().err
    assert {f"{NAME}-q8_0.gguf", f"{NAME}-q4_k_m.gguf"} <= {p.name for p in out.iterdir()}


def test_a_failed_export_removes_nothing(ladder, tmp_path, monkeypatch):
    """The earlier export's rungs go only once the new files are in: a failed export leaves --out as it was."""
    from so8t_lib.export import quantize

    _, second, files = ladder
    out = tmp_path / "dist"
    _copy_ladder(files, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def failing(*args, **kwargs):
        raise GGUFError("llama.cpp could not quantize")

    monkeypatch.setattr(quantize, "quantize", failing)
    with pytest.raises(GGUFError):
        export(second, out, ["Q8_0"], progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_ladder_comparison_refuses_a_file_of_another_model_version(ladder, tmp_path, monkeypatch):
    """quant_compare.compare scored an earlier export's q4_k_m as a rung of the checkpoint it was given. (Run in
    this process: a fresh child per backend costs seconds, and test_eval_honesty shows a child's error comes back.)"""
    from so8t_lib.eval import quant_compare

    monkeypatch.setattr(quant_compare, "run_isolated", lambda fn, *args: fn(*args))
    first, second, files = ladder
    data = tmp_path / "rows.jsonl"
    load_split("test").head(4).to_json(data, orient="records", lines=True, force_ascii=False)
    with pytest.raises(GGUFError, match=r"q4_k_m\.gguf is so8t-bound@.*so8t export"):
        quant_compare.compare(second, [files["q4_k_m"]], data=str(data), generate_tokens=0)
    quant_compare.same_model_version(SO8TModel.load(first).model_version, first, list(files.values()))


def _locked_staging(out, name, owner: bool):
    """A staging folder like a running export's (its lock held by this process) or a dead one's."""
    folder = out / name
    folder.mkdir()
    (folder / "so8t-bound-f16.gguf").write_bytes(b"GGUF staged")
    if owner:
        (folder / OWNER_FILE).write_text("1\n")
    return folder


def test_an_export_removes_the_staging_folders_of_dead_exports_only(ladder, tmp_path, capsys):
    """A killed export's .export-*/ (whole GGUFs and sidecars) and .mix-* stayed in --out forever. The next export
    removes those no running export holds, and leaves a running export's (locked) and a fresh unlocked one."""
    first, _, _ = ladder
    out = tmp_path / "dist"
    out.mkdir()
    dead = _locked_staging(out, ".export-dead", owner=True)  # what a SIGKILL leaves: the owner file, no lock
    running = _locked_staging(out, ".export-running", owner=True)
    handle = os.open(running, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(handle, fcntl.LOCK_EX)
    fresh = _locked_staging(out, ".export-fresh", owner=False)  # an export in the instant before its lock
    old = _locked_staging(out, ".mix-old", owner=False)  # an earlier version's, idle for hours
    hours_ago = time.time() - 2 * UNLOCKED_STALE_S
    for path in (old / "so8t-bound-f16.gguf", old):
        os.utime(path, (hours_ago, hours_ago))
    try:
        export(first, out, [], progress=False)
    finally:
        os.close(handle)
    err = capsys.readouterr().err
    assert not dead.exists() and not old.exists() and running.is_dir() and fresh.is_dir()
    assert f"removed {dead}:" in err and f"removed {old}:" in err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".export-fresh", ".export-running", f"{NAME}-f16.gguf", f"{NAME}-f16.gguf.sha256"])


SLOW_EXPORT = """
import sys, time
from so8t_lib.export import quantize
from so8t_lib.cli import main

written = quantize.write_sha256_sidecar
def staged_then_wait(path):
    result = written(path)
    print("staged", flush=True)
    time.sleep(60)
    return result
quantize.write_sha256_sidecar = staged_then_wait
sys.exit(main(["export", sys.argv[1], "--out", sys.argv[2], "--quant", "Q8_0"]))
"""


def test_sigterm_during_an_export_removes_its_staging_folder(ladder, tmp_path):
    """systemd's stop (SIGTERM) ended the export on the spot, leaving the staged files in --out for good."""
    first, _, files = ladder
    out = tmp_path / "dist"
    _copy_ladder({"f16": files["f16"]}, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    process = subprocess.Popen([sys.executable, "-c", SLOW_EXPORT, str(first), str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout.readline().strip() == "staged"
        assert [p.name for p in out.iterdir() if p.name.startswith(".export-")]  # staged, not yet moved in
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        process.kill()
        process.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
