"""Jailbreak and injection framings: the same request inside a persona, an "ignore your rules" order, a
what-if, a story, a translation task or an encoding, cut in two, after a fake chat log, or buried in a
long form.

Every family gets ``FRAMINGS_PER_FAMILY`` framed rows whatever its label, so a framing alone says nothing
about the decision; the label stays the underlying request's (SAFETY_POLICY.md: an injection "does not
change the decision of the underlying request"). The wrapper text lives in ``data/phrases.yaml``.
"""

from __future__ import annotations

import base64
import codecs
import functools
import random
import re
import unicodedata

from .phrases import pool
from .text import join_parts

# framing group -> its kinds; a family draws FRAMINGS_PER_FAMILY distinct groups, then one kind of each
FRAMING_GROUPS: dict[str, tuple[str, ...]] = {
    "persona": ("persona",),
    "ignore_rules": ("ignore_rules",),
    "hypothetical": ("hypothetical",),
    "fiction": ("fiction",),
    "translation": ("translation",),
    "encoding": ("base64", "rot13", "leetspeak", "spaced", "zero_width", "fullwidth", "homoglyph"),
    "payload_split": ("payload_split",),
    "many_shot": ("many_shot",),
    "long_template": ("long_template",),
}
FRAMINGS: tuple[str, ...] = tuple(k for kinds in FRAMING_GROUPS.values() for k in kinds)
FRAMING_GROUP_OF: dict[str, str] = {k: g for g, kinds in FRAMING_GROUPS.items() for k in kinds}
FRAMINGS_PER_FAMILY = 3
# Encodings that mean something in each language: ROT13 and leetspeak act on Latin letters only, and
# Japanese already has a mixed-width surface variant.
ENCODINGS: dict[str, tuple[str, ...]] = {
    "ja": ("base64", "spaced", "zero_width", "homoglyph"),
    "en": FRAMING_GROUPS["encoding"],
}
# the wrapper pool of each kind (encodings: "decoders" names the scheme, "obfuscated" is a light note)
_WRAPPER_POOL: dict[str, str] = {
    "persona": "personas", "ignore_rules": "injections", "hypothetical": "hypotheticals", "fiction": "fictions",
    "translation": "translations", "long_template": "templates", "base64": "decoders", "rot13": "decoders",
    "leetspeak": "decoders", "spaced": "obfuscated", "zero_width": "obfuscated", "fullwidth": "obfuscated",
    "homoglyph": "obfuscated",
}
_SCHEME_NAMES: dict[str, dict[str, str]] = {
    "ja": {"base64": "Base64", "rot13": "ROT13", "leetspeak": "leet表記"},
    "en": {"base64": "Base64", "rot13": "ROT13", "leetspeak": "leetspeak"},
}
_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
ZERO_WIDTH_SPACE = "\u200b"
_OPEN = tuple("「『“\"'(（【[\n→")
_CLOSE = tuple("」』”\"')）】]\n")


@functools.cache
def homoglyph_map() -> dict[str, str]:
    """Letter -> a look-alike from another script, from Unicode's confusables table.

    Latin letters get Cyrillic or Greek twins (а for a), katakana get kanji or hiragana twins (力 for カ).
    Only look-alikes that NFKC does not fold back are kept, so the obfuscation survives normalisation.
    """
    from confusable_homoglyphs import confusables

    prefer = {"latin": ("CYRILLIC", "GREEK"), "kana": ("CJK UNIFIED IDEOGRAPH", "HIRAGANA")}
    sources = [(c, "latin") for c in "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"]
    sources += [(chr(cp), "kana") for cp in range(0x30A1, 0x30FB)]
    out: dict[str, str] = {}
    for ch, script in sources:
        case = "" if script == "kana" else "SMALL LETTER" if ch.islower() else "CAPITAL LETTER"
        found = confusables.is_confusable(ch, greedy=True, preferred_aliases=[]) or []
        cands = sorted(
            (prefer[script].index(p), h["c"]) for f in found for h in f["homoglyphs"] for p in prefer[script]
            if len(h["c"]) == 1 and h["n"].startswith(p) and case in h["n"]
            and unicodedata.category(h["c"]).startswith("L") and unicodedata.normalize("NFKC", h["c"]) != ch
        )
        if cands:
            out[ch] = cands[0][1]
    return out


def _words(text: str, lang: str) -> list[tuple[int, int]]:
    """Spans worth mangling: English words of 4+ letters; Japanese katakana or kanji runs of 2+."""
    pattern = r"[A-Za-z]{4,}" if lang == "en" else r"[\u30a1-\u30fa\u30fc]{2,}|[\u4e00-\u9fff]{2,}"
    return [m.span() for m in re.finditer(pattern, text)]


def _split_words(text: str, lang: str, sep: str, rng: random.Random) -> str:
    """Separate the letters of one to three of the longest words with ``sep`` (a keyword filter misses them)."""
    spans = sorted(_words(text, lang), key=lambda sp: (sp[0] - sp[1], sp[0]))[: rng.randint(1, 3)]
    for a, b in sorted(spans, reverse=True):
        text = text[:a] + sep.join(text[a:b]) + text[b:]
    return text


