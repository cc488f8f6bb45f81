"""Hand-written seed requests (``data/seeds/*.yaml``): the rules each one must follow, and loading them.

Every corpus row comes from one seed, labelled by SAFETY_POLICY.md; the seed's id is its family.
See ``data/seeds/README.md`` for the format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from ...core.config_files import load_yaml_strict
from ...core.schema import CATEGORIES, LABELS, LANGS
from .text import wording

HARD_KINDS: tuple[str, ...] = (
    "benign_violent_words", "policy_question", "own_vs_others_data", "injection", "ambiguous_intent",
    "lookalike",  # a benign request that shares the words of a harmful one (see ``contrast``)
)
# The public hazard taxonomy (MLCommons AILuminate's categories as a checklist, plus the workplace ones):
# what a harmful request asks for, or what a benign look-alike sounds like.
HAZARDS: tuple[str, ...] = (
    "violent_crime", "nonviolent_crime", "sex_crime", "child_exploitation", "self_harm", "cbrne", "weapons",
    "hate", "harassment", "defamation", "privacy", "ip", "elections", "specialized_advice", "cyber", "fraud",
)
# How a benign look-alike differs from the harmful request it resembles (XSTest's contrast types, in the
# project's own words).
CONTRASTS: tuple[str, ...] = (
    "homonym", "figurative", "safe_target", "safe_context", "history", "definition", "prevention", "fiction",
    "public_figure", "reporting",
)
SEED_KEYS = frozenset(
    {"id", "lang", "label", "category", "request", "alt", "context", "hard", "rationale", "task_output",
     "hazard", "contrast"}
)
SEED_ID_RE = re.compile(r"^[a-z]+-(ja|en)-\d{3}$")


@dataclass(frozen=True)
class Seed:
    """One validated hand-written request; ``file``/``index`` say where it came from, for errors."""

    id: str
    lang: str
    label: str
    category: str
    request: str
    alt: tuple[str, ...]
    context: str | None
    hard: str | None
    rationale: str | None
    task_output: str | None
    hazard: str | None = None
    contrast: str | None = None
    file: str = ""
    index: int = -1

    @property
    def cell(self) -> tuple[str, str, str]:
        """The stratification cell (label, category, lang)."""
        return (self.label, self.category, self.lang)

    @property
    def texts(self) -> tuple[str, ...]:
        """The hand-written wordings: the request, then its alternatives."""
        return (self.request, *self.alt)


def _nonempty_str(v: Any) -> bool:
    return isinstance(v, str) and bool(v.strip())


def _validate_item(item: Any, where: str) -> Seed:
    """Check one YAML item against the seed rules (see data/seeds/README.md); raise ValueError naming it."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: each item must be a mapping, got {type(item).__name__}")  # noqa: TRY004

    def fail(field: str, msg: str) -> ValueError:
        return ValueError(f"{where}: field '{field}': {msg}")

    unknown = sorted(set(item) - SEED_KEYS)
    if unknown:
        raise fail(unknown[0], f"unknown key(s) {unknown}")
    for k in ("id", "lang", "label", "category", "request"):
        if not _nonempty_str(item.get(k)):
            raise fail(k, "missing or empty (a non-empty string is required)")
    sid = item["id"]
    if not SEED_ID_RE.match(sid):
        raise fail("id", f"{sid!r} is not '<prefix>-<ja|en>-<3 digits>'")
    if item["lang"] not in LANGS:
        raise fail("lang", f"{item['lang']!r} is not one of {list(LANGS)}")
    if sid.split("-")[1] != item["lang"]:
        raise fail("lang", f"{item['lang']!r} does not match the language part of id {sid!r}")
    if item["label"] not in LABELS:
        raise fail("label", f"unknown label {item['label']!r} (expected one of {list(LABELS)})")
    if item["category"] not in CATEGORIES:
        raise fail("category", f"unknown category {item['category']!r} (expected one of {list(CATEGORIES)})")
    for key, allowed in (("hazard", HAZARDS), ("contrast", CONTRASTS)):
        if item.get(key) is not None and item[key] not in allowed:
            raise fail(key, f"unknown {key} {item[key]!r} (expected null or one of {list(allowed)})")
    if item.get("contrast") is not None and item.get("hard") != "lookalike":
        raise fail("contrast", "only a seed with hard: lookalike names a contrast")
    hard = item.get("hard")
    if hard is not None and hard not in HARD_KINDS:
        raise fail("hard", f"unknown hard kind {hard!r} (expected null or one of {list(HARD_KINDS)})")
    context = item.get("context")
    if context is not None and not isinstance(context, str):
        raise fail("context", "must be a string or absent")
    rationale, task_output = item.get("rationale"), item.get("task_output")
    if item["label"] == "ALLOW":
        if not _nonempty_str(task_output):
            raise fail("task_output", "an ALLOW seed needs a non-empty task_output")
        if rationale:
            raise fail("rationale", "an ALLOW seed must have rationale: null")
    else:
        if not _nonempty_str(rationale):
            raise fail("rationale", f"a {item['label']} seed needs a non-empty rationale")
        if task_output:
            raise fail("task_output", f"a {item['label']} seed must have task_output: null")
        if item["category"] == "none":
            raise fail("category", f"a {item['label']} seed needs a real category, not 'none'")
    alts = item.get("alt")
    if not isinstance(alts, list) or not 1 <= len(alts) <= 2:
        raise fail("alt", "must be a list of 1-2 other phrasings")
    for j, a in enumerate(alts):
        if not _nonempty_str(a):
            raise fail("alt", f"phrasing {j} must be a non-empty string")
    return Seed(
        id=sid, lang=item["lang"], label=item["label"], category=item["category"],
        request=item["request"].strip(), alt=tuple(a.strip() for a in alts),
        context=context.strip() if isinstance(context, str) and context.strip() else None,
        hard=hard, rationale=rationale.strip() if rationale else None,
        hazard=item.get("hazard"), contrast=item.get("contrast"),
        task_output=task_output.strip() if task_output else None,
    )


