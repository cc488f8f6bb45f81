"""The dashboard's rates: its HTTP numbers count the API's routes only (as alerts.yml's so8t:http_error_ratio
does), and its windows follow the monotonic clock, not the wall clock."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from service_support import CLIENT, LOAD, LiveServer, make_service  # noqa: E402

from so8t_lib.serve.http.dashboard import DashboardData  # noqa: E402
from so8t_lib.serve.http.metrics import ServiceMetrics  # noqa: E402


def test_probes_scrapes_and_dashboard_polls_are_not_api_traffic():
    metrics = ServiceMetrics()
    data = DashboardData(metrics)
    data.sample()
    metrics.http_requests.labels("GET", "/readyz", "503").inc(10)  # a load balancer probing a replica not ready
    metrics.http_requests.labels("GET", "/metrics", "200").inc(5)
    metrics.http_requests.labels("GET", "/dashboard/data", "200").inc(30)
    metrics.http_requests.labels("GET", "unmatched", "404").inc(3)
    assert data.summary({})["http_error_rate"] is None, "no API call: no rate, not 100%"
    metrics.http_requests.labels("POST", "/v1/decide", "200").inc(9)
    metrics.http_requests.labels("POST", "/v1/decide", "503").inc(1)
    metrics.http_requests.labels("GET", "/v1/cases/{case_id}", "200").inc(10)
    assert data.summary({})["http_error_rate"] == 0.05  # 1 of the 20 API answers, however many polls


def test_a_replica_probed_while_its_model_is_not_loaded_shows_no_http_error_rate(tmp_path):
    service = make_service(tmp_path / "logs", decider=LOAD)
    with LiveServer(service) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert [http.get("/readyz").status_code for _ in range(10)] == [503] * 10
        first = http.get("/dashboard/data").json()
        assert first["http_error_rate"] is None and first["ready"] is False
        for _ in range(20):
            http.get("/dashboard/data")
        http.get("/metrics")
        answer = http.post("/v1/decide", json={"user_request": "How do I file expenses?", "user_id": "e1"},
                           headers=CLIENT)
        assert answer.status_code == 200 and answer.json()["decision"] == "ESCALATE"  # fails closed, answered
        assert http.get("/dashboard/data").json()["http_error_rate"] == 0.0


def test_a_wall_clock_step_back_does_not_bend_the_rates():
    wall, mono = [1_000_000.0], [500.0]
    with mock.patch("time.time", lambda: wall[0]), mock.patch("time.monotonic", lambda: mono[0]):
        metrics = ServiceMetrics()
        data = DashboardData(metrics)
        decided = metrics.decisions.labels("ALLOW", "general", "decide")
        for step in range(450):  # 15 minutes sampled every 2 s, 60 decisions a minute
            if step == 300:
                wall[0] -= 120.0  # NTP steps the wall clock back two minutes
            wall[0] += 2.0
            mono[0] += 2.0
            decided.inc(2)
            data.sample()
            if step in (300, 310, 360, 449):
                summary = data.summary({})
                assert summary["requests_per_minute"] == 60.0, (step, summary["requests_per_minute"])
                assert summary["uptime_s"] == round(2.0 * (step + 1), 1)
        assert summary["series"] and {p["rpm"] for p in summary["series"]} == {60.0}
        assert summary["series"][-1]["t"] == wall[0]  # the chart's times stay wall-clock times
