"""Masking personal data: e-mail addresses, phone numbers, payment card numbers, 12-digit individual
numbers (マイナンバー) and names marked by an honorific or a title. Used on task responses, on every
stored input, user id and note, and on the escalation queue.

The text is NFKC-normalised and its invisible characters are removed first, so full-width
``ｔａｎａｋａ＠ｅｘａｍｐｌｅ．ｃｏｍ``, ``０９０（１２３４）５６７８`` or a zero-width space inside an address,
a number or before an honorific hides nothing (raw text is masked too: a request that failed
validation, a model's answer). Every pattern runs in linear time: a match can only start where a
run of its characters starts (look-behind guards), and the repeats are possessive or
bounded, so a long run of letters or digits is scanned once, not once per position.

Names, Japanese: the kanji/katakana run before an honorific or a title (さん, 様, 部長, ...), with a
hiragana given name (佐藤さくらさん) or a given name after one space (田中 太郎様: any two short words
apart by a space before an honorific are read as one name), and one space may stand before a personal
honorific (山田 太郎 様, 鈴木 一郎 氏), not a title (承認者 部長, 大学 先生; so 田中 部長 stays). A title written
before the honorific is kept (山田課長 殿 -> [NAME]課長 殿). A department or company written before
the name stays (総務課山田花子さん, 株式会社サクラ営業部佐藤部長, ミナト商事 田中様): only what follows
its last unit (部, 課, 室, ...) is masked, within the 24 kanji/katakana before the honorific: a longer
run (a long company and department name written straight before the name) leaves the name unmasked,
the price of a bounded pattern. A name wholly in hiragana is masked after a kanji family
name or at the start of a phrase (さくらさん), not after a particle (田中さんとさくらさん), since hiragana
before さん is mostly grammar (今日はみなさん). Not masked: set phrases and roles (お客様, 皆様, 担当者様,
ご苦労様, 副社長, ベンダーさん), titles used as words (部長会議, 課長 alone), companies (サクラ商事様).
English: a title (Mr., Dr., ...; the name in any script's letters, capitalised) or a -san suffix. Names without an honorific or a title ("Tanaka
Taro", 山田は) are not recognised.
"""

from __future__ import annotations

import re
import unicodedata

from .textforms import strip_invisible

# e-mail: letters of any script (RFC 6531/IDN: 田中@example.co.jp, taro@例え.jp). Japanese has no spaces, so a
# local part is one script's run (kanji/katakana, hiragana, or letters of scripts written with spaces), several
# only when joined by . + - %: in 連絡先は田中@..., 宛先tanaka@... the address starts where the script changes
# (so 山田たろう@... keeps 山田, and 連絡先はたなか@... loses は: the sentence before is never taken). A match
# starts only there (look-behinds) and each run is possessive: linear. The last label is one of letters of
# scripts written with spaces that starts with a letter (.jp stops before です; the labels give back whole labels
# only, so "jpです.次に" ends at jp; "単価@12.50ドル", "会議@本社.10F" are a price and a place) or a known
# Japanese/Chinese TLD; a domain of four numbers is an IPv4 address (taro@10.0.0.1).
_K = r"\u3005\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u30a1-\u30fa\u30fc"
_H = r"\u3041-\u3096"
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
_W = rf"[^\W{_CJK}]"  # a letter, digit or _ of a script written with spaces
_ESEP = r"[.%+\-]"
_SEGMENT = rf"(?:[{_K}]++|[{_H}]++|{_W}++)"
_LOCAL = (rf"(?:(?<![.%+\-{_K}{_H}])(?<!{_W}){_ESEP}++|"  # ".taro@...": a separator first, after no run
          rf"(?<!{_ESEP})(?:(?<![{_K}])(?=[{_K}])|(?<![{_H}])(?=[{_H}])|(?<!{_W})(?={_W})))"
          rf"{_SEGMENT}(?:{_ESEP}++{_SEGMENT})*+{_ESEP}*+")
_CJK_TLDS = "日本|みんな|コム|中国|中國|香港|台湾|台灣|公司|网络|網絡|在线|商城|信息"
EMAIL = re.compile(rf"{_LOCAL}@(?:(?:(?:[^\W_]|-)++\.)+(?:[^\W\d_{_CJK}](?:[^\W_{_CJK}]|-)*+|{_CJK_TLDS})|"
                   r"\d{1,3}(?:\.\d{1,3}){3}(?!\.?\d))")
