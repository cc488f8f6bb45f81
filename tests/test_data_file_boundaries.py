"""Data files at their edges: a corpus row of the wrong type or outside the vocabulary, a CSV that is not UTF-8,
has a field too long for the csv module or another delimiter, a split file given for the corpus folder, and a
label audit of another corpus. Each is named (file, line, field or value) with what to do, exit 2, no traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from so8t_lib.cli import main as so8t
from so8t_lib.core.schema import SPLITS
from so8t_lib.data.corpus import build_corpus, read_split
from tests.test_corpus import _three_seeds


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A three-family corpus built in tmp_path (the project's data/so8t_safety is never touched)."""
    seeds, out = tmp_path / "seeds", tmp_path / "out"
    _three_seeds(seeds)
    build_corpus(seeds, out, benchmarks_dir=None)
    return out


def _rows(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]


def _write_rows(folder: Path, split: str, rows: list[dict]) -> None:
    (folder / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                           encoding="utf-8")


# --- corpus rows: every field the guards and statistics read has its type and its vocabulary ------------------------


@pytest.mark.parametrize("field, value, said", [
    ("context", ["a", "list"], "field 'context' must be a string or null, the row has list"),
    ("rationale", 3, "field 'rationale' must be a string or null, the row has int"),
    ("hard", "true", "field 'hard' must be true or false, the row has 'true'"),
    ("hard", None, "field 'hard' must be true or false, the row has null"),
    ("category", None, "field 'category' must be a string, the row has null"),
    ("label", "refuse", "field 'label' must be one of ALLOW, REFUSE, ESCALATE, the row has 'refuse'"),
    ("category", "HR", "field 'category' must be one of medical, "),
    ("lang", "fr", "field 'lang' must be one of ja, en, the row has 'fr'"),
    ("split", "holdout", "field 'split' must be one of train, val, test, the row has 'holdout'"),
    ("variant", ["original"], "field 'variant' must be a string or null, the row has list"),
    ("hazard", "weapon", "field 'hazard' must be one of violent_crime, "),
    ("hard_kind", ["lookalike"], "field 'hard_kind' must be one of benign_violent_words, "),
])
def test_check_and_stats_name_a_field_of_the_wrong_type_or_outside_the_vocabulary(corpus, field, value, said,
                                                                                   capsys):
    """A context given as a list crashed `check` with a TypeError (exit 1: 'leak found'), "hard": "true" crashed
    `stats`, and a label written "refuse" was counted nowhere by `stats` (pandas took it for missing) while
    `check` said ok."""
    rows = _rows(corpus, "test")
    rows[-1][field] = value
    _write_rows(corpus, "test", rows)
    with pytest.raises(ValueError, match=rf"test\.jsonl:{len(rows)}: ") as e:
        read_split(corpus, "test")
    assert said in str(e.value)
    for cmd in ("check", "stats"):
        assert so8t(["corpus", cmd, "--data", str(corpus)]) == 2
        err = capsys.readouterr().err
        assert f"test.jsonl:{len(rows)}: {said}" in err and "Traceback" not in err


def test_a_variant_an_earlier_corpus_version_made_is_read(corpus):
    """Corpora before v7 named variants this one no longer makes ("injection"); only stats reads the field."""
    rows = _rows(corpus, "test")
    rows[-1]["variant"] = "injection"
    _write_rows(corpus, "test", rows)
    assert read_split(corpus, "test")[-1]["variant"] == "injection"


def test_optional_fields_may_be_absent_or_null(corpus):
    """Fields a row may leave out are checked only when present, and a null text is one (the rationale of a built
    ALLOW row)."""
    rows = _rows(corpus, "train")
    for key in ("hard_kind", "framing", "hazard", "contrast", "hard"):
        rows[0].pop(key)
    rows[0]["context"] = None
    _write_rows(corpus, "train", rows)
    assert len(read_split(corpus, "train")) == len(rows)
    assert so8t(["corpus", "check", "--data", str(corpus)]) == 0


def test_stats_counts_every_row(corpus, capsys):
    from so8t_lib.data.corpus import split_summary

    total = sum(len(_rows(corpus, sp)) for sp in SPLITS)
    summary = split_summary(corpus)
    assert int(summary.loc["total", "rows"]) == total
    assert sum(int(summary.loc["total", lab]) for lab in ("ALLOW", "REFUSE", "ESCALATE")) == total


# --- CSV and JSONL files a user gives: named, with what to do ----------------------------------------------------


