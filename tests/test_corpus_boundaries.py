"""so8t corpus at its edges: a failed or refused build leaves the old corpus whole, bad input is named (exit 2, no
traceback), one notion of "the same request" from the seeds to training, and the audit file stats reads is the
one audit writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from so8t_lib.cli import corpus as corpus_cli
from so8t_lib.cli import main as so8t
from so8t_lib.core.schema import SPLITS
from so8t_lib.data.corpus import build, build_corpus, leakage_report, load_seeds, read_split, stats_text
from so8t_lib.data.corpus.audit import audit_labels, write_audit
from tests.test_corpus import _seed, _three_seeds, _write
from tests.test_corpus_audit import _rows as audit_rows


@pytest.fixture
def built(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """(seeds folder, corpus folder, its files' bytes) of a three-family build."""
    seeds, out = tmp_path / "seeds", tmp_path / "out"
    _three_seeds(seeds)
    build_corpus(seeds, out, benchmarks_dir=None)
    return seeds, out, {sp: (out / f"{sp}.jsonl").read_bytes() for sp in SPLITS}


def _bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- writing: all splits together, never over someone's files ----------------------------------------------------


def test_a_build_that_fails_partway_leaves_the_old_corpus_whole(built, monkeypatch):
    """Each split was written on its own: a failure on val (disk full, Ctrl-C) left the new train beside the old
    val and test, so families of the new train sat in the old test."""
    seeds, out, before = built
    real = build._row_line

    def fail_on_val(row: dict) -> str:
        if row["split"] == "val":
            raise OSError(28, "No space left on device")
        return real(row)

    monkeypatch.setattr(build, "_row_line", fail_on_val)
    with pytest.raises(OSError, match="No space left"):
        build_corpus(seeds, out, seed=1, benchmarks_dir=None)
    assert {sp: (out / f"{sp}.jsonl").read_bytes() for sp in SPLITS} == before
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []  # no staging folder left


def test_a_build_refuses_a_folder_holding_other_files(tmp_path, capsys):
    seeds, out = tmp_path / "seeds", tmp_path / "mydata"
    _three_seeds(seeds)
    out.mkdir()
    (out / "train.jsonl").write_text('{"id": "mine-1", "user_request": "my own row", "label": "ALLOW"}\n')
    (out / "notes.md").write_text("notes\n")
    (out / "val.jsonl").mkdir()  # a split's name, but not a file the build wrote
    before = _bytes(out)
    assert so8t(["corpus", "build", "--seeds-dir", str(seeds), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("so8t corpus: --out") and "notes.md, val.jsonl" in err and "Traceback" not in err
    assert _bytes(out) == before and (out / "val.jsonl").is_dir()


def test_a_rebuild_keeps_the_split_checksums_beside_it(built):
    """The Makefile's train.jsonl.sha256 lives in the corpus folder: a rebuild carries it over."""
    seeds, out, before = built
    (out / "train.jsonl.sha256").write_text("abc  train.jsonl\n")
    build_corpus(seeds, out, benchmarks_dir=None)
    assert (out / "train.jsonl.sha256").read_text() == "abc  train.jsonl\n"
    assert {sp: (out / f"{sp}.jsonl").read_bytes() for sp in SPLITS} == before


def test_a_linked_corpus_folder_is_built_where_it_lives(built, tmp_path):
    """The swap replaced a symlinked --out (a corpus moved to another disk) with a real folder and left the link
    behind as data/.so8t_safety.old-<pid>; the linked copy went stale."""
    seeds, out, before = built
    link = tmp_path / "linked"
    link.symlink_to(out)
    build_corpus(seeds, link, seed=1, benchmarks_dir=None)
    assert link.is_symlink() and link.resolve() == out.resolve()
    assert {sp: (out / f"{sp}.jsonl").read_bytes() for sp in SPLITS} != before  # seed 1: rebuilt in place
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


# --- bad input: named, exit 2, before the work ----------------------------------------------------------------------


def test_build_out_that_is_or_lies_under_a_file(tmp_path, capsys):
    seeds, afile = tmp_path / "seeds", tmp_path / "afile"
    _three_seeds(seeds)
    afile.write_text("keep\n")
    for out, said in ((afile, "is a file, not a folder"), (afile / "sub", "is a file, so no folder can be made")):
        assert so8t(["corpus", "build", "--seeds-dir", str(seeds), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"so8t corpus: --out {out}") and said in err
    assert afile.read_text() == "keep\n"


def test_an_unreadable_seed_file_is_named(tmp_path, capsys):
    seeds = tmp_path / "seeds"
    _three_seeds(seeds)
    (seeds / "x.yaml").mkdir()
    assert so8t(["corpus", "build", "--seeds-dir", str(seeds), "--out", str(tmp_path / "o")]) == 2
    assert f"so8t corpus: {seeds / 'x.yaml'}: cannot be read" in capsys.readouterr().err
    (seeds / "x.yaml").rmdir()
    (seeds / "latin1.yaml").write_bytes("- id: tst-en-009\n  request: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.yaml: not UTF-8"):
        load_seeds(seeds)
    assert so8t(["corpus", "build", "--seeds-dir", str(seeds / "latin1.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "latin1.yaml is a file; --seeds-dir takes the folder" in capsys.readouterr().err  # said "not found"
    (seeds / "latin1.yaml").unlink()
    for name in ("more.yml", "MORE.YAML"):  # skipped without a word: the corpus was built without them
        (seeds / name).write_text("- id: tst-en-010\n  request: where is the printer\n", encoding="utf-8")
        with pytest.raises(ValueError, match=rf"{name}: seed files are read as \*\.yaml; rename them"):
            load_seeds(seeds)
        (seeds / name).unlink()
    assert load_seeds(seeds)


def test_audit_input_errors_are_named_before_the_work(tmp_path, capsys, monkeypatch):
    data = tmp_path / "c"
    data.mkdir()
    monkeypatch.setattr(corpus_cli, "audit_labels", lambda *a: pytest.fail("the audit ran before the checks"))
    review = tmp_path / "review.yaml"
    review.write_text("a: [unclosed\n")
    afile = tmp_path / "afile"
    afile.write_text("")
    _three_seeds(tmp_path / "seeds")
    args = ["corpus", "audit", "--data", str(data), "--seeds-dir", str(tmp_path / "seeds")]
    assert so8t([*args, "--out", str(afile / "a.json"), "--review", str(review)]) == 2
    assert "so8t corpus: --out" in capsys.readouterr().err
    monkeypatch.setattr(corpus_cli, "audit_labels", audit_labels)
    assert so8t([*args, "--out", str(tmp_path / "a.json"), "--review", str(review)]) == 2
    err = capsys.readouterr().err
    assert f"so8t corpus: {review}: not valid YAML" in err and "Traceback" not in err
    assert not (tmp_path / "a.json").exists()
    (data / "val.jsonl").write_text("kept\n")
    review.write_text("kept: true\n")
    seed_file = sorted((tmp_path / "seeds").glob("*.yaml"))[0]
    for out in (data / "val.jsonl", review, seed_file):  # a split, the review or a seed file it reads
        assert so8t([*args, "--out", str(out), "--review", str(review)]) == 2
        assert "writing the audit there would replace it" in capsys.readouterr().err
    assert (data / "val.jsonl").read_text() == "kept\n" and review.read_text() == "kept: true\n"


def test_the_audit_goes_beside_the_corpus_folder_as_named(tmp_path, monkeypatch):
    """'.' (inside the corpus folder) put it inside the folder, where the next build refused it as foreign; a
    linked corpus folder put it beside the link's target, away from the tracked data/label_audit.json."""
    from so8t_lib.data.corpus.audit import audit_path

    (tmp_path / "disk" / "corpus").mkdir(parents=True)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "so8t_safety").symlink_to(tmp_path / "disk" / "corpus")
    assert audit_path(tmp_path / "data" / "so8t_safety") == tmp_path / "data" / "label_audit.json"
    monkeypatch.chdir(tmp_path / "disk" / "corpus")
    assert audit_path(".") == tmp_path / "disk" / "label_audit.json"


def test_a_bug_in_build_is_not_reported_as_a_row_without_a_field(monkeypatch):
    """The handler named args.data, which build has not: an AttributeError hid the KeyError."""
    monkeypatch.setattr(corpus_cli, "build_corpus", lambda *a, **k: {}["x"])
    with pytest.raises(KeyError):
        so8t(["corpus", "build"])


@pytest.mark.parametrize("line, said", [
    ('["a list"]', "must be a JSON object, got list"),
    ('{"id": "r1", "user_request": null, "family": "f", "split": "val", "label": "ALLOW"}',
     "field 'user_request' must be a string, the row has null"),
    ('{"id": "r1", "user_request": "hi", "family": "f", "split": ["val"], "label": "ALLOW"}',
     "field 'split' must be a string, the row has list"),
])
def test_check_and_stats_name_a_malformed_row(built, line, said, capsys):
    _, out, _ = built
    with (out / "val.jsonl").open("a", encoding="utf-8") as f:
        f.write(line + "\n")
    n = len((out / "val.jsonl").read_text().splitlines())
    with pytest.raises(ValueError, match=rf"val\.jsonl:{n}: .*{said}"):
        read_split(out, "val")
    for cmd in ("check", "stats"):
        assert so8t(["corpus", cmd, "--data", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"val.jsonl:{n}: " in err and said in err and "Traceback" not in err


def test_a_split_that_is_not_utf8_is_named_and_so_is_it_in_retrain_preprocess(built, tmp_path, capsys):
    _, out, _ = built
    with (out / "test.jsonl").open("ab") as f:
        f.write(b'{"id": "\xff\xfe"}\n')
    with pytest.raises(ValueError, match=r"test\.jsonl: not UTF-8 text \(byte \d+\)"):
        read_split(out, "test")
    assert so8t(["corpus", "check", "--data", str(out)]) == 2
    assert "test.jsonl: not UTF-8 text" in capsys.readouterr().err
    rows = tmp_path / "rows.jsonl"  # the corpus preprocess guards against is damaged: named, exit 2, nothing written
    rows.write_text(json.dumps({"context": "", "user_request": "Where is the remote work form?", "label": "ALLOW",
                                "category": "hr", "id": "ops-1"}) + "\n", encoding="utf-8")
    assert so8t(["retrain", "preprocess", "--input", str(rows), "--corpus", str(out), "--out", str(tmp_path / "pp"),
                 "--no-benchmark-guard"]) == 2
    err = capsys.readouterr().err
    assert "test.jsonl: not UTF-8 text" in err and "Traceback" not in err and not (tmp_path / "pp").exists()


# --- one notion of "the same request": training's --------------------------------------------------------------------


def test_seeds_asking_the_same_thing_but_for_punctuation_are_refused(tmp_path):
    """'Reset my password!' (ALLOW) beside 'Reset my password' (ESCALATE) built, and `check` said ok, while
    training's load_table refused the split that held both."""
    for other in ("reset my password!", "R.e.s.e.t  m.y p.a.s.s.w.o.r.d"):
        path = _write(tmp_path / other[:5], "s.yaml", [
            _seed(request="Reset my password", alt=["Please reset my password for me"]),
            _seed(id="tst-en-002", request="Something else entirely", alt=[other]),
        ])
        with pytest.raises(ValueError, match="duplicate normalised text") as e:
            load_seeds(tmp_path / other[:5])
        assert str(path) in str(e.value) and "tst-en-002" in str(e.value)


def test_check_finds_a_request_in_two_splits_that_differs_in_punctuation(built):
    _, out, _ = built
    train = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    val = [json.loads(x) for x in (out / "val.jsonl").read_text().splitlines()]
    val[0]["user_request"] = train[0]["user_request"].upper().replace(" ", "  ") + "!!"
    (out / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in val))
    rep = leakage_report(out, benchmarks_dir=None)
    assert [train[0]["id"], val[0]["id"]] in rep["requests_in_multiple_splits"] and not rep["ok"]


# --- the label audit: written where stats reads it, read with its name ------------------------------------------


def test_audit_writes_beside_the_corpus_it_audits_and_stats_reads_it(tmp_path, monkeypatch, capsys):
    """--data ELSEWHERE wrote the project's data/label_audit.json, while stats --markdown --data ELSEWHERE read
    ELSEWHERE/../label_audit.json."""
    data = tmp_path / "c"
    data.mkdir()
    for sp in SPLITS:
        (data / f"{sp}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in audit_rows() if r["split"] == sp))
    rep = audit_labels(data, seeds_dir=None, review_path=tmp_path / "none.yaml", group_threshold=0.9)
    written = []

    def record(report: dict, path: Path) -> Path:  # writes only under tmp_path, whatever the code under test says
        written.append(Path(path))
        return write_audit(report, path) if tmp_path in Path(path).parents else Path(path)

    monkeypatch.setattr(corpus_cli, "audit_labels", lambda *a: rep)
    monkeypatch.setattr(corpus_cli, "write_audit", record)
    assert so8t(["corpus", "audit", "--data", str(data), "--review", str(tmp_path / "none.yaml")]) == 0
    assert written == [tmp_path / "label_audit.json"]
    assert "**Label audit**" in stats_text(data, markdown=True, benchmarks_dir=None)


@pytest.mark.parametrize("text, said", [("{}", "no 'summary'"), ("not json", "not valid JSON")])
def test_stats_names_an_audit_file_that_is_not_one(built, text, said, capsys):
    _, out, _ = built
    (out.parent / "label_audit.json").write_text(text)
    assert so8t(["corpus", "stats", "--markdown", "--data", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"so8t corpus: {out.parent / 'label_audit.json'}: not a label audit ({said}" in err
