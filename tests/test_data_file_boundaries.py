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
    ("variant", "orignal", "field 'variant' must be one of original, "),
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
