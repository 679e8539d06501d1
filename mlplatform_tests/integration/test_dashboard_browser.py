"""The dashboard in headless Chromium: the page loads, the charts render, no console errors.

The page sets `data-status` on <body> to "ok" after rendering, "need-key" when it asks for an API key,
or "error:<message>" from its window error handlers and failed fetches; the tests read it from the DOM
Chromium dumps, and also scan Chromium's console log (stderr): the page logs nothing, so any console
line fails the test. With API keys configured the page is driven over the DevTools protocol (a key is
typed into its form, as a person would).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from websockets.sync.client import ClientConnection, connect

from mlplatform.core.monitoring.alerts import AlertStore
from mlplatform.core.monitoring.product_report import to_safe_csv
from mlplatform.core.platform.artifacts import ArtifactStore, Bundle, encode
from mlplatform.core.platform.home import API_KEYS_ENV, PlatformHome
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import RolloutStrategy, start_rollout
from mlplatform_tests.integration.processes import endpoint_process
from mlplatform_tests.serving.conftest import tiny_model_bytes
from mlplatform_tests.serving.test_dashboard import CARD, DRIFT_REPORT, _round

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=8000",  # let the page's fetch and render finish before the dump
)
# A browser driven live over the DevTools protocol runs in real time (no virtual-time budget).
LIVE_FLAGS = tuple(flag for flag in CHROMIUM_FLAGS if not flag.startswith("--virtual-time-budget"))
# Chromium logs every console message (console.error, uncaught exceptions, CSP refusals) as an
# INFO:CONSOLE line on stderr, whatever its level; the page itself logs nothing, so any such line is a fault.
CONSOLE_LINE = re.compile(r":CONSOLE[:(]|Uncaught")


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("Debian chromium not found: run scripts/test-setup.sh (apt-get install chromium)")
    return path


def run_chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def seed_monitoring(home: PlatformHome) -> None:
    store = ArtifactStore(home.artifacts)
    store.put("drift_report", None, encode(DRIFT_REPORT), extra={"run_id": "run-drift"})
    by_day = [
        {
            "model_version": "v1",
            "day": f"2026-11-0{day}",
            "rows": 50,
            "accuracy": 0.8,
            "macro_f1": 0.6 + day / 100,
        }
        for day in range(1, 5)
    ]
    store.put("live_model_quality", None, encode({"by_day": by_day, "by_version": {}}))
    store.put("system_health", None, encode({"error_rate": 0.0, "p99_latency_ms": 3.2, "note": "<b>x</b>"}))
    products = pl.DataFrame({"product_id": ["1078", "=HYPERLINK(1)"], "predictions": [40, 30]})
    report = Bundle({"product_quality_report.csv": to_safe_csv(products)})
    store.put("product_quality_report", None, encode(report))
    AlertStore(home.alerts).raise_alert(
        "drift", "ERROR", "drift_report", "<script>alert(1)</script>", key="k"
    )
    long = "bias_drift:bias_drift failed: " + "; ".join(
        f"department_name=Department{i} shift 0.{i}23 (negative: gap to all traffic +0.2 live vs +0.0 at "
        "training)_and_a_very_long_unbroken_token_that_would_push_a_table_wide"
        for i in range(6)
    )
    AlertStore(home.alerts).raise_alert("check", "WARN", "bias_drift", long, key="bias_drift:bias_drift")
    by_day = [
        {
            "day": f"2026-11-0{day}",
            "facet": "department_name",
            "value": value,
            "label": "negative",
            "rows": 60,
            "rate": 0.1 * day + (0.2 if value == "Dresses" else 0.0),
        }
        for day in range(1, 4)
        for value in ("Dresses", "Tops")
    ]
    bias = {
        "judged_version": "v2",
        "classes": ["negative", "neutral", "positive"],
        "facets": [
            {
                "facet": "department_name",
                "source": "catalogue",
                "reason": None,
                "values": [
                    {
                        "facet": "department_name",
                        "value": "Dresses",
                        "rows": 180,
                        "shift": 0.24,
                        "worst_class": "negative",
                        "severity": "ERROR",
                        "note": "negative: gap +0.2 live vs +0.0 at training",
                        "live_rate": {},
                        "baseline_rate": {},
                    },
                    {
                        "facet": "department_name",
                        "value": "Tops",
                        "rows": 180,
                        "shift": 0.05,
                        "worst_class": "negative",
                        "severity": None,
                        "note": "fine",
                        "live_rate": {},
                        "baseline_rate": {},
                    },
                ],
            },
            {
                "facet": "age_band",
                "source": None,
                "reason": "age_band is not a property of the product",
                "values": [],
            },
        ],
        "by_day": by_day,
        "outcome": {
            "name": "bias_drift",
            "passed": False,
            "severity": "ERROR",
            "description": "Dresses moved",
            "metadata": {},
        },
    }
    store.put("bias_drift", None, encode(bias))


@contextlib.contextmanager
def serving(home: PlatformHome, tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """The endpoint on `home` as a real process; yields the dashboard's URL."""
    with endpoint_process(home.root, tmp_path / "server.log", env=env) as (_, base_url):
        yield f"{base_url}/dashboard"


