"""The model holder: serves the production alias, swaps on a move, refuses files that fail their check."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.scoring.model import load_model
from mlplatform.serving.model_holder import NO_PRODUCTION_MODEL, SHUTTING_DOWN, HolderState, ModelHolder
from mlplatform_tests.core.scoring.models import RULES
from mlplatform_tests.serving.conftest import damage_model_file, deploy, register


@pytest.fixture
def holder(registry: ModelRegistry) -> Iterator[ModelHolder]:
    model_holder = ModelHolder(registry, functools.partial(load_model, rules=RULES), poll_interval_s=0.02)
    yield model_holder
    model_holder.stop()


def wait_for_version(holder: ModelHolder, version: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        served = holder.served
        if served is not None and served.version == version:
            return
        time.sleep(0.01)
    raise AssertionError(f"holder did not swap to {version}: {holder.status()}")


def test_without_a_production_model_nothing_is_served(holder: ModelHolder) -> None:
    holder.start()
    status = holder.status()
    assert holder.served is None
    assert (status.ready, status.version, status.reason) == (False, None, NO_PRODUCTION_MODEL)


def test_serves_production_and_swaps_when_the_alias_moves(
    holder: ModelHolder, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    deploy(registry, tiny_models[0])
    holder.start()
    first = holder.served
    assert first is not None and first.version == "v1"
    prediction = first.model.predict(["lovely dress, great fit"])
    labels, probabilities = prediction.labels, prediction.probabilities
    assert labels[0] == "positive" and probabilities.shape == (1, 3)
    deploy(registry, tiny_models[1])
    wait_for_version(holder, "v2")  # picked up by the background poller
    assert first.version == "v1"  # a request holding the old pair still answers with v1, unchanged
    status = holder.status()
    assert (status.ready, status.swaps, status.refusals, status.reason) == (True, 2, 0, None)


@pytest.mark.parametrize("damage", ["corrupt", "truncate"])
def test_a_damaged_file_is_refused_and_the_old_model_keeps_serving(
    damage: str, holder: ModelHolder, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    deploy(registry, tiny_models[0])
    holder.start()
    bad = register(registry, tiny_models[1])
    damage_model_file(registry, bad, damage)
    registry.promote(bad, by="test")
    holder.refresh()
    served = holder.served
    assert served is not None and served.version == "v1"
    status = holder.status()
    assert status.ready and status.refusals == 1
    assert status.reason is not None and "v2 refused" in status.reason and "sha256" in status.reason
    # The next good model is taken again.
    deploy(registry, tiny_models[2])
    holder.refresh()
    assert holder.served is not None and holder.served.version == "v3"
    assert holder.status().reason is None


def test_a_damaged_production_model_at_start_up_is_not_served(
    holder: ModelHolder, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    version = deploy(registry, tiny_models[0])
    damage_model_file(registry, version, "truncate")
    holder.start()
    status = holder.status()
    assert holder.served is None and not status.ready
    assert status.reason is not None and f"{version} refused" in status.reason


def test_shutdown_turns_readiness_off_first(
    holder: ModelHolder, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    deploy(registry, tiny_models[0])
    holder.start()
    holder.begin_shutdown()
    status = holder.status()
    assert (status.ready, status.reason) == (False, SHUTTING_DOWN)
    served = holder.served  # requests still draining are answered, by the same version
    assert served is not None and served.version == "v1"


def test_a_refused_production_model_is_served_once_its_file_is_repaired(
    holder: ModelHolder, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    version = deploy(registry, tiny_models[0])
    model_file = registry.get(version).onnx_path
    damage_model_file(registry, version, "truncate")
    holder.start()
    assert holder.status().state == HolderState.REFUSED
    model_file.write_bytes(tiny_models[0])  # the operator restores the file; the alias never moved
    wait_for_version(holder, version)
    status = holder.status()
    assert (status.state, status.ready, status.reason, status.refusals) == (
        HolderState.SERVING,
        True,
        None,
        1,
    )


def test_a_refusal_whatever_its_cause_is_retried_after_refused_retry_s(
    registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    version = deploy(registry, tiny_models[0])
    now = [100.0]
    failures = [RuntimeError("onnxruntime: out of memory")]

    def flaky_loader(path: Path, sha256: str) -> Any:
        if failures:
            raise failures.pop()
        return load_model(path, sha256, RULES)

    holder = ModelHolder(
        registry, flaky_loader, poll_interval_s=3600, refused_retry_s=30.0, monotonic=lambda: now[0]
    )
    holder.refresh()
    assert holder.status().state == HolderState.REFUSED
    now[0] += 29.0
    holder.refresh()  # the file is unchanged and its retry time has not come
    assert holder.status().state == HolderState.REFUSED
    now[0] += 1.0
    holder.refresh()
    served = holder.served
    assert served is not None and served.version == version
