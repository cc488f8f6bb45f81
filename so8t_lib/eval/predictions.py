"""Reading ``so8t evaluate --predictions`` files back: the benchmarks that compare recipes or choose an
operating point work from committed predictions, in seconds and without a model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..core.schema import GOLD_LABELS, LABELS, SPLITS
from ..data.corpus.transforms import VARIANTS

PREDICTIONS_SUFFIX = ".preds.jsonl"

Prediction = tuple[str, tuple[float, ...], str]  # gold, probabilities in LABELS order, decision


def read_predictions(path: Path) -> dict[tuple[str, str], Prediction]:
    """(dataset, id) -> (gold, probabilities, decision), with the file and line named on bad input."""
    rows: dict[tuple[str, str], Prediction] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            key, gold, decision = (record["dataset"], str(record["id"])), record["gold"], record["decision"]
            if record["probabilities"] is None:  # so8t evaluate writes none for a row it failed closed on
                raise SystemExit(f"{path}:{number}: {key} has no probabilities (decided {decision} because the model's "
                                 "were not finite); these benchmarks need every row's: fix the model, or evaluate "
                                 "with the rows it breaks on left out of --data")
            probs = tuple(float(record["probabilities"][label]) for label in LABELS)
        except (ValueError, KeyError, TypeError) as error:
            raise SystemExit(f"{path}:{number}: not a prediction line of so8t evaluate --predictions ({error})") from None
        if gold not in GOLD_LABELS or decision not in LABELS or not all(0 <= p <= 1 for p in probs):
            raise SystemExit(f"{path}:{number}: gold {gold!r}, decision {decision!r} or probabilities {probs} out of range")
        if key in rows:
            raise SystemExit(f"{path}:{number}: {key} predicted twice")
        rows[key] = (gold, probs, decision)
    if not rows:
        raise SystemExit(f"{path}: no predictions")
    return rows


def by_dataset(rows: dict[tuple[str, str], Prediction]) -> dict[str, tuple[list[str], np.ndarray]]:
    """dataset -> (gold labels, probabilities (N, 3)) in file order."""
    grouped: dict[str, tuple[list[str], list]] = {}
    for (dataset, _), (gold, probs, _) in rows.items():
        grouped.setdefault(dataset, ([], []))
        grouped[dataset][0].append(gold)
        grouped[dataset][1].append(probs)
    return {name: (gold, np.asarray(probs, dtype=float)) for name, (gold, probs) in grouped.items()}


# longest first: a variant whose name ends another's must not be cut short
_VARIANT_SUFFIXES = tuple(sorted((f"-{v}" for v in VARIANTS), key=len, reverse=True))


def family_of_id(row_id: str) -> str:
    """A corpus row's family from its id, ``<family>-<variant>`` (the corpus's own naming, true of every row of
    every committed split); an id without a known variant is a family of its own."""
    return next((row_id[:-len(s)] for s in _VARIANT_SUFFIXES if row_id.endswith(s) and len(row_id) > len(s)), row_id)


def is_corpus_dataset(dataset: str) -> bool:
    """Whether a predictions file's data set is a split of the project corpus (``test``, or a sample such as
    ``test:200``): its intervals resample families, a public set's rows."""
    return dataset.partition(":")[0] in SPLITS


def families_by_dataset(rows: dict[tuple[str, str], Prediction]) -> dict[str, list[str] | None]:
    """dataset -> each row's family in file order (``by_dataset``'s order) for a corpus split, None for a public
    set: a predictions file carries ids, not families, and corpus intervals must resample families (about ten
    near-copies each; ``safety_report``), as ``so8t evaluate`` does. Public sets are resampled by rows there too."""
    out: dict[str, list[str] | None] = {}
    for dataset, row_id in rows:
        if is_corpus_dataset(dataset):
            out.setdefault(dataset, []).append(family_of_id(row_id))
        else:
            out[dataset] = None
    return out
