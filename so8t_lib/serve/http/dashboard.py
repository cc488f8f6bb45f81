"""The live dashboard's numbers, read from the same Prometheus metrics that /metrics exposes.

A sampler keeps a snapshot of the counters and histograms every few seconds (10 minutes of them);
``summary()`` compares the newest with older ones the way Prometheus' ``rate`` and
``histogram_quantile`` would: requests per minute over the last minute, latency percentiles, error and
escalation rates over the last five minutes, plus totals since start, queue gauges and the recent
fail-closed events (time, request id, reason, category: never the request text).

The HTTP numbers count the API's routes only, as alerts.yml's so8t:http_error_ratio does: load balancer
probes, scrapes and the dashboard's own polls would otherwise show a replica with no API traffic and the
model not loaded as a 100% 5xx rate, and each open tab's polls would dilute a real one. The windows are
keyed on the monotonic clock, so a step of the wall clock (NTP, a VM resumed) does not bend the rates.
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
import time

from .metrics import CLIENT_FAULT, DECISION_ENDPOINTS, ServiceMetrics

WINDOW_S, RATE_S = 300.0, 60.0
DECISION_ROUTES = tuple(f"/v1/{e}" for e in DECISION_ENDPOINTS)
API_ROUTES = "/v1/"  # what alerts.yml's route=~"/v1/.*" matches (a Prometheus regex is anchored: a prefix)


def _samples(metric) -> list:
    return [s for family in metric.collect() for s in family.samples]


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' estimate: linear within the bucket that holds the q-th observation; ``buckets`` are
    (upper bound, cumulative count) sorted by bound, the last one +Inf."""
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


class DashboardData:
    def __init__(self, metrics: ServiceMetrics, recent: int = 20) -> None:
        self.metrics = metrics
        self.started = time.monotonic()
        self.history: collections.deque[dict] = collections.deque(maxlen=400)
        self.events: collections.deque[dict] = collections.deque(maxlen=recent)
        self._events_lock = threading.Lock()

    def snapshot(self) -> dict:
        m = self.metrics
        decisions: dict[tuple[str, str], float] = collections.Counter()
        for s in _samples(m.decisions):
            if s.name.endswith("_total"):
                decisions[(s.labels["decision"], s.labels["category"])] += s.value
        failed = {s.labels["reason"]: s.value for s in _samples(m.fail_closed) if s.name.endswith("_total")}
        http = collections.Counter()
        buckets: dict[float, float] = collections.Counter()
        for s in _samples(m.http_requests):
            if s.name.endswith("_total") and s.labels["route"].startswith(API_ROUTES):
                http["5xx" if s.labels["code"].startswith("5") else "all"] += s.value
        for s in _samples(m.http_latency):
            if s.name.endswith("_bucket") and s.labels["route"] in DECISION_ROUTES:
                buckets[float(s.labels["le"])] += s.value
        return {"t": time.monotonic(), "wall": time.time(), "decisions": dict(decisions), "failed": failed,
                "http_all": http["all"] + http["5xx"], "http_5xx": http["5xx"], "buckets": sorted(buckets.items())}

    def sample(self) -> None:
        self.history.append(self.snapshot())

    def _before(self, now: dict, seconds: float) -> dict | None:
        """The oldest snapshot within ``seconds`` of now (Prometheus' range window)."""
        for snap in self.history:
            if now["t"] - snap["t"] <= seconds + 1e-6 and snap is not now:
                return snap
        return None

    def note_fail_closed(self, result: dict, reason: str, endpoint: str) -> None:
        with self._events_lock:  # a batch's worker thread notes, the loop reads
            self.events.appendleft({"time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                                    "request_id": result.get("request_id"), "reason": reason,
                                    "category": result.get("category"), "endpoint": endpoint})

    def summary(self, extra: dict) -> dict:
        now = self.snapshot()
        minute, window = self._before(now, RATE_S), self._before(now, WINDOW_S)

        def total(snap: dict | None, decision: str | None = None) -> float:
            if snap is None:
                return 0.0
            return sum(v for (d, _), v in snap["decisions"].items() if decision is None or d == decision)

        def errors(snap: dict | None) -> float:
            return 0.0 if snap is None else sum(v for r, v in snap["failed"].items() if r != CLIENT_FAULT)

        def per_minute(old: dict | None, key) -> float | None:
            if old is None or now["t"] - old["t"] < 1:
                return None
            return round((key(now) - key(old)) * 60.0 / (now["t"] - old["t"]), 1)

        def ratio(part: float, whole: float) -> float | None:
            return round(part / whole, 4) if whole > 0 else None

        base = window or {"decisions": {}, "failed": {}, "http_all": 0.0, "http_5xx": 0.0, "buckets": []}
        done = total(now) - total(base)
        old_buckets = dict(base["buckets"])
        recent_buckets = [(le, c - old_buckets.get(le, 0.0)) for le, c in now["buckets"]]
        # only the window's calls: with none in it, "–" rather than an old burst's (all-time) percentiles
        recent = bool(recent_buckets) and recent_buckets[-1][1] > 0
        latency = {f"p{int(q * 100)}": _ms(histogram_quantile(q, recent_buckets)) if recent else None
                   for q in (0.5, 0.95, 0.99)}
        mix = collections.Counter()
        categories = collections.Counter()
        for (decision, category), value in now["decisions"].items():
            mix[decision] += value
            if decision != "ALLOW":
                categories[category] += value
        series = []
        previous = None
        for snap in list(self.history)[-150:]:
            if previous is not None and snap["t"] > previous["t"]:
                series.append({"t": round(snap["wall"], 1),
                               "rpm": round((total(snap) - total(previous)) * 60.0 / (snap["t"] - previous["t"]), 1)})
            previous = snap
        with self._events_lock:
            recent = list(self.events)
        return {
            **extra,
            "uptime_s": round(now["t"] - self.started, 1),
            "requests_per_minute": per_minute(minute, total),
            "http_requests_per_minute": per_minute(minute, lambda s: s["http_all"]),
            "latency_ms": latency,
            "error_rate": ratio(errors(now) - errors(window), done),
            "http_error_rate": ratio(now["http_5xx"] - base["http_5xx"], now["http_all"] - base["http_all"]),
            "escalation_rate": ratio(total(now, "ESCALATE") - total(window, "ESCALATE"), done),
            "decisions_total": {k: int(v) for k, v in sorted(mix.items())},
            "flagged_by_category": {k: int(v) for k, v in sorted(categories.items()) if v},
            "fail_closed_total": int(sum(now["failed"].values())),
            "recent_fail_closed": recent,
            "series": series,
        }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 1)
