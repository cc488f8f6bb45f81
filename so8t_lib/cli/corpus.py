"""so8t corpus: build the safety corpus from the seeds, show its statistics, check it for leakage, audit its labels.

    so8t corpus build [--seed 0] [--seeds-dir data/seeds] [--out data/so8t_safety]
    so8t corpus stats [--data data/so8t_safety] [--markdown]
    so8t corpus check [--data data/so8t_safety] [--json]
    so8t corpus audit [--data data/so8t_safety] [--seeds-dir data/seeds] [--out DATA/../label_audit.json]
                      [--review data/label_audit_review.yaml] [--show 30]

The audit goes beside the corpus folder by default (label_audit.json in --data's parent: data/label_audit.json
for the project's corpus), where ``stats --markdown`` of the same --data reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from ..core.paths import CORPUS_DIR, SEEDS_DIR
from ..core.schema import SPLITS
from ..data.corpus import build_corpus, leakage_report, stats_text
from ..data.corpus.audit import REVIEW_FILE, audit_labels, audit_path, write_audit
from ..data.corpus.guard import VIOLATIONS
from .arg_types import same_file, unwritable_file


def _print_pairs(title: str, pairs: list[dict], keys: tuple[str, str, str, str]) -> None:
    """keys: the two ids' fields, then the two texts' fields."""
    print(title)
    for p in pairs:
        print(f"  {p['similarity']:.3f}  {p[keys[0]]} ~ {p[keys[1]]}\n         {p[keys[2]]!r}\n         {p[keys[3]]!r}")
    if not pairs:
        print("  (none)")


def _check(data: Path, as_json: bool) -> int:
    rep = leakage_report(data)
    if as_json:
        print(json.dumps(rep, ensure_ascii=False, indent=1))
        return 0 if rep["ok"] else 1
    bench = "checked" if rep["benchmarks_checked"] else "not present, skipped"
    print(f"rows {rep['rows']}; benchmarks {bench}")
    print(f"near-duplicates: character {rep['ngram']}-grams of the normalised text, exact Jaccard; "
          f"group threshold {rep['group_threshold']} (hand-written wordings in two splits), "
          f"benchmark threshold {rep['near_duplicate_threshold']} (any row against a benchmark prompt)")
    _print_pairs("nearest hand-written pairs in different splits:", rep["nearest_cross_split"],
                 ("a", "b", "a_text", "b_text"))
    _print_pairs("nearest rows to a benchmark prompt:", rep["nearest_benchmark"],
                 ("row", "benchmark", "row_text", "benchmark_text"))
    if rep["ok"]:
        print("ok: no family, request or near-duplicate in two splits; " + (
            "nothing equal or near to a benchmark prompt" if rep["benchmarks_checked"] else
            "NOT checked against the public benchmarks (none found: put them in ../shared/benchmarks)"))
        return 0
    for k in VIOLATIONS:
        if rep[k]:
            print(f"LEAK {k}: {json.dumps(rep[k], ensure_ascii=False)}", file=sys.stderr)
    return 1


def _check_folder(data: Path) -> None:
    """--data names the corpus folder: a split file given for it would be read as a folder holding
    ``test.jsonl/train.jsonl`` and said to be missing, with 'run so8t corpus build' for advice."""
    if data.is_file() or (not data.is_dir() and data.suffix.lower() in (".jsonl", ".json", ".csv")):
        raise ValueError(f"--data {data} names a file; --data takes the corpus folder, the one holding "
                         f"{', '.join(f'{sp}.jsonl' for sp in SPLITS)} (--data {data.parent})")


def _audit(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else audit_path(args.data)
    if why := unwritable_file("--out", str(out)):  # before the cross-validation, not after it
        raise ValueError(why)
    inputs = {f"--data ({split}.jsonl)": str(Path(args.data) / f"{split}.jsonl") for split in SPLITS}
    inputs |= {f"--seeds-dir ({seeds.name})": str(seeds) for seeds in sorted(Path(args.seeds_dir).glob("*.yaml"))}
    if option := same_file(str(out), {**inputs, "--review": args.review and str(args.review)}):
        raise ValueError(f"--out {out} is the file {option} names; writing the audit there would replace it. Give "
                         "--out a path of its own")
    rep = audit_labels(args.data, args.seeds_dir, args.review)
    path = write_audit(rep, out)
    s = rep["summary"]
    print(f"wrote {path}: {s['families']} families, cross-validated accuracy {s['cv_accuracy']:.3f} (families), "
          f"{s['cv_accuracy_rows']:.3f} (rows); cleanlab flagged {s['flagged']} {s['flagged_by_label']}; "
          f"reviewed {s['reviewed']} (fixed {s['fixed']}, kept {s['kept']}, reported {s['reported']})")
    for f in rep["flagged"][: args.show]:
        verdict = f["review"]["verdict"] if f["review"] else "unreviewed"
        print(f"  {f['rank']:>3} {f['family']:<13} {f['label']:<8} -> {f['predicted']:<8} p={f['p_label']:.2f} "
              f"[{verdict}] {f['request'][:80]!r}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="so8t corpus", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="seeds -> data/so8t_safety/{train,val,test}.jsonl")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--seeds-dir", type=Path, default=SEEDS_DIR)
    b.add_argument("--out", type=Path, default=CORPUS_DIR)
    s = sub.add_parser("stats", help="every table of the data card (--markdown: as pasted there)")
    s.add_argument("--data", type=Path, default=CORPUS_DIR)
    s.add_argument("--markdown", action="store_true")
    c = sub.add_parser("check", help="leakage: no family, request or near-duplicate in two splits or near a benchmark")
    c.add_argument("--data", type=Path, default=CORPUS_DIR)
    c.add_argument("--json", action="store_true", help="the whole report as JSON")
    a = sub.add_parser("audit", help="label audit: cleanlab on a grouped cross-validated baseline")
    a.add_argument("--data", type=Path, default=CORPUS_DIR)
    a.add_argument("--seeds-dir", type=Path, default=SEEDS_DIR)
    a.add_argument("--out", type=Path, default=None,
                   help="the report (default: label_audit.json in --data's parent, where stats --markdown reads it)")
    a.add_argument("--review", type=Path, default=REVIEW_FILE, help="the reviewer's verdicts per family")
    a.add_argument("--show", type=int, default=30, help="flagged families to print")
    args = p.parse_args(argv)
    try:
        if args.cmd != "build":
            _check_folder(args.data)
        if args.cmd == "build":
            counts = build_corpus(args.seeds_dir, args.out, seed=args.seed)
            print(f"wrote {args.out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        elif args.cmd == "stats":
            print(stats_text(args.data, markdown=args.markdown))
        elif args.cmd == "check":
            return _check(args.data, args.json)
        else:
            return _audit(args)
    except (ValueError, OSError, RuntimeError, yaml.YAMLError) as e:
        print(f"so8t corpus: {_why(e)}", file=sys.stderr)
        return 2
    except KeyError as e:  # a data error (exit 2), not a leak found (exit 1)
        if args.cmd == "build":
            raise  # the build's own rows: a bug, not the user's input
        print(f"so8t corpus: a row of {args.data} has no field {e}; these files are written by 'so8t corpus build'",
              file=sys.stderr)
        return 2
    return 0


def _why(e: Exception) -> str:
    """An error as one line naming the path: an OSError's own text is '[Errno 21] Is a directory: ...'."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return str(e)
