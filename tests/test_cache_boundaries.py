"""The cache's edges: folders it never wrote, damaged indexes and tokenizers, the SO8T_CACHE setting, a build
stopped by a signal, sparse files."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.train.state_cache import CACHE_VERSION, INDEX_FILE, STATES_FILE
from so8t_lib.workbench.cache_inventory import inventory, removable

HOUR = 3600.0
KEY = "0123456789abcdef01234567"  # a frozen-state cache's name: 24 hex digits of its key
TOKENIZER = "bpe-8192-0123456789abcdef"
BASE = "gemma3-270m-a5fd3b62230a"


def _age(path, seconds):
    """Make ``path`` and everything under it look ``seconds`` old."""
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then))


def _states(folder, tokens=6, hidden=4, **changes):
    """A current frozen-state cache: a 2-token shared prefix, then one row of the rest."""
    folder.mkdir(parents=True)
    index = {"version": CACHE_VERSION, "k": 3, "tokens": tokens, "hidden": hidden, "prefix": 2,
             "rows": [["r1", 2, tokens - 2, 1]], **changes}
    (folder / INDEX_FILE).write_text(json.dumps(index))
    np.save(folder / STATES_FILE, np.zeros((tokens, hidden), dtype=np.float32))
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path))
    return tmp_path


def test_prune_keeps_folders_the_workbench_never_named_and_warns(cache, capsys):
    """SO8T_CACHE pointed at a project: its tokenizers/, states/, bases/ hold someone's own folders, written just
    now or long ago; none is the workbench's, none goes."""
    own = [cache / "tokenizers" / "sentencepiece-en" / "spm.model", cache / "states" / "experiment1" / "results.csv",
           cache / "bases" / "llama-notes" / "README", cache / "states" / "old-run.tmp" / "x"]
    for path in own:
        path.parent.mkdir(parents=True)
        path.write_text("mine")
    _age(cache / "states" / "old-run.tmp", 3 * HOUR)
    leftover = _states(cache / "states" / f"{KEY}.tmp-ab_c12")  # a build of the workbench's, cut short
    _age(leftover, 2 * HOUR)
    statuses = {e.path.name: e.status for e in inventory()}
    assert statuses == {"sentencepiece-en": "unknown", "experiment1": "unknown", "llama-notes": "unknown",
                        "old-run.tmp": "unknown", leftover.name: "partial"}
    assert [e.path for e in removable(inventory(), all_states=True)] == [leftover]
    assert so8t(["cache", "prune"]) == 0
    captured = capsys.readouterr()
    assert "removing 1 of 5 entries" in captured.out and "not written by the workbench: kept" in captured.out
    assert "SO8T_CACHE" in captured.err
    assert all(path.is_file() for path in own) and not leftover.exists()


def test_the_workbench_names_and_their_staging_and_trash_forms_are_recognised(cache):
    from so8t_lib.workbench.cache_inventory import name_form

    assert name_form("frozen states", KEY) == "entry" and name_form("tokenizer", TOKENIZER) == "entry"
    assert name_form("base", BASE) == "entry"
    assert name_form("frozen states", f"{KEY}.tmp-k2j_9x1a") == "partial"
    assert name_form("tokenizer", f".trash-{TOKENIZER}-1733520000123456789") == "partial"
    for kind, name in [("frozen states", KEY[:-1]), ("frozen states", "current.tmp"), ("tokenizer", "bpe-8192-ff"),
                       ("base", "llama-notes"), ("frozen states", ".trash-experiment1-1")]:
        assert name_form(kind, name) is None


@pytest.mark.parametrize("kind", ["damaged states", "damaged tokenizer", "unconverted base", "staging"])
def test_a_damaged_or_half_made_folder_written_in_the_last_hour_is_left_alone(cache, kind):
    """What the cache command's help promises: a folder written to in the last hour is a build in progress."""
    if kind == "damaged states":
        folder = _states(cache / "states" / KEY)
        (folder / STATES_FILE).unlink()
    elif kind == "damaged tokenizer":
        folder = cache / "tokenizers" / TOKENIZER
        folder.mkdir(parents=True)
        (folder / "tokenizer.json").write_text('{"model": {"vocab": {"a"')
    elif kind == "unconverted base":
        folder = cache / "bases" / BASE / "source"
        folder.mkdir(parents=True)
        folder = folder.parent
    else:
        folder = _states(cache / "states" / f"{KEY}.tmp-abcd1234")
    entry, = inventory()
    assert entry.recent and "last hour" in entry.detail and removable([entry], all_states=True) == []
    _age(folder, 2 * HOUR)
    entry, = inventory()
    assert not entry.recent and entry.status in ("damaged", "partial") and removable([entry]) == [entry]


