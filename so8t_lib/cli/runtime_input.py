"""`so8t runtime`'s stdin: JSON lines into requests, in batches of the requests that have arrived.

A producer that writes a line now and then (``tail -f requests.jsonl | so8t runtime``) must get each decision when
its line arrives: batches were filled to ``service.max_batch`` before deciding, so two requests waited for thirty more,
and a signal meanwhile lost them with no decision and no record. ``StdinBatches`` reads the file descriptor itself
(``select`` and ``os.read``, in the deciding thread: no reader thread left blocked on stdin at exit, which aborted
the interpreter): a batch holds the complete lines that have arrived, the first waited for, the next taken while
they keep coming (a file fills whole batches). Once a signal has set ``stop``, nothing more is read, and every
complete line read by then is still in a batch.
"""

from __future__ import annotations

import json
import os
import select
import threading
from collections import deque
from collections.abc import Iterator

from ..core.json_objects import RepeatedKey, unique_keys
from ..serve.request_checks import Unparsed

REQUEST_FIELDS = ("user_request", "context", "user_id")  # what a stdin line may set; never ``client`` (an API key's
# name, which only the HTTP service sets for the key that asked)
ARRIVAL_WAIT_S = 0.05  # a line that arrives within this of the one before joins its batch
STOP_POLL_S = 0.1  # how often a wait for the next line looks whether a signal asked to stop
READ_BYTES = 1 << 16
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


class StdinReadError(OSError):
    """Reading stdin failed part-way (EIO on a hung-up terminal, a line too large for memory); the lines read before
    it were handed out first."""


class NotJsonLines(ValueError):
    """The input as a whole is not UTF-8 JSON lines (a UTF-16 file): said once, before any request is decided."""


class LineParser:
    """Raw lines, numbered from 1, into (line number, request); blank lines are skipped (None). An unreadable line
    (not UTF-8, not JSON, a key given twice, or JSON that Python cannot hold: a number past 4300 digits, nesting past
    the recursion limit) becomes ``Unparsed``. A UTF-8 byte-order mark before the first line (Windows editors write
    one) is dropped, as the training loaders drop it; a UTF-16 one is ``NotJsonLines``. An object keeps only the
    request's own fields (``REQUEST_FIELDS``)."""

    def __init__(self) -> None:
        self.line_no = 0

    def parse(self, raw: bytes | str) -> tuple[int, object] | None:
        self.line_no += 1
        if isinstance(raw, str):  # a text stream (tests, notebooks): back to the bytes it stands for
            raw = raw.encode("utf-8", "surrogateescape")
        if self.line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        elif self.line_no == 1 and raw.startswith(UTF16_MARKS):  # every line would be a case for a person
            raise NotJsonLines("stdin is UTF-16 text, not UTF-8 JSON lines: convert it first "
                               "(iconv -f UTF-16 -t UTF-8 requests.jsonl | so8t runtime ...); nothing was decided")
        return (self.line_no, _parsed(self.line_no, raw)) if raw.strip() else None


def iter_lines(stream) -> Iterator[tuple[int, object]]:
    """(line number, request) for each line of a binary (or text) stream, read one line at a time."""
    parser = LineParser()
    for raw in stream:
        if (pair := parser.parse(raw)) is not None:
            yield pair


def is_request(item: object) -> bool:
    """Whether a stdin line gave a request at all: an object with ``user_request`` (whatever its value, which the
    runtime validates); not an unreadable line, a list or a string, or an object whose key is misspelt."""
    return isinstance(item, dict) and "user_request" in item


