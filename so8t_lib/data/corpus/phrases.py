"""The phrase pools the surface variants and framings draw from, read from ``data/phrases.yaml``.

They are data, not code: a linguist can add a department, an opener or a jailbreak wrapper without
touching the generator (then rebuild the corpus). Each pool exists for both languages.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import yaml

from ...core.paths import DATA_DIR
from ...core.schema import LANGS

PHRASES_FILE = DATA_DIR / "phrases.yaml"
POOLS: tuple[str, ...] = (
    # surface variants (transforms.py)
    "departments", "roles", "situations", "polite_openers", "polite_closings", "casual_openers",
    "casual_closings", "casual_leads", "preambles", "closings", "tags",
    # framings (framings.py)
    "injections", "personas", "hypotheticals", "fictions", "translations", "decoders", "obfuscated",
    "payload_splits", "many_shot", "speakers", "shots", "templates",
)
PAIR_POOLS = frozenset({"situations", "speakers", "shots"})  # entries are [first, second]
# pools only one language uses: English casual leads continue in lowercase; Japanese mixed-width variants get a tag
OPTIONAL = frozenset({("casual_leads", "ja"), ("tags", "en")})
# the placeholders every entry of a template pool must contain exactly once (others may not appear)
PLACEHOLDERS: dict[str, frozenset[str]] = {
    "injections": frozenset({"req"}), "personas": frozenset({"req"}), "hypotheticals": frozenset({"req"}),
    "fictions": frozenset({"req"}), "translations": frozenset({"req"}), "obfuscated": frozenset({"req"}),
    "templates": frozenset({"req"}), "decoders": frozenset({"req", "scheme"}),
    "payload_splits": frozenset({"a", "b"}), "many_shot": frozenset({"req", "shots", "user"}),
}
OPTIONAL_PLACEHOLDERS: dict[str, frozenset[str]] = {"many_shot": frozenset({"assistant"})}
_PLACEHOLDER_RE = re.compile(r"\{([a-z]+)\}")


def _check_placeholders(where: str, name: str, entry: str) -> None:
    found = _PLACEHOLDER_RE.findall(entry)
    need, may = PLACEHOLDERS[name], OPTIONAL_PLACEHOLDERS.get(name, frozenset())
    for ph in sorted(need):
        if found.count(ph) != 1:
            raise ValueError(f"{where}: entry {entry!r} must contain {{{ph}}} exactly once")
    extra = sorted(set(found) - need - may)
    if extra or any(found.count(ph) > 1 for ph in may):
        raise ValueError(f"{where}: entry {entry!r} has unknown or repeated placeholder(s) {extra or sorted(may)}")


def _pool(path: Path, name: str, lang: str, entries) -> tuple:
    where = f"{path}: {name}.{lang}"
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"{where}: must be a non-empty list")
    if name in PAIR_POOLS:
        if not all(isinstance(e, list) and len(e) == 2 and all(isinstance(x, str) and x for x in e) for e in entries):
            raise ValueError(f"{where}: each entry must be a pair [first, second] of non-empty strings")
        return tuple(tuple(e) for e in entries)
    if not all(isinstance(e, str) and e.strip() for e in entries):
        raise ValueError(f"{where}: each entry must be a non-empty string")
    if name in PLACEHOLDERS:
        for e in entries:
            _check_placeholders(where, name, e)
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


def pool(name: str, lang: str) -> tuple:
    """The entries of one pool in one language (from the default phrase file)."""
    return load_phrases()[name][lang]
