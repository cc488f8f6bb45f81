"""Near-duplicates: which families must share a split, and how close the corpus comes to the benchmarks.

Exact dedup (``normalize_text``) misses a request with a word changed or a paraphrase that keeps most
of its phrases. Here a text is the set of its character n-grams after ``normalize_text`` and two texts
are compared by exact Jaccard similarity, computed as sparse matrix products (scikit-learn's
CountVectorizer). Exact rather than MinHash LSH: at the low grouping threshold LSH (datasketch) had to
check ~40k candidate pairs for 2.3k texts and still missed 3% of the true pairs, while the exact search
takes about a second. Both thresholds were chosen on real pairs (data/README.md, "Leakage guard").
"""

from __future__ import annotations

from collections.abc import Sequence

from .text import normalize_text

NGRAM = 4  # character 4-grams: short enough for Japanese words, long enough that English function words fade
# Families whose hand-written wordings reach this Jaccard go to one split. A precaution that costs only a
# constraint on the split: paraphrases of one request by different authors sit at 0.22-0.35, while two
# different requests of the v1 seeds rarely pass 0.2 (and then share a stock phrase).
GROUP_THRESHOLD = 0.2
# A near-duplicate proper: a request and the same request with an opener, wrapper or typo sit at 0.5-0.96.
# A row this close to a benchmark prompt stops the build; a hand-written pair this close in two splits fails
# `so8t corpus check`.
NEAR_DUP_THRESHOLD = 0.5


def shingles(text: str, n: int = NGRAM) -> frozenset[str]:
    """The character n-grams of the normalised text (the whole text when shorter than n)."""
    t = normalize_text(text)
    return frozenset(t[i:i + n] for i in range(max(1, len(t) - n + 1)))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def near_duplicate_pairs(texts: Sequence[str], threshold: float = GROUP_THRESHOLD) -> list[tuple[float, int, int]]:
    """Every pair (similarity, i, j), i < j, of ``texts`` with Jaccard >= threshold, most similar first."""
    return [p for p in nearest_pairs(texts, texts, top=0, min_sim=threshold) if p[1] < p[2]]


def nearest_pairs(left: Sequence[str], right: Sequence[str], top: int = 10, min_sim: float = 0.0,
                  chunk: int = 1000) -> list[tuple[float, int, int]]:
    """The ``top`` most similar (similarity, i, j) pairs between ``left[i]`` and ``right[j]`` with
    similarity >= ``min_sim`` (``top=0``: all of them), by exact Jaccard; ties broken by index."""
    import numpy as np
    from sklearn.feature_extraction.text import CountVectorizer

    if not left or not right:
        return []
    vec = CountVectorizer(analyzer=lambda t: sorted(shingles(t)), binary=True, dtype=np.float32)
    vec.fit([*left, *right])
    r = vec.transform(right)
    r_size = np.asarray(r.sum(axis=1)).ravel()
    found: list[tuple[float, int, int]] = []
    for start in range(0, len(left), chunk):
        lm = vec.transform(left[start:start + chunk])
        inter = (lm @ r.T).toarray()
        l_size = np.asarray(lm.sum(axis=1)).ravel()
        sim = inter / np.maximum(l_size[:, None] + r_size[None, :] - inter, 1.0)
        cand = np.argwhere(sim >= max(min_sim, 1e-9))
        if top:  # keep this chunk's best only
            order = np.lexsort((cand[:, 1], cand[:, 0], -sim[cand[:, 0], cand[:, 1]]))[:top]
            cand = cand[order]
        found += [(round(float(sim[i, j]), 4), start + int(i), int(j)) for i, j in cand]
    found.sort(key=lambda p: (-p[0], p[1], p[2]))
    return found[:top] if top else found


def groups_of(families: Sequence[str], pairs: Sequence[tuple[float, int, int]]) -> dict[str, str]:
    """Family -> the smallest family id of its group: near-duplicate families, joined transitively."""
    parent = {f: f for f in families}

    def find(f: str) -> str:
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    for _, i, j in pairs:
        a, b = find(families[i]), find(families[j])
        if a != b:
            parent[max(a, b)] = min(a, b)
    return {f: find(f) for f in families}
