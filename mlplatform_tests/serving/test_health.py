"""Liveness and readiness as an orchestrator reads them: not ready means wait, not live means restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mlplatform.core.home import PlatformHome
from mlplatform.core.registry import ModelRegistry
from mlplatform.core.settings import Settings
from mlplatform.serving.app import create_app
from mlplatform_tests.serving.conftest import damage_model_file, deploy


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
