"""so8t cache: every entry named with its status; prune removes only what nothing will read again."""

from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.core.schema import MANIFEST_FILE
from so8t_lib.train.state_cache import CACHE_VERSION, INDEX_FILE, STATES_FILE, FrozenStates
from so8t_lib.workbench.cache_inventory import inventory, removable

HOUR = 3600.0
# the names the workbench gives its folders (a states key: 24 hex digits; bpe-<vocab>-<16 hex>; <base>-<sha12>),
# by the label each test knows them by: prune touches nothing else
KEYS = {label: hashlib.sha256(label.encode()).hexdigest()[:24] for label in
        ("current", "current-unversioned", "stale-v1", "damaged", "left", "building", "from-v3", "gone",
         "odd-version", "moved", "dangling")}
N = {**KEYS, "left.tmp": f"{KEYS['left']}.tmp-a1b2c3d4", "building.tmp": f"{KEYS['building']}.tmp-e5f6g7h8",
     ".trash-gone-1": f".trash-{KEYS['gone']}-1", "gemma3-270m-abc": "gemma3-270m-abcabcabcabc",
     "gemma3-270m-def": "gemma3-270m-defdefdefdef", "bpe-8192-ff": "bpe-8192-" + "f" * 16}
LABEL = {name: label for label, name in N.items()}


def _labels(entries):
    return {LABEL[e.path.name] for e in entries}


def _age(path, seconds):
    """Make ``path`` and everything under it look ``seconds`` old."""
    then = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (then, then))


def _states(folder, version=CACHE_VERSION, tokens=6, hidden=4):
    folder.mkdir(parents=True)
    index = {"k": 3, "tokens": tokens, "hidden": hidden, "prefix": 2, "rows": [["r1", 2, tokens - 2, 1]]}
    if version == 1:
        index = {"k": 3, "tokens": tokens, "hidden": hidden, "rows": [["r1", 0, tokens]]}
    elif version is not None:
        index["version"] = version
    (folder / INDEX_FILE).write_text(json.dumps(index))
    np.save(folder / STATES_FILE, np.zeros((tokens, hidden), dtype=np.float32))
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path))
    states = tmp_path / "states"
    _states(states / N["current"])
    _states(states / N["current-unversioned"], version=None)  # written before the index named its format
    _states(states / N["stale-v1"], version=1)
    (states / N["damaged"]).mkdir()
    (states / N["damaged"] / INDEX_FILE).write_text("{not json")
    _states(states / N["left.tmp"])
    _states(states / N["from-v3"], version=CACHE_VERSION + 1)  # a newer workbench shares the cache
    _states(states / N[".trash-gone-1"])  # a removal cut short
    base = tmp_path / "bases" / N["gemma3-270m-abc"]  # as pretrained.converted_base leaves it
    (base / "hf").mkdir(parents=True)
    (base / "hf" / "model.safetensors").write_bytes(b"x" * 100)
    (base / "hf" / MANIFEST_FILE).write_text("{}")
    half = tmp_path / "bases" / N["gemma3-270m-def"]  # the source file only: its conversion was cut short
    (half / "source").mkdir(parents=True)
    (half / "source" / "base.gguf").write_bytes(b"x" * 10)
    (tmp_path / "tokenizers" / N["bpe-8192-ff"]).mkdir(parents=True)
    (tmp_path / "tokenizers" / N["bpe-8192-ff"] / "tokenizer.json").write_text("{}")
    _age(tmp_path, 2 * HOUR)  # a folder written to in the last hour is left alone by prune, whatever it holds
    _states(states / N["building.tmp"])  # written to just now: a build in progress
    return tmp_path


def test_every_entry_is_named_with_its_status(cache):
    status = {LABEL[e.path.name]: (e.kind, e.status) for e in inventory()}
    assert status == {
        "current": ("frozen states", "current"), "current-unversioned": ("frozen states", "current"),
        "stale-v1": ("frozen states", "stale"), "damaged": ("frozen states", "damaged"),
        "left.tmp": ("frozen states", "partial"), "building.tmp": ("frozen states", "in progress"),
        "from-v3": ("frozen states", "newer"), ".trash-gone-1": ("frozen states", "partial"),
        "gemma3-270m-abc": ("base", "current"), "gemma3-270m-def": ("base", "partial"),
        "bpe-8192-ff": ("tokenizer", "current")}
    sizes = {LABEL[e.path.name]: e.bytes for e in inventory()}
    base = cache / "bases" / N["gemma3-270m-abc"]  # bytes on disk: what removing it frees
    assert sizes["gemma3-270m-abc"] == sum(p.stat().st_blocks * 512 for p in base.rglob("*") if p.is_file()) >= 102
    assert sizes["current"] > 6 * 4 * 4


def test_prune_keeps_what_is_in_use_unless_asked(cache):
    names = _labels
    entries = inventory()
    assert names(removable(entries)) == {"stale-v1", "damaged", "left.tmp", ".trash-gone-1", "gemma3-270m-def"}
    assert names(removable(entries, all_states=True)) - names(removable(entries)) == {"current", "current-unversioned"}
    _age(cache / "states" / N["current"], 20 * 24 * HOUR)
    assert names(removable(inventory(), unused_days=14)) - names(removable(entries)) == {"current"}


