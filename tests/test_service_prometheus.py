"""The alert rules: promtool checks them and runs their unit tests; then a real Prometheus (Debian's
``prometheus`` package) scrapes a real service on loopback whose model fails on every request, and
its HTTP API shows the error-rate alert pending, then firing. The rules are the committed ones with
the rule-group interval and every ``for:`` shortened, so this takes seconds, not minutes."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from service_support import CLIENT, FixedDecider, LiveServer, free_port, make_service

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
INSTALL = "install Debian's prometheus package (apt-get install -y prometheus; .ci/run does)"
needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason=f"promtool not found: {INSTALL}")
needs_prometheus = pytest.mark.skipif(shutil.which("prometheus") is None, reason=f"prometheus not found: {INSTALL}")


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=300, cwd=DEPLOY)


@needs_promtool
def test_the_rules_and_the_config_check_and_their_unit_tests_pass():
    for args in (("check", "rules", "alerts.yml"), ("check", "config", "prometheus.yml"),
                 ("test", "rules", "tests/alerts_test.yml")):
        done = promtool(*args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def test_every_alert_of_the_manual_is_there():
    rules = [r for g in yaml.safe_load((DEPLOY / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert {"SO8THighErrorRate", "SO8THighLatencyP95", "SO8TEscalationRateAnomaly", "SO8THighCPU",
            "SO8THighMemory"} <= set(alerts)
    assert "> 0.05" in alerts["SO8THighErrorRate"]["expr"] and "> 5" in alerts["SO8THighLatencyP95"]["expr"]
    assert "2 * so8t:escalation_ratio:avg24h" in alerts["SO8TEscalationRateAnomaly"]["expr"]
    assert "> 0.9" in alerts["SO8THighCPU"]["expr"] and "> 0.9" in alerts["SO8THighMemory"]["expr"]


def test_the_config_scrapes_every_exporter_the_alerts_read():
    """The audit verification's gauges reach Prometheus only through node_exporter's textfile collector: with the
    service alone scraped, SO8TAuditVerifyMissing fired for ever and a failed verification raised nothing."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
               for job in config["scrape_configs"]}
    assert targets["so8t"] == ["127.0.0.1:8080"] and targets["node"] == ["127.0.0.1:9100"]
    unit = (DEPLOY.parent / "systemd" / "so8t-audit-verify.service").read_text()
    assert "--metrics-file /var/lib/prometheus/node-exporter/" in unit  # the Debian package's textfile folder
    rules = (DEPLOY / "alerts.yml").read_text()
    assert "so8t_audit_verify_ok" in rules and 'up{job="so8t"}' in rules


def fast_rules(target: Path) -> None:
    """The committed rules, evaluated every second and with every ``for:`` at 3 seconds."""
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "3s"
    target.write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")


@needs_prometheus
def test_a_real_prometheus_sees_the_error_alert_pending_then_firing(tmp_path):
    service = make_service(tmp_path / "logs", FixedDecider(fail=True))
    fast_rules(tmp_path / "rules.yml")
    states: list[str] = []
    with LiveServer(service) as server:
        port = free_port()
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(tmp_path / "rules.yml")],
            "scrape_configs": [{"job_name": "so8t", "static_configs": [{"targets": [server.url.split("//")[1]]}]}],
        }), encoding="utf-8")
        stop = threading.Event()

        def drive() -> None:  # every request fails closed in the model: a 100% gate error rate
            with httpx.Client(base_url=server.url, headers=CLIENT, timeout=30) as http:
                while not stop.is_set():
                    assert http.post("/v1/decide", json={"user_request": "status of my order"}).json()[
                        "decision"] == "ESCALATE"
                    stop.wait(0.05)

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        log = open(tmp_path / "prometheus.log", "w")
        prometheus = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}",
                                       f"--storage.tsdb.path={tmp_path / 'data'}",
                                       f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                                      stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while "firing" not in states:
                assert prometheus.poll() is None, (tmp_path / "prometheus.log").read_text()
                assert time.monotonic() < deadline, f"no firing alert within 90 s; states seen: {states}"
                try:  # 503 in plain text until Prometheus is ready
                    answer = httpx.get(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5)
                    alerts = answer.json()["data"]["alerts"] if answer.status_code == 200 else []
                except httpx.HTTPError:
                    alerts = []
                states += [a["state"] for a in alerts if a["labels"]["alertname"] == "SO8THighErrorRate"][-1:]
                assert not any(a["labels"]["alertname"] == "SO8THighHTTPErrorRate" for a in alerts)
                time.sleep(0.2)
            targets = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            ratio = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "so8t:gate_error_ratio:rate5m"},
                              timeout=5).json()["data"]["result"]
        finally:
            stop.set()
            prometheus.terminate()
            prometheus.wait(30)
            log.close()
            driver.join(30)
    assert "pending" in states and states.index("pending") < states.index("firing"), states
    assert [t["health"] for t in targets] == ["up"]
    assert float(ratio[0]["value"][1]) == 1.0