def test_a_csv_that_is_not_utf8_is_named_with_its_line_and_byte(tmp_path, capsys):
    """A Shift_JIS CSV crashed `so8t evaluate` and `so8t router` with a UnicodeDecodeError: the benchmark sniff read
    its header outside the guard the rows are read under."""
    from so8t_lib.data.benchmarks import load_any
    from so8t_lib.data.tables import DataError

    sjis = tmp_path / "sjis.csv"
    sjis.write_bytes("user_request,label,category\n経費精算の締め日は？,ALLOW,\n".encode("shift_jis"))
    with pytest.raises(DataError, match=r"sjis\.csv: not UTF-8 text \(line 2, byte 28: b'\\x8c'\); save it as UTF-8"):
        load_any(sjis)
    assert so8t(["router", "fit", "--data", str(sjis), "--out", str(tmp_path / "router.json")]) == 2
    err = capsys.readouterr().err
    assert "sjis.csv: not UTF-8 text (line 2" in err and "Traceback" not in err
    assert not (tmp_path / "router.json").exists()


def test_the_byte_named_in_a_long_file_is_the_files_byte(tmp_path):
    """The byte was counted from the start of the chunk the text stream decoded (8 KiB), not of the file."""
    from so8t_lib.data.tables import DataError, load_table

    good = "".join(json.dumps({"id": f"r{i}", "user_request": f"Book room {i}", "label": "ALLOW"}) + "\n"
                   for i in range(2000)).encode()
    path = tmp_path / "long.jsonl"
    path.write_bytes(good + b'{"id": "bad", "user_request": "caf\xe9", "label": "ALLOW"}\n')
    byte = len(good) + len(b'{"id": "bad", "user_request": "caf')
    with pytest.raises(DataError, match=rf"long\.jsonl: not UTF-8 text \(line 2001, byte {byte}: "):
        load_table(path)


