"""How much the Japanese/English translation twins that straddle the splits lift the default's val and test scores.

    python benchmarks/translation_twins.py [--preds experiments/eval/so8t-demo.preds.jsonl] [--out benchmarks/results/translation_twins.json]

The corpus keeps a family (a seed and its variants) in one split, and joins near-identical families, but it cannot
join a Japanese seed with its English translation: `data/translation_pairs.yaml` lists the pairs found by hand
(a partial list). Where one half is in train and the other in val or test, the evaluated rows are a translation of
rows the model was trained on. This script splits the committed predictions of an evaluation into the rows of such
families and the rest, and reports the accuracy of each group, and the split's accuracy without the twins beside
the whole split's, from the same predictions (no model is run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.core.io import atomic_write_text  # noqa: E402
from so8t_lib.core.paths import CORPUS_DIR  # noqa: E402


def split_families(data_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """(family -> split, row id -> family) over the corpus files."""
    split_of, family_of = {}, {}
    for split in ("train", "val", "test"):
        with open(data_dir / f"{split}.jsonl", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                split_of[row["family"]], family_of[row["id"]] = split, row["family"]
    return split_of, family_of


def twins_in_train(pairs: list[list[str]], split_of: dict[str, str]) -> set[str]:
    """The evaluated families whose translation is in train."""
    leaked = set()
    for a, b in pairs:
        if a not in split_of or b not in split_of:
            raise SystemExit(f"translation pair {a} / {b}: a family not in the corpus (rebuild it: make)")
        for mine, other in ((a, b), (b, a)):
            if split_of[mine] != "train" and split_of[other] == "train":
                leaked.add(mine)
    return leaked


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preds", type=Path, default=ROOT / "experiments" / "eval" / "so8t-demo.preds.jsonl")
    parser.add_argument("--pairs", type=Path, default=ROOT / "data" / "translation_pairs.yaml")
    parser.add_argument("--data", type=Path, default=CORPUS_DIR)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "translation_twins.json")
    args = parser.parse_args(argv)
    pairs = yaml.safe_load(args.pairs.read_text(encoding="utf-8"))["pairs"]
    split_of, family_of = split_families(args.data)
    leaked = twins_in_train(pairs, split_of)
    with open(args.preds, encoding="utf-8") as handle:
        preds = [json.loads(line) for line in handle]
    result = {"benchmark": "translation_twins", "preds": str(args.preds.relative_to(ROOT) if args.preds.is_relative_to(ROOT)
                                                              else args.preds),
              "pairs_listed": len(pairs), "splits": {}}
    for split in ("val", "test"):
        rows = [p for p in preds if p["dataset"] == split]
        if not rows:
            continue
        twins = [p for p in rows if family_of.get(p["id"]) in leaked]
        others = [p for p in rows if family_of.get(p["id"]) not in leaked]

        def accuracy(group: list[dict]) -> float | None:
            return round(sum(p["decision"] == p["gold"] for p in group) / len(group), 4) if group else None

        result["splits"][split] = {
            "families_with_translation_in_train": len({family_of[p["id"]] for p in twins}),
            "families": len({family_of.get(p["id"]) for p in rows}),
            "rows_with_translation_in_train": len(twins), "rows": len(rows),
            "accuracy_twins": accuracy(twins), "accuracy_others": accuracy(others), "accuracy_all": accuracy(rows),
            "accuracy_all_minus_others": round(accuracy(rows) - accuracy(others), 4) if twins else 0.0}
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["splits"], indent=1))
    return result


if __name__ == "__main__":
    main()