def render(browser: str, url: str, profile: Path) -> str:
    """The DOM after the page rendered; fails on a page error or a console error."""
    dumped = run_chromium(browser, profile, "--dump-dom", url)
    dom = dumped.stdout
    status = re.search(r'<body[^>]*data-status="([^"]*)"', dom)
    assert status is not None, f"no <body data-status> in the DOM:\n{dom[:2000]}\n{dumped.stderr[-2000:]}"
    assert status.group(1) == "ok", status.group(1)
    console_lines = [line for line in dumped.stderr.splitlines() if CONSOLE_LINE.search(line)]
    assert console_lines == []
    return dom


def test_dashboard_of_a_fresh_home_renders_without_errors(home: PlatformHome, tmp_path: Path) -> None:
    browser = chromium()
    with serving(home, tmp_path) as url:
        dom = render(browser, url, tmp_path / "profile")

    assert "nothing yet" in dom
    assert dom.count("No data yet") >= 9
    assert re.search(r'id="health-source">this endpoint, live', dom)  # its own health needs no configuration


def test_dashboard_renders_in_headless_chromium(home: PlatformHome, tmp_path: Path) -> None:
    browser = chromium()
    registry = ModelRegistry(home.registry)
    for variant in (0, 1):
        version = registry.register(tiny_model_bytes(variant), card=CARD, metrics={"macro_f1": 0.6}).version
        registry.approve(version, by="test")
        registry.promote(version, by="test")
    candidate = registry.register(tiny_model_bytes(2), card=CARD, metrics={"macro_f1": 0.6}).version
    registry.approve(candidate, by="test")
    rollout = start_rollout(
        registry, RolloutStrategy.CANARY, candidate, by="test", percent=25, steps=[25, 50]
    )
    seed_monitoring(home)
    ArtifactStore(home.artifacts).put("rollout", None, encode(_round(rollout)))
    screenshot = tmp_path / "dashboard.png"
    with serving(home, tmp_path) as url:
        dom = render(browser, url, tmp_path / "profile")
        shot = run_chromium(
            browser, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1400,1800", url
        )

    assert re.search(r'id="production-version">v2<', dom)
    assert dom.count("<svg") >= 4  # model metrics, live quality, drift, bias drift
    # the rollout: who answers what, its judgement and both versions side by side
    assert re.search(r'id="rollout-shares".*?v2 75%.*?v3 25%', dom, re.S)
    assert re.search(r'id="rollout-judgement"><b>judged [^<]*: wait</b>', dom)
    assert "p99 latency (ms)" in dom and "v3 (candidate)" in dom
    # bias drift: the chart of the class that moved, and the facet that cannot be observed
    assert re.search(r'id="bias_drift".*?class="chart line-chart".*?<path d="M', dom, re.S)
    assert "age_band: not observable on live traffic" in dom
    # the endpoint's own health, with no endpoint_url configured
    assert re.search(r'id="health-source">this endpoint, live', dom)
    assert re.search(r'class="chart line-chart".*?<path d="M', dom, re.S)
    assert re.search(r'class="chart drift-chart".*?<rect ', dom, re.S)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # data shown as text, never as markup
    assert "<b>x</b>" not in dom
    assert "'=HYPERLINK(1)" in dom  # the flagged-products table, formula-neutralised as stored
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]