NESTED = "[" * 100000 + "]" * 100000
DAMAGED_INDEXES = {  # what a disk, an editor or a half-finished copy can leave in index.json
    "rows null": lambda index: {**index, "rows": None},
    "a row past the file": lambda index: {**index, "rows": [["r1", 10**9, 4, 1]]},
    "rows short of the tokens": lambda index: {**index, "rows": [["r1", 2, 3, 1]]},
    "a row id that is a number": lambda index: {**index, "rows": [[7, 2, 4, 1]]},
    "a row of three fields": lambda index: {**index, "rows": [["r1", 2, 4]]},
    "prefix a string": lambda index: {**index, "prefix": "2"},
    "nested too deep": lambda index: NESTED,
}


def _damage(folder, how):
    index = json.loads((folder / INDEX_FILE).read_text())
    damaged = DAMAGED_INDEXES[how](index)
    (folder / INDEX_FILE).write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))


@pytest.mark.parametrize("how", DAMAGED_INDEXES)
def test_a_damaged_index_is_a_damaged_cache_listed_and_refused(cache, how, capsys):
    from so8t_lib.train.state_cache import FrozenStates

    folder = _states(cache / "states" / KEY)
    FrozenStates(folder)  # whole, it reads
    _damage(folder, how)
    with pytest.raises(ValueError, match="index.json"):
        FrozenStates(folder)
    entry, = inventory()
    assert entry.status == "damaged"
    assert so8t(["cache"]) == 0 and "damaged" in capsys.readouterr().out


@pytest.mark.parametrize("how", DAMAGED_INDEXES)
def test_training_builds_a_cache_with_a_damaged_index_again(cache, how, monkeypatch, capsys):
    """FrozenStates.build on a damaged index: the states are computed again (here by a stand-in for the model's
    pass), never read through the index, never a crash."""
    import shutil
    from types import SimpleNamespace

    from so8t_lib.train import state_cache
    from so8t_lib.train.state_cache import FrozenStates

    built = []

    def fill(cls, tmp, folder, *args):
        shutil.rmtree(folder, ignore_errors=True)
        built.append(_states(folder))
        return cls(folder)

    monkeypatch.setattr(state_cache, "base_key", lambda model: "a stand-in base")
    monkeypatch.setattr(FrozenStates, "_fill", classmethod(fill))
    collate = SimpleNamespace(encode=lambda row: ([1, 2, 3], None))
    build = lambda: FrozenStates.build(None, SimpleNamespace(k=3), [{"id": "r1"}], collate)  # noqa: E731
    folder = build().folder
    assert built == [folder] and build().folder == folder and len(built) == 1  # the second run reads it
    _damage(folder, how)
    frozen = build()
    assert len(built) == 2 and "damaged" in capsys.readouterr().out
    assert frozen.row_states("r1").shape == (6, 4)


@pytest.mark.parametrize("damage", ["truncated", "empty", "nested too deep"])
def test_a_cached_tokenizer_that_does_not_load_is_damaged_and_trained_again(cache, tmp_path_factory, damage, caplog):
    from so8t_lib.core.paths import CORPUS_DIR
    from so8t_lib.model.tokenizer import tiny_tokenizer

    train = tmp_path_factory.mktemp("corpus") / "train.jsonl"  # 40 committed rows: trained in a second
    train.write_text("".join((CORPUS_DIR / "val.jsonl").read_text(encoding="utf-8").splitlines(True)[:40]),
                     encoding="utf-8")
    first = tiny_tokenizer(vocab_size=400, train_file=train)
    folder, = (cache / "tokenizers").iterdir()
    path = folder / "tokenizer.json"
    whole = path.read_bytes()
    path.write_bytes({"truncated": whole[:1000], "empty": b"", "nested too deep": NESTED.encode()}[damage])
    _age(folder, 2 * HOUR)
    entry, = inventory()
    assert entry.status == "damaged" and "tokenizer.json" in entry.detail
    assert entry in removable([entry]), "prune --dry-run calls it what it is"
    again = tiny_tokenizer(vocab_size=400, train_file=train)  # trained again, not a crash
    assert "does not load" in caplog.text and path.read_bytes() == whole
    assert again("how do I kill a process")["input_ids"] == first("how do I kill a process")["input_ids"]
    assert [e.status for e in inventory()] == ["current"]


