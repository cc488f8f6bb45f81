"""so8t retrain preprocess at its edges: its output folder is swapped in whole, so it must never be a folder
that holds the input, the corpus or anyone's other files (they were deleted without a word); and rows whose
ids load_table accepts but normalises (none, padded, 7.0) keep their request_id instead of a KeyError."""

from __future__ import annotations

import json
import shutil

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.core.paths import CORPUS_DIR
from so8t_lib.workbench import retrain
from so8t_lib.workbench.retrain.preprocess import OUTPUT_FILES, REPORT_FILE

ROW = {"context": "", "user_request": "Where is the form for next week's remote work application?", "label": "ALLOW",
       "category": "hr", "rationale": "", "task_output": "", "source": "operations", "request_id": "req_x"}


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _preprocess(rows_file, out, *more):
    return so8t(["retrain", "preprocess", "--input", str(rows_file), "--out", str(out), "--no-benchmark-guard", *more])


def test_an_out_that_holds_the_input_is_refused_and_nothing_is_touched(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "additional_training.jsonl").write_text(json.dumps({**ROW, "id": "ops-req_x"}) + "\n", encoding="utf-8")
    (data / "reviews.jsonl").write_text('{"request_id": "req_x", "label": "ALLOW"}\n', encoding="utf-8")
    (data / "notes.md").write_text("hand-written notes\n", encoding="utf-8")
    before = _snapshot(data)
    assert _preprocess(data / "additional_training.jsonl", data) == 2
    assert "holds the input file" in capsys.readouterr().err
    assert _preprocess(data / "additional_training.jsonl", tmp_path) == 2  # a folder above it, too
    assert _snapshot(data) == before and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_an_out_preprocess_did_not_write_is_refused_and_its_files_kept(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({**ROW, "id": "ops-req_x"}) + "\n", encoding="utf-8")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.md").write_text("keep me\n", encoding="utf-8")
    (other / "train.jsonl").write_text("{}\n", encoding="utf-8")  # a name preprocess writes, but no preprocess.json
    before = _snapshot(other)
    assert _preprocess(rows, other) == 2
    assert "preprocess did not write (notes.md)" in capsys.readouterr().err
    assert _snapshot(other) == before
    (other / "notes.md").unlink()
    assert _preprocess(rows, other) == 2
    assert f"no {REPORT_FILE}" in capsys.readouterr().err
    assert _snapshot(other) == {"train.jsonl": b"{}\n"}


def test_the_corpus_folder_is_never_the_out_nor_around_nor_under_it(tmp_path):
    root = tmp_path / "root"
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    for split in ("train", "val", "test"):
        shutil.copyfile(CORPUS_DIR / f"{split}.jsonl", corpus / f"{split}.jsonl")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({**ROW, "id": "ops-req_x"}) + "\n", encoding="utf-8")
    before = _snapshot(root)
    for out in (corpus, corpus / "retrain", root):
        with pytest.raises(retrain.PreprocessError, match="corpus folder"):
            retrain.preprocess(rows, out, corpus, benchmarks_dir=None)
    assert _snapshot(root) == before and not (corpus / "retrain").exists()
    assert _preprocess(rows, corpus / "retrain", "--corpus", str(corpus)) == 2


def test_an_earlier_preprocess_output_is_replaced_but_not_once_someone_added_a_file(tmp_path, capsys):
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({**ROW, "id": "ops-req_x"}) + "\n", encoding="utf-8")
    out = tmp_path / "retrain"
    out.mkdir()  # an empty folder may be filled
    assert _preprocess(rows, out) == 0
    first = _snapshot(out)
    assert set(first) == set(OUTPUT_FILES)
    assert _preprocess(rows, out) == 0  # the documented re-run: the earlier output is replaced whole
    assert set(_snapshot(out)) == set(first)
    (out / "notes.md").write_text("mine\n", encoding="utf-8")
    capsys.readouterr()
    assert _preprocess(rows, out) == 2
    assert "notes.md" in capsys.readouterr().err and (out / "notes.md").read_text(encoding="utf-8") == "mine\n"


def test_rows_whose_ids_load_table_normalises_keep_their_request_ids(tmp_path):
    rows = tmp_path / "rows.jsonl"
    requests = ["Where is the form for next week's remote work application?",
                "How do I book the large meeting room on the third floor for Friday?",
                "Which cost centre code goes on a taxi receipt from a client visit?"]
    ids = [{}, {"id": " ops-1 "}, {"id": 7.0}]  # no id, padded, a whole float: load_table accepts all three
    rows.write_text("".join(json.dumps({**ROW, **i, "user_request": q, "request_id": f"req_{n}"}) + "\n"
                            for n, (i, q) in enumerate(zip(ids, requests))), encoding="utf-8")
    report = retrain.preprocess(rows, tmp_path / "out", benchmarks_dir=None)
    assert report["rows"] == 3 and report["kept"] == 3
    new = [json.loads(line) for line in (tmp_path / "out" / "new_rows.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {str(r["id"]): r["request_id"] for r in new} == {"rows:1": "req_0", "ops-1": "req_1", "7": "req_2"}


def test_rows_asking_the_same_thing_in_other_spellings_share_a_family(tmp_path):
    """Families were made by raw character 4-gram overlap only: a request and its copy with zero-width spaces
    between the letters could land one in train and one in val, and training then refused the folder preprocess
    had written (a val row asking what a train row asks)."""
    from so8t_lib.data.training_split import training_tables

    requests = ["Where is the form for next week's remote work application?",
                "How do I book the large meeting room on the third floor for Friday?",
                "Which cost centre code goes on a taxi receipt from a client visit?"]
    spelled = [*requests, *("\u200b".join(q) for q in requests)]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({**ROW, "id": f"ops-{n}", "user_request": q, "request_id": f"req_{n}"}) + "\n"
                            for n, q in enumerate(spelled)), encoding="utf-8")
    retrain.preprocess(rows, tmp_path / "out", benchmarks_dir=None)
    new = {r["id"]: r for r in map(json.loads, (tmp_path / "out" / "new_rows.jsonl").read_text().splitlines())}
    for n in range(3):
        assert new[f"ops-{n}"]["family"] == new[f"ops-{n + 3}"]["family"]
        assert new[f"ops-{n}"]["split"] == new[f"ops-{n + 3}"]["split"]
    training_tables(tmp_path / "out", None, None, 0)  # the folder preprocess wrote trains
