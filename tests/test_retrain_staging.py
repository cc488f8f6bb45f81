"""`retrain run` stages extract and preprocess inside --work: rows preprocess rejects stay where the error says they
are (and never over an earlier run's files), and staging folders a killed run left behind are cleared by the next
run on that --work (never one a running run holds), nothing else; preprocess failing for another reason keeps
nothing."""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from so8t_lib.core.config import ModelConfig
from so8t_lib.core.paths import CORPUS_DIR
from so8t_lib.core.staging import OWNER_FILE, UNLOCKED_STALE_S
from so8t_lib.data.corpus.splits import read_split
from so8t_lib.data.tables import DataError, load_table
from so8t_lib.model import SO8TModel
from so8t_lib.workbench import retrain

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny-training.yaml"
TOPICS = ["the VPN setup guide for contractors", "a parking permit for the visitor from the Kobe office",
          "the cafeteria menu for next Thursday's event", "the schedule of the fire drill in the east building"]


def _rows(count: int, offset: int = 0) -> list[dict]:
    return [{"id": f"ops-{n}", "user_request": f"Where can I find {TOPICS[n % len(TOPICS)]} (request {n})?",
             "label": "ALLOW", "category": "general", "lang": "en", "context": ""}
            for n in range(offset, offset + count)]


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*")) if not p.relative_to(folder).parts[0].startswith(".retrain-staging-")}