def test_a_cache_setting_with_a_tilde_or_a_relative_path_is_the_folder_it_names(tmp_path, monkeypatch):
    """A .env file or a systemd unit passes SO8T_CACHE as written: ~ unexpanded made a literal ./~ folder."""
    from so8t_lib.core.paths import cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SO8T_CACHE", "~/so8t-cache")
    assert cache_root() == tmp_path / "home" / "so8t-cache"
    monkeypatch.setenv("SO8T_CACHE", "caches/so8t")
    root = cache_root()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert root == tmp_path / "caches" / "so8t" and root.is_absolute(), "read once, the same folder after a chdir"
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("inside", [False, True])
def test_a_cache_setting_that_names_a_file_stops_training_with_the_cache_command_s_message(tmp_path, monkeypatch,
                                                                                         inside, capsys):
    from so8t_lib.core.paths import CONFIGS_DIR, cache_root

    (tmp_path / "notes.txt").write_text("mine")
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "notes.txt" / "so8t" if inside else tmp_path / "notes.txt"))
    with pytest.raises(OSError, match=r"notes.txt is a file, not a folder.*point SO8T_CACHE at a folder"):
        cache_root()
    with pytest.raises(SystemExit) as stop:
        so8t(["train", "--config", str(CONFIGS_DIR / "tiny.yaml"), f"training.output_dir={tmp_path / 'run'}"])
    assert "notes.txt is a file, not a folder" in str(stop.value.code) and not (tmp_path / "run").exists()
    with pytest.raises(SystemExit) as stop:
        so8t(["cache"])
    assert stop.value.code == 2 and "notes.txt is a file, not a folder" in capsys.readouterr().err


def _stand_in_build(monkeypatch, during_fill):
    """FrozenStates.build with a stand-in for the model's pass: ``during_fill(tmp)`` runs where the states are
    computed (minutes of a real build)."""
    from types import SimpleNamespace

    from so8t_lib.train import state_cache
    from so8t_lib.train.state_cache import FrozenStates

    def fill(cls, tmp, folder, *args):
        np.save(tmp / STATES_FILE, np.zeros((1000, 4), dtype=np.float32))
        during_fill(tmp)
        raise AssertionError("the build went on")

    monkeypatch.setattr(state_cache, "base_key", lambda model: "a stand-in base")
    monkeypatch.setattr(FrozenStates, "_fill", classmethod(fill))
    return lambda: FrozenStates.build(None, SimpleNamespace(k=3), [{"id": "r1"}],
                                      SimpleNamespace(encode=lambda row: ([1, 2, 3], None)))


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_stop_signal_during_a_build_removes_its_staging_folder(cache, monkeypatch, signame):
    """Run in a forked child (as `so8t train` runs, the signal at its default): the signal ends it with 128 + the
    signal, and the half-written states go with it."""
    import signal

    sig = getattr(signal, signame)

    def stop(tmp):
        assert (tmp / STATES_FILE).is_file()
        os.kill(os.getpid(), sig)
        time.sleep(10)

    build = _stand_in_build(monkeypatch, stop)
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 99
        try:
            signal.signal(sig, signal.SIG_DFL)
            build()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 98
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 128 + sig, f"killed, no cleanup: {status}"
    assert list((cache / "states").iterdir()) == [], "the staging folder went"


def test_a_build_leaves_the_callers_signal_handlers_as_it_found_them(cache, monkeypatch):
    import signal

    handlers = {signal.SIGTERM: signal.getsignal(signal.SIGTERM), signal.SIGHUP: signal.getsignal(signal.SIGHUP)}
    seen = {}

    def look(tmp):
        seen.update({sig: signal.getsignal(sig) for sig in handlers})
        raise RuntimeError("the model's pass failed")

    build = _stand_in_build(monkeypatch, look)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # under nohup: a hangup must not stop the build
        with pytest.raises(RuntimeError):
            build()
        assert seen[signal.SIGTERM] not in (signal.SIG_DFL, signal.SIG_IGN) and seen[signal.SIGHUP] == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL and signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert list((cache / "states").iterdir()) == []
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def test_sizes_are_what_the_files_take_on_disk_not_their_apparent_size(cache, capsys):
    """A build's states file is allocated at its full size and filled as rows are computed: sparse until then."""
    folder = cache / "states" / f"{KEY}.tmp-x1y2z3w4"
    folder.mkdir(parents=True)
    with open(folder / STATES_FILE, "wb") as states:
        states.write(b"\1" * 100_000)
        states.truncate(3 * 10**9)  # 3 GB apparent, 100 KB written
    _age(folder, 2 * HOUR)
    entry, = inventory()
    on_disk = (folder / STATES_FILE).stat().st_blocks * 512
    assert entry.bytes == on_disk < 10**7
    assert so8t(["cache", "prune", "--dry-run"]) == 0
    assert "GB" not in capsys.readouterr().out


def test_only_the_bases_the_workbench_converts_and_the_trash_of_a_staging_folder_are_its_own():
    """bases/llama-202412061530 (a user's folder ending in 12 hex digits) was taken for a half-made base and pruned;
    the trash of a staging folder whose removal was cut short was called unknown and kept for ever."""
    from so8t_lib.workbench.cache_inventory import name_form

    assert name_form("base", "gemma3-270m-a5fd3b62230a") == "entry"
    assert name_form("base", "llama-202412061530") is None and name_form("base", "notes-0123456789ab") is None
    assert name_form("frozen states", f".trash-{'0' * 24}.tmp-abc_12-1733000000") == "partial"
    assert name_form("frozen states", f".trash-{'0' * 24}-1733000000") == "partial"
