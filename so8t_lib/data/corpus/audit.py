"""Label audit with confident learning: which seeds' labels a simple model, never trained on them, doubts.

A baseline (character n-gram TF-IDF + logistic regression) is fitted with cross-validation grouped by
near-duplicate group, so a family (or a near copy of it) is never in its own training fold. Its
out-of-fold probabilities, averaged over each family's unframed rows (a label belongs to a seed, not to a
row), go to cleanlab's ``find_label_issues``. The flagged families, ranked by self-confidence, are for a
person to review against SAFETY_POLICY.md; the verdicts live in ``data/label_audit_review.yaml``
(family -> fixed / kept / reported, with a note) and are merged into the report. The report records which
corpus it audited (``corpus``: the SHA-256 of each split file), so a summary of another corpus does not show it.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import yaml

from ...core.io import atomic_write_text, sha256_file
from ...core.paths import CORPUS_DIR, DATA_DIR, SEEDS_DIR
from ...core.schema import LABELS, SPLITS
from .neardup import GROUP_THRESHOLD, groups_of, near_duplicate_pairs
from .seeds import load_seeds
from .splits import read_corpus
from .text import normalize_text
from .transforms import HANDWRITTEN

AUDIT_FILE = DATA_DIR / "label_audit.json"
REVIEW_FILE = DATA_DIR / "label_audit_review.yaml"
AUDIT_FOLDS = 5
VERDICTS: tuple[str, ...] = ("fixed", "kept", "reported")  # reported: a file someone else owns
BASELINE = {"analyzer": "char_wb", "ngram_range": (2, 4), "min_df": 2, "sublinear_tf": True, "C": 4.0}


def audit_path(data_dir: str | Path = CORPUS_DIR) -> Path:
    """Where the audit of the corpus in ``data_dir`` lives: beside that folder (``data/label_audit.json`` for the
    project's), so `corpus audit` writes and `corpus stats --markdown` reads the same file for the same --data."""
    return Path(os.path.abspath(data_dir)).parent / AUDIT_FILE.name  # absolute ('.' has no parent), links kept


def corpus_digests(data_dir: str | Path) -> dict[str, str]:
    """Split file name -> its SHA-256: which corpus an audit is of (a build is byte-identical for the same seeds,
    so a rebuild keeps it, while another corpus, or this one grown by a retrain, does not)."""
    return {f"{sp}.jsonl": sha256_file(Path(data_dir) / f"{sp}.jsonl") for sp in SPLITS}


def read_audit(path: str | Path) -> dict | None:
    """The report ``write_audit`` wrote (None when there is none); a file that is not one is an error naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a label audit (not valid JSON: {e}); rerun so8t corpus audit") from e
    summary = rep.get("summary") if isinstance(rep, dict) else None
    missing = [k for k in ("families", "flagged", "reviewed", *VERDICTS, "cv_accuracy")
               if not isinstance(summary, dict) or not isinstance(summary.get(k), int | float)]
    if missing:
        raise ValueError(f"{path}: not a label audit (no 'summary' with numbers {missing}); rerun so8t corpus audit")
    corpus = rep.get("corpus", {})  # absent in reports written before it was recorded
    if not isinstance(corpus, dict) or not all(isinstance(v, str) for v in corpus.values()):
        raise ValueError(f"{path}: not a label audit ('corpus' must map split files to their SHA-256); rerun so8t "
                         "corpus audit")
    return rep


def load_review(path: str | Path = REVIEW_FILE) -> dict[str, dict]:
    """Family -> {verdict, note, ...}; invalid YAML or an unknown verdict is an error naming the file (and family)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must map family ids to verdicts")
    for fam, entry in data.items():
        if not isinstance(entry, dict) or entry.get("verdict") not in VERDICTS:
            raise ValueError(f"{path}: family {fam!r}: field 'verdict' must be one of {list(VERDICTS)}")
    return data


def _text(row: dict) -> str:
    return normalize_text(f"{row['context']} \n {row['user_request']}" if row["context"] else row["user_request"])


def out_of_fold_probs(rows: list[dict], groups: list[str], folds: int = AUDIT_FOLDS):
    """Out-of-fold class probabilities (columns in LABELS order) of the baseline, folds grouped by ``groups``."""
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline

    texts = [_text(r) for r in rows]
    y = np.array([LABELS.index(r["label"]) for r in rows])
    probs = np.zeros((len(rows), len(LABELS)))
    for train_idx, test_idx in GroupKFold(n_splits=folds).split(texts, y, groups):
        model = make_pipeline(
            TfidfVectorizer(analyzer=BASELINE["analyzer"], ngram_range=BASELINE["ngram_range"],
                            min_df=BASELINE["min_df"], sublinear_tf=BASELINE["sublinear_tf"]),
            LogisticRegression(C=BASELINE["C"], max_iter=3000, class_weight="balanced"),
        )
        model.fit([texts[i] for i in train_idx], y[train_idx])
        probs[np.ix_(test_idx, model.classes_)] = model.predict_proba([texts[i] for i in test_idx])
    return probs


def audit_labels(data_dir: str | Path = CORPUS_DIR, seeds_dir: str | Path | None = SEEDS_DIR,
                 review_path: str | Path = REVIEW_FILE, folds: int = AUDIT_FOLDS,
                 group_threshold: float = GROUP_THRESHOLD) -> dict:
    """Flag families whose label the cross-validated baseline doubts (cleanlab), merged with the review.

    ``seeds_dir`` only names each flagged family's seed file (None: no file names). Families whose
    wordings reach ``group_threshold`` share a fold (the build's grouping, so no near copy trains on itself).
    """
    import numpy as np
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    seeds = {s.id: s for s in load_seeds(seeds_dir)} if seeds_dir is not None else {}  # errors before the work
    review = load_review(review_path)
    rows = [r for r in read_corpus(data_dir) if r.get("framing") is None]  # encodings would only add noise
    digests = corpus_digests(data_dir)  # after read_corpus, which names a missing split file with what to do
    hand = [r for r in rows if r["variant"] in HANDWRITTEN]
    group_of = groups_of([r["family"] for r in hand],
                         near_duplicate_pairs([r["user_request"] for r in hand], group_threshold))
    probs = out_of_fold_probs(rows, [group_of[r["family"]] for r in rows], folds)
    families = sorted({r["family"] for r in rows})
    index = {f: i for i, f in enumerate(families)}
    fam_probs = np.zeros((len(families), len(LABELS)))
    counts = np.zeros(len(families))
    for r, p in zip(rows, probs):
        fam_probs[index[r["family"]]] += p
        counts[index[r["family"]]] += 1
    fam_probs /= counts[:, None]
    first = {r["family"]: r for r in sorted(hand, key=lambda r: r["id"]) if r["variant"] == "original"}
    labels = np.array([LABELS.index(first[f]["label"]) for f in families])
    ranked = find_label_issues(labels, fam_probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(labels, fam_probs, method="self_confidence")
    flagged = []
    for rank, i in enumerate(ranked, 1):
        fam, row = families[i], first[families[i]]
        seed = seeds.get(fam)
        flagged.append({
            "rank": rank, "family": fam, "file": Path(seed.file).name if seed else None,
            "label": row["label"], "category": row["category"], "lang": row["lang"], "hazard": row.get("hazard"),
            "hard_kind": seed.hard if seed else None,
            "predicted": LABELS[int(fam_probs[i].argmax())],
            "p_label": round(float(fam_probs[i, labels[i]]), 4), "p_predicted": round(float(fam_probs[i].max()), 4),
            "quality": round(float(quality[i]), 4), "request": row["user_request"], "context": row["context"],
            "review": review.get(fam),
        })
    verdicts = Counter(v["verdict"] for v in review.values())
    row_pred = probs.argmax(axis=1)
    row_true = np.array([LABELS.index(r["label"]) for r in rows])
    return {
        "method": {
            "baseline": "TF-IDF over character n-grams (word-bounded) of context + request, logistic regression",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in BASELINE.items()},
            "folds": folds, "fold_groups": f"near-duplicate groups (Jaccard >= {group_threshold})",
            "rows": len(rows), "unit": "family (out-of-fold probabilities averaged over its unframed rows)",
            "cleanlab": "filter.find_label_issues(filter_by='prune_by_noise_rate'), ranked by self_confidence",
        },
        "corpus": digests,
        "summary": {
            "families": len(families), "flagged": len(flagged),
            "flagged_reviewed": sum(1 for f in flagged if f["review"]), "reviewed": len(review),
            **{v: verdicts.get(v, 0) for v in VERDICTS},
            "cv_accuracy": round(float((fam_probs.argmax(axis=1) == labels).mean()), 4),
            "cv_accuracy_rows": round(float((row_pred == row_true).mean()), 4),
            "flagged_by_label": dict(sorted(Counter(f["label"] for f in flagged).items())),
        },
        "flagged": flagged,
        "reviewed_not_flagged": sorted(f for f in review if f not in {x["family"] for x in flagged}),
    }


def write_audit(report: dict, path: str | Path = AUDIT_FILE) -> Path:
    """The report as stable, readable JSON: the same report gives the same bytes. A rerun on the same data need
    not: lbfgs stops at tolerance 1e-4 and BLAS sums in an order set by its thread count and CPU, so another
    OPENBLAS_NUM_THREADS or machine moves some p_label / p_predicted / quality in the 4th decimal (1 against 2
    threads: 9 of 297 values, same summary and flagged families). Compare reruns by those, not by the bytes."""
    path = Path(path)
    atomic_write_text(path, json.dumps(report, ensure_ascii=False, indent=1) + "\n")
    return path
