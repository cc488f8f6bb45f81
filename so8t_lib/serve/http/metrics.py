"""Prometheus metrics of the service: what the operations manual asks to watch.

    requests per minute     rate(so8t_decisions_total[1m]) * 60, rate(so8t_http_requests_total[1m]) * 60
    latency p50/p95/p99     histogram_quantile over so8t_http_request_duration_seconds (and per decision)
    error rate              so8t_fail_closed_total{reason!="invalid_input"} / so8t_decisions_total; HTTP 5xx
    escalation rate         so8t_decisions_total{decision="ESCALATE"} / so8t_decisions_total
    decisions               so8t_decisions_total{decision, category, endpoint}
    model version           so8t_model_info{model_version} 1, so8t_emergency_mode
    fail-closed count       so8t_fail_closed_total{reason}
    queue depth, overdue    so8t_escalations_open, so8t_escalations_overdue, so8t_escalations_spooled,
                            so8t_escalations_notify_failed, so8t_batcher_pending
    CPU and memory          so8t_host_cpu_ratio, so8t_host_memory_ratio (psutil), process_* (the process)

Each app has its own registry, so several services (tests) live in one process. The recording and
alert rules built on these names are in deploy/prometheus/alerts.yml.
"""

from __future__ import annotations

import psutil
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily

from ...core.schema import LABELS, ROUTE_CATEGORIES
from ..urgency import URGENT_FLAG

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
DECISION_ENDPOINTS = ("decide", "moderations")
# The first words of a fail-closed result's error (outcome.fail_closed, runtime) -> the reason label.
FAIL_REASONS = (("invalid input", "invalid_input"), ("model could not be loaded", "model_unloaded"),
                ("model error", "model_error"), ("timeout", "timeout"), ("audit write failed", "audit_write"),
                ("internal error", "internal"))
CLIENT_FAULT = "invalid_input"  # the client's error, not the gate's: left out of the error rate


def fail_reason(result: dict) -> str | None:
    """Why a result was failed closed (a reason label), or None when the gate decided it."""
    if "fail_closed" not in (result.get("flags") or []):
        return None
    error = result.get("error") or ""
    return next((label for prefix, label in FAIL_REASONS if error.startswith(prefix)), "other")


class HostCollector:
    """CPU and memory use of the machine, read at each scrape (the manual's 90% alerts)."""

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)  # the first reading only starts the interval

    def collect(self):
        cpu = GaugeMetricFamily("so8t_host_cpu_ratio", "CPU in use on this machine since the last scrape (0-1)")
        cpu.add_metric([], psutil.cpu_percent(interval=None) / 100.0)
        memory = GaugeMetricFamily("so8t_host_memory_ratio", "Memory in use on this machine (0-1)")
        memory.add_metric([], psutil.virtual_memory().percent / 100.0)
        return [cpu, memory]


class ServiceMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(HostCollector())
        self.http_requests = Counter("so8t_http_requests", "HTTP requests answered, by route and status code",
                                     ["method", "route", "code"], registry=r)
        self.http_latency = Histogram("so8t_http_request_duration_seconds", "Time to answer an HTTP request, "
                                      "from its arrival to the response", ["route"], buckets=LATENCY_BUCKETS,
                                      registry=r)
        self.in_flight = Gauge("so8t_http_requests_in_flight", "HTTP requests received and not yet answered",
                               registry=r)
        self.decisions = Counter("so8t_decisions", "Decisions, by decision, routed category and endpoint",
                                 ["decision", "category", "endpoint"], registry=r)
        self.decision_latency = Histogram("so8t_decision_latency_seconds", "processing_time_ms of each decision: "
                                          "from arrival, with the wait for its batch, to its audit record",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.fail_closed = Counter("so8t_fail_closed", "Requests the gate could not decide and escalated "
                                   "(fail-closed), by reason", ["reason"], registry=r)
        self.escalations = Counter("so8t_escalations", "Escalations, by how far they got (queued, spooled, "
                                   "unqueued)", ["status"], registry=r)
        self.audit_failures = Counter("so8t_audit_write_failures", "Decisions whose audit record could not be "
                                      "written (each was escalated)", registry=r)
        self.rate_limited = Counter("so8t_rate_limited", "Calls refused by the per-key rate limit", ["key"],
                                    registry=r)
        self.batch_size = Histogram("so8t_batch_size", "Requests per decision pass (micro-batching)",
                                    buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram("so8t_batch_duration_seconds", "Time of one decision pass",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.pending = Gauge("so8t_batcher_pending", "Requests waiting for a decision pass", registry=r)
        self.cases_open = Gauge("so8t_escalations_open", "Escalation cases without a resolution (queue depth)",
                                registry=r)
        self.cases_overdue = Gauge("so8t_escalations_overdue", "Unresolved cases past escalation_timeout",
                                   registry=r)
        self.spooled = Gauge("so8t_escalations_spooled", "Cases kept in the spool, not yet in the queue", registry=r)
        self.cases_unnotified = Gauge("so8t_escalations_notify_failed", "Unresolved cases whose notice reached no "
                                      "channel (status notify_failed)", registry=r)
        self.model_info = Gauge("so8t_model_info", "The model serving, as a label (value 1)", ["model_version"],
                                registry=r)
        self.emergency = Gauge("so8t_emergency_mode", "1 while every request is escalated (emergency mode)",
                               registry=r)
        self.ready = Gauge("so8t_ready", "1 when /readyz answers 200", registry=r)
        self.urgent = Counter("so8t_urgent", "Requests the emergency screen marked (the 119 line first, an URGENT "
                              "notification), by decision", ["decision"], registry=r)
        for decision in LABELS:  # every series from zero, so rate() sees the first increment
            for category in ROUTE_CATEGORIES:
                for endpoint in DECISION_ENDPOINTS:
                    self.decisions.labels(decision, category, endpoint)
        for _, reason in (*FAIL_REASONS, ("", "other")):
            self.fail_closed.labels(reason)
        for status in ("queued", "spooled", "unqueued"):
            self.escalations.labels(status)
        for decision in LABELS:
            self.urgent.labels(decision)

    def set_model(self, version: str, emergency: bool) -> None:
        self.model_info.clear()
        self.model_info.labels(version).set(1)
        self.emergency.set(1 if emergency else 0)

    def record(self, results: list[dict], endpoint: str) -> list[tuple[dict, str]]:
        """Count these results; returns the fail-closed ones with their reason."""
        failed = []
        for result in results:
            category = result.get("category") or "general"
            self.decisions.labels(result["decision"], category, endpoint).inc()
            if result.get("processing_time_ms") is not None:
                self.decision_latency.observe(result["processing_time_ms"] / 1000.0)
            reason = fail_reason(result)
            if reason is not None:
                self.fail_closed.labels(reason).inc()
                failed.append((result, reason))
            if result.get("escalation_status"):
                self.escalations.labels(result["escalation_status"]).inc()
            if "audit_write_failed" in (result.get("flags") or []):
                self.audit_failures.inc()
            if URGENT_FLAG in (result.get("flags") or []):
                self.urgent.labels(result["decision"]).inc()
        return failed
