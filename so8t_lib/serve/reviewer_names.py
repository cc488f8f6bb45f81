"""A reviewer's name as the escalation queue stores it: the queue, the command line and the HTTP schema check
it the same way (``escalation`` re-exports these)."""

from __future__ import annotations

import unicodedata

from ..core.unicode_text import IGNORABLE_CODE_POINTS, steers_lines

MAX_NAME_CHARS = 128  # a reviewer's name, as the HTTP schema bounds it


def unseen(char: str) -> bool:
    """Whether a character shows nothing where a name is printed: whitespace, a control or format character (Cf:
    zero-width space, soft hyphen, BOM) or another default-ignorable code point. The HTTP schema builds from it."""
    return char.isspace() or unicodedata.category(char) in ("Cc", "Cf") or ord(char) in IGNORABLE_CODE_POINTS


def checked_name(by: str) -> str:
    """The reviewer's name as stored (stripped), or ValueError. An invisible name says nobody decided; a line
    break, an escape sequence or a bidi override in it would forge or hide lines where the name is shown."""
    if all(unseen(ch) for ch in by):
        raise ValueError(f"--by {by!r}: name the person who decided, with at least one visible character "
                         "(spaces, zero-width and other invisible characters do not count)")
    if steers_lines(by):
        raise ValueError(f"--by {by!r}: a name is one line without control characters")
    if len(name := by.strip()) > MAX_NAME_CHARS:
        raise ValueError(f"--by: a name is at most {MAX_NAME_CHARS} characters, got {len(name)}; shorten it")
    return name
