"""Checking a notebook's parameters as papermill hands them over, in the first cell after them.

``papermill -p name value`` turns only ``True``/``False``, ``None`` and numbers into Python values; anything
else arrives as a string. So ``-p pet false`` is the truthy string "false" (the option silently ON) and
``-p models dist/x.gguf`` is a string a list() splits into characters. Each notebook passes its flags, lists
and counts through these first, so a value that cannot mean what was asked stops the notebook with the
parameter's name instead of running something else.
"""

from __future__ import annotations

from pathlib import Path

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


class ParameterError(ValueError):
    """A notebook parameter that cannot mean what its cell says it is."""


def as_flag(name: str, value: object) -> bool:
    """A bool, or one of true/false, yes/no, on/off, 1/0 (any case) as ``-p`` gives it."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower() if isinstance(value, str | int) else None
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ParameterError(f"parameter {name} is an on/off flag: give True or False (or yes/no, on/off, 1/0), "
                         f"got {value!r}")


def as_list(name: str, value: object, none_is_empty: bool = False, min_items: int = 0) -> list:
    """A list; one bare string (``-p models dist/x.gguf``) is a list of that one item, not of its characters.
    For several items give a list: ``-y '{name: [a, b]}'`` or a YAML file with ``-f``. ``None`` is refused
    unless ``none_is_empty`` (a parameter whose notebook reads None as "none", e.g. 08's quants): a report over
    ``logs None`` would say zero chains verified; so is a list shorter than ``min_items`` (``logs []`` too)."""
    if value is None and none_is_empty:
        items = []
    elif isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        raise ParameterError(f"parameter {name} is a list: give [..] with -y or -f (or one item with -p), "
                             f"got {type(value).__name__} {value!r}")
    if len(items) < min_items:
        raise ParameterError(f"parameter {name} needs at least {min_items} item(s), got {value!r}")
    return items


def as_out_dir(name: str, value: object) -> Path:
    """An output folder: a path that is a file (or lies under one) is refused by name before any work, where
    the first write would otherwise fail with a bare FileExistsError after it."""
    path = Path(str(value))
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ParameterError(f"parameter {name} is an output folder, but {blocking} is a file; give a folder")
    return path


def as_input_file(name: str, value: object, what_to_do: str) -> Path:
    """An input file that must exist: refused by name, with ``what_to_do``, before any work."""
    path = Path(str(value))
    if not path.is_file():
        raise ParameterError(f"parameter {name}: no file {path}; {what_to_do}")
    return path


def as_count(name: str, value: object, low: int = 0) -> int:
    """A whole number of ``low`` or more (resamples, rows): a negative or fractional one is refused here, not
    after the training or scoring that comes before its use."""
    number = value
    if isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            number = None
    if not isinstance(number, int) or isinstance(number, bool) or number < low:
        raise ParameterError(f"parameter {name} is a whole number, {low} or more; got {value!r}")
    return number
