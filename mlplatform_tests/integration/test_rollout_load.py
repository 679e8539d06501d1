"""A real endpoint under load (16 concurrent clients) during a shadow and during a canary's step change:
no non-2xx, every answer names one version, nothing acknowledged is missing from the capture, and every
answered request has its shadow row (counted). bench/rollout.py runs the same for 30 s and measures."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest

from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import RolloutStrategy, advance_rollout, start_rollout
from mlplatform_tests.integration.processes import endpoint_process, wait_until
from mlplatform_tests.serving.conftest import deploy, register, tiny_model_bytes

pytestmark = pytest.mark.integration
CONCURRENCY = 16
SECONDS = 5.0
TEXTS = ("lovely dress, great fit", "awful fabric, it ripped", "it is okay, fine for the price")


def drive(base_url: str, seconds: float) -> list[tuple[int, str | None, str | None]]:
    """(status, answering version, capture id) of every request `CONCURRENCY` clients sent in `seconds`."""

    async def run() -> list[tuple[int, str | None, str | None]]:
        results: list[tuple[int, str | None, str | None]] = []
        deadline = time.monotonic() + seconds
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30) as http:

            async def client(number: int) -> None:
                sent = 0
                while time.monotonic() < deadline:
                    review = {"text": TEXTS[sent % 3], "product_id": f"p{number}-{sent % 40}"}
                    answer = await http.post("/predict", json={"reviews": [review]})
                    version = answer.json().get("model_version") if answer.status_code == 200 else None
                    results.append((answer.status_code, version, answer.headers.get("x-capture-id")))
                    sent += 1

            await asyncio.gather(*(client(number) for number in range(CONCURRENCY)))
        return results

    return asyncio.run(run())


def holds_candidate(base_url: str, percent: int) -> bool:
    metrics = httpx.get(f"{base_url}/metrics", timeout=5).text
    return (
        f'mlplatform_serving_rollout_percent{{strategy="{"canary" if percent else "shadow"}",version="v2"}} {float(percent)}'
        in metrics
    )


@pytest.fixture
def home(tmp_path: Path) -> PlatformHome:
    home = PlatformHome(tmp_path / "home").ensure()
    registry = ModelRegistry(home.registry)
    deploy(registry, tiny_model_bytes(0))
    register(registry, tiny_model_bytes(1))
    return home


def stop_gracefully(process, log: Path) -> None:
    """SIGTERM: the app's shutdown drains the shadow queue and seals the capture (uvicorn then ends by
    the signal it caught, so the exit code says SIGTERM)."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in log.read_text()


def test_under_load_during_a_shadow_every_answer_is_captured_with_its_shadow(home, tmp_path):
    registry = ModelRegistry(home.registry)
    start_rollout(registry, RolloutStrategy.SHADOW, "v2", by="test")
    with endpoint_process(home.root, tmp_path / "server.log") as (process, base_url):
        wait_until(lambda: holds_candidate(base_url, 0), 30, "the endpoint to hold the shadow candidate")
        results = drive(base_url, SECONDS)
        stop_gracefully(process, tmp_path / "server.log")

    assert {status for status, _, _ in results} == {200}
    assert {version for _, version, _ in results} == {"v1"}
    acknowledged = {capture_id for _, _, capture_id in results}
    frame = read_capture(home.capture)
    answered = frame.filter(pl.col("role") == "answered")
    shadow = frame.filter(pl.col("role") == "shadow")
    assert set(answered["capture_id"]) == acknowledged and answered.height == len(results)
    assert shadow.height == answered.height and set(shadow["capture_id"]) == acknowledged
    assert set(shadow["model_version"]) == {"v2"} and shadow["error"].null_count() == shadow.height


def test_under_load_through_a_canary_step_change_every_answer_names_its_version_in_the_capture(
    home, tmp_path
):
    registry = ModelRegistry(home.registry)
    rollout = start_rollout(registry, RolloutStrategy.CANARY, "v2", by="test", percent=25, steps=[25, 75])
    with endpoint_process(home.root, tmp_path / "server.log") as (process, base_url):
        wait_until(lambda: holds_candidate(base_url, 25), 30, "the endpoint to hold the canary")
        step = threading.Timer(
            SECONDS / 2, lambda: advance_rollout(registry, rollout.id, by="test", reason="load")
        )
        step.start()
        results = drive(base_url, SECONDS)
        step.join()
        assert holds_candidate(base_url, 75)
        stop_gracefully(process, tmp_path / "server.log")

    assert {status for status, _, _ in results} == {200}
    assert {version for _, version, _ in results} == {"v1", "v2"}
    captured = dict(read_capture(home.capture).select("capture_id", "model_version").iter_rows())
    assert len(captured) == len(results)
    assert all(captured[capture_id] == version for _, version, capture_id in results)