_DASH = r"[\-‐‑‒–—―−ー]"
_SEP = rf"(?: ?{_DASH} ?| )"  # ... or a hyphen with a space either side ("03 - 1234 - 5678")
# spaced hyphens also join lists (2024 - 2025 - 2026, 0900 - 1200 - 1500): four-four-four digits joined so are
# a My Number only when the last digit is its check digit, and twelve digits so are no Japanese phone number
_SPACED_DASH = re.compile(rf" {_DASH}|{_DASH} ")
_MAX_DOMESTIC_DIGITS = 11
# 13-19 digits in groups (cards) before 12-digit My Number and phones, so the longest match wins; groups of
# four may also be apart by a dot or two spaces ("4111.1111.1111.1111"), not a lone decimal point ("3.14159..."),
# and only groups of 4 (4-6-5 for Amex) by a spaced hyphen, so "2026-12-01 - 2027-01-31" stays a date range
# one kind of separator through a run of single-character gaps: a space and a hyphen mixed (090-1234-5678
# 090-1234-5678) are two phone numbers, not one card; mixed card layouts are the second alternative's
CARD = re.compile(rf"(?<!\d)(?:\d ?){{12,18}}\d(?!\d)|(?<!\d)(?:\d{_DASH}?){{12,18}}\d(?!\d)|"
                  rf"(?<![\d.])\d{{4}}(?:(?:\.|{_SEP}{{1,2}})\d{{4}}){{2,3}}(?:(?:\.|{_SEP}{{1,2}})\d{{1,3}})?(?!\.?\d)|"
                  rf"(?<!\d)\d{{4}}{_SEP}\d{{6}}{_SEP}\d{{5}}(?!\d)")
MY_NUMBER = re.compile(rf"(?<!\d)\d{{4}}{_SEP}?\d{{4}}{_SEP}?\d{{4}}(?!\d)")
# 03-1234-5678, (03) 1234-5678, 03(1234)5678, 03.1234.5678; a number that starts with 0 needs 9 digits or more
# (Japanese numbers have 10 or 11), so "05.12.2026" is a date
_PSEP = rf"(?:{_SEP}|\.)"
# after a digit, a letter, "+" or "." a number is part of something else (an ID, a version), except right after a
# label glued to it: TEL090-1234-5678, FAX03-1234-5678, Phone.03-1234-5678 (an ID such as INV0012-3456-789 stays)
_PHONE_LABELS = "".join(rf"|(?<=(?i:{label}))|(?<=(?i:{label})\.)" for label in ("tel", "fax", "phone", "mobile", "cell"))
_PHONE_START = rf"(?:(?<![0-9A-Za-z+.]){_PHONE_LABELS})"
PHONE = re.compile(rf"{_PHONE_START}(?:\(0\d{{1,4}}\)|0\d{{1,4}})"
                   rf"(?:{_PSEP}|\()?\d{{1,4}}(?:{_PSEP}|\))?\d{{3,4}}(?!\d)")
# +81 90 1234 5678, +1 (415) 555-0100, +81 (0)3-1234-5678, +86 138 0013 8000, +33 1 23 45 67 89: a country code
# and up to 7 groups, masked before cards (13 digits after a "+" are a phone); _intl_phone keeps E.164's 15 digits.
# Not a sign before an amount with one decimal point and 1-3 decimals (差額 +12345.67 円, +15000.00 USD; WHOIS's
# +1.4155550100 and +1.415.555.0100 are phones) or a time zone's offset, 0 to 14 (GMT +9 2026-12-01;
# UTC +81 3 1234 5678 is a phone)
INTL_PHONE = re.compile(rf"{_PHONE_START}\+(?!\d++\.\d{{1,3}}(?![.\d])|(?<=(?i:gmt|utc) \+)(?:0?\d|1[0-4])(?![\d.]))"
                        rf"\d{{1,3}}(?:{_PSEP}?(?:\(\d{{1,4}}\)|\d++)){{1,7}}")
_INTL_GROUP = re.compile(r"(\D*)(\d+)\)?")
_INTL_DIGITS = (7, 15)
_INTL_COMPLETE = 11  # digits after which a group set off by a plain space is the next number ("... 5678 2 times")
_MIN_DOMESTIC_DIGITS = 9

