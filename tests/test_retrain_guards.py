"""Retraining's guards around the reviewers' rows: every new train row is trained on whatever train_max_rows says
(the corpus alone is sampled as before), `retrain run` replaces nothing in a --work folder whose run it then
refuses to continue, a new row nearly copying a corpus train row never lands in val, and a new row reusing a
corpus row's id is named by preprocess, not by training."""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.core.checkpoint import CheckpointError
from so8t_lib.core.config import ModelConfig
from so8t_lib.core.paths import CORPUS_DIR
from so8t_lib.data.corpus.neardup import NEAR_DUP_THRESHOLD, nearest_pairs
from so8t_lib.data.corpus.splits import read_split
from so8t_lib.data.corpus.text import stable_int, visible_text
from so8t_lib.data.tables import load_table, stratified_sample
from so8t_lib.data.training_split import training_tables
from so8t_lib.model import SO8TModel
from so8t_lib.workbench import retrain
from so8t_lib.workbench.retrain.preprocess import VAL_SHARE
from so8t_lib.workbench.retrain.train import ORIGIN_FILE, run_origin, train_rows

ROOT = Path(__file__).resolve().parents[1]
TOPICS = ["the quarterly travel budget for the Nagoya sales team", "a replacement badge for the third floor lab",
          "the onboarding checklist for new warehouse staff", "the cafeteria menu for next Thursday's event",
          "a parking permit for the visitor from the Kobe office", "the printer driver on the shared laptop",
          "the schedule of the fire drill in the east building", "a template for the monthly safety report",
          "the list of holidays the Sapporo branch observes", "the VPN setup guide for contractors"]
VERBS = ["Could you explain", "Please summarise", "Where can I find", "Who is responsible for",
         "How do I request", "Send me"]


def _rows(prefix: str, count: int, offset: int = 0) -> list[dict]:
    """Distinct, valid rows, English and Japanese, ALLOW and ESCALATE."""
    rows = []
    for n in range(offset, offset + count):
        escalate = n % 3 == 0
        rows.append({"id": f"{prefix}-{n}", "user_request": f"{VERBS[n % len(VERBS)]} {TOPICS[n % len(TOPICS)]} "
                                                             f"(request number {n})?",
                     "label": "ESCALATE" if escalate else "ALLOW", "category": "finance" if escalate else "general",
                     "lang": "ja" if n % 4 == 0 else "en", "context": ""})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _small_corpus(folder: Path) -> dict[str, list[dict]]:
    """Every 97th row of the project corpus's splits: the corpus build's own rows, fast to compare with."""
    corpus = {split: read_split(CORPUS_DIR, split)[::97][:n] for split, n in (("train", 30), ("val", 8), ("test", 8))}
    for split, rows in corpus.items():
        _write(folder / f"{split}.jsonl", rows)
    return corpus


def _ids(table) -> list[str]:
    return list(table["id"])


def test_every_new_train_row_is_kept_and_only_the_corpus_rows_are_sampled(tmp_path):
    """Under train_max_rows 3000 (configs/gemma3-270m.yaml) 28 of 165 reviewer rows were trained on."""
    corpus, new = _rows("corpus", 60), [{**r, "split": "train"} for r in _rows("ops", 12, 500)]
    data = tmp_path / "data"
    _write(data / "train.jsonl", corpus + new)
    _write(data / "val.jsonl", _rows("val", 10, 900))
    _write(data / "new_rows.jsonl", new)
    new_ids = {r["id"] for r in new}
    train, _ = training_tables(data, 30, None, 5)
    assert new_ids <= set(train["id"]) and len(train) == 30  # 12 new rows, the corpus sampled to the other 18
    corpus_part = stratified_sample(load_table(data / "train.jsonl").iloc[:60], 18, 5)
    assert _ids(train) == _ids(corpus_part) + sorted(new_ids, key=lambda i: int(i.split("-")[1]))  # file order
    train, _ = training_tables(data, 10, None, 5)  # the new rows alone exceed the budget: all of them, no corpus
    assert set(train["id"]) == new_ids
    trainer = SimpleNamespace(train_rows=train.to_dict("records"))
    config = SimpleNamespace(training=SimpleNamespace(data_dir=str(data), train_max_rows=10))
    assert train_rows(trainer, config) == {"new": 12, "corpus": 0, "train_max_rows": 10}  # recorded with the run
    (data / "new_rows.jsonl").unlink()  # any other folder: the plain stratified sample, row for row
    assert _ids(training_tables(data, 30, None, 5)[0]) == _ids(stratified_sample(load_table(data / "train.jsonl"),
                                                                                 30, 5))


