"""Headless Chromium over the project's pages, for tests/test_browser.py and the committed screenshot.

Debian's chromium (``apt-get install chromium``; never a downloaded browser) driven by Playwright for
Python. The servers are started the way a user starts them: ``so8t present`` for the stakeholder page and
``jupyter lab`` for the notebooks, each on a free port of 127.0.0.1, waited for by polling, always stopped.

The screenshot in docs/ is one command (it uses the model the page opens on unless --model says otherwise):

    python tests/browser_pages.py --screenshot docs/stakeholder_app.png [--model dist/so8t-demo-q4_k_m.gguf]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from so8t_lib.workbench.stakeholder_server import HOST, LocalServer, free_port, kernel_environment  # noqa: E402

CHROMIUM = os.environ.get("SO8T_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PAGE_TIMEOUT_S = 300  # a kernel that imports torch and loads a model on a CPU shared with training


def browser_missing() -> str | None:
    """Why no browser check can run here, or None."""
    if importlib.util.find_spec("playwright") is None:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: apt-get install -y chromium (or set SO8T_CHROMIUM)"
    return None


@contextmanager
def chromium_page(width: int = 1100, height: int = 1300) -> Iterator:
    """One page in a fresh profile of headless Chromium; the profile is removed afterwards."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="so8t-chromium-")
    try:
        with sync_playwright() as playwright:
            context = playwright.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": width, "height": height})
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(PAGE_TIMEOUT_S * 1000)
                yield page
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


@contextmanager
def present_server(work: Path, model: str | None = None, threshold: float | None = None) -> Iterator[tuple[str, LocalServer]]:
    """``so8t present`` on a free port with its records under ``work/logs``; yields (url, server)."""
    port = free_port()
    cmd = [sys.executable, "-m", "so8t_lib", "present", "--port", str(port), "--no-browser",
           "--log-dir", str(work / "logs")]
    cmd += ["--model", model] if model else []
    cmd += ["--threshold", str(threshold)] if threshold is not None else []
    server = LocalServer(cmd, f"http://{HOST}:{port}/", cwd=ROOT, log=work / "present.log")
    with server:
        server.wait_ready(PAGE_TIMEOUT_S, path="/voila/static/favicon.ico")
        yield server.url, server


@contextmanager
def lab_server(root: Path, work: Path) -> Iterator[str]:
    """JupyterLab on ``root`` with a fresh settings and workspace folder, no token, the so8t kernel findable."""
    port = free_port()
    env = kernel_environment(os.environ, work / "jupyter")
    env.update(JUPYTERLAB_SETTINGS_DIR=str(work / "lab-settings"), JUPYTERLAB_WORKSPACES_DIR=str(work / "lab-ws"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.ip={HOST}", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", "--IdentityProvider.token=", "--ServerApp.password=",
           "--allow-root", f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly"]
    with LocalServer(cmd, f"http://{HOST}:{port}/", env=env, cwd=root, log=work / "lab.log") as server:
        server.wait_ready(PAGE_TIMEOUT_S, path="/api")
        yield server.url


def open_stakeholder_page(page, url: str) -> None:
    """Load the page and wait until the app is there and its status line says what it decides with."""
    page.goto(url)
    page.locator(".so8t-app").wait_for()
    page.locator(".so8t-app .so8t-message").first.wait_for()


def decide(page, request: str, context: str = "") -> dict:
    """Type a request, press Decide, and read back what the page shows for it."""
    page.locator(".so8t-request-box textarea").fill(request)
    page.locator(".so8t-context-box input").fill(context)
    page.locator("button.so8t-decide").click()
    return read_result(page, request)


def read_result(page, request: str) -> dict:
    """The result the page shows for ``request`` (waits until the shown result is for it)."""
    shown = request if len(request) <= 40 else request[:40]
    result = page.locator(".so8t-result").filter(has=page.locator(".so8t-request", has_text=shown))
    result.wait_for()
    bars = result.locator(".so8t-prob")
    return {
        "decision": result.get_attribute("data-decision"),
        "request_id": result.get_attribute("data-request-id"),
        "shown_decision": result.locator(".so8t-decision").inner_text().strip(),
        "probabilities": {bars.nth(i).get_attribute("data-label"): bars.nth(i).get_attribute("data-value")
                          for i in range(bars.count())},
        "messages": [m.inner_text() for m in result.locator(".so8t-message").all()],
        "route": result.locator(".so8t-route").inner_text() if result.locator(".so8t-route").count() else None,
        "text": result.inner_text(),
    }


def take_screenshot(out: Path, model: str | None, example: int) -> str:
    """The page deciding one of its examples, saved as ``out``; returns the status line (which model)."""
    with tempfile.TemporaryDirectory(prefix="so8t-screenshot-") as work, \
            present_server(Path(work), model) as (url, _), chromium_page(1000, 1400) as page:
        open_stakeholder_page(page, url)
        status = page.locator(".so8t-app .so8t-message").first.inner_text()
        button = page.locator("button.so8t-example").nth(example)
        request = button.get_attribute("title")
        button.click()
        read_result(page, request)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.locator(".so8t-app").screenshot(path=str(out))
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--screenshot", required=True, help="where to write the PNG, e.g. docs/stakeholder_app.png")
    parser.add_argument("--model", help="the model the page opens on (default: the page's own default)")
    parser.add_argument("--example", type=int, default=2, help="which example button to press (0-3)")
    args = parser.parse_args(argv)
    missing = browser_missing()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    status = take_screenshot(Path(args.screenshot).resolve(), args.model, args.example)
    print(f"{args.screenshot}: {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
