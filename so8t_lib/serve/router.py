"""Which route an escalation takes, learned from the corpus: a char n-gram TF-IDF logistic regression.

The keyword table (``categories.py``) is transparent but sends every request that names none of its words to
``general`` (the direct manager): on the corpus's held-out test split that was most of the medical and legal
escalations. The router below is fitted on every corpus row that carries a route (REFUSE and ESCALATE rows, and
ALLOW rows with the topic they are closest to) and decides only where the keyword table found nothing or found
a tie, so a request that names one route's words most still goes where the table says (``so8t router score``
measures all three).

The file is plain JSON (no pickle: a router file is data an operator may receive from elsewhere): the
vectorizer's vocabulary and idf, the classifier's weights, how it was fitted, and a sha256 over all of it, so a
changed or truncated file is refused by name instead of routing silently wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..core.config_files import ConfigError
from ..core.io import atomic_write_text, sha256_file
from ..core.schema import ROUTE_CATEGORIES
from .categories import keyword_scores

if TYPE_CHECKING:  # scikit-learn is imported when a router is fitted or loaded, not with the runtime
    from sklearn.feature_extraction.text import TfidfVectorizer

ROUTER_FORMAT = "so8t-router/1"
NGRAM_RANGE = (1, 4)        # characters: Japanese has no spaces, and look-alike spellings share most n-grams
MAX_FEATURES = 50_000       # the most frequent n-grams; the file stays a few MB
MIN_DF = 2
INVERSE_REGULARIZATION = 10.0   # LogisticRegression's C, chosen on the val split among 1, 10 and 100


class RouterError(ConfigError):
    """A router file that cannot be used: names the file and what is wrong with it. The runtime then routes by
    the keyword table and says so (``Agent.router_error``); it never routes by a file it cannot trust."""


def router_text(request: str, context: str | None = None) -> str:
    """What the router reads: the context, then the request (as ``categorize`` reads them)."""
    return f"{context or ''} {request}"


def _vectorizer(vocabulary: dict[str, int] | None = None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer="char_wb", ngram_range=NGRAM_RANGE, sublinear_tf=True, min_df=MIN_DF,
                           max_features=MAX_FEATURES, vocabulary=vocabulary, dtype=np.float64)


def combine_routes(keywords: dict[str, int], learned: dict[str, float]) -> str:
    """The runtime's rule: the single category with the most keyword hits; else the learned router's best among
    the tied categories (or among all, when no keyword was found)."""
    top = max(keywords.values(), default=0)
    tied = [c for c, hits in keywords.items() if hits == top] if top > 0 else []
    if len(tied) == 1:
        return tied[0]
    candidates = [c for c in tied if c in learned] if tied else list(learned)
    if not candidates:  # tied categories the router was not fitted on: the table's own order decides
        return tied[0]
    return max(candidates, key=learned.__getitem__)


class LearnedRouter:
    """A fitted TF-IDF vectorizer and logistic regression over the route categories."""

    def __init__(self, vectorizer: TfidfVectorizer, classes: Sequence[str], coef: np.ndarray,
                 intercept: np.ndarray, fitted_on: dict):
        self.vectorizer, self.classes = vectorizer, tuple(classes)
        self.coef, self.intercept, self.fitted_on = coef, intercept, fitted_on

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """(n, classes) decision scores."""
        return np.asarray(self.vectorizer.transform(list(texts)) @ self.coef.T) + self.intercept

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.classes[i] for i in self.scores(texts).argmax(axis=1)]

    def route(self, request: str, context: str | None = None) -> str:
        """The keyword table's category when one has the most hits; the learned router's choice among the tied
        ones, or among all when the table found nothing."""
        keywords = keyword_scores(request, context)
        top = max(keywords.values(), default=0)
        if top > 0 and sum(hits == top for hits in keywords.values()) == 1:  # the table decides: no scoring
            return max(keywords, key=keywords.__getitem__)
        return combine_routes(keywords, dict(zip(self.classes, self.scores([router_text(request, context)])[0])))

    # ----- files ----------------------------------------------------------------------------------
    def payload(self) -> dict:
        vocabulary = sorted(self.vectorizer.vocabulary_, key=self.vectorizer.vocabulary_.get)
        return {"format": ROUTER_FORMAT, "classes": list(self.classes), "vocabulary": vocabulary,
                "idf": [float(x) for x in self.vectorizer.idf_],
                "coef": [[float(x) for x in row] for row in self.coef],
                "intercept": [float(x) for x in self.intercept], "fitted_on": self.fitted_on,
                "settings": {"ngram_range": list(NGRAM_RANGE), "max_features": MAX_FEATURES, "min_df": MIN_DF,
                             "C": INVERSE_REGULARIZATION}}

    def save(self, path: str | Path) -> Path:
        """Write the router whole or not at all, with a sha256 of its contents."""
        payload = self.payload()
        payload["sha256"] = _digest(payload)
        return atomic_write_text(path, json.dumps(payload, ensure_ascii=False, separators=(",", ":")))


def _digest(payload: dict) -> str:
    body = {k: v for k, v in payload.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
                          .encode("utf-8")).hexdigest()


def fit_router(rows: Sequence[dict], source: str = "") -> LearnedRouter:
    """Fit on every row whose ``category`` is a route (the corpus's REFUSE/ESCALATE rows and topical ALLOW rows)."""
    from sklearn.linear_model import LogisticRegression

    usable = [r for r in rows if r.get("category") in ROUTE_CATEGORIES]
    found = sorted({r["category"] for r in usable})
    if len(found) < 2:
        raise RouterError(f"fitting a router needs rows of at least two route categories {list(ROUTE_CATEGORIES)}; "
                          f"found {found or 'none'} in {len(rows)} rows")
    vectorizer = _vectorizer()
    features = vectorizer.fit_transform([router_text(r["user_request"], r.get("context")) for r in usable])
    classifier = LogisticRegression(C=INVERSE_REGULARIZATION, max_iter=3000)
    classifier.fit(features, [r["category"] for r in usable])
    coef, intercept = classifier.coef_, classifier.intercept_
    if len(classifier.classes_) == 2:  # sklearn keeps one row for two classes: spell both out
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    counts = {c: sum(r["category"] == c for r in usable) for c in found}
    return LearnedRouter(vectorizer, [str(c) for c in classifier.classes_], coef, intercept,
                         {"source": source, "rows": len(usable), "by_category": counts})


def _array(payload: dict, key: str, shape: tuple[int, ...], path: Path) -> np.ndarray:
    if key not in payload:
        raise RouterError(f"{path}: {key} is missing")
    try:
        values = np.asarray(payload[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise RouterError(f"{path}: {key} is not an array of numbers") from None
    if values.shape != shape:
        raise RouterError(f"{path}: {key} has shape {values.shape}, expected {shape}")
    if not np.isfinite(values).all():
        raise RouterError(f"{path}: {key} holds NaN or infinite values")
    return values


def load_router(path: str | Path) -> LearnedRouter:
    """Read and check a router file; any problem is a RouterError naming the file and what to do."""
    path = Path(path)
    remedy = "fit one with `so8t router fit --out PATH` (make demo writes checkpoints/so8t-demo/router.json)"
    if not path.is_file():
        raise RouterError(f"{path}: no router file there; {remedy}, or set escalation.router: null for the "
                          "keyword table alone")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RouterError(f"{path}: cannot be read ({exc.strerror or exc}); {remedy}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise RouterError(f"{path}: not a router file (unreadable JSON: {exc}); {remedy}") from None
    if not isinstance(payload, dict) or payload.get("format") != ROUTER_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise RouterError(f"{path}: not a {ROUTER_FORMAT} file (format {found!r}); {remedy}")
    if payload.get("sha256") != _digest(payload):
        raise RouterError(f"{path}: its contents do not match its sha256 (changed or damaged after it was written, "
                          f"file sha256 {sha256_file(path)[:12]}); {remedy}")
    classes, vocabulary = payload.get("classes"), payload.get("vocabulary")
    if (not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes)
            or len(set(classes)) != len(classes) or not set(classes) <= set(ROUTE_CATEGORIES)):
        raise RouterError(f"{path}: classes {classes!r} are not two or more distinct route categories "
                          f"{list(ROUTE_CATEGORIES)}")
    if not isinstance(vocabulary, list) or not vocabulary or not all(isinstance(t, str) for t in vocabulary) \
            or len(set(vocabulary)) != len(vocabulary):
        raise RouterError(f"{path}: vocabulary is not a list of distinct strings")
    n, k = len(vocabulary), len(classes)
    idf = _array(payload, "idf", (n,), path)
    coef = _array(payload, "coef", (k, n), path)
    intercept = _array(payload, "intercept", (k,), path)
    if (idf < 1 - 1e-9).any() or not math.isfinite(float(idf.sum())):
        raise RouterError(f"{path}: idf values below 1 cannot come from a fitted vectorizer")
    vectorizer = _vectorizer({token: i for i, token in enumerate(vocabulary)})
    vectorizer.idf_ = idf
    return LearnedRouter(vectorizer, classes, coef, intercept, payload.get("fitted_on") or {})