_KATA = r"\u30a1-\u30fa\u30fc"
_KANJI_KATA = rf"\u3005\u4e00-\u9fff{_KATA}"
_HIRA = r"\u3041-\u3096"
# not where the honorific or title starts a compound (様子, 様式, 多様性, 部長会議, 課長級)
_COMPOUND = r"(?![子式々相態性化]|会議|級|職|クラス|以上|相当|候補)"
_PERSONAL = rf"(?:さん|(?<![仕同模異])様|さま|サマ|くん|君|ちゃん|氏|殿){_COMPOUND}"  # also after a given name
# titles, longest first: a run that ends in one keeps it (田中本部長 様 -> [NAME]本部長 様)
_TITLES = ("支店長", "本部長", "先生", "部長", "課長", "係長", "主任", "社長", "専務", "常務", "室長", "所長", "次長")
_HONORIFIC = rf"(?:{_PERSONAL}|(?:{'|'.join(_TITLES)}){_COMPOUND})"
# a kanji/katakana name (up to 24, so a department may lead it; ジョン・スミス), optionally a given name after
# one space, and a hiragana given name of 2-4 (before さん, 様, ..., not a title: うちの部長); or a hiragana name
# alone at the start of a phrase. お/ご before it: a set phrase (お客様, ご苦労様, お母さん). One space may stand
# before a personal honorific (山田 太郎 様), not before a title: a word set off before a title is mostly no name
# ("承認者 部長", "本日の会議 部長も", "大学 先生"), so "田中 部長" stays too
NAME_JA = re.compile(rf"(?<![{_KANJI_KATA}おご御])((?:[{_KATA}]{{1,12}}・)?[{_KANJI_KATA}]{{1,24}}"
                     rf"(?: [{_KANJI_KATA}]{{1,8}})?(?:[{_HIRA}]{{2,4}}(?= ?{_PERSONAL}))?)(?={_HONORIFIC}| {_PERSONAL})|"
                     rf"(?<![{_KANJI_KATA}\u3041-\u309f])([{_HIRA}]{{2,4}})(?={_PERSONAL})")
# words before an honorific that are roles or set phrases, not names (お客様, 皆さん, ご苦労様, ご担当者様, 副社長)
_NOT_NAMES = frozenset({"客", "皆", "苦労", "担当者", "担当", "先方", "相手", "上司", "同僚", "部下", "社員", "世話", "奥",
                        "神", "王", "患者", "各位", "利用者", "管理者", "責任者", "関係者", "皆々", "方々", "御社", "貴社",
                        "営業", "経理", "人事", "総務", "法務", "技術", "開発", "支店", "本部", "部", "課", "係",
                        "新", "元", "前", "現", "副", "両", "各", "諸", "代表", "取締役", "代表取締役", "赤"})
# hiragana before an honorific that is not a name (みなさん, たくさん, どちらさま, かみさま, あかちゃん), and a
# particle that may open a hiragana given name after a kanji word (実例をたくさん, 1972年のあさま山荘)
_NOT_HIRA_NAMES = ("みな", "みんな", "たく", "どちら", "どなた", "こちら", "そちら", "あちら", "かみ", "ほとけ", "だんな", "あか",
                   "じい", "ばあ", "にい", "ねえ", "とう", "かあ", "ぼっ", "じょう", "て")
_PARTICLES = "をのはがにへともでや"
# katakana roles before さん (ベンダーさん, パートさん), not names
_ROLES = ("ベンダー", "ドライバー", "デザイナー", "エンジニア", "パート", "バイト", "スタッフ", "メーカー", "ユーザー", "ヘルパー",
          "オーナー", "リーダー", "マネージャー", "メンバー", "ゲスト", "クライアント", "パートナー", "ママ", "パパ")
# the end of a department before a name: 総務課|山田, 営業部|佐藤 (two characters or more before the unit, so
# 阿部 and 服部 are names; these longer family names end in 部 too)
_DEPARTMENT = re.compile(r"(?<=..)(?:部|課|係|室|班|局|グループ|チーム|センター|支店|支社|営業所|事業所|工場)")
_BE_NAMES = ("長谷部", "日下部", "曽我部", "宗我部", "矢田部", "五十部")
_TITLE_PREFIXES = tuple("本副新元前")  # 営業本|部長 is 営業|本部長
_HIRA_TAIL = re.compile(rf"[{_HIRA}]+$")
_COMPANY = re.compile(r"^(?:株式|有限|合同)会社[^ ]*$|(?:会社|商事|工業|産業|物産|物流|運輸|建設|電機|不動産|銀行|証券|保険|商会|"
                      r"商店|製作所|工務店|事務所|病院|薬局|ホールディングス)$")
# a name after an English title: words of any script's letters whose first is a capital (Dr. José García,
# Mr. Schröder, Mr.Smith); the capitals are read from Unicode's data (re has no \p{Lu}), all possessive (linear)
_UPPER = "".join(re.escape(chr(c)) for c in range(0x10000) if chr(c).isupper() or chr(c).istitle())
# ... but never kana or kanji (_CJK): Japanese has no spaces, so "Mr.Smithに至急連絡" would take the sentence with it
_WORD_EN = rf"[{_UPPER}](?:[^\W\d_{_CJK}]|['-])++"
NAME_EN = re.compile(rf"\b((?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof)(?:\.\s*+|\s++)){_WORD_EN}(?:\s++{_WORD_EN})?")
NAME_SAN = re.compile(r"\b[A-Z][a-z]+(-(?:san|sama|kun|chan|sensei|bucho|kacho|shacho))\b")


