"""Surface variants of a seed: the same request in other words, registers, scripts and framings.

A variant never changes the label (the policy decides on the underlying request; a jailbreak or
injection framing does not change that either). ``expand_seed`` turns one seed into its family.
"""

from __future__ import annotations

import random
import re
import unicodedata

from .framings import FRAMINGS, choose_framings, frame
from .phrases import pool as _pool
from .seeds import HARD_KINDS, Seed
from .text import join_parts

# how a row was made: hand-written wordings, surface variants, then one framing kind each (framings.py)
HANDWRITTEN: tuple[str, ...] = ("original", "alt1", "alt2")
SURFACE_VARIANTS: tuple[str, ...] = ("context", "polite", "casual", "long_middle", "mixed_width", "typo")
VARIANTS: tuple[str, ...] = (*HANDWRITTEN, *SURFACE_VARIANTS, *FRAMINGS)
FRAMED_HARD_KIND = "framing"  # the hard kind of a framed row whose seed has none
ROW_HARD_KINDS: tuple[str, ...] = (*HARD_KINDS, FRAMED_HARD_KIND)
ROW_KEYS: tuple[str, ...] = (
    "id", "context", "user_request", "label", "category", "lang", "rationale", "task_output",
    "family", "split", "hard", "hard_kind", "variant", "framing", "hazard", "contrast",
)


# request endings rewritten into the other register ("〜お願いできますでしょうか" / "〜してくれる？")
_JA_TE_ENDING = re.compile(
    r"([てで])(ください|くださいませんか|もらえますか|もらえませんか|いただけますか|いただけませんか"
    r"|ほしいです|ほしい|くれますか|くれませんか)([。？?！!]*)$"
)
_JA_ONEGAI_ENDING = re.compile(r"(を)?(お願いします|おねがいします|お願いできますか)([。？?！!]*)$")
# a bare te-form request at the very end ("…教えて", "…まとめて。"); "として" is not one
_JA_BARE_TE_ENDING = re.compile(
    r"(?<!と)(教え|作っ|書い|まとめ|調べ|直し|送っ|考え|確認し|し|出し|見せ|消し|変え|入れ|やっ|手伝っ|探し"
    r"|選ん|読ん|訳し|整理し|貼っ|つくっ|おしえ)(て|で)([。！!]*)$"
)


# first words after which a lowercase continuation reads naturally ("hey, can you ...")
_EN_LOWERABLE = frozenset({
    "can", "could", "would", "will", "what", "what's", "how", "is", "are", "do", "does", "please", "where",
    "where's", "when", "which", "who", "should", "may", "help", "write", "draft", "explain", "find", "give",
    "send", "tell", "summarize", "make", "need", "quick", "any", "best"
})
_EN_ASK_START = re.compile(r"^(Can|Could|Would|Will) you (please )?", re.IGNORECASE)
_EN_IMPERATIVES = frozenset({
    "write", "draft", "explain", "find", "give", "send", "tell", "summarize", "make", "help", "translate",
    "check", "list", "create", "prepare", "update", "set", "change", "put", "pull", "post", "turn", "get",
    "show"
})


def _build_halfwidth_map() -> dict[str, str]:
    """Full-width katakana -> half-width, derived from NFKC so that it needs no hand table."""
    m: dict[str, str] = {}
    for cp in range(0xFF61, 0xFFA0):
        hw = chr(cp)
        fw = unicodedata.normalize("NFKC", hw)
        if len(fw) == 1 and fw != hw:
            m.setdefault(fw, hw)
    for fw, hw in list(m.items()):
        for mark, hw_mark in (("\u3099", "\uff9e"), ("\u309a", "\uff9f")):
            composed = unicodedata.normalize("NFC", fw + mark)
            if len(composed) == 1:
                m.setdefault(composed, hw + hw_mark)
    return {k: v for k, v in m.items() if "\u30a0" <= k <= "\u30ff"}


_HALFWIDTH = _build_halfwidth_map()
_ASCII_ALNUM_RUN = re.compile(r"[A-Za-z0-9]+")
_KATAKANA_RUN = re.compile(r"[\u30a1-\u30fa\u30fc]+")


