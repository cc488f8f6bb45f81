"""The outcome of ``so8t audit verify`` as a Prometheus text file (``--metrics-file``).

The verification runs from a timer, not inside the service, so nothing scrapes it directly: node_exporter's
textfile collector reads the file and deploy/prometheus/alerts.yml alerts when a run failed
(SO8TAuditVerifyFailed) or when no run has finished for too long (SO8TAuditVerifyStale: the timer stopped).
"""

from __future__ import annotations

import time
from pathlib import Path

from ..core.io import atomic_write_bytes


def write_verify_metrics(path: str | Path, reports: dict[str, dict] | None) -> Path:
    """Write the gauges of one run at once; ``reports`` None: the run could not verify at all (a bad heads file,
    a missing chain), which counts as a failed run."""
    try:
        from prometheus_client import CollectorRegistry, Gauge, generate_latest
    except ImportError:
        raise RuntimeError("--metrics-file needs prometheus-client: pip install -e '.[service]'") from None
    registry = CollectorRegistry()
    reports = reports or {}
    failed = sum(1 for report in reports.values() if report["errors"])
    ok = Gauge("so8t_audit_verify_ok", "1: every chain of the last run passed; 0: one failed or the run could "
               "not verify", registry=registry)
    ok.set(1 if reports and not failed else 0)
    Gauge("so8t_audit_verify_timestamp_seconds", "when the last run finished (unix time)",
          registry=registry).set(time.time())
    chains = Gauge("so8t_audit_verify_chains", "chains the last run checked, by result", ["result"], registry=registry)
    chains.labels(result="ok").set(len(reports) - failed)
    chains.labels(result="failed").set(failed)
    Gauge("so8t_audit_verify_records", "records the last run read in all chains",
          registry=registry).set(sum(report["records"] for report in reports.values()))
    # a temporary file (named .tmp, which the textfile collector skips) renamed into place, already readable by
    # node_exporter's user (the gauges hold no secret): a scrape never sees half a file, nor one it may not read
    return atomic_write_bytes(path, generate_latest(registry), mode=0o644)