def test_the_corpus_alone_is_sampled_exactly_as_before():
    """make demo and ordinary training: the same rows in the same order for a fixed seed."""
    train, val = training_tables(CORPUS_DIR, 500, 50, 3)
    assert _ids(train) == _ids(stratified_sample(load_table(CORPUS_DIR / "train.jsonl"), 500, 3))
    assert _ids(val) == _ids(stratified_sample(load_table(CORPUS_DIR / "val.jsonl"), 50, 3))


def _val_family(prefix: str) -> str:
    """An id whose family the seeded hash sends to val."""
    return next(f"{prefix}{k}" for k in range(1000) if stable_int(0, "retrain", f"{prefix}{k}") % VAL_SHARE == 0)


def test_a_new_row_nearly_copying_a_corpus_train_row_goes_to_train_with_its_family(tmp_path):
    """12 of 12 such rows went to val in the review's run, where validation scored rows the model trained on."""
    corpus = _small_corpus(tmp_path / "corpus")
    copied = next(r["user_request"] for r in corpus["train"] if r["label"] == "ALLOW" and r["lang"] == "en"
                  and 60 <= len(r["user_request"]) <= 160)
    near, partner, alone = _val_family("ops-a"), _val_family("ops-b"), _val_family("ops-z")
    rows = [{"id": near, "user_request": copied + " thanks", "label": "ALLOW"},
            {"id": partner, "user_request": copied[: len(copied) // 2] + " and who should I copy on the reply to the "
                                            "whole team?", "label": "ALLOW"},
            {"id": alone, "user_request": "来月の部署懇親会の会場候補を三つ挙げてください", "label": "ALLOW"}]
    texts = [visible_text(r["user_request"]) for r in rows]  # only the first is a near copy of a corpus row
    corpus_texts = [visible_text(r["user_request"]) for split in corpus.values() for r in split]
    assert [i for _, i, _ in nearest_pairs(texts, corpus_texts, top=0, min_sim=NEAR_DUP_THRESHOLD)] == [0]
    report = retrain.preprocess(_write(tmp_path / "rows.jsonl", rows), tmp_path / "out", tmp_path / "corpus", None)
    new = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "new_rows.jsonl").read_text().splitlines())}
    assert new[near]["family"] == new[partner]["family"] == near  # one family: it goes where its near copy goes
    assert (new[near]["split"], new[partner]["split"], new[alone]["split"]) == ("train", "train", "val")
    assert report["near_corpus_train"] == [near] and report["splits"] == {"train": 2, "val": 1}