def load_seeds(seeds_dir: str | Path) -> list[Seed]:
    """Load and validate every ``*.yaml`` seed file, so a bad seed stops the build with its file and id.

    Beyond the per-item rules, ids must be unique across all files and no two
    wordings (requests or alternatives) may be the same request by training's key (``text.wording``, of which
    ``tables.asked_keys`` is made; the context aside, so stricter): a duplicate wording would put one
    request into two families, hence possibly two splits, or under two labels.
    Seeds come back sorted by id (file order does not matter).
    """
    seeds_dir = Path(seeds_dir)
    if seeds_dir.is_file():
        raise NotADirectoryError(f"{seeds_dir} is a file; --seeds-dir takes the folder of seed files (data/seeds)")
    if not seeds_dir.is_dir():
        raise FileNotFoundError(f"seeds folder not found: {seeds_dir}")
    files = sorted(seeds_dir.glob("*.yaml"))
    other_spelling = sorted(p.name for p in seeds_dir.iterdir()
                            if p.suffix.lower() in (".yaml", ".yml") and p.suffix != ".yaml")
    if other_spelling:  # left out, the corpus would be built without them and say nothing
        raise ValueError(f"{seeds_dir}: {', '.join(other_spelling)}: seed files are read as *.yaml; rename them")
    if not files:
        raise FileNotFoundError(f"no *.yaml seed files in {seeds_dir}")
    seeds: list[Seed] = []
    id_where: dict[str, str] = {}
    text_where: dict[str, str] = {}
    for path in files:
        try:
            # a key given twice (two labels, two requests) is an error, as in the configs: plain YAML keeps the last
            items = load_yaml_strict(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from e
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text ({e}); save the seed file as UTF-8") from e
        except OSError as e:  # a folder named x.yaml, an unreadable file
            raise ValueError(f"{path}: cannot be read as a seed file ({e.strerror or e})") from e
        if not isinstance(items, list):
            raise ValueError(f"{path}: the top level must be a YAML list of seeds")  # noqa: TRY004
        for i, item in enumerate(items):
            sid = item.get("id") if isinstance(item, dict) else None
            where = f"{path} item {i} (id {sid!r})"
            s = _validate_item(item, where)
            if s.id in id_where:
                raise ValueError(f"{where}: field 'id': duplicate id {s.id!r} (first at {id_where[s.id]})")
            id_where[s.id] = where
            for field, t in zip(("request", "alt", "alt"), s.texts):
                n = wording(t)
                if n in text_where:
                    raise ValueError(
                        f"{where}: field '{field}': duplicate normalised text {t!r} (first at {text_where[n]}; "
                        "training reads the two as one request: punctuation, spacing and case aside)"
                    )
                text_where[n] = where
            seeds.append(replace(s, file=str(path), index=i))
    return sorted(seeds, key=lambda s: s.id)