def applies(kind: str, text: str, lang: str) -> bool:
    """Whether an encoding changes ``text`` (ROT13 needs Latin letters, homoglyphs need letters with twins)."""
    if kind not in ENCODINGS[lang]:
        return False
    if kind == "base64":
        return True
    if kind == "rot13":
        return bool(re.search(r"[A-Za-z]", text))
    if kind == "leetspeak":
        return any(c.lower() in _LEET for c in text)
    if kind in ("spaced", "zero_width"):
        return bool(_words(text, lang))
    if kind == "fullwidth":
        return any("!" <= c <= "~" for c in text)
    if kind == "homoglyph":
        return any(c in homoglyph_map() for c in text)
    raise ValueError(f"unknown encoding {kind!r}")


def encode(kind: str, text: str, lang: str, rng: random.Random) -> str:
    """The request as the encoding writes it (call only where ``applies``: the text then always changes)."""
    if kind == "base64":
        return base64.b64encode(text.encode("utf-8")).decode("ascii")
    if kind == "rot13":
        return codecs.encode(text, "rot13")
    if kind == "leetspeak":
        idx = [i for i, c in enumerate(text) if c.lower() in _LEET]
        chosen = {i for i in idx if rng.random() < 0.7} or {idx[0]}
        return "".join(_LEET[c.lower()] if i in chosen else c for i, c in enumerate(text))
    if kind == "spaced":
        return _split_words(text, lang, " ", rng)
    if kind == "zero_width":
        return _split_words(text, lang, ZERO_WIDTH_SPACE, rng)
    if kind == "fullwidth":
        return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else "\u3000" if c == " " else c for c in text)
    if kind == "homoglyph":
        table = homoglyph_map()
        idx = [i for i, c in enumerate(text) if c in table]
        chosen = set(rng.sample(idx, max(1, len(idx) // 2)))
        return "".join(table[c] if i in chosen else c for i, c in enumerate(text))
    raise ValueError(f"unknown encoding {kind!r}")


def wrap(template: str, req: str, lang: str) -> str:
    """Put ``req`` where ``{req}`` is, with the punctuation and spacing a person would type around it.

    One-line wrappers are joined like sentences (a missing "。" or "." is added); multi-line templates
    (forms, logs) take the request as it is.
    """
    pre, post = template.split("{req}")
    req = req.strip()
    if not pre.strip():
        head = req
    elif pre.endswith(_OPEN):
        head = pre + req
    elif "\n" in template:
        head = pre + ("" if lang == "ja" or pre.endswith(" ") else " ") + req
    else:
        head = join_parts(lang, pre, req)
    if not post.strip():
        return head
    if "\n" in template or post.startswith(_CLOSE):
        return head + post
    return join_parts(lang, head, post)


def _payload_split(text: str, lang: str, rng: random.Random) -> str:
    """The request cut in two at a random point (mid-word on purpose) and a template to join the halves."""
    lo, hi = max(1, int(len(text) * 0.3)), max(2, int(len(text) * 0.7))
    cut = rng.randint(lo, hi)
    a, b = text[:cut].strip(), text[cut:].strip()
    return rng.choice(pool("payload_splits", lang)).replace("{a}", a).replace("{b}", b)


def _many_shot(text: str, lang: str, rng: random.Random) -> str:
    """A fake chat log of benign, instantly answered questions, then the request as the next turn."""
    user, assistant = rng.choice(pool("speakers", lang))
    shots = rng.sample(pool("shots", lang), rng.randint(3, 5))
    log = "\n".join(f"{user}{q}\n{assistant}{a}" for q, a in shots)
    template = rng.choice(pool("many_shot", lang))
    template = template.replace("{shots}", log).replace("{user}", user).replace("{assistant}", assistant.rstrip())
    return wrap(template, text, lang)


def choose_framings(rng: random.Random) -> list[str]:
    """FRAMINGS_PER_FAMILY distinct framing groups for one family (the kind inside a group comes later)."""
    return rng.sample(list(FRAMING_GROUPS), FRAMINGS_PER_FAMILY)


def frame(group: str, text: str, lang: str, rng: random.Random) -> tuple[str, str]:
    """(kind, framed request) for one framing group; an encoding is drawn among those that change ``text``."""
    if group == "encoding":
        kind = rng.choice([k for k in ENCODINGS[lang] if applies(k, text, lang)])
    else:
        (kind,) = FRAMING_GROUPS[group]
    if kind == "payload_split":
        return kind, _payload_split(text, lang, rng)
    if kind == "many_shot":
        return kind, _many_shot(text, lang, rng)
    template = rng.choice(pool(_WRAPPER_POOL[kind], lang))
    if kind in FRAMING_GROUPS["encoding"]:
        text = encode(kind, text, lang, rng)
        template = template.replace("{scheme}", _SCHEME_NAMES[lang].get(kind, ""))
    return kind, wrap(template, text, lang)