def _hiragana_name(hiragana: str) -> bool:
    """Whether hiragana before an honorific may be a given name (a particle before it aside)."""
    core = hiragana[1:] if hiragana[0] in _PARTICLES else hiragana
    return len(core) >= 2 and not core.startswith(("お", "ご")) and not hiragana.endswith(_NOT_HIRA_NAMES)


def _name_part(run: str) -> int | None:
    """Where the name starts in a run before an honorific (after its department or company, if any),
    or None when the run is no name."""
    start = 0
    for unit in _DEPARTMENT.finditer(run):
        if not run[:unit.end()].endswith(_BE_NAMES):
            start = unit.end()
    name = run[start:].lstrip(" ")
    first, space, given = name.partition(" ")
    if space and (first in _NOT_NAMES or _COMPANY.search(first)):
        name = given  # ミナト商事 田中様, 営業 佐藤様
    kanji = _HIRA_TAIL.sub("", name)
    if not name or kanji in _NOT_NAMES or kanji[:-1] in _NOT_NAMES and kanji.endswith(_TITLE_PREFIXES) or \
            kanji.endswith(_ROLES) or _COMPANY.search(kanji) or \
            (kanji != name and not _hiragana_name(name[len(kanji):])):
        return None
    return len(run) - len(name)


def _ja_name(match: re.Match) -> str:
    """The run with its name masked; a title that ends the run (山田課長 殿) is kept after the name, since
    before a department's unit (課) the name would otherwise be read as the department and stay."""
    run = match.group()
    title = next((title for title in _TITLES if run.endswith(title)), "")
    body = run[:len(run) - len(title)].rstrip(" ")
    start = _name_part(body)
    return run if start is None else body[:start] + "[NAME]" + run[len(body):]


def _check_digit_holds(digits: str) -> bool:
    """Whether the 12th digit is the check digit of the 11 before it, as in every individual number."""
    total = sum(int(digit) * (n + 1 if n <= 6 else n - 5) for n, digit in enumerate(reversed(digits[:11]), 1)) % 11
    return int(digits[11]) == (0 if total <= 1 else 11 - total)


def _my_number(match: re.Match) -> str:
    number = match.group()
    if _SPACED_DASH.search(number) and not _check_digit_holds(re.sub(r"\D", "", number)):
        return number  # a list joined by spaced hyphens (2024 - 2025 - 2026)
    return "[MY_NUMBER]"


def _card(match: re.Match) -> str:
    digits = re.sub(r"\D", "", match.group())
    if len(digits) == 12:
        return _my_number(match)
    return "[CARD]"  # any 13-19 digit run: masking beats leaking


def _intl_phone(match: re.Match) -> str:
    """[PHONE] for the groups that make one number (up to 15 digits; after 11, none set off by a plain space,
    which is the next number in "+81 3 1234 5678 2 times"); a run of fewer than 7 digits is no phone."""
    number, kept, digits = match.group(), 0, 0
    for group in _INTL_GROUP.finditer(number):
        separator, run = group.group(1), group.group(2)
        if digits + len(run) > _INTL_DIGITS[1] or (digits >= _INTL_COMPLETE and separator == " "):
            break
        kept, digits = group.end(), digits + len(run)
    return number if digits < _INTL_DIGITS[0] else "[PHONE]" + number[kept:]


def _phone(match: re.Match) -> str:
    number = match.group()
    digits = len(re.sub(r"\D", "", number))
    if digits < _MIN_DOMESTIC_DIGITS or digits > _MAX_DOMESTIC_DIGITS and _SPACED_DASH.search(number):
        return number  # a date, or a list joined by spaced hyphens (0900 - 1200 - 1500)
    return "[PHONE]"


def mask_personal_data(text: str) -> str:
    """The text (NFKC, invisible characters removed) with personal identifiers replaced by
    ``[EMAIL]``, ``[CARD]``, ``[MY_NUMBER]``, ``[PHONE]`` and ``[NAME]``."""
    text, _ = strip_invisible(unicodedata.normalize("NFKC", text))
    text = EMAIL.sub("[EMAIL]", text)
    text = INTL_PHONE.sub(_intl_phone, text)
    text = CARD.sub(_card, text)
    text = MY_NUMBER.sub(_my_number, text)
    text = PHONE.sub(_phone, text)
    text = NAME_EN.sub(r"\1[NAME]", text)
    text = NAME_SAN.sub(lambda m: f"[NAME]{m.group(1)}", text)
    return NAME_JA.sub(_ja_name, text)