def _to_fullwidth(s: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if c.isascii() and c.isalnum() else c for c in s)


def _to_halfwidth_kana(s: str) -> str:
    return "".join(_HALFWIDTH.get(c, c) for c in s)


def mix_width(text: str, rng: random.Random) -> str:
    """Japanese as typed on mixed IMEs: some ASCII runs full-width (ＰＣ), some katakana half-width (ﾊﾟｽﾜｰﾄﾞ)."""
    spans: list[tuple[int, int, str]] = []
    for m in _ASCII_ALNUM_RUN.finditer(text):
        spans.append((m.start(), m.end(), "fw"))
    for m in _KATAKANA_RUN.finditer(text):
        spans.append((m.start(), m.end(), "hw"))
    spans.sort()
    chosen = [sp for sp in spans if rng.random() < (0.7 if sp[2] == "fw" else 0.5)]
    if spans and not chosen:
        chosen = [spans[rng.randrange(len(spans))]]
    out, pos = [], 0
    for a, b, kind in chosen:
        out.append(text[pos:a])
        out.append(_to_fullwidth(text[a:b]) if kind == "fw" else _to_halfwidth_kana(text[a:b]))
        pos = b
    out.append(text[pos:])
    return "".join(out)


def add_typo(text: str, lang: str, rng: random.Random) -> str:
    """One dropped or doubled character, as people type; ja prefers hiragana, en a longer word's inside."""
    if lang == "ja":
        cands = [i for i, c in enumerate(text) if "\u3041" <= c <= "\u3096"]
        if not cands:
            cands = [i for i, c in enumerate(text) if c.isalpha()]
    else:
        cands = [i for m in re.finditer(r"[A-Za-z]{5,}", text) for i in range(m.start() + 1, m.end() - 1)]
        if not cands:
            cands = [i for i, c in enumerate(text) if c.isalpha()]
    if not cands:
        return text
    i = rng.choice(cands)
    if rng.random() < 0.5:
        return text[:i] + text[i + 1:]
    return text[: i + 1] + text[i] + text[i + 1:]


def _en_lower_start(text: str) -> str | None:
    """Lowercase the first letter when the first word allows it ("Can you" -> "can you"); else None."""
    first = text.split(" ", 1)[0]
    if first.lower().rstrip(",:") in _EN_LOWERABLE and not first.isupper():
        return text[0].lower() + text[1:]
    return None


def _ja_register(text: str, opener: str, te_ending: str, onegai_ending: str,
                 closings: list[str] | tuple[str, ...], rng: random.Random) -> str:
    """Re-end a Japanese request in one register (〜てください -> 〜ていただけますでしょうか / 〜てくれる？);
    a request with no recognised ending gets a closing sentence instead."""
    m = _JA_TE_ENDING.search(text)
    if m:
        return opener + text[: m.start()] + m.group(1) + te_ending
    m = _JA_ONEGAI_ENDING.search(text)
    if m:
        return opener + text[: m.start()] + (m.group(1) or "") + onegai_ending
    m = _JA_BARE_TE_ENDING.search(text)
    if m:
        return opener + text[: m.start()] + m.group(1) + m.group(2) + te_ending
    return opener + join_parts("ja", text, rng.choice(closings))


def _polite(text: str, lang: str, rng: random.Random) -> str:
    if lang == "ja":
        return _ja_register(text, rng.choice(_pool("polite_openers", "ja")), "いただけますでしょうか。",
                            "お願いできますでしょうか。", _pool("polite_closings", "ja"), rng)
    m = _EN_ASK_START.match(text)
    single = not re.search(r"[.?!] ", text.strip())
    if m:
        body = "Could you please " + text[m.end():]
    elif single and text.split(" ", 1)[0].lower() in _EN_IMPERATIVES:
        body = "Could you please " + text[0].lower() + text[1:].rstrip(".!") + "?"
    else:
        body = text
    return join_parts("en", rng.choice(_pool("polite_openers", "en")), body, rng.choice(_pool("polite_closings", "en")))


