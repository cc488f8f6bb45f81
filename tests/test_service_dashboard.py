"""The live dashboard in headless Chromium (Debian's chromium driven by Playwright for Python; never a
downloaded browser): it shows the numbers of the service's own metrics, the decision mix, the queue and
the recent fail-closed events, follows the emergency switch, and runs without script errors.

The screenshot in docs/ is made by the same code:

    python tests/test_service_dashboard.py --screenshot docs/dashboard.png
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service_support import CLIENT, REVIEWER, LiveServer, make_service  # noqa: E402

CHROMIUM = os.environ.get("SO8T_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
REQUESTS = ["How do I submit my travel expenses?", "Reset my own VPN password", "Export the customer list to my "
            "private mail", "Can I see the salary of my colleague?", "I feel sick, can I take sick leave today?",
            "Kill the stuck Python process on the build server", "Approve a wire transfer of 5M yen",
            "Draft a reply to the supplier's invoice question"]


def browser_missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set SO8T_CHROMIUM)"
    return None


class MixedDecider:
    """A varied stand-in: each text gets ALLOW, REFUSE or ESCALATE by its hash, and one in eleven breaks
    the model (a fail-closed event), with a few milliseconds of work per request."""

    model_version = "stand-in-model@demo"

    def decide(self, requests, contexts=None, batch_size=32, progress=False):
        time.sleep(0.002 * len(requests) + 0.01)
        codes = [hashlib.sha256(r.encode("utf-8", "surrogatepass")).digest()[0] for r in requests]
        if any(c % 11 == 0 for c in codes):
            raise RuntimeError("injected model fault")
        table = ([0.95, 0.03, 0.02], [0.03, 0.95, 0.02], [0.3, 0.3, 0.4])
        return np.asarray([table[0] if c % 5 < 3 else table[1 + c % 2] for c in codes])

    def generate(self, request, context=None, max_tokens=128, temperature=0.0):
        return ""


def drive(url: str, n: int) -> list[dict]:
    """n requests from four concurrent clients; returns every answer."""
    answers: list[dict] = []

    def client(k: int) -> None:
        with httpx.Client(base_url=url, headers=CLIENT, timeout=60) as http:
            for i in range(k, n, 4):
                text = f"{REQUESTS[i % len(REQUESTS)]} (#{i})"
                answers.append(http.post("/v1/decide", json={"user_request": text, "user_id": f"emp{i % 9}"}).json())

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return answers


@contextmanager
def dashboard(folder: Path) -> Iterator[tuple]:
    """(page, server, answers): a service with traffic behind it and its dashboard open in Chromium."""
    from playwright.sync_api import sync_playwright

    service = make_service(folder, MixedDecider(), service={"max_wait_ms": 5})
    with LiveServer(service) as server:
        answers = drive(server.url, 60)
        time.sleep(2.5)  # the sampler keeps a snapshot every 2 s: rates need two of them
        answers += drive(server.url, 90)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(f"{server.url}/dashboard")
                # selectors and locator checks only: the page's CSP forbids evaluating strings as script
                page.locator("body:not([data-updated=''])").wait_for(timeout=60_000)
                yield page, server, answers, errors
            finally:
                browser.close()


@pytest.mark.skipif(browser_missing() is not None, reason=browser_missing() or "")
def test_the_dashboard_shows_the_services_metrics_live(tmp_path):
    from playwright.sync_api import expect

    with dashboard(tmp_path / "logs") as (page, server, answers, errors):
        data = httpx.get(f"{server.url}/dashboard/data", timeout=30).json()
        assert page.text_content("#model-version") == "stand-in-model@demo" and page.text_content("#mode") == "normal"
        for decision, count in data["decisions_total"].items():
            assert page.text_content(f"#mix-{decision} td").strip().endswith(str(count))
        assert sum(data["decisions_total"].values()) == len(answers) == 150
        for cell in ("#rpm", "#p50", "#p95", "#p99", "#escalation-rate", "#open-cases"):
            assert page.text_content(cell) not in ("", "–"), cell
        failed = {a["request_id"] for a in answers if "fail_closed" in a["flags"]}
        shown = page.locator("#events tbody tr td:nth-child(2)").all_text_contents()
        assert failed and shown and set(shown) <= failed  # the newest fail-closed events, no request text
        assert page.text_content("#fail-closed") == str(len(failed))
        assert all(a["decision"] != "ALLOW" for a in answers if "fail_closed" in a["flags"])
        httpx.post(f"{server.url}/v1/admin/emergency", json={"enabled": True, "reason": "drill"}, headers=REVIEWER)
        expect(page.locator("#mode")).to_have_text("emergency", timeout=30_000)
        expect(page.locator("#banner")).to_have_class("mode-emergency")
        page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        assert errors == []
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshot", required=True, help="where to write the PNG, e.g. docs/dashboard.png")
    args = parser.parse_args(argv)
    problem = browser_missing()
    if problem:
        sys.exit(f"error: {problem}")
    with tempfile.TemporaryDirectory() as folder, dashboard(Path(folder) / "logs") as (page, _, _, _):
        page.wait_for_timeout(2500)  # one more refresh, so the sparkline has its points
        page.screenshot(path=args.screenshot, full_page=True)
    print(f"wrote {args.screenshot}")


if __name__ == "__main__":
    main()
