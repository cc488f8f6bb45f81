"""`so8t runtime`'s stdin: JSON lines into requests, and batches of the requests that have arrived.

A producer that writes a line now and then (``tail -f requests.jsonl | so8t runtime``) must get each decision when
its line arrives: batches were filled to ``service.max_batch`` before deciding, so two requests waited for thirty more,
and a signal meanwhile lost them with no decision and no record. A batch now holds what has arrived: the first line
is waited for, the next ones join while they keep coming (a file fills whole batches). SIGINT or SIGTERM stops the
reading; what was read by then is still decided and recorded.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterable, Iterator

from ..core.json_objects import RepeatedKey, unique_keys
from ..serve.request_checks import Unparsed

REQUEST_FIELDS = ("user_request", "context", "user_id")  # what a stdin line may set; never ``client`` (an API key's
# name, which only the HTTP service sets for the key that asked)
ARRIVAL_WAIT_S = 0.05  # a line that arrives within this of the one before joins its batch
STOP_POLL_S = 0.1  # how often a wait for the next line looks whether a signal asked to stop
UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


class NotJsonLines(ValueError):
    """The input as a whole is not UTF-8 JSON lines (a UTF-16 file): said once, before any request is decided."""


def iter_lines(stream) -> Iterator[tuple[int, object]]:
    """(line number, request) from a binary stream of JSON lines; blank lines are skipped. An unreadable line (not
    UTF-8, not JSON, a key given twice, or JSON that Python cannot hold: a number past 4300 digits, nesting past the
    recursion limit) becomes ``Unparsed``. A UTF-8 byte-order mark before the first line (Windows editors write one)
    is dropped, as the training loaders drop it; a UTF-16 one is ``NotJsonLines``. An object keeps only the request's
    own fields (``REQUEST_FIELDS``)."""
    for line_no, raw in enumerate(stream, 1):
        if isinstance(raw, str):  # a text stream (tests, notebooks): back to the bytes it stands for
            raw = raw.encode("utf-8", "surrogateescape")
        if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        elif line_no == 1 and raw.startswith(UTF16_MARKS):  # every line would be a case for a person
            raise NotJsonLines("stdin is UTF-16 text, not UTF-8 JSON lines: convert it first "
                               "(iconv -f UTF-16 -t UTF-8 requests.jsonl | so8t runtime ...); nothing was decided")
        if not raw.strip():
            continue
        yield line_no, _parsed(line_no, raw)


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


_END = object()


def arrived_batches(pairs: Iterable, size: int, stop: threading.Event | None = None) -> Iterator[list]:
    """Batches of at most ``size`` of ``pairs``, each of what has arrived: the first waits for a pair, the next join
    while they come within ``ARRIVAL_WAIT_S``. A reader thread takes them from ``pairs`` (at most ``size`` ahead);
    its error is raised here. Once ``stop`` is set, what has been read is the last batch."""
    stop = stop or threading.Event()
    arrived: queue.Queue = queue.Queue(maxsize=size)
    threading.Thread(target=_read_into, args=(iter(pairs), arrived, stop), name="so8t-stdin", daemon=True).start()
    while True:
        first = _next(arrived, stop)
        if first is _END:
            return
        batch = [first]
        while len(batch) < size:
            try:
                item = _checked(arrived.get(timeout=ARRIVAL_WAIT_S))
            except queue.Empty:
                break
            if item is _END:
                yield batch
                return
            batch.append(item)
        yield batch


def _read_into(pairs: Iterator, arrived: queue.Queue, stop: threading.Event) -> None:
    try:
        for pair in pairs:
            arrived.put(pair)  # a line read is handed on, even after a signal: it is decided and recorded
            if stop.is_set():
                break
        arrived.put(_END)
    except BaseException as exc:  # noqa: BLE001 - raised in the deciding thread
        arrived.put(_Failed(exc))


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _checked(item: object) -> object:
    if isinstance(item, _Failed):
        raise item.error
    return item


def _next(arrived: queue.Queue, stop: threading.Event) -> object:
    """The next pair, waiting while none has arrived; after ``stop``, only one read by then (else the end)."""
    while True:
        if stop.is_set():
            try:
                return _checked(arrived.get(timeout=ARRIVAL_WAIT_S))
            except queue.Empty:
                return _END
        try:
            return _checked(arrived.get(timeout=STOP_POLL_S))
        except queue.Empty:
            continue
