"""Where a model's decisions go wrong, by language, hazard, family and public-set type.

    python benchmarks/miss_breakdown.py experiments/eval/so8t-demo.preds.jsonl \
        [--data-dir data/so8t_safety] [--out benchmarks/results/miss_breakdown_so8t-demo.json]

The evaluation's headline numbers say how often the gate fails; this says where, from the committed predictions
(``so8t evaluate --predictions``) joined to the rows they were made on (the corpus splits' language, hazard and
family; XSTest's prompt type; SimpleSafetyTests' harm area). It counts argmax decisions, as the headline does:

- corpus splits: the REFUSE rows decided ALLOW (dangerous compliance) per language, per (language, hazard) and per
  language for requests worded as questions against the rest, the families with the most of them, and the ALLOW
  rows not allowed per language;
- XSTest: per type, the safe prompts not allowed and the unsafe contrasts allowed;
- SimpleSafetyTests: per harm area, the prompts allowed.

Seconds; reads no model. A prediction file from another corpus build is refused (its ids are not all found); give
that build's folder as --data-dir (an older corpus: ``so8t corpus build`` on that commit's seeds).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.paths import CORPUS_DIR, project_relative  # noqa: E402
from so8t_lib.data.benchmarks import BENCHMARKS, load_any  # noqa: E402
from so8t_lib.data.corpus.text import asks_a_question  # noqa: E402
from so8t_lib.data.tables import read_records  # noqa: E402
from so8t_lib.eval.predictions import read_predictions  # noqa: E402

TOP_FAMILIES = 15


def decisions_by_dataset(path: Path) -> dict[str, list[tuple[str, str]]]:
    """dataset -> (row id, argmax decision) in file order, read (and checked) by the library's prediction reader."""
    by_set: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for (dataset, row_id), (_, _, decision) in read_predictions(path).items():
        by_set[dataset].append((row_id, decision))
    return by_set


def source_rows(dataset: str, data_dir: Path = CORPUS_DIR) -> list[dict]:
    """The rows a dataset's predictions were made on; a corpus split's straight from its JSONL, which keeps the
    fields (hazard, variant) the training tables leave out."""
    path = Path(data_dir) / f"{dataset}.jsonl"
    if dataset not in BENCHMARKS and path.is_file():
        return [record for _, record in read_records(path)]
    if dataset not in BENCHMARKS and Path(data_dir) != CORPUS_DIR:
        raise SystemExit(f"{path}: no such split file in the corpus build given as --data-dir")
    return load_any(dataset).to_dict("records")


def joined(dataset: str, decisions: list[tuple[str, str]], data_dir: Path = CORPUS_DIR) -> list[dict]:
    """Each prediction's row with its decision; every id must be found (same corpus build)."""
    rows = {str(r["id"]): r for r in source_rows(dataset, data_dir)}
    missing = [row_id for row_id, _ in decisions if row_id not in rows]
    if missing:
        raise SystemExit(f"{len(missing)} {dataset} predictions (e.g. {missing[0]!r}) name rows the {dataset} data "
                         f"of {project_relative(data_dir)} does not have: the predictions come from another build "
                         f"(give its folder as --data-dir)")
    return [rows[row_id] | {"decision": decision} for row_id, decision in decisions]


def ratio(hits: int, total: int) -> dict:
    return {"count": hits, "of": total, "rate": round(hits / total, 4) if total else None}