@pytest.fixture
def flow(tmp_path, tokenizer, monkeypatch):
    """A serving model, a small corpus, extract answering with whatever ``flow.rows`` holds, and training that
    stops the flow (these tests end before it)."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "val", "test"):
        rows = read_split(CORPUS_DIR, split)[::97][:20]
        (corpus / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                               encoding="utf-8")
    monkeypatch.setattr(retrain, "preprocess", functools.partial(retrain.preprocess, corpus_dir=corpus,
                                                                 benchmarks_dir=None))
    state = SimpleNamespace(rows=_rows(3), work=tmp_path / "work", corpus=corpus, logged=[],
                            serving=SO8TModel.from_config(ModelConfig(name="so8t-serving"), tokenizer).save(
                                tmp_path / "serving"))
    monkeypatch.setattr(retrain, "extract_rows", lambda *a, **k: (state.rows, {"labels": {}, "left_out": {}}))

    def stop(config, serving, resume=False):
        raise RuntimeError("training called")

    monkeypatch.setattr(retrain, "train_from_serving", stop)
    state.run = lambda: retrain.run_flow([tmp_path], state.serving, state.work, CONFIG, log=state.logged.append)
    return state


def test_rows_preprocess_rejects_in_a_fresh_work_stay_at_the_path_the_error_names(flow):
    flow.rows = [*_rows(1), {**_rows(1, 1)[0], "label": "MAYBE"}]
    placed = flow.work / "additional_training.jsonl"
    with pytest.raises(DataError) as caught:
        flow.run()
    assert f"{placed}:2: field 'label'" in str(caught.value) and ".retrain-staging-" not in str(caught.value)
    assert f"kept in {placed}" in str(caught.value)
    assert [json.loads(line)["label"] for line in placed.read_text(encoding="utf-8").splitlines()] == ["ALLOW", "MAYBE"]
    assert sorted(p.name for p in flow.work.iterdir()) == ["additional_training.jsonl"]  # no data, no staging


def test_rows_preprocess_rejects_never_replace_an_earlier_runs_rows_and_stay_in_the_named_staging_file(flow):
    flow.rows = _rows(3)
    with pytest.raises(RuntimeError, match="training called"):  # last month: rows and data in place
        flow.run()
    before = _snapshot(flow.work)
    taken = read_split(flow.corpus, "val")[0]["id"]
    flow.rows = [*_rows(2, 10), {**_rows(1, 12)[0], "id": taken}]
    with pytest.raises(retrain.PreprocessError, match="are also corpus row ids") as caught:
        flow.run()
    named = Path(str(caught.value).split(":")[0])
    assert named.parent.name.startswith(".retrain-staging-") and named.parent.parent == flow.work
    assert [r["id"] for r in load_table(named).to_dict("records")] == ["ops-10", "ops-11", taken]
    assert f"kept in {named}" in str(caught.value)
    assert _snapshot(flow.work) == before  # last month's rows and data as they were
    assert sorted(p.name for p in named.parent.iterdir()) == [OWNER_FILE, "additional_training.jsonl"]


def test_the_next_run_removes_staging_folders_a_killed_run_left_and_nothing_else(flow):
    flow.work.mkdir()
    stale = flow.work / ".retrain-staging-k1ll3d"
    (stale / "data").mkdir(parents=True)
    (stale / "additional_training.jsonl").write_text(json.dumps(_rows(1)[0]) + "\n", encoding="utf-8")
    (stale / OWNER_FILE).write_text("1\n", encoding="ascii")  # what a run writes once it holds the lock
    others = [flow.work / ".retrain-staging-note.txt", flow.work / ".retrain-notes", flow.work / "retrain-staging-x"]
    others[0].write_text("a file, not a staging folder", encoding="utf-8")
    others[1].mkdir()
    others[2].mkdir()
    with pytest.raises(RuntimeError, match="training called"):
        flow.run()
    assert not stale.exists() and all(p.exists() for p in others)
    assert any(str(stale) in line and line.startswith("removed") for line in flow.logged)
    assert len(load_table(flow.work / "additional_training.jsonl")) == 3
    assert not list(flow.work.glob(".retrain-staging-*/"))  # this run's own staging folder is gone as well


def test_a_second_run_leaves_the_staging_folder_of_a_run_still_preprocessing(flow, monkeypatch):
    """A second run (or a retry) on the same --work removed every .retrain-staging-* folder, the first run's live
    one too, which then failed with FileNotFoundError. Each run locks its folder now, and the clean-up skips it."""
    real = retrain.preprocess
    seen = {}

    def second_run_starts(rows_file, out, input_as=None):
        retrain.clear_stale_stages(flow.work, flow.logged.append)  # what another run does first
        seen["rows"] = Path(rows_file).is_file()
        return real(rows_file, out, input_as=input_as)

    monkeypatch.setattr(retrain, "preprocess", second_run_starts)
    with pytest.raises(RuntimeError, match="training called"):  # preprocess went through; the flow went on
        flow.run()
    assert seen == {"rows": True} and not any(line.startswith("removed") for line in flow.logged)
    assert len(load_table(flow.work / "additional_training.jsonl")) == 3
    assert not list(flow.work.glob(".retrain-staging-*"))


def test_rows_kept_after_a_rejection_stay_until_the_next_run_finds_their_folder_unlocked(flow, monkeypatch):
    """The note names the kept rows' file and says the next run removes its folder: a run starting while the
    rejected one still preprocessed left that file missing; now it stays for the run after."""
    flow.rows = _rows(3)
    with pytest.raises(RuntimeError, match="training called"):
        flow.run()
    real = retrain.preprocess

    def second_run_starts(rows_file, out, input_as=None):
        retrain.clear_stale_stages(flow.work, flow.logged.append)
        return real(rows_file, out, input_as=input_as)

    flow.rows = [*_rows(1, 10), {**_rows(1, 11)[0], "label": "MAYBE"}]
    with monkeypatch.context() as patch:
        patch.setattr(retrain, "preprocess", second_run_starts)
        with pytest.raises(DataError, match="the next so8t retrain run on this --work removes that folder") as caught:
            flow.run()
    kept = Path(str(caught.value).split(":")[0])
    assert kept.is_file() and len(kept.read_text(encoding="utf-8").splitlines()) == 2
    flow.rows = _rows(3, 20)
    with pytest.raises(RuntimeError, match="training called"):
        flow.run()
    assert not kept.parent.exists()
    assert any(line.startswith(f"removed {kept.parent}") for line in flow.logged)


def test_a_staging_folder_without_its_owner_file_goes_only_once_idle(flow):
    """A folder from before runs locked theirs (or one in the instant before its lock) has no owner file: it is
    removed once nothing in it changed for an hour, not while it may be in use."""
    flow.work.mkdir()
    fresh, old = flow.work / ".retrain-staging-fresh", flow.work / ".retrain-staging-old"
    for folder in (fresh, old):
        folder.mkdir()
        (folder / "additional_training.jsonl").write_text(json.dumps(_rows(1)[0]) + "\n", encoding="utf-8")
    hours_ago = time.time() - 2 * UNLOCKED_STALE_S
    for path in (old / "additional_training.jsonl", old):
        os.utime(path, (hours_ago, hours_ago))
    with pytest.raises(RuntimeError, match="training called"):
        flow.run()
    assert fresh.is_dir() and not old.exists()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"), MemoryError("preprocess")])
def test_preprocess_failing_for_another_reason_is_not_a_rejection_of_the_rows(flow, monkeypatch, error):
    """A full disk or no memory in preprocess was reported as rejected rows (the note on an OSError never reached
    the CLI's message) and left rows behind. Only PreprocessError and DataError keep the rows now."""
    message = str(error)

    def fails(rows_file, out, input_as=None):
        raise error

    monkeypatch.setattr(retrain, "preprocess", fails)
    with pytest.raises(type(error)) as caught:
        flow.run()
    assert caught.value is error and str(caught.value) == message and not getattr(error, "__notes__", None)
    assert not flow.work.exists() or list(flow.work.iterdir()) == []
