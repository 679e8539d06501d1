"""Admission of inference requests: JSON content types only, a body within its deadline, slots only
after the body, readiness that says when inference cannot be served."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi.testclient import TestClient

from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.serving.app import create_app
from mlplatform_tests.serving.conftest import deploy, with_serving
from mlplatform_tests.serving.test_app import INFER, JSON, async_client, infer_body

REVIEW_BODY = b'{"reviews": [{"text": "lovely dress"}]}'


@pytest.fixture
def deployed(registry: ModelRegistry, tiny_models: dict[int, bytes]) -> str:
    return deploy(registry, tiny_models[0])


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",  # what a browser posts cross-origin without a preflight
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",  # what `curl -d` sends unless told otherwise
        "multipart/form-data; boundary=x",
        "application/json; charset=latin-1",
        "application/jsonp",
        "",
        None,
    ],
)
def test_inference_takes_json_content_types_only(
    home: PlatformHome, fast_settings: Settings, deployed: str, content_type: str | None
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    with TestClient(create_app(home, fast_settings)) as http:
        for path in ("/predict", INFER):
            response = http.post(path, content=REVIEW_BODY, headers={**headers, "X-Request-ID": "typed"})
            assert response.status_code == 415, response.text
            assert "application/json" in response.json()["error"] or "UTF-8" in response.json()["error"]
            assert response.json()["id"] == "typed"
    assert read_capture(home.capture).height == 0


@pytest.mark.parametrize(
    "content_type", ["application/json", "Application/JSON; charset=UTF-8", "application/vnd.reviews+json"]
)
def test_json_content_types_are_scored(
    home: PlatformHome, fast_settings: Settings, deployed: str, content_type: str
) -> None:
    with TestClient(create_app(home, fast_settings)) as http:
        response = http.post("/predict", content=REVIEW_BODY, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


async def stalled_body(arrived: asyncio.Event | None = None) -> AsyncIterator[bytes]:
    """Half a body, then nothing, for ever (a slow or malicious client)."""
    yield REVIEW_BODY[:10]
    if arrived is not None:
        arrived.set()
    await asyncio.Event().wait()
    yield b""  # pragma: no cover


def test_a_body_that_stops_arriving_is_a_408_that_closes_the_connection(
    home: PlatformHome, fast_settings: Settings, deployed: str
) -> None:
    app = create_app(home, with_serving(fast_settings, body_timeout_s=0.2))

    async def scenario() -> httpx.Response:
        async with async_client(app) as http:
            return await http.post(
                "/predict", content=stalled_body(), headers={**JSON, "X-Request-ID": "slow"}
            )

    response = asyncio.run(asyncio.wait_for(scenario(), 30))  # without a deadline: a TimeoutError here
    assert response.status_code == 408
    assert response.json() == {
        "error": "request body not complete within 0.2 s ([serving] body_timeout_s)",
        "id": "slow",
    }
    assert response.headers["connection"] == "close"


def test_a_stalled_body_holds_no_slot(home: PlatformHome, fast_settings: Settings, deployed: str) -> None:
    app = create_app(home, with_serving(fast_settings, max_concurrency=1, body_timeout_s=30.0))

    async def scenario() -> tuple[int, int]:
        async with async_client(app) as http:
            arrived = asyncio.Event()
            stalled = asyncio.create_task(http.post("/predict", content=stalled_body(arrived), headers=JSON))
            await arrived.wait()  # the app read the first half and waits for the rest
            answered = await http.post("/predict", content=REVIEW_BODY, headers=JSON)
            ready = await http.get("/v2/health/ready")
            stalled.cancel()
            return answered.status_code, ready.status_code

    assert asyncio.run(scenario()) == (200, 200)


def test_readiness_is_false_while_every_slot_is_taken(
    home: PlatformHome, fast_settings: Settings, deployed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(home, with_serving(fast_settings, max_concurrency=1))
    capture = app.state.serving.capture
    real_append = capture.append
    holding, release = asyncio.Event(), asyncio.Event()

    async def held_append(payload: bytes, *, alone: bool = False) -> None:
        holding.set()
        await release.wait()
        await real_append(payload, alone=alone)

    monkeypatch.setattr(capture, "append", held_append)

    async def scenario() -> tuple[httpx.Response, httpx.Response, int, int]:
        async with async_client(app) as http:
            first = asyncio.create_task(http.post(INFER, json=infer_body(["love this dress"])))
            await holding.wait()
            ready = await http.get("/v2/health/ready")
            refused = await http.post(INFER, json=infer_body(["love this dress"]))
            release.set()
            answered = await first
            ready_after = await http.get("/v2/health/ready")
            return ready, refused, answered.status_code, ready_after.status_code

    ready, refused, answered, ready_after = asyncio.run(scenario())
    assert (ready.status_code, ready.json()["state"]) == (503, "at_capacity")
    assert refused.status_code == 503 and "over capacity" in refused.json()["error"]
    assert (answered, ready_after) == (200, 200)
