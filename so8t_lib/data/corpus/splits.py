"""Families to splits, and reading the written splits back.

Whole near-duplicate groups of families go to one of train/val/test, about 80/10/10 within every
(label, category, lang) cell, so no wording of a request (nor a near copy of it) can leak from training
into evaluation. The guards that check the written files are in ``guard``.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from ...core.paths import CORPUS_DIR
from ...core.schema import CATEGORIES, LABELS, LANGS, SPLITS
from .framings import FRAMINGS
from .seeds import CONTRASTS, HAZARDS, Seed
from .text import seeded_rng
from .transforms import ROW_HARD_KINDS

SPLIT_FRACTIONS: dict[str, float] = {"train": 0.8, "val": 0.1, "test": 0.1}
_FILL_ORDER = ("test", "val", "train")  # ties go to the evaluation splits first: every cell of 3+ is in each
_SMALL_ORDER = ("train", "test", "val")  # a cell of 1-2 families: train first, then test


def assign_splits(seeds: Iterable[Seed], seed: int = 0, groups: Mapping[str, str] | None = None) -> dict[str, str]:
    """Family -> split: whole groups (``groups``: family -> group key; default: each family alone).

    Every family counts toward its (label, category, lang) cell. A group goes to the split whose cells
    are furthest below their share (1 - placed/target, summed over the group's families); groups of
    several families are placed first, largest first, then each cell's single families in the cell's
    own shuffled order (``seed`` + crc32 of the cell). So the first three families of a cell go to
    test, val and train, every cell with three or more families is in every split, and the result
    depends only on the seeds, the groups and ``seed``.
    """
    seeds = sorted(seeds, key=lambda s: s.id)
    groups = dict(groups or {})
    cell_of = {s.id: s.cell for s in seeds}
    n_cell = Counter(cell_of.values())
    placed: Counter[tuple[tuple[str, str, str], str]] = Counter()
    members: dict[str, list[str]] = defaultdict(list)
    for s in seeds:
        members[groups.get(s.id, s.id)].append(s.id)
    out: dict[str, str] = {}

    def place(fams: list[str]) -> None:
        small = all(n_cell[cell_of[f]] < 3 for f in fams)
        order = _SMALL_ORDER if small else _FILL_ORDER

        def need(sp: str) -> float:
            return round(sum(1 - placed[cell_of[f], sp] / (SPLIT_FRACTIONS[sp] * n_cell[cell_of[f]]) for f in fams), 9)

        best = max(order, key=lambda sp: (need(sp), -order.index(sp)))
        for f in fams:
            out[f] = best
            placed[cell_of[f], best] += 1

    multi = sorted((sorted(m) for m in members.values() if len(m) > 1), key=lambda m: m[0])
    seeded_rng(seed, "split", "groups").shuffle(multi)
    for fams in sorted(multi, key=len, reverse=True):  # stable: equal sizes keep the shuffled order
        place(fams)
    by_cell: dict[tuple[str, str, str], list[str]] = defaultdict(list)
    for fams in members.values():
        if len(fams) == 1:
            by_cell[cell_of[fams[0]]].append(fams[0])
    for cell in sorted(by_cell):
        fams = sorted(by_cell[cell])
        seeded_rng(seed, "split", *cell).shuffle(fams)
        for f in fams:
            place([f])
    return out


# what the guards and the statistics group and compare by: a row without one of them cannot be checked
ROW_STRINGS: tuple[str, ...] = ("id", "user_request", "family", "split", "label", "category", "lang")
# the closed vocabularies of a row (``build`` writes no other value): one outside them would be counted nowhere by
# the statistics (a category of pandas takes it for missing) and compared with nothing by the guards
ROW_CHOICES: dict[str, tuple[str, ...]] = {
    "split": SPLITS, "label": LABELS, "category": CATEGORIES, "lang": LANGS,
    "hard_kind": ROW_HARD_KINDS, "framing": FRAMINGS, "hazard": HAZARDS, "contrast": CONTRASTS,
}  # not ``variant``: earlier corpus versions named variants this one no longer makes (injection), and only stats
# reads it, as a label to count by
ROW_TEXTS: tuple[str, ...] = ("context", "rationale", "task_output", "variant")  # optional: a string or null
ROW_NULLABLE = frozenset({*ROW_TEXTS, "hard_kind", "framing", "hazard", "contrast"})


def _got(row: dict, key: str) -> str:
    value = row.get(key)
    return ("no field" if key not in row else "null" if value is None else repr(value) if isinstance(value, str)
            else type(value).__name__)


def row_problem(row: dict) -> str | None:
    """What makes a row unusable for the guards and the statistics (None when nothing): a field they read that is
    absent, of another type or outside its vocabulary. Fields a row may leave out (a retrained row has no variant)
    are checked only when present."""
    bad = next((k for k in ROW_STRINGS if not isinstance(row.get(k), str)), None)
    if bad is not None:
        return f"field {bad!r} must be a string, the row has {_got(row, bad)}"
    bad = next((k for k in ROW_TEXTS if k in row and not isinstance(row[k], str | None)), None)
    if bad is not None:
        return f"field {bad!r} must be a string or null, the row has {_got(row, bad)}"
    if "hard" in row and not isinstance(row["hard"], bool):
        return f"field 'hard' must be true or false, the row has {_got(row, 'hard')}"
    for key, allowed in ROW_CHOICES.items():
        if key in row and row[key] not in allowed and not (row[key] is None and key in ROW_NULLABLE):
            null = " (or null)" if key in ROW_NULLABLE else ""
            return f"field {key!r} must be one of {', '.join(allowed)}{null}, the row has {_got(row, key)}"
    return None


def read_split(data_dir: str | Path, split: str) -> list[dict]:
    """Rows of one split file; a missing file, or a line that is not a JSON object passing ``row_problem``, is an
    error naming it (file:line)."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (run: so8t corpus build)")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may sit in a text
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); these files are written by "
                         "'so8t corpus build': build the corpus again") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i}: not valid JSON: {e}") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: a row must be a JSON object, got {type(row).__name__}; "  # noqa: TRY004
                             "these files are written by 'so8t corpus build'")
        if problem := row_problem(row):
            raise ValueError(f"{path}:{i}: {problem}; these files are written by 'so8t corpus build'")
        rows.append(row)
    return rows


def read_corpus(data_dir: str | Path = CORPUS_DIR) -> list[dict]:
    """All rows of train, val and test (``split`` as stored in each row)."""
    return [r for sp in SPLITS for r in read_split(data_dir, sp)]