def _casual(text: str, lang: str, rng: random.Random) -> str:
    if lang == "ja":
        return _ja_register(text, rng.choice(_pool("casual_openers", "ja")), "くれる？", "お願いしてもいい？",
                            _pool("casual_closings", "ja"), rng)
    lowered = _en_lower_start(text)
    if lowered is not None and rng.random() < 0.5:
        body = f"{rng.choice(_pool('casual_leads', 'en'))} {lowered}"  # one sentence: no punctuation after the lead
    else:
        body = join_parts("en", rng.choice(_pool("casual_openers", "en")), text)
    return join_parts("en", body, rng.choice(_pool("casual_closings", "en")))


def _new_context(seed: Seed, rng: random.Random) -> tuple[str, str]:
    """A fresh (context, opening sentence); a seed's own context is kept (it may decide the label)."""
    if seed.lang == "ja":
        situation, lead = rng.choice(_pool("situations", "ja"))
        who = seed.context or "の".join((rng.choice(_pool("departments", "ja")), rng.choice(_pool("roles", "ja"))))
        return f"{who}（{situation}）", lead
    situation, lead = rng.choice(_pool("situations", "en"))
    who = seed.context or ", ".join((rng.choice(_pool("roles", "en")), rng.choice(_pool("departments", "en"))))
    return f"{who}; {situation}", lead


def expand_seed(seed: Seed, rng: random.Random) -> list[dict]:
    """All variants of one seed (its family), label unchanged, so the model sees the request, not the wording.

    Variants: ``original``, ``alt1``/``alt2`` (hand-written), then ``context`` (a new
    requester/situation in the context field and an opening sentence), ``polite`` or
    ``casual`` (register; ja rewrites "〜てください" into "〜ていただけますでしょうか" or
    "〜てくれる？"), ``long_middle`` (benign preamble + request + benign closing), ``typo``
    and, for Japanese, ``mixed_width`` (mixed-width script behind a chat tag); then
    ``FRAMINGS_PER_FAMILY`` framed rows (framings.py), whatever the label. ``rng`` must be
    seeded per family so the result does not depend on build order. Rows carry every key of
    ``ROW_KEYS``; ``split`` is None until the build assigns the family's split.
    """
    lang = seed.lang
    texts = seed.texts
    ctx = seed.context or ""
    out: list[tuple[str, str, str]] = [("original", seed.request, ctx)]
    out += [(f"alt{j + 1}", a, ctx) for j, a in enumerate(seed.alt)]

    def base() -> str:
        return texts[rng.randrange(len(texts))]

    new_ctx, lead = _new_context(seed, rng)
    out.append(("context", join_parts(lang, lead, base()), new_ctx))
    register = rng.choice(("polite", "casual"))
    out.append((register, (_polite if register == "polite" else _casual)(base(), lang, rng), ctx))
    pre = rng.choice(_pool("preambles", lang))
    post = rng.choice(_pool("closings", lang))
    out.append(("long_middle", join_parts(lang, pre, base(), post), ctx))
    if lang == "ja":
        out.append(("mixed_width", mix_width(rng.choice(_pool("tags", "ja")) + base(), rng), ctx))
    out.append(("typo", add_typo(base(), lang, rng), ctx))
    framed: set[str] = set()
    for group in choose_framings(rng):
        kind, text = frame(group, base(), lang, rng)
        framed.add(kind)
        out.append((kind, text, ctx))

    rows = []
    for variant, text, context in out:
        is_framed = variant in framed
        rows.append({
            "id": f"{seed.id}-{variant}",
            "context": context,
            "user_request": text,
            "label": seed.label,
            "category": seed.category,
            "lang": lang,
            "rationale": seed.rationale if seed.label != "ALLOW" else None,
            "task_output": seed.task_output if seed.label == "ALLOW" else None,
            "family": seed.id,
            "split": None,
            "hard": seed.hard is not None or is_framed,
            "hard_kind": seed.hard or (FRAMED_HARD_KIND if is_framed else None),
            "variant": variant,
            "framing": variant if is_framed else None,
            "hazard": seed.hazard,
            "contrast": seed.contrast,
        })
    return rows
