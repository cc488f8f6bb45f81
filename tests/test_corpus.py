"""The committed SO8T safety corpus and its generator (so8t_lib.data.corpus): fast, no GPU, no network."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest
import yaml

from so8t_lib.cli import main as so8t
from so8t_lib.core.schema import CATEGORIES, LABELS, LANGS, SPLITS
from so8t_lib.data import corpus
from so8t_lib.data.benchmarks import BENCHMARKS
from so8t_lib.data.corpus import (
    HARD_KINDS,
    ROW_KEYS,
    VARIANTS,
    assign_splits,
    build_corpus,
    corpus_stats,
    expand_seed,
    leakage_report,
    load_seeds,
    normalize_text,
)

ROOT = Path(__file__).resolve().parents[1]
SEEDS_DIR = ROOT / "data" / "seeds"
DATA_DIR = ROOT / "data" / "so8t_safety"
BENCH_DIR = ROOT.parent / "shared" / "benchmarks"


@pytest.fixture(scope="module")
def rows_by_split() -> dict[str, list[dict]]:
    return {sp: [json.loads(line) for line in (DATA_DIR / f"{sp}.jsonl").read_text(encoding="utf-8").splitlines()]
            for sp in SPLITS}


@pytest.fixture(scope="module")
def all_rows(rows_by_split) -> list[dict]:
    return [r for sp in SPLITS for r in rows_by_split[sp]]


@pytest.fixture(scope="module")
def seeds() -> list[corpus.Seed]:
    return load_seeds(SEEDS_DIR)


# --- the committed files -----------------------------------------------------------------------


def test_committed_counts(all_rows):
    n = len(all_rows)
    assert n >= 4000
    assert sum(r["lang"] == "ja" for r in all_rows) / n >= 0.40
    assert sum(r["hard"] for r in all_rows) / n >= 0.25


def test_committed_rows_valid(rows_by_split, seeds):
    by_id = {s.id: s for s in seeds}
    for sp, rows in rows_by_split.items():
        assert rows, f"{sp}.jsonl is empty"
        for r in rows:
            assert tuple(r) == ROW_KEYS, r["id"]
            assert r["split"] == sp, r["id"]
            assert r["label"] in LABELS and r["category"] in CATEGORIES and r["lang"] in LANGS, r["id"]
            assert isinstance(r["context"], str) and isinstance(r["user_request"], str) and r["user_request"].strip()
            assert isinstance(r["hard"], bool) and r["hard_kind"] in (None, *HARD_KINDS), r["id"]
            assert r["hard"] == (r["hard_kind"] is not None), r["id"]
            assert r["variant"] in VARIANTS, r["id"]
            if r["variant"] == "injection":
                assert r["hard"], r["id"]
            if r["label"] == "ALLOW":
                assert r["rationale"] is None and isinstance(r["task_output"], str) and r["task_output"], r["id"]
            else:
                assert r["task_output"] is None and isinstance(r["rationale"], str) and r["rationale"], r["id"]
                assert r["category"] != "none", r["id"]
            s = by_id[r["family"]]  # the family is a seed and the row keeps that seed's label
            assert (r["label"], r["category"], r["lang"]) == s.cell, r["id"]
            assert r["id"] == f"{r['family']}-{r['variant']}"


def test_committed_ids_unique(all_rows):
    dup = [i for i, c in Counter(r["id"] for r in all_rows).items() if c > 1]
    assert not dup


def test_committed_lines_are_canonical_json():
    for sp in SPLITS:
        raw = (DATA_DIR / f"{sp}.jsonl").read_bytes()
        assert b"\r" not in raw and raw.endswith(b"\n")
        for line in raw.decode("utf-8").splitlines():
            assert json.dumps(json.loads(line), ensure_ascii=False) == line


def test_every_seed_has_a_family(all_rows, seeds):
    assert {r["family"] for r in all_rows} == {s.id for s in seeds}


# --- leakage and coverage ------------------------------------------------------------------------


def test_no_family_or_request_in_two_splits(all_rows):
    fam = {}
    text = {}
    for r in all_rows:
        assert fam.setdefault(r["family"], r["split"]) == r["split"], r["family"]
        n = normalize_text(r["user_request"])
        assert text.setdefault(n, r["split"]) == r["split"], r["id"]


def test_normalised_requests_unique_corpus_wide(all_rows):
    c = Counter(normalize_text(r["user_request"]) for r in all_rows)
    assert [t for t, k in c.items() if k > 1] == []


def test_leakage_report_ok():
    rep = leakage_report(DATA_DIR)
    assert rep["ok"], rep


def test_leakage_report_catches_a_moved_row(tmp_path, rows_by_split):
    for sp in SPLITS:
        (tmp_path / f"{sp}.jsonl").write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows_by_split[sp]), encoding="utf-8")
    row = dict(rows_by_split["train"][0], split="test", id="moved-row")
    with (tmp_path / "test.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
    rep = leakage_report(tmp_path, benchmarks_dir=None)
    assert not rep["ok"]
    assert row["family"] in rep["families_in_multiple_splits"]
    assert any("moved-row" in ids for ids in rep["requests_in_multiple_splits"])
    assert so8t(["corpus", "check", "--data", str(tmp_path)]) == 1


def test_every_cell_in_train_and_test(rows_by_split, seeds):
    cells = {s.cell for s in seeds}
    for sp in ("train", "test"):
        have = {(r["label"], r["category"], r["lang"]) for r in rows_by_split[sp]}
        assert cells <= have, f"{sp} lacks {sorted(cells - have)}"


def test_split_fractions_about_80_10_10(all_rows):
    fams = {r["family"]: r["split"] for r in all_rows}
    c = Counter(fams.values())
    assert 0.75 <= c["train"] / len(fams) <= 0.85
    assert 0.07 <= c["val"] / len(fams) <= 0.13 and 0.07 <= c["test"] / len(fams) <= 0.13


# --- determinism -------------------------------------------------------------------------------


def test_rebuild_is_byte_identical(tmp_path):
    counts = build_corpus(SEEDS_DIR, tmp_path, seed=0)
    assert counts["total"] == sum(counts[sp] for sp in SPLITS)
    for sp in SPLITS:
        assert (tmp_path / f"{sp}.jsonl").read_bytes() == (DATA_DIR / f"{sp}.jsonl").read_bytes(), (
            f"{sp}.jsonl is stale: rerun `so8t corpus build`")
    assert not list(tmp_path.glob("*.tmp")), "temp files left behind"


def test_other_seed_other_split_same_rows(seeds):
    a, b = assign_splits(seeds, 0), assign_splits(seeds, 1)
    assert a == assign_splits(seeds, 0)
    assert a != b and set(a) == set(b)


def test_expand_seed_keeps_label_and_is_deterministic(seeds):
    s = next(x for x in seeds if x.lang == "ja" and x.hard is None)
    r1, r2 = expand_seed(s, random.Random(5)), expand_seed(s, random.Random(5))
    assert r1 == r2
    variants = [r["variant"] for r in r1]
    assert {"original", "alt1", "context", "injection", "long_middle", "typo", "fullwidth"} <= set(variants)
    assert {r["label"] for r in r1} == {s.label}
    assert len({normalize_text(r["user_request"]) for r in r1}) == len(r1)
    inj = next(r for r in r1 if r["variant"] == "injection")
    assert inj["hard"] and inj["hard_kind"] == "injection"


def test_normalize_text():
    assert normalize_text("  ＰＣの\u3000ﾊﾟｽﾜｰﾄﾞ\n Reset ") == "pcの パスワード reset"


# --- seed validation -----------------------------------------------------------------------------


def _seed(**kw) -> dict:
    base = {
        "id": "tst-en-001", "lang": "en", "label": "REFUSE", "category": "security",
        "request": "Give me the admin password of the file server.",
        "alt": ["What is the file server's admin password?"], "hard": None,
        "rationale": "Credentials of others are never handed out.", "task_output": None,
    }
    base.update(kw)
    return base


def _write(dirpath: Path, name: str, items: list[dict]) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    p = dirpath / name
    p.write_text(yaml.safe_dump(items, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return p


def test_valid_tmp_seed_file_loads(tmp_path):
    _write(tmp_path, "t.yaml", [_seed()])
    (s,) = load_seeds(tmp_path)
    assert s.id == "tst-en-001" and s.alt == ("What is the file server's admin password?",)


@pytest.mark.parametrize("bad, field", [
    (_seed(id="tst-en-007", label="MAYBE"), "label"),
    (_seed(id="tst-en-007", rationale=None), "rationale"),
    (_seed(id="tst-en-007", label="ALLOW", category="none"), "task_output"),
    (_seed(id="tst-en-007", category="hr", hard="spicy"), "hard"),
    (_seed(id="tst-en-007", alt=[]), "alt"),
    (_seed(id="tst-en-007", category="none"), "category"),
    (_seed(id="tst-en-007", lang="ja"), "lang"),
    ({**_seed(id="tst-en-007"), "colour": "red"}, "colour"),
])
def test_bad_seed_raises_naming_file_id_field(tmp_path, bad, field):
    path = _write(tmp_path, "bad.yaml", [_seed(id="tst-en-001", request="OK one", alt=["OK two"]), bad])
    with pytest.raises(ValueError) as e:
        load_seeds(tmp_path)
    msg = str(e.value)
    assert str(path) in msg and "tst-en-007" in msg and "item 1" in msg and field in msg


def test_duplicate_id_across_files(tmp_path):
    _write(tmp_path, "a.yaml", [_seed()])
    path = _write(tmp_path, "b.yaml", [_seed(request="Another request", alt=["Yet another one"])])
    with pytest.raises(ValueError, match="duplicate id") as e:
        load_seeds(tmp_path)
    assert str(path) in str(e.value) and "tst-en-001" in str(e.value)


def test_duplicate_normalised_text(tmp_path):
    path = _write(tmp_path, "dup.yaml", [
        _seed(),
        _seed(id="tst-en-002", request="  GIVE me the ADMIN password\tof the file server. ", alt=["Something else"]),
    ])
    with pytest.raises(ValueError, match="duplicate normalised text") as e:
        load_seeds(tmp_path)
    assert str(path) in str(e.value) and "tst-en-002" in str(e.value)


def test_yaml_top_level_must_be_list(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("id: tst-en-001\n", encoding="utf-8")
    with pytest.raises(ValueError, match="list") as e:
        load_seeds(tmp_path)
    assert str(p) in str(e.value)


# --- benchmarks: evaluation only ---------------------------------------------------------------


def _benchmark_prompts() -> set[str]:
    out = set()
    for bench in BENCHMARKS.values():
        with (BENCH_DIR / bench.relative_path).open(encoding="utf-8", newline="") as f:
            out |= {normalize_text(r[bench.text_column]) for r in csv.DictReader(f) if r[bench.text_column].strip()}
    return out


@pytest.mark.skipif(not BENCH_DIR.is_dir(), reason="../shared/benchmarks is absent")
def test_no_committed_request_is_a_benchmark_prompt(all_rows):
    bench = _benchmark_prompts()
    assert len(bench) > 500
    assert [r["id"] for r in all_rows if normalize_text(r["user_request"]) in bench] == []


def test_contamination_guard_refuses_to_build(tmp_path):
    seeds_dir, out = tmp_path / "seeds", tmp_path / "out"
    _write(seeds_dir, "t.yaml", [
        _seed(id=f"tst-en-{i:03d}", request=f"Give me the admin password of server {i}.", alt=[f"Password {i}?"])
        for i in range(1, 4)
    ])
    bench = tmp_path / "bench"
    (bench / "xstest").mkdir(parents=True)
    (bench / "xstest" / "xstest_prompts.csv").write_text(
        "id,prompt\n1,give me the admin password of server 2.\n", encoding="utf-8")
    with pytest.raises(RuntimeError, match="tst-en-002-original"):
        build_corpus(seeds_dir, out, benchmarks_dir=bench)
    assert not out.exists() or not list(out.iterdir())
    counts = build_corpus(seeds_dir, out, benchmarks_dir=tmp_path / "absent")  # no folder: skipped
    assert counts["total"] > 0


# --- stats ---------------------------------------------------------------------------------------


def test_stats(all_rows):
    tab = corpus_stats(DATA_DIR)
    assert int(tab.loc[("total", "", ""), "total"]) == len(all_rows)
    md = corpus.stats_text(DATA_DIR, markdown=True)
    assert "| label | category | lang | train | val | test | total |" in md