def _parsed(line_no: int, raw: bytes) -> object:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Unparsed(f"stdin line {line_no}: not valid UTF-8 (byte {exc.start})", raw[:200].decode("utf-8", "replace"))
    try:
        item = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        return Unparsed(f"stdin line {line_no}: not JSON ({exc.msg})", text[:200])
    except RepeatedKey as exc:  # json keeps the last, a reader before or after the gate may keep the first
        return Unparsed(f"stdin line {line_no}: {exc}; say it once", text[:200])
    except RecursionError:
        return Unparsed(f"stdin line {line_no}: not readable JSON (nested too deep)", text[:200])
    except Exception as exc:  # noqa: BLE001 - ValueError (a number past 4300 digits), MemoryError: that line only
        return Unparsed(f"stdin line {line_no}: not readable JSON ({type(exc).__name__}: {str(exc)[:200]})",
                        text[:200])
    return {k: item[k] for k in REQUEST_FIELDS if k in item} if isinstance(item, dict) else item


def iter_items(stream) -> Iterator:
    """The requests of ``iter_lines``, without their line numbers."""
    return (item for _, item in iter_lines(stream))


def read_items(stream) -> list:
    """All of ``iter_items(stream)``."""
    return list(iter_items(stream))


class StdinBatches:
    """Batches of (line number, request) of at most ``size``, each of the complete lines that have arrived. A stream
    without a file descriptor (a test's BytesIO, a notebook's text) is read line by line in batches of ``size``.
    After the batches end: ``unfinished``, the bytes of a line still being written when ``stop`` was set (never
    decided: it was not a request yet); ``error``, what ended the reading early (EIO on a hung-up terminal, a line too
    large for memory), raised once the lines read before it were handed out."""

    def __init__(self, stream, size: int, stop: threading.Event | None = None) -> None:
        self.stream, self.size, self.stop = stream, size, stop or threading.Event()
        self.parser, self.pending, self.parts = LineParser(), deque(), []  # parts: the line not finished yet
        self.unfinished, self.error, self.ended = 0, None, False

    def __iter__(self) -> Iterator[list]:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
            fd = None
        batches = self._from_fd(fd) if fd is not None else self._from_lines()
        yield from batches
        if self.error is not None:
            raise StdinReadError(f"{type(self.error).__name__}: {self.error}") from self.error

    def _from_lines(self) -> Iterator[list]:
        lines, batch = iter_lines(self.stream), []
        while not self.stop.is_set():
            try:
                batch.append(next(lines))
            except StopIteration:
                break
            except (OSError, MemoryError) as exc:
                self.error = exc
                break
            if len(batch) == self.size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _from_fd(self, fd: int) -> Iterator[list]:
        while True:
            while not self.pending:  # the first line: waited for, looking at the signal every STOP_POLL_S
                if self.ended or self.stop.is_set():
                    self.unfinished = sum(map(len, self.parts))
                    return
                if _ready(fd, STOP_POLL_S):
                    self._read(fd)
            while len(self.pending) < self.size and not self.ended and not self.stop.is_set() \
                    and _ready(fd, ARRIVAL_WAIT_S):  # the lines that keep coming join it
                self._read(fd)
            yield [self.pending.popleft() for _ in range(min(self.size, len(self.pending)))]

    def _read(self, fd: int) -> None:
        """One read: its complete lines parsed into ``pending``; at the end of the input (or a read that failed)
        what is left is the last line."""
        try:
            data = os.read(fd, READ_BYTES)
            if data:
                *ends, rest = data.split(b"\n")  # joined only when a line is complete: a long line costs one copy
                lines = [b"".join([*self.parts, ends[0]]), *ends[1:]] if ends else []
                self.parts = [*self.parts, rest] if not ends else [rest]
            else:
                self.ended, lines, self.parts = True, [b"".join(self.parts)] if any(self.parts) else [], []
        except (OSError, MemoryError) as exc:  # what was read before stays pending: handed out, then raised
            self.error, self.ended, lines, self.parts = exc, True, [], []
        for raw in lines:
            if (pair := self.parser.parse(raw + b"\n")) is not None:
                self.pending.append(pair)


def _ready(fd: int, timeout: float) -> bool:
    readable, _, _ = select.select([fd], [], [], timeout)
    return bool(readable)