def test_a_csv_field_over_the_csv_modules_limit_is_named(tmp_path, capsys):
    """A 200,000-character field crashed with `_csv.Error: field larger than field limit (131072)`; the project's
    own bound for a text (MAX_REQUEST_CHARS) is lower, so the file is refused, naming the line and both bounds."""
    from so8t_lib.data.benchmarks import load_any
    from so8t_lib.data.tables import MAX_REQUEST_CHARS, DataError

    big = tmp_path / "big.csv"
    big.write_text("user_request,label\nok,ALLOW\n\"" + "x" * 200_000 + "\",ALLOW\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"big\.csv:3: a field is longer than 131072 characters; a text may hold at "
                                        rf"most {MAX_REQUEST_CHARS}"):
        load_any(big)
    head = tmp_path / "head.csv"  # the same in the header, read by the benchmark sniff
    head.write_text("x" * 200_000 + ",label\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"head\.csv:1: a field is longer than 131072"):
        load_any(head)
    assert so8t(["router", "fit", "--data", str(big), "--out", str(tmp_path / "router.json")]) == 2
    assert "big.csv:3: a field is longer" in capsys.readouterr().err


@pytest.mark.parametrize("header, said", [
    ("user_request;label;category", r"its columns are \['user_request;label;category'\]; the header looks "
                                    r"separated by ';'"),
    ("user_request\tlabel\tcategory", r"the header looks separated by '\\t'"),
    ("user_request, label, category", r"'label'; its columns are \['user_request', ' label', ' category'\]"
                                      r"; ' label' is 'label' with spaces"),
    ("User_Request,label", r"'user_request'; .*'User_Request' is 'user_request' with spaces or capitals"),
    ("request,label", r"'user_request'; its columns are \['request', 'label'\]$"),
])
def test_a_csv_header_without_a_required_column_names_the_columns_found(tmp_path, header, said):
    """A file separated by semicolons, or with spaces after the commas, was said to lack 'user_request' (or 'label')
    on line 2, as if the row were empty."""
    from so8t_lib.data.tables import DataError, load_table

    path = tmp_path / "mine.csv"
    path.write_text(f"{header}\nhow do I reset my password,ALLOW,\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"mine\.csv:1: the header has no column .*{said}"):
        load_table(path)


# --- the corpus commands take the corpus folder ---------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["stats", "check", "audit"])
def test_corpus_commands_given_a_split_file_say_they_take_the_folder(corpus, cmd, capsys):
    """`--data data/so8t_safety/test.jsonl` said 'test.jsonl/train.jsonl not found (run: so8t corpus build)'."""
    assert so8t(["corpus", cmd, "--data", str(corpus / "test.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"--data {corpus / 'test.jsonl'} names a file; --data takes the corpus folder" in err
    assert f"(--data {corpus})" in err and "corpus build" not in err
    assert not (corpus / "label_audit.json").exists() and not (corpus.parent / "label_audit.json").exists()


# --- the label audit shown by stats is the audit of the corpus summarised -----------------------------------------


ROOT = Path(__file__).resolve().parents[1]


def _sample_corpus(tmp_path: Path) -> Path:
    """50 rows of each committed split copied beside a copy of the committed label audit (which records no corpus)."""
    from so8t_lib.core.paths import CORPUS_DIR, DATA_DIR

    data = tmp_path / "data" / "tiny_corpus"
    data.mkdir(parents=True)
    for sp in SPLITS:
        with (CORPUS_DIR / f"{sp}.jsonl").open(encoding="utf-8") as f:
            (data / f"{sp}.jsonl").write_text("".join(next(f) for _ in range(50)), encoding="utf-8")
    (data.parent / "label_audit.json").write_bytes((DATA_DIR / "label_audit.json").read_bytes())
    return data


def test_stats_does_not_show_the_audit_of_another_corpus(tmp_path, capsys):
    """`corpus stats --markdown` of 50 rows per split showed the committed corpus's audit ('families audited |
    2489'): label_audit.json did not say which corpus it audited."""
    data = _sample_corpus(tmp_path)
    assert so8t(["corpus", "stats", "--markdown", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    part = out[out.index("**Label audit**"):]
    assert "families audited" not in part and "| count |" not in part
    assert f"Not shown: {data.parent / 'label_audit.json'} is the audit of another corpus (" in part
    assert f"run so8t corpus audit --data {data}" in part and len(part.strip().splitlines()) == 3


def test_an_audit_records_its_corpus_and_stats_shows_it_only_for_that_corpus(tmp_path):
    from so8t_lib.data.corpus import stats_text
    from so8t_lib.data.corpus.audit import corpus_digests, read_audit

    data = _sample_corpus(tmp_path)
    path = data.parent / "label_audit.json"
    rep = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**rep, "corpus": corpus_digests(data)}), encoding="utf-8")
    md = stats_text(data, markdown=True, benchmarks_dir=None)
    assert "Of this corpus: label_audit.json records the SHA-256 of its split files (train " in md
    assert "| families audited | 2489 |" in md  # recorded: the counts need not match
    val = (data / "val.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    (data / "val.jsonl").write_text("".join(val[:-1]), encoding="utf-8")  # the same corpus less one row
    md = stats_text(data, markdown=True, benchmarks_dir=None)
    assert "families audited" not in md
    assert "is the audit of another corpus (the SHA-256 it records for val.jsonl differ" in md
    path.write_text(json.dumps({**rep, "corpus": ["train.jsonl"]}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a label audit \\('corpus' must map split files"):
        read_audit(path)


def test_the_committed_audit_is_shown_for_the_committed_corpus(tmp_path):
    """The committed label_audit.json records the corpus it audited; one that records none is not shown, since
    nothing says which corpus it is of."""
    from so8t_lib.core.paths import CORPUS_DIR, DATA_DIR
    from so8t_lib.data.corpus.stats import audit_table

    table = audit_table(DATA_DIR / "label_audit.json", CORPUS_DIR)
    assert table is not None and "| families audited | 2489 |" in table
    assert table.startswith("Of this corpus: label_audit.json records the SHA-256 of its split files (train ")
    older = tmp_path / "label_audit.json"
    report = json.loads((DATA_DIR / "label_audit.json").read_text(encoding="utf-8"))
    older.write_text(json.dumps({k: v for k, v in report.items() if k != "corpus"}), encoding="utf-8")
    assert audit_table(older, CORPUS_DIR) == (f"Not shown: {older} does not record which corpus it audited; run "
                                              "so8t corpus audit.")


def test_audit_labels_records_the_corpus_it_audited(tmp_path):
    from so8t_lib.data.corpus.audit import audit_labels, corpus_digests
    from tests.test_corpus_audit import _rows as audit_rows

    data = tmp_path / "c"
    data.mkdir()
    for sp in SPLITS:
        _write_rows(data, sp, [r for r in audit_rows() if r["split"] == sp])
    rep = audit_labels(data, seeds_dir=None, review_path=tmp_path / "none.yaml", group_threshold=0.9)
    assert rep["corpus"] == corpus_digests(data) and set(rep["corpus"]) == {f"{sp}.jsonl" for sp in SPLITS}