def test_prune_dry_run_removes_nothing_and_prune_removes_exactly_the_list(cache, capsys):
    before = sorted(p.name for p in cache.rglob("*"))
    assert so8t(["cache", "prune", "--dry-run"]) == 0
    assert sorted(p.name for p in cache.rglob("*")) == before
    assert "would remove 5 of 11 entries" in capsys.readouterr().out
    assert so8t(["cache", "prune"]) == 0
    left = _labels(inventory())
    assert left == {"current", "current-unversioned", "building.tmp", "from-v3", "gemma3-270m-abc", "bpe-8192-ff"}
    assert not any(".trash-" in p.name for p in cache.rglob("*"))  # renamed aside, then gone
    assert so8t(["cache"]) == 0 and "6 entries" in capsys.readouterr().out
    _age(cache / "states" / N["current"], 20 * 24 * HOUR)
    assert so8t(["cache", "prune", "--unused-days", "14"]) == 0
    assert _labels(inventory()) == left - {"current"}


def test_a_removal_that_fails_says_where_the_folder_is_and_exits_1(cache, monkeypatch, capsys):
    import shutil

    def refuse(path, *args, **kwargs):
        raise PermissionError("read-only")

    monkeypatch.setattr(shutil, "rmtree", refuse)
    assert so8t(["cache", "prune"]) == 1
    out = capsys.readouterr().out
    assert "renamed to" in out and f".trash-{N['stale-v1']}-" in out and "run prune again" in out


def test_list_refuses_prune_options(cache):
    with pytest.raises(SystemExit) as stop:
        so8t(["cache", "--all-states"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit):
        so8t(["cache", "prune", "--unused-days", "-1"])


def test_a_cache_setting_that_names_a_file_is_an_error_not_an_empty_cache(tmp_path, monkeypatch, capsys):
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "img.png"))
    for action in ("list", "prune"):
        with pytest.raises(SystemExit) as stop:
            so8t(["cache", action])
        assert stop.value.code == 2 and "img.png is a file, not a folder" in capsys.readouterr().err


def test_reading_a_state_cache_records_its_last_use(cache):
    folder = cache / "states" / N["current"]
    _age(folder, 30 * 24 * HOUR)
    stale_use = (folder / INDEX_FILE).stat().st_mtime
    frozen = FrozenStates(folder)
    assert frozen.lengths == {"r1": 6} and (folder / INDEX_FILE).stat().st_mtime > stale_use + 29 * 24 * HOUR
    assert folder not in {e.path for e in removable(inventory(), unused_days=14)}


@pytest.mark.parametrize("version", [None, "2b", [2], float("inf")])
def test_an_index_whose_version_cannot_be_read_is_damaged_and_pruned(cache, version, capsys):
    folder = cache / "states" / N["odd-version"]
    _states(folder)
    index = json.loads((folder / INDEX_FILE).read_text())
    (folder / INDEX_FILE).write_text(json.dumps({**index, "version": version}))
    _age(folder, 2 * HOUR)
    assert {e.path.name: e.status for e in inventory()}[N["odd-version"]] == "damaged"
    assert so8t(["cache"]) == 0 and so8t(["cache", "prune"]) == 0
    assert not folder.exists() and N["odd-version"] in capsys.readouterr().out


def test_a_tokenizer_folder_without_its_tokenizer_is_damaged(cache):
    (cache / "tokenizers" / N["bpe-8192-ff"] / "tokenizer.json").unlink()
    _age(cache / "tokenizers", 2 * HOUR)
    entry = {e.path.name: e for e in inventory()}[N["bpe-8192-ff"]]
    assert entry.status == "damaged" and "tokenizer.json" in entry.detail
    assert entry in removable(inventory())


def test_a_linked_state_cache_is_named_never_followed_and_prune_leaves_both(cache, tmp_path_factory, capsys):
    elsewhere = _states(tmp_path_factory.mktemp("other-disk") / N["moved"], version=1)  # stale, 100+ bytes
    link = cache / "states" / N["moved"]
    link.symlink_to(elsewhere, target_is_directory=True)
    (cache / "states" / N["dangling"]).symlink_to(cache / "gone")
    entries = {LABEL[e.path.name]: e for e in inventory()}
    for name in ("moved", "dangling"):
        assert entries[name].status == "link" and entries[name].bytes == 0 and "not followed" in entries[name].detail
    assert str(elsewhere) in entries["moved"].detail
    for _ in range(2):  # the second prune finds it as the first left it
        assert so8t(["cache", "prune", "--all-states"]) == 0
        assert link.is_symlink() and (elsewhere / STATES_FILE).is_file()
        assert not any(".trash-" in p.name for p in (cache / "states").iterdir())
    from so8t_lib.workbench.cache_inventory import remove

    remove(entries["moved"])  # the link goes, its target stays
    assert not link.is_symlink() and (elsewhere / STATES_FILE).is_file()


@pytest.mark.parametrize("days", ["nan", "inf", "-1", "x"])
def test_unused_days_must_be_a_finite_number_of_days(cache, days, capsys):
    with pytest.raises(SystemExit) as stop:
        so8t(["cache", "prune", "--unused-days", days])
    assert stop.value.code == 2 and "--unused-days" in capsys.readouterr().err