class DevToolsPage:
    """One page of a headless Chromium, driven over the DevTools protocol (JSON over a WebSocket)."""

    def __init__(self, connection: ClientConnection) -> None:
        self._connection = connection
        self._ids = itertools.count(1)
        self.events: list[dict[str, Any]] = []

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self._ids)
        self._connection.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._connection.recv(timeout=60))
            if message.get("id") == message_id:
                assert "error" not in message, message
                return message.get("result", {})
            self.events.append(message)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def wait_for_status(self, expected: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        status_now = "document.body ? document.body.dataset.status : null"  # null while a page loads
        while (status := self.evaluate(status_now)) != expected:
            assert time.monotonic() < deadline, f"the page's status is {status!r}, not {expected!r}"
            time.sleep(0.1)

    def reload(self) -> None:
        """Reload the page and wait until the new document replaced the old one."""
        self.evaluate("window.oldDocument = true")
        self.call("Page.reload")
        deadline = time.monotonic() + 30
        while self.evaluate("window.oldDocument === true"):
            assert time.monotonic() < deadline, "the page did not reload"
            time.sleep(0.05)

    def submit_key(self, key: str) -> None:
        self.evaluate(
            f"document.getElementById('key-input').value = {json.dumps(key)};"
            "document.getElementById('key-form').requestSubmit();"
        )

    def console_faults(self) -> list[dict[str, Any]]:
        """What the page logged or threw (it logs nothing: every entry is a fault)."""
        kinds = ("Runtime.consoleAPICalled", "Runtime.exceptionThrown")
        return [event for event in self.events if event.get("method") in kinds]


@contextlib.contextmanager
def devtools_page(browser: str, profile: Path) -> Iterator[DevToolsPage]:
    """A headless Chromium with remote debugging on a free port; yields its first page."""
    with (profile.parent / "chromium.log").open("wb") as log:
        process = subprocess.Popen(
            [
                browser,
                *LIVE_FLAGS,
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        active_port = profile / "DevToolsActivePort"  # written by Chromium once it listens
        deadline = time.monotonic() + 60
        while not (active_port.exists() and active_port.read_text().strip()):
            assert process.poll() is None and time.monotonic() < deadline, "Chromium did not start"
            time.sleep(0.1)
        port = active_port.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as listing:
            target = next(item for item in json.load(listing) if item["type"] == "page")
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=30) as connection:
            page = DevToolsPage(connection)
            page.call("Runtime.enable")
            page.call("Page.enable")
            yield page
    finally:
        process.kill()
        process.wait()


def test_the_alert_table_fits_a_laptop_screen(home: PlatformHome, tmp_path: Path) -> None:
    browser = chromium()
    registry = ModelRegistry(home.registry)
    version = registry.register(tiny_model_bytes(0), card=CARD, metrics={"macro_f1": 0.6}).version
    registry.approve(version, by="test")
    registry.promote(version, by="test")
    seed_monitoring(home)
    with serving(home, tmp_path) as url, devtools_page(browser, tmp_path / "profile") as page:
        for width in (1280, 1366):
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=800,
                deviceScaleFactor=1,
                mobile=False,
            )
            page.call("Page.navigate", url=url)
            page.wait_for_status("ok")
            sizes = page.evaluate(
                "(() => { const box = document.querySelector('#alerts-table .scroll');"
                " const table = box.querySelector('table');"
                " return [table.scrollWidth, box.clientWidth, document.documentElement.scrollWidth, innerWidth]; })()"
            )
            table_width, box_width, page_width, window_width = sizes
            assert table_width <= box_width, (
                f"at {width} px the alert table is {table_width} px in {box_width}"
            )
            assert page_width <= window_width, f"at {width} px the page scrolls sideways"
        assert page.console_faults() == []


def test_with_api_keys_the_dashboard_asks_for_a_key_once_and_keeps_it_out_of_urls_and_logs(
    home: PlatformHome, tmp_path: Path
) -> None:
    browser = chromium()
    key = "dash-key-7c1e"
    registry = ModelRegistry(home.registry)
    version = registry.register(tiny_model_bytes(0), card=CARD, metrics={"macro_f1": 0.6}).version
    registry.approve(version, by="test")
    registry.promote(version, by="test")
    env = {**os.environ, API_KEYS_ENV: key}
    profile = tmp_path / "profile"
    with serving(home, tmp_path, env=env) as url, devtools_page(browser, profile) as page:
        page.call("Page.navigate", url=url)
        page.wait_for_status("need-key")
        page.submit_key("not-the-key")
        page.wait_for_status("need-key")
        assert page.evaluate("document.getElementById('key-message').textContent") == "that key was refused"
        page.submit_key(key)
        page.wait_for_status("ok")
        assert page.evaluate("document.getElementById('production-version').textContent") == version
        assert page.evaluate("sessionStorage.getItem('mlplatform.apiKey')") == key
        page.reload()  # the key is kept for the tab's session: no second question
        page.wait_for_status("ok")
        assert key not in page.evaluate("location.href")
        assert (
            page.evaluate("performance.getEntriesByType('resource').map(e => e.name).join(' ')").count(key)
            == 0
        )
        assert page.console_faults() == []
    assert key not in (tmp_path / "server.log").read_text()
