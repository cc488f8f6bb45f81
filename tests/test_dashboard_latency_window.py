"""The dashboard's "Latency (decision calls, 5 min)" covers only the window's calls: an incident's slow
calls 20 minutes ago must not be shown as the current latency once traffic has stopped."""

from __future__ import annotations

from unittest import mock

from so8t_lib.serve.http.dashboard import DashboardData
from so8t_lib.serve.http.metrics import ServiceMetrics


def test_latency_is_empty_when_no_decision_call_fell_in_the_window():
    clock = [1_000_000.0]
    with mock.patch("time.monotonic", lambda: clock[0]):
        metrics = ServiceMetrics()
        data = DashboardData(metrics)
        data.sample()
        for _ in range(50):
            metrics.http_latency.labels("/v1/decide").observe(8.0)
        assert data.summary({})["latency_ms"]["p50"] is not None, "calls inside the window are shown"
        for _ in range(600):  # 20 quiet minutes, sampled every 2 s as the service does
            clock[0] += 2.0
            data.sample()
        assert data.summary({})["latency_ms"] == {"p50": None, "p95": None, "p99": None}
        metrics.http_latency.labels("/v1/decide").observe(0.02)  # a new call: only it counts
        assert data.summary({})["latency_ms"]["p99"] < 100
