"""How one notification channel's send is run: its own thread with retries, cut off at ``notify_timeout_s``.

urllib's and smtplib's timeouts are per read, so a server trickling a byte now and then held a thread for as long
as it liked; here each channel's sockets are held where the waiting side can shut them at the deadline.
``ChannelWorkers`` gives each channel its own few workers and queue (urgent cases first), so a hung webhook
delays only webhook sends: the e-mail of every case goes out on its own workers meanwhile.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import smtplib
import socket
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

logger = logging.getLogger("so8t.escalation")
GRACE_S = 0.2  # past the deadline, for an attempt that is just answering; again for one cut off to end
MAX_STUCK_SENDERS = 3  # per channel: given-up senders alive after their cut-off, before it counts as stuck


class WebhookRedirected(RuntimeError):
    """The webhook answered 3xx: a configuration to fix, which no retry mends."""


class WebhookUnusable(WebhookRedirected):
    """The webhook's URL is no http(s) URL with a host: no retry mends it either."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib follows 301/302/303 for a POST as a GET without the body; refused, the 3xx comes back as an error."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


def _redirect_target(url: str, location: str | None) -> str:
    """Where a redirect points, as scheme://host only: a webhook's path and query are its secret."""
    target = urllib.parse.urlsplit(urllib.parse.urljoin(url, location or ""))
    return f"{target.scheme}://{target.netloc}/..." if location else "no Location"


class _Connections:
    """The sockets one channel's sender has open, reachable from the side that waits for it: urllib's and
    smtplib's timeouts are per read, so a server sending a byte now and then held the thread and its socket
    for as long as it trickled. ``cut`` shuts them down at the deadline (a blocked read returns at once) and
    no socket opens after."""

    def __init__(self) -> None:
        self.cut_off = threading.Event()
        self._lock = threading.Lock()
        self._held: list[socket.socket] = []

    def connect(self, address: tuple, timeout: float | None = None, source_address: tuple | None = None
                ) -> socket.socket:
        """``socket.create_connection``, holding a duplicate of the socket: TLS detaches the original when it
        wraps it, and shutting down any handle of a connection ends it for all."""
        sock = socket.create_connection(address, timeout, source_address)
        with self._lock:
            if not self.cut_off.is_set():
                self._held.append(sock.dup())
                return sock
        sock.close()
        raise TimeoutError("given up at notify_timeout_s")

    def release(self) -> None:
        """Drop the held handles once an attempt is over (each would keep its connection open)."""
        self._drop(shutdown=False)

    def cut(self) -> None:
        self.cut_off.set()
        self._drop(shutdown=True)

    def _drop(self, shutdown: bool) -> None:
        with self._lock:
            held, self._held = self._held, []
        for sock in held:
            if shutdown:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class _HeldOpen(urllib.request.HTTPHandler, urllib.request.HTTPSHandler):
    """urllib's HTTP and HTTPS handlers (proxies, TLS as usual), connecting through ``connections``."""

    def __init__(self, connections: _Connections) -> None:
        super().__init__()
        self.connections = connections

    def do_open(self, http_class, req, **http_conn_args):
        def held(*args, **kwargs):
            connection = http_class(*args, **kwargs)
            connection._create_connection = self.connections.connect  # http.client's hook for the TCP connect
            return connection
        return super().do_open(held, req, **http_conn_args)


def webhook_opener(connections: _Connections) -> urllib.request.OpenerDirector:
    """urllib's opener for HTTP and HTTPS only (proxies as usual): none of its file:, ftp: or data: handlers, so no
    other URL is ever opened, and redirects refused."""
    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(), urllib.request.UnknownHandler(), _HeldOpen(connections),
                    urllib.request.HTTPDefaultErrorHandler(), _NoRedirects(), urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


class _HeldSMTP(smtplib.SMTP):
    """smtplib.SMTP, connecting through ``connections`` (STARTTLS wraps the socket; the held copy cuts it)."""

    def __init__(self, connections: _Connections, *args, **kwargs) -> None:
        self.connections = connections
        super().__init__(*args, **kwargs)

    def _get_socket(self, host, port, timeout):
        return self.connections.connect((host, port), timeout, self.source_address)


