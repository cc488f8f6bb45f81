"""The yardsticks every evaluation reports beside the model: two linear classifiers on surface features.

- ``bag_of_tokens``: which of the project tokenizer's tokens occur in context + request (binary), logistic
  regression. How much of the label the words alone carry.
- ``char_ngram_tfidf``: character 1-4-gram TF-IDF (word-bounded), logistic regression: a strong keyword
  model that also reads Japanese without a word segmenter.

Both are fitted on the corpus training split (scikit-learn, seeded) and scored with the same report as the
model, so a number for the model always stands next to the number a keyword model gets on the same rows.
A model that does not beat them has learned no more than keyword spotting.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

from ..core.schema import LABELS, NOT_ALLOW
from ..data.tables import load_split

BASELINES: tuple[str, ...] = ("bag_of_tokens", "char_ngram_tfidf")


def _texts(table: pd.DataFrame) -> list[str]:
    return [f"{c} {r}" if isinstance(c, str) and c.strip() else str(r)
            for c, r in zip(table["context"], table["user_request"])]


def _token_analyzer() -> Callable[[str], list[int]]:
    from ..model.tokenizer import tiny_tokenizer

    tokenizer = tiny_tokenizer()
    return lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]


def make_baseline(name: str):
    """An unfitted scikit-learn pipeline (text -> features -> logistic regression)."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    if name == "bag_of_tokens":
        features = CountVectorizer(analyzer=_token_analyzer(), binary=True)
    elif name == "char_ngram_tfidf":
        features = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), min_df=2, sublinear_tf=True)
    else:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return make_pipeline(features, LogisticRegression(C=4.0, max_iter=3000))


def fit_baselines(train: pd.DataFrame | None = None, names: tuple[str, ...] = BASELINES) -> dict:
    """Each baseline fitted on the training split (three-class rows only)."""
    train = load_split("train") if train is None else train
    train = train[train["label"] != NOT_ALLOW]
    return {name: make_baseline(name).fit(_texts(train), list(train["label"])) for name in names}


def baseline_probabilities(model, table: pd.DataFrame) -> np.ndarray:
    """(N, 3) probabilities in LABELS order from a fitted baseline."""
    probs = model.predict_proba(_texts(table))
    classes = list(model.classes_)
    out = np.zeros((len(table), len(LABELS)))
    for j, label in enumerate(LABELS):
        if label in classes:
            out[:, j] = probs[:, classes.index(label)]
    return out