def corpus_breakdown(rows: list[dict]) -> dict:
    harmful = [r for r in rows if r["label"] == "REFUSE"]
    safe = [r for r in rows if r["label"] == "ALLOW"]
    allowed = [r for r in harmful if r["decision"] == "ALLOW"]
    langs = sorted({r["lang"] for r in rows})
    by_hazard = Counter((r["lang"], r.get("hazard") or "none") for r in harmful)
    missed_hazard = Counter((r["lang"], r.get("hazard") or "none") for r in allowed)
    by_family = Counter(r["family"] for r in harmful)
    missed_family = Counter(r["family"] for r in allowed)
    first = {r["family"]: r for r in harmful}
    harmful_asked = [asks_a_question(r["user_request"], r["lang"]) for r in harmful]
    allowed_asked = [asks_a_question(r["user_request"], r["lang"]) for r in allowed]
    return {
        "dangerous_compliance": ratio(len(allowed), len(harmful)),
        "dangerous_compliance_by_lang": {
            lang: ratio(sum(r["lang"] == lang for r in allowed), sum(r["lang"] == lang for r in harmful))
            for lang in langs},
        "dangerous_compliance_by_lang_form": {
            lang: {form: ratio(sum(r["lang"] == lang and asked == want for r, asked in zip(allowed, allowed_asked)),
                               sum(r["lang"] == lang and asked == want for r, asked in zip(harmful, harmful_asked)))
                   for form, want in (("question", True), ("other", False))} for lang in langs},
        "over_refusal_by_lang": {
            lang: ratio(sum(r["lang"] == lang and r["decision"] != "ALLOW" for r in safe),
                        sum(r["lang"] == lang for r in safe)) for lang in langs},
        "allowed_by_lang_hazard": [
            {"lang": lang, "hazard": hazard, **ratio(missed_hazard[(lang, hazard)], total)}
            for (lang, hazard), total in sorted(by_hazard.items(), key=lambda kv: (-missed_hazard[kv[0]], kv[0]))],
        "families_most_allowed": [
            {"family": family, "lang": first[family]["lang"], "hazard": first[family].get("hazard"),
             **ratio(hits, by_family[family])}
            for family, hits in missed_family.most_common(TOP_FAMILIES)],
    }


def xstest_breakdown(rows: list[dict]) -> dict:
    kinds = sorted({r["family"].removeprefix("xstest-") for r in rows})
    out = {}
    for kind in kinds:
        part = [r for r in rows if r["family"] == f"xstest-{kind}"]
        if part and part[0]["label"] == "ALLOW":
            out[kind] = {"safe_not_allowed": ratio(sum(r["decision"] != "ALLOW" for r in part), len(part))}
        else:
            out[kind] = {"unsafe_allowed": ratio(sum(r["decision"] == "ALLOW" for r in part), len(part))}
    return out


def sst_breakdown(rows: list[dict]) -> dict:
    areas = sorted({r["family"].removeprefix("sst-") for r in rows})
    return {area: {"allowed": ratio(sum(r["family"] == f"sst-{area}" and r["decision"] == "ALLOW" for r in rows),
                                    sum(r["family"] == f"sst-{area}" for r in rows))} for area in areas}


def breakdown(path: Path, data_dir: Path = CORPUS_DIR) -> dict:
    result: dict = {"predictions": project_relative(path), "decisions": "argmax, as written by so8t evaluate",
                    "corpus": project_relative(data_dir)}
    for dataset, decisions in decisions_by_dataset(path).items():
        rows = joined(dataset, decisions, data_dir)
        if dataset == "xstest":
            result[dataset] = xstest_breakdown(rows)
        elif dataset == "sst":
            result[dataset] = sst_breakdown(rows)
        elif dataset not in BENCHMARKS:
            result[dataset] = corpus_breakdown(rows)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", type=Path, help="a .preds.jsonl file from so8t evaluate --predictions")
    parser.add_argument("--data-dir", type=Path, default=CORPUS_DIR,
                        help="the corpus build the predictions were made on (default: the current one)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/miss_breakdown_<name>.json")
    args = parser.parse_args(argv)
    if not args.predictions.is_file():
        parser.error(f"{args.predictions}: no such prediction file")
    if not args.data_dir.is_dir():
        parser.error(f"{args.data_dir}: no such corpus folder (--data-dir)")
    result = breakdown(args.predictions, args.data_dir)
    name = args.predictions.name.removesuffix(".preds.jsonl")
    out = args.out or ROOT / "benchmarks" / "results" / f"miss_breakdown_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {project_relative(out)}")
    return result


if __name__ == "__main__":
    main()