class _Stragglers:
    """Per channel, the senders that outlived their cut-off too (blocked where no socket reaches): counted, so
    a stuck channel stops costing one more thread for every notice and reminder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._threads: dict[str, list[threading.Thread]] = {}

    def alive(self, channel: str) -> int:
        with self._lock:
            threads = self._threads[channel] = [t for t in self._threads.get(channel, []) if t.is_alive()]
            return len(threads)

    def add(self, channel: str, thread: threading.Thread) -> None:
        with self._lock:
            self._threads.setdefault(channel, []).append(thread)


Job = Callable[[float, _Connections], None]


def _with_retries(send: Job, retries: int, deadline: float, outcome: dict, connections: _Connections) -> None:
    """Fill ``outcome`` as it goes (``attempts``, ``error``; ``ok`` at the end): a caller that gives up at the
    deadline still reads how far it got. Once cut off, nothing more is tried."""
    attempt, delay = 0, 0.2
    while True:
        attempt += 1
        outcome["attempts"] = attempt
        try:
            send(max(0.1, deadline - time.monotonic()), connections)
            outcome.pop("error", None)
            outcome["ok"] = True
            return
        except Exception as exc:  # noqa: BLE001 - any transport failure is retried, then recorded
            outcome["error"] = f"{type(exc).__name__}: {exc}"
            final = isinstance(exc, WebhookRedirected)
        finally:
            connections.release()
        late = time.monotonic() + delay >= deadline
        if final or attempt > retries or late or connections.cut_off.wait(delay):  # the wait is the back-off
            outcome["ok"] = False
            return
        delay *= 2


def _send_each(jobs: dict[str, Job], retries: int, budget: float, stragglers: _Stragglers) -> dict[str, dict]:
    """Every channel at once, each in its own daemon thread with the whole ``budget``; one still sending at the
    deadline is given up, recorded as failed and cut off (what it had sent may yet arrive: at least once,
    never "sent" when it was not). A channel with MAX_STUCK_SENDERS stragglers fails at once, starting no
    thread."""
    deadline = time.monotonic() + budget
    results: dict[str, dict] = {}
    running: dict[str, tuple[threading.Thread, dict, _Connections]] = {}
    for name, send in jobs.items():
        stuck = stragglers.alive(name)
        if stuck >= MAX_STUCK_SENDERS:
            results[name] = {"attempts": 0, "ok": False, "error": (
                f"the {name} channel is stuck: {stuck} earlier sends given up at notify_timeout_s are still "
                "running (blocked where no timeout reaches, a DNS look-up say); not tried")}
            continue
        outcome, connections = {"attempts": 0}, _Connections()
        thread = threading.Thread(target=_with_retries, args=(send, retries, deadline, outcome, connections),
                                  daemon=True, name=f"so8t-notify-{name}")
        thread.start()
        running[name] = thread, outcome, connections
    for thread, _, _ in running.values():
        thread.join(max(0.0, deadline - time.monotonic()) + GRACE_S)
    given_up = []
    for name, (thread, outcome, connections) in running.items():
        result = dict(outcome)  # before the cut: the error it causes is not the server's
        if "ok" not in result:
            last = f" (last error: {result['error']})" if result.get("error") else ""
            result.update(ok=False, error=f"no answer within notify_timeout_s ({budget:g} s); given up{last}")
            connections.cut()
            given_up.append((name, thread))
        results[name] = result
    ended_by = time.monotonic() + GRACE_S
    for name, thread in given_up:
        thread.join(max(0.0, ended_by - time.monotonic()))
        if thread.is_alive():
            stragglers.add(name, thread)
    return results


class ChannelWorkers:
    """One channel's own workers (started on first use) and waiting line, urgent cases first, then in order: a
    channel whose server hangs holds only its own workers, so another channel's sends never wait behind it."""

    def __init__(self, name: str, workers: int = 2) -> None:
        self.name, self._workers = name, workers
        self._waiting: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def submit(self, urgent: bool, task: Callable[[], None]) -> None:
        """Queue ``task`` (which must catch its own errors); RuntimeError once closed."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"cannot schedule new {self.name} notifications after close")
            self._waiting.put((0 if urgent else 1, next(self._order), task))
            if len(self._threads) < self._workers:
                thread = threading.Thread(target=self._run, daemon=True, name=f"so8t-notify-{self.name}-worker")
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        while True:
            _, _, task = self._waiting.get()
            if task is None:
                return
            try:
                task()
            except Exception:  # noqa: BLE001 - a worker outlives any one send
                logger.exception("a %s notification failed unexpectedly", self.name)

    def close(self) -> None:
        """No new sends; those already waiting still go out, then the workers end."""
        with self._lock:
            self._closed = True
            for _ in self._threads:
                self._waiting.put((2, next(self._order), None))