def test_preprocess_names_a_new_row_that_reuses_a_corpus_id(tmp_path, capsys):
    taken = _small_corpus(tmp_path / "corpus")["val"][1]["id"]
    rows = _write(tmp_path / "rows.jsonl", [{"id": taken, "user_request": "来月の部署懇親会の会場候補を三つ挙げて",
                                             "label": "ALLOW"}])
    with pytest.raises(retrain.PreprocessError, match=rf"1 row id\(s\) are also corpus row ids: '{re.escape(taken)}' "
                                                      r"\(corpus val\).*ids of their own"):
        retrain.preprocess(rows, tmp_path / "out", tmp_path / "corpus", None)
    assert not (tmp_path / "out").exists()
    assert so8t(["retrain", "preprocess", "--input", str(rows), "--out", str(tmp_path / "out"), "--corpus",
                 str(tmp_path / "corpus"), "--no-benchmark-guard"]) == 2
    assert f"{taken!r} (corpus val)" in capsys.readouterr().err and not (tmp_path / "out").exists()


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def last_month(tmp_path, tokenizer, monkeypatch):
    """A --work folder holding last month's run (rows, data folder, run with its origin), a small corpus, and
    extract answering with this month's rows."""
    _small_corpus(tmp_path / "corpus")
    monkeypatch.setattr(retrain, "preprocess", functools.partial(retrain.preprocess, corpus_dir=tmp_path / "corpus",
                                                                 benchmarks_dir=None))
    serving = SO8TModel.from_config(ModelConfig(name="so8t-serving"), tokenizer).save(tmp_path / "serving")
    work = tmp_path / "work"
    work.mkdir()
    retrain.write_rows(_rows("ops", 4, 500), work / "additional_training.jsonl")
    retrain.preprocess(work / "additional_training.jsonl", work / "data")
    config = retrain.retrain_config(ROOT / "configs" / "tiny-training.yaml", serving, work / "data", work / "run")
    (work / "run" / "last").mkdir(parents=True)
    (work / "run" / ORIGIN_FILE).write_text(json.dumps(run_origin(config, serving)), encoding="utf-8")
    this_month = _rows("ops", 5, 500)
    monkeypatch.setattr(retrain, "extract_rows", lambda *a, **k: (this_month, {"labels": {}, "left_out": {}}))
    return SimpleNamespace(work=work, serving=serving)


def test_retrain_run_replaces_nothing_in_a_work_folder_whose_run_it_will_not_continue(last_month):
    work, before = last_month.work, _snapshot(last_month.work)
    with pytest.raises(CheckpointError, match="on other data.*data_sha256 differ.*new folder.*--resume"):
        retrain.run_flow([work], last_month.serving, work, ROOT / "configs" / "tiny-training.yaml")
    assert _snapshot(work) == before  # last month's rows, data and run as they were, no staging folder left


def test_retrain_run_refuses_another_serving_model_before_extracting(last_month, tokenizer, tmp_path, monkeypatch):
    other = SO8TModel.from_config(ModelConfig(name="so8t-other"), tokenizer).save(tmp_path / "other")
    monkeypatch.setattr(retrain, "extract_rows", lambda *a, **k: pytest.fail("extract ran before the check"))
    work, before = last_month.work, _snapshot(last_month.work)
    with pytest.raises(CheckpointError, match="serving_version differ"):
        retrain.run_flow([work], other, work, ROOT / "configs" / "tiny-training.yaml")
    assert _snapshot(work) == before


def test_retrain_run_places_the_staged_rows_and_data_once_the_run_may_go_on(last_month, monkeypatch):
    work = last_month.work
    (work / "run" / ORIGIN_FILE).unlink()
    (work / "run" / "last").rmdir()

    def stop(config, serving, resume=False):
        raise RuntimeError(f"training called, resume={resume}")

    monkeypatch.setattr(retrain, "train_from_serving", stop)
    with pytest.raises(RuntimeError, match="training called, resume=False"):
        retrain.run_flow([work], last_month.serving, work, ROOT / "configs" / "tiny-training.yaml")
    assert len(load_table(work / "additional_training.jsonl")) == 5
    assert len(load_table(work / "data" / "new_rows.jsonl")) == 5
    report = json.loads((work / "data" / "preprocess.json").read_text(encoding="utf-8"))
    assert report["input"] == str(work / "additional_training.jsonl")  # where the rows lie, not the staging copy
    assert not list(work.glob(".*"))  # no staging or swap folder left behind


def test_a_misspelt_public_set_stops_the_flow_before_anything_is_read_or_trained(tmp_path):
    """notebook 08 with public ["xtest"] failed only after extract, preprocess and training."""
    from so8t_lib.data.tables import DataError

    with pytest.raises(DataError, match="xtest: no such data set"):
        retrain.run_flow([tmp_path / "logs"], tmp_path / "serving", tmp_path / "work", public=("xtest",))
    assert not (tmp_path / "work").exists()
