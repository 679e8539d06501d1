"""Liveness and readiness as an orchestrator reads them: not ready means wait, not live means restart."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mlplatform.core.monitoring.alerts import FIRING, RESOLVED, AlertStore
from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.serving.app import create_app
from mlplatform_tests.serving.conftest import damage_model_file, deploy, with_serving


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_refused_model_is_not_ready_but_live_and_recovers_once_repaired(
    home: PlatformHome, fast_settings: Settings, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    version = deploy(registry, tiny_models[0])
    model_file = registry.get(version).onnx_path
    damage_model_file(registry, version, "truncate")
    with TestClient(create_app(home, fast_settings)) as http:
        ready = http.get("/v2/health/ready")
        assert (ready.status_code, ready.json()["state"]) == (503, "model_refused")
        assert http.get("/v2/health/live").status_code == 200  # a restart would not help: wait
        model_file.write_bytes(tiny_models[0])
        wait_until(lambda: http.get("/v2/health/ready").status_code == 200)
        assert http.post("/predict", json={"reviews": [{"text": "fine"}]}).json()["model_version"] == version


class StoppingRegistry:
    """A registry whose reads end the thread that makes them after `polls` reads (a poller that died)."""

    def __init__(self, registry: ModelRegistry, polls: int) -> None:
        self._registry = registry
        self._polls = polls

    def production_pointer(self) -> tuple[str | None, float]:
        self._polls -= 1
        if self._polls < 0:
            raise SystemExit  # not an Exception: the poller's own guard does not catch it
        return self._registry.production_pointer()

    def production(self) -> Any:
        return self._registry.production()

    def verify(self, version: str) -> Any:
        return self._registry.verify(version)

    def get(self, version: str) -> Any:
        return self._registry.get(version)

    def pointer(self, name: str) -> Any:
        return self._registry.pointer(name)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_liveness_fails_when_the_model_poller_is_gone(
    home: PlatformHome, fast_settings: Settings, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    deploy(registry, tiny_models[0])
    app = create_app(home, fast_settings, registry=StoppingRegistry(registry, polls=3))
    with TestClient(app) as http:
        wait_until(lambda: http.get("/v2/health/live").status_code == 503)
        live = http.get("/v2/health/live").json()
        assert (live["live"], live["state"]) == (False, "model_poller_stopped")
        assert http.get("/v2/health/ready").status_code == 200  # the loaded model still answers


def test_a_full_capture_disk_is_not_ready_raises_an_alert_and_recovers(
    home: PlatformHome, fast_settings: Settings, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    deploy(registry, tiny_models[0])
    full = [False]

    def disk(fd: int) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync(fd)

    alerts = AlertStore(home.alerts)
    settings = with_serving(fast_settings, capture_retry_s=0.05)
    body = {"reviews": [{"text": "lovely"}]}
    with TestClient(create_app(home, settings, sync_file=disk, alerts=alerts)) as http:
        assert http.post("/predict", json=body).status_code == 200
        full[0] = True
        answers = [http.post("/predict", json=body) for _ in range(100)]
        assert {answer.status_code for answer in answers} == {503}
        assert "No space left on device" in answers[-1].json()["error"]
        ready = http.get("/v2/health/ready")
        assert (ready.status_code, ready.json()["state"]) == (503, "capture_failing")
        assert http.get("/v2/health/live").status_code == 200  # a restart would not make space
        assert "mlplatform_serving_ready 0.0" in http.get("/metrics").text
        wait_until(lambda: any(alert.state == FIRING for alert in alerts.list()))
        (alert,) = alerts.list()
        assert (alert.kind, alert.severity) == ("capture", "ERROR") and "No space left" in alert.message
        # The sealed segment of the first answer, and no more than the one file a probe may have open.
        assert len(list(home.capture.glob("*.jsonl"))) == 1
        assert len(list(home.capture.glob("*.open"))) <= 1

        full[0] = False
        wait_until(lambda: http.get("/v2/health/ready").status_code == 200)
        assert http.post("/predict", json=body).status_code == 200
        wait_until(lambda: alerts.list()[0].state == RESOLVED)
    assert read_capture(home.capture).height == 2


def test_liveness_fails_when_the_capture_writer_is_gone(
    home: PlatformHome, fast_settings: Settings, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    deploy(registry, tiny_models[0])

    def buggy_sync(fd: int) -> None:
        raise RuntimeError("a bug in the writer")  # not an OSError: the writer thread stops

    with TestClient(create_app(home, fast_settings, sync_file=buggy_sync)) as http:
        assert http.post("/predict", json={"reviews": [{"text": "fine"}]}).status_code == 503
        live = http.get("/v2/health/live")
        assert (live.status_code, live.json()["state"]) == (503, "capture_writer_stopped")
