"""argparse types the commands share, so a bad value is named the same way everywhere and refused before
anything loads (argparse prints the message and exits 2)."""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections.abc import Callable
from pathlib import Path

from ..core.io import unwritable_place


def iso_date(text: str) -> dt.date:
    """A day, YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date YYYY-MM-DD, got {text!r}") from None


def utc_midnight(text: str) -> dt.datetime:
    """The start of a day (YYYY-MM-DD) in UTC."""
    return dt.datetime.combine(iso_date(text), dt.time(), tzinfo=dt.UTC)


def number_in(low: float, high: float = math.inf, what: str = "a number") -> Callable[[str], float]:
    """A finite number from ``low`` to ``high`` (NaN and infinities refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and low <= value <= high):
            span = f", {low} or more" if high == math.inf else f" from {low} to {high}"
            raise argparse.ArgumentTypeError(f"expected {what}{span}, got {text!r}")
        return value

    return parse


def whole_number(low: int = 0) -> Callable[[str], int]:
    """An integer of ``low`` or more: a count (resamples, rows) below it would be recorded as if it meant one."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected a whole number, {low} or more, got {text!r}")
        return value

    return parse


def unwritable_file(option: str, value: str | None) -> str | None:
    """Why the file ``value`` of ``option`` could not be written, or None (``core.io.unwritable_place``); checked
    before any work, so a folder or a read-only place does not cost the run (or, with ``evaluate --calibrate``,
    leave the checkpoint changed and the metrics lost)."""
    return None if value is None else unwritable_place(value, option)


def same_file(out: str | None, inputs: dict[str, str | None]) -> str | None:
    """The option among ``inputs`` (option: path) that names the file ``out`` would replace, or None."""
    if out is None:
        return None
    target = Path(out).resolve()
    return next((option for option, value in inputs.items() if value and Path(value).resolve() == target), None)
