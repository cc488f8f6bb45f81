"""The phrase pools the surface variants draw from, read from ``data/phrases.yaml``.

They are data, not code: a linguist can add a department, an opener or an injection wrapper without
touching the generator (then rebuild the corpus). Each pool exists for both languages.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

from ...core.paths import DATA_DIR
from ...core.schema import LANGS

PHRASES_FILE = DATA_DIR / "phrases.yaml"
POOLS: tuple[str, ...] = (
    "departments", "roles", "situations", "polite_openers", "polite_closings", "casual_openers",
    "casual_closings", "casual_leads", "injections", "preambles", "closings", "tags",
)
PAIR_POOLS = frozenset({"situations"})  # entries are [context, opening sentence]
# pools only one language uses: English casual leads continue in lowercase; Japanese mixed-width variants get a tag
OPTIONAL = frozenset({("casual_leads", "ja"), ("tags", "en")})


def _pool(path: Path, name: str, lang: str, entries) -> tuple:
    where = f"{path}: {name}.{lang}"
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: must be a non-empty list")
    if name in PAIR_POOLS:
        if not all(isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) and x for x in e) for e in entries):
            raise ValueError(f"{where}: each entry must be [context, opening sentence]")
        return tuple(tuple(e) for e in entries)
    if not all(isinstance(e, str) and e.strip() for e in entries):
        raise ValueError(f"{where}: each entry must be a non-empty string")
    if name == "injections" and not all(e.count("{req}") == 1 for e in entries):
        raise ValueError(f"{where}: each wrapper must contain {{req}} exactly once")
    return tuple(entries)


@functools.cache
def load_phrases(path: Path = PHRASES_FILE) -> dict[str, dict[str, tuple]]:
    """pool -> lang -> entries, validated; a missing pool or a malformed entry is an error naming it."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the phrase pools ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must map pool names to languages")
    unknown = sorted(set(data) - set(POOLS))
    if unknown:
        raise ValueError(f"{path}: unknown pool(s) {unknown}; known: {list(POOLS)}")
    pools: dict[str, dict[str, tuple]] = {}
    for name in POOLS:
        by_lang = data.get(name) or {}
        pools[name] = {}
        for lang in LANGS:
            if lang not in by_lang:
                if (name, lang) in OPTIONAL:
                    continue
                raise ValueError(f"{path}: pool {name} has no {lang!r} entries")
            pools[name][lang] = _pool(Path(path), name, lang, by_lang[lang])
    return pools
