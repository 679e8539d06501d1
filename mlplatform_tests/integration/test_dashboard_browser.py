"""The dashboard in headless Chromium: the page loads, the charts render, no console errors.

The page sets `data-status` on <body> to "ok" after rendering, or "error:<message>" from its
window error handlers and failed fetches; the test reads it from the DOM Chromium dumps, and also
scans Chromium's console log (stderr): the page logs nothing, so any console line fails the test.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from mlplatform.core.monitoring.alerts import AlertStore
from mlplatform.core.monitoring.product_report import to_safe_csv
from mlplatform.core.platform.artifacts import ArtifactStore, Bundle, encode
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.registry import ModelRegistry
from mlplatform_tests.integration.processes import endpoint_process
from mlplatform_tests.serving.conftest import tiny_model_bytes
from mlplatform_tests.serving.test_dashboard import CARD, DRIFT_REPORT

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


@contextlib.contextmanager
def serving(home: PlatformHome, tmp_path: Path) -> Iterator[str]:
    """The endpoint on `home` as a real process; yields the dashboard's URL."""
    with endpoint_process(home.root, tmp_path / "server.log") as (_, base_url):
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
    assert dom.count("No data yet") >= 8


def test_dashboard_renders_in_headless_chromium(home: PlatformHome, tmp_path: Path) -> None:
    browser = chromium()
    registry = ModelRegistry(home.registry)
    for variant in (0, 1):
        version = registry.register(tiny_model_bytes(variant), card=CARD, metrics={"macro_f1": 0.6}).version
        registry.approve(version, by="test")
        registry.promote(version, by="test")
    seed_monitoring(home)
    screenshot = tmp_path / "dashboard.png"
    with serving(home, tmp_path) as url:
        dom = render(browser, url, tmp_path / "profile")
        shot = run_chromium(
            browser, tmp_path / "profile-shot", f"--screenshot={screenshot}", "--window-size=1400,1800", url
        )

    assert re.search(r'id="production-version">v2<', dom)
    assert dom.count("<svg") >= 3  # model metrics, live quality, drift
    assert re.search(r'class="chart line-chart".*?<path d="M', dom, re.S)
    assert re.search(r'class="chart drift-chart".*?<rect ', dom, re.S)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # data shown as text, never as markup
    assert "<b>x</b>" not in dom
    assert "'=HYPERLINK(1)" in dom  # the flagged-products table, formula-neutralised as stored
    assert screenshot.exists() and screenshot.stat().st_size > 10_000, shot.stderr[-2000:]
