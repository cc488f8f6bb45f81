"""Stop signals that end a block through its ``finally`` instead of killing the process on the spot.

By default SIGTERM and SIGHUP end a process without running a ``finally``: an export left gigabytes of staged GGUFs
in its folder, a frozen-state build its half-written states. Inside ``StopSignals`` they raise SystemExit(128 +
signal) (SIGINT: KeyboardInterrupt, as Python's own handler does), so the cleanup runs. Only a signal still at its
default is taken (a caller's handler, or nohup's ignored SIGHUP, stays as it is), only in the main thread (the only
one Python lets set handlers), and the handlers are put back on the way out. ``held()`` defers the stop to the end
of a block that must not stop half-way (an export's renames); a repeat of SIGTERM or SIGHUP once the stop is under
way (a supervisor's second SIGTERM) is ignored until the cleanup is done.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))
INTERRUPT = signal.SIGINT


class StopSignals:
    """The context manager described in the module docstring."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._holding = False
        self._pending: int | None = None
        self._stopping = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            defaults = {**dict.fromkeys(STOP_SIGNALS, signal.SIG_DFL), INTERRUPT: signal.default_int_handler}
            for number, default in defaults.items():
                if signal.getsignal(number) == default:
                    self._previous[number] = signal.signal(number, self._stop)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _stop(self, number: int, frame) -> None:
        if self._holding:
            self._pending = number
            return
        if self._stopping and number != INTERRUPT:  # the cleanup of the first one is running
            return
        self._stopping = True
        raise ending(number)

    @contextmanager
    def held(self) -> Iterator[None]:
        self._holding = True
        try:
            yield
        finally:
            self._holding = False
            if self._pending is not None:  # the signal wins over an error in the block: the process was told to end
                self._stopping = True
                raise ending(self._pending)  # noqa: B012


def ending(number: int) -> BaseException:
    """What a stop signal raises: KeyboardInterrupt for Ctrl-C, as Python's own handler does; else SystemExit."""
    return KeyboardInterrupt() if number == INTERRUPT else SystemExit(128 + number)
