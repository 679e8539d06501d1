"""The endpoint app in-process: routes, bad input, auth, limits, capture, metrics, hot swap under load."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.monitoring.prediction_log import prediction_log
from mlplatform.core.platform.home import PlatformHome, api_keys_from_env
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.scoring.model import Prediction
from mlplatform.serving.app import create_app
from mlplatform_tests.core.scoring.models import LABELS
from mlplatform_tests.serving.conftest import (
    TWO_CLASSES,
    damage_model_file,
    deploy,
    register,
    tiny_model_bytes,
    with_serving,
)

INFER = "/v2/models/sentiment/infer"
JSON = {"Content-Type": "application/json"}
MAX_BATCH = 4
MAX_BODY_BYTES = 4096


def infer_body(texts: list[Any], **extra_inputs: list[Any]) -> dict[str, Any]:
    inputs = [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]
    for name, data in extra_inputs.items():
        inputs.append({"name": name, "datatype": "BYTES", "shape": [len(data)], "data": data})
    return {"inputs": inputs}


@pytest.fixture
def test_settings(fast_settings: Settings) -> Settings:
    return with_serving(fast_settings, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY_BYTES)


@pytest.fixture
def deployed(registry: ModelRegistry, tiny_models: dict[int, bytes]) -> str:
    return deploy(registry, tiny_models[0])


@pytest.fixture
def client(home: PlatformHome, test_settings: Settings, deployed: str) -> Iterator[TestClient]:
    with TestClient(create_app(home, test_settings)) as test_client:
        yield test_client


@contextlib.asynccontextmanager
async def async_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the app in this event loop (for truly concurrent requests), lifespan included."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as http:
            yield http


# --- happy paths --------------------------------------------------------------------------------------


def test_health_and_metadata_name_the_served_version(client: TestClient, deployed: str) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True, "version": deployed}
    assert client.get("/v2/models/sentiment/ready").status_code == 200
    metadata = client.get("/v2/models/sentiment").json()
    assert (metadata["name"], metadata["versions"], metadata["ready"], metadata["reason"]) == (
        "sentiment",
        [deployed],
        True,
        None,
    )
    assert [tensor["name"] for tensor in metadata["inputs"]] == ["text", "product_id", "review_id"]


def test_infer_answers_the_open_inference_protocol(client: TestClient, deployed: str) -> None:
    body = infer_body(["I love this dress, great fit", "awful quality, ripped"], product_id=["p1", "p2"])
    response = client.post(INFER, json=body, headers={"X-Request-ID": "req-123"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-123"
    answer = response.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("sentiment", deployed, "req-123")
    label, probabilities = answer["outputs"]
    assert (label["name"], label["datatype"], label["shape"]) == ("label", "BYTES", [2])
    assert label["data"] == ["positive", "negative"]
    assert (probabilities["datatype"], probabilities["shape"]) == ("FP32", [2, 3])
    matrix = np.array(probabilities["data"]).reshape(2, 3)
    assert np.allclose(matrix.sum(axis=1), 1.0, atol=1e-5)
    assert [LABELS[i] for i in matrix.argmax(axis=1)] == label["data"]


def test_predict_answers_with_a_generated_request_id(client: TestClient, deployed: str) -> None:
    response = client.post(
        "/predict", json={"reviews": [{"text": "lovely fabric, very happy", "review_id": 7}]}
    )
    assert response.status_code == 200
    answer = response.json()
    assert answer["model_version"] == deployed
    assert len(answer["id"]) == 36 and response.headers["x-request-id"] == answer["id"]
    (prediction,) = answer["predictions"]
    assert prediction["label"] == "positive"
    assert set(prediction["probabilities"]) == set(LABELS)
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


def test_every_2xx_is_captured_with_its_request_id_and_version(
    client: TestClient, home: PlatformHome, deployed: str
) -> None:
    client.post("/predict", json={"reviews": [{"text": "great", "product_id": "p9", "review_id": "r9"}]})
    client.post(
        INFER, json=infer_body(["too small", "so so"], review_id=["a", "b"]), headers={"X-Request-ID": "two"}
    )
    client.post("/predict", json={"reviews": []})  # a 400: not captured
    frame = read_capture(home.capture)
    assert frame.height == 3
    assert set(frame["model_version"]) == {deployed}
    pair = frame.filter(frame["request_id"] == "two").sort("row")
    assert pair["text"].to_list() == ["too small", "so so"]
    assert pair["review_id"].to_list() == ["a", "b"]
    assert pair["route"].to_list() == [INFER, INFER]
    single = frame.filter(frame["request_id"] != "two")
    assert (single["product_id"][0], single["review_id"][0], single["label"][0]) == ("p9", "r9", "positive")
    assert (frame["latency_ms"] > 0).all()
    total = frame["p_negative"] + frame["p_neutral"] + frame["p_positive"]
    assert ((total - 1.0).abs() < 1e-5).all()


def test_a_reused_request_id_names_two_captured_requests_that_monitoring_keeps_apart(
    client: TestClient, home: PlatformHome
) -> None:
    answers = [
        client.post("/predict", json={"reviews": [{"text": text}]}, headers={"X-Request-ID": "retry-1"})
        for text in ("lovely dress", "awful fabric")
    ]
    assert [answer.json()["id"] for answer in answers] == ["retry-1", "retry-1"]  # the client's id, as given
    capture_ids = [answer.headers["x-capture-id"] for answer in answers]
    assert len(set(capture_ids)) == 2
    captured = read_capture(home.capture)
    assert captured.sort("time")["capture_id"].to_list() == capture_ids
    log, stats = prediction_log(captured)
    assert log["text"].to_list() == ["lovely dress", "awful fabric"]
    assert (stats.requests, stats.duplicates_removed) == (2, 0)


def test_a_sampled_out_answer_names_no_capture(
    home: PlatformHome, test_settings: Settings, deployed: str
) -> None:
    with TestClient(create_app(home, with_serving(test_settings, capture_sample_rate=0.0))) as http:
        response = http.post("/predict", json={"reviews": [REVIEW]})
    assert response.status_code == 200 and "x-capture-id" not in response.headers


def test_the_endpoint_serves_whatever_classes_the_production_model_has(
    home: PlatformHome, test_settings: Settings, registry: ModelRegistry
) -> None:
    version = deploy(registry, tiny_model_bytes(two_classes=True))
    with TestClient(create_app(home, test_settings)) as http:
        outputs = http.get("/v2/models/sentiment").json()["outputs"]
        assert outputs[1] == {
            "name": "probabilities",
            "datatype": "FP32",
            "shape": [-1, 2],
            "labels": ["bad", "good"],
        }
        answer = http.post(INFER, json=infer_body(["I love this dress, great fit", "awful, ripped"])).json()
        label, probabilities = answer["outputs"]
        assert label["data"] == ["good", "bad"] and probabilities["shape"] == [2, 2]
        assert len(probabilities["data"]) == 4
        (prediction,) = http.post("/predict", json={"reviews": [{"text": "lovely fabric"}]}).json()[
            "predictions"
        ]
        assert set(prediction["probabilities"]) == set(TWO_CLASSES) and prediction["label"] == "good"
    frame = read_capture(home.capture)
    assert set(frame["model_version"]) == {version}
    assert [column for column in frame.columns if column.startswith("p_")] == ["p_bad", "p_good"]
    assert (((frame["p_bad"] + frame["p_good"]) - 1.0).abs() < 1e-5).all()


# --- bad input: always a 4xx with {"error": ...} ---------------------------------------------------

REVIEW = {"text": "fine"}
BAD_REQUESTS: list[tuple[str, str, Any, int]] = [
    ("malformed JSON", "/predict", b'{"reviews": [', 400),
    ("empty body", "/predict", b"", 400),
    ("not UTF-8", "/predict", b'{"reviews": [{"text": "caf\xe9"}]}', 400),
    ("NaN", "/predict", b'{"reviews": [{"text": NaN}]}', 400),
    (
        "NaN in infer",
        INFER,
        b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [NaN]}]}',
        400,
    ),
    ("body is a list", "/predict", [REVIEW], 400),
    ("reviews not a list", "/predict", {"reviews": "fine"}, 400),
    ("review not an object", "/predict", {"reviews": ["fine"]}, 400),
    ("text a number", "/predict", {"reviews": [{"text": 4.5}]}, 400),
    ("text missing", "/predict", {"reviews": [{"review_id": "r1"}]}, 400),
    ("id a float", "/predict", {"reviews": [{"text": "ok", "product_id": 1.5}]}, 400),
    ("id a bool", "/predict", {"reviews": [{"text": "ok", "review_id": True}]}, 400),
    ("no reviews", "/predict", {"reviews": []}, 400),
    ("blank text", "/predict", {"reviews": [{"text": " \n\t "}]}, 400),
    ("batch over max", "/predict", {"reviews": [REVIEW] * (MAX_BATCH + 1)}, 413),
    ("no inputs", INFER, {"inputs": []}, 400),
    ("inputs not a list", INFER, {"inputs": {"text": ["ok"]}}, 400),
    ("text input missing", INFER, {"inputs": infer_body(["a"], product_id=["p"])["inputs"][1:]}, 400),
    (
        "unknown input",
        INFER,
        {"inputs": [{"name": "rating", "datatype": "BYTES", "shape": [1], "data": ["5"]}]},
        400,
    ),
    (
        "wrong datatype",
        INFER,
        {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": ["ok"]}]},
        400,
    ),
    (
        "shape mismatch",
        INFER,
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["ok"]}]},
        400,
    ),
    (
        "2-D shape",
        INFER,
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1, 3], "data": ["ok"]}]},
        400,
    ),
    (
        "shape of strings",
        INFER,
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": ["1"], "data": ["ok"]}]},
        400,
    ),
    ("element not a string", INFER, infer_body([1]), 400),
    ("empty tensor", INFER, infer_body([]), 400),
    ("input given twice", INFER, {"inputs": infer_body(["a"])["inputs"] * 2}, 400),
    ("id length differs", INFER, infer_body(["a", "b"], review_id=["r1"]), 400),
    ("infer batch over max", INFER, infer_body(["ok"] * (MAX_BATCH + 1)), 413),
    ("body over limit", "/predict", {"reviews": [{"text": "x" * MAX_BODY_BYTES}]}, 413),
]


@pytest.fixture(scope="module")
def shared(
    tmp_path_factory: pytest.TempPathFactory, tiny_models: dict[int, bytes]
) -> Iterator[tuple[TestClient, PlatformHome]]:
    """One app for the many bad-input cases (none of them changes its state)."""
    home = PlatformHome(tmp_path_factory.mktemp("shared") / "home").ensure()
    deploy(ModelRegistry(home.registry), tiny_models[0])
    settings = with_serving(Settings.load(), max_batch=MAX_BATCH, max_body_bytes=MAX_BODY_BYTES)
    with TestClient(create_app(home, settings)) as test_client:
        yield test_client, home


@pytest.mark.parametrize(
    ("path", "body", "status"), [case[1:] for case in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS]
)
def test_bad_input_is_a_4xx_with_an_error(
    shared: tuple[TestClient, PlatformHome], path: str, body: Any, status: int
) -> None:
    client, home = shared
    content = body if isinstance(body, bytes) else None
    response = client.post(path, content=content, json=None if content is not None else body, headers=JSON)
    assert response.status_code == status, response.text
    answer = response.json()
    assert isinstance(answer["error"], str) and answer["error"]
    assert answer["id"] == response.headers["x-request-id"]
    captured = read_capture(home.capture)
    assert captured.filter(captured["request_id"] == answer["id"]).height == 0  # refused: not captured


def test_openapi_documents_every_route(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {INFER, "/predict", "/v2/health/ready", "/v2/models/sentiment", "/metrics"} <= set(paths)
    assert "example" in paths[INFER]["post"]["requestBody"]["content"]["application/json"]


def test_odd_but_valid_texts_are_answered_and_captured(shared: tuple[TestClient, PlatformHome]) -> None:
    client, home = shared
    texts = [
        "nul \u0000 inside, love it",
        "emoji 😀 and ünïcödé, great fit",
        "!!! ??? great",
        "  lovely \n\t dress  ",
    ]
    response = client.post(INFER, json=infer_body(texts), headers={"X-Request-ID": "odd-texts"})
    assert response.status_code == 200, response.text
    captured = read_capture(home.capture).filter(read_capture(home.capture)["request_id"] == "odd-texts")
    # the capture records the text that was scored: the one text preparation's output
    assert captured.sort("row")["text"].to_list() == [*texts[:3], "lovely dress"]


@pytest.mark.parametrize(
    "text", ["!!! ???", "😀 日本語", "zzqx wibble"], ids=["punctuation", "no ASCII word", "unknown words"]
)
def test_a_review_with_nothing_the_model_reads_is_a_400_naming_it(
    shared: tuple[TestClient, PlatformHome], text: str
) -> None:
    client, home = shared
    response = client.post(
        INFER, json=infer_body(["love this dress", text]), headers={"X-Request-ID": f"no-tokens-{len(text)}"}
    )
    assert response.status_code == 400
    assert response.json()["error"].startswith("review 1 has no word the model reads")
    capture = read_capture(home.capture)
    assert capture.filter(capture["request_id"] == f"no-tokens-{len(text)}").height == 0


def test_wrong_method_and_unknown_path_are_4xx(client: TestClient) -> None:
    assert client.get("/predict").status_code == 405
    missing = client.get("/v2/models/other")
    assert missing.status_code == 404 and "error" in missing.json()


@pytest.mark.parametrize("request_id", ["x" * 129, "spaces are unsafe", "semi;colon", ""])
def test_an_unsafe_request_id_is_refused(client: TestClient, request_id: str) -> None:
    response = client.post("/predict", json={"reviews": [REVIEW]}, headers={"X-Request-ID": request_id})
    assert response.status_code == 400 and "X-Request-ID" in response.json()["error"]


def test_an_oversized_body_is_refused_before_it_is_read(
    home: PlatformHome, test_settings: Settings, deployed: str
) -> None:
    chunks_read = 0

    async def endless_body() -> AsyncIterator[bytes]:
        nonlocal chunks_read
        while True:
            chunks_read += 1
            yield b" " * 1024

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with async_client(create_app(home, test_settings)) as http:
            declared = await http.post(
                "/predict", content=b"{}", headers={"Content-Length": str(10 * MAX_BODY_BYTES), **JSON}
            )
            streamed = await http.post(  # chunked: no Content-Length
                "/predict", content=endless_body(), headers=JSON
            )
            return declared, streamed

    declared, streamed = asyncio.run(scenario())
    assert declared.status_code == 413 and "over the limit" in declared.json()["error"]
    assert streamed.status_code == 413
    assert chunks_read <= MAX_BODY_BYTES // 1024 + 2  # stopped reading just past the limit


# --- auth, capacity, capture failures, sampling -------------------------------------------------------


def test_api_keys_guard_everything_but_health(
    home: PlatformHome, test_settings: Settings, deployed: str
) -> None:
    keys = api_keys_from_env({"MLPLATFORM_API_KEYS": " first-key , second-key ,"})
    assert keys == ("first-key", "second-key")
    body = {"reviews": [REVIEW]}
    with TestClient(create_app(home, test_settings, api_keys=keys)) as http:
        assert http.post("/predict", json=body).status_code == 401
        assert (
            http.post("/predict", json=body, headers={"X-API-Key": "first-key-but-longer"}).status_code == 401
        )
        assert (
            http.post(INFER, json=infer_body(["ok"]), headers={"Authorization": "Bearer wrong"}).status_code
            == 401
        )
        assert http.get("/metrics").status_code == 401
        assert http.get("/v2/models/sentiment").status_code == 401
        assert http.post("/predict", json=body, headers={"X-API-Key": "first-key"}).status_code == 200
        assert (
            http.post("/predict", json=body, headers={"Authorization": "Bearer second-key"}).status_code
            == 200
        )
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 200
    assert api_keys_from_env({}) == ()


def slow_fsync(seconds: float) -> Callable[[int], None]:
    def fsync(fd: int) -> None:
        time.sleep(seconds)
        os.fsync(fd)

    return fsync


def test_capture_is_told_whether_a_request_is_alone_in_flight(
    home: PlatformHome, test_settings: Settings, deployed: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(home, test_settings)
    capture = app.state.serving.capture
    real_append = capture.append
    seen: list[bool] = []
    second_arrived = asyncio.Event()

    async def recording_append(payload: bytes, *, alone: bool = False) -> None:
        seen.append(alone)
        if len(seen) == 2:  # the second request of the pair: let the first one finish
            second_arrived.set()
        elif len(seen) == 1:  # the first of the pair waits here, still in flight
            await second_arrived.wait()
        await real_append(payload, alone=alone)

    monkeypatch.setattr(capture, "append", recording_append)

    async def scenario() -> list[int]:
        async with async_client(app) as http:
            pair = await asyncio.gather(
                *(http.post("/predict", json={"reviews": [REVIEW]}) for _ in range(2))
            )
            lone = await http.post("/predict", json={"reviews": [REVIEW]})
            return [response.status_code for response in (*pair, lone)]

    assert asyncio.run(scenario()) == [200, 200, 200]
    # The first of the pair arrived alone; the second found it in flight; the last came alone.
    assert seen == [True, False, True]
    assert read_capture(home.capture).height == 3


def test_beyond_the_concurrency_limit_a_fast_503(
    home: PlatformHome, test_settings: Settings, deployed: str
) -> None:
    app = create_app(home, with_serving(test_settings, max_concurrency=1), sync_file=slow_fsync(0.5))

    async def scenario() -> list[tuple[int, float]]:
        async with async_client(app) as http:

            async def timed(delay: float) -> tuple[int, float]:
                await asyncio.sleep(delay)
                started = time.perf_counter()
                response = await http.post("/predict", json={"reviews": [REVIEW]})
                return response.status_code, time.perf_counter() - started

            return await asyncio.gather(timed(0.0), timed(0.1))

    (first_status, _), (second_status, second_seconds) = asyncio.run(scenario())
    assert (first_status, second_status) == (200, 503)
    assert second_seconds < 0.2  # refused at once, not queued behind the slow request


def test_when_capture_cannot_be_written_the_answer_is_503(
    home: PlatformHome, test_settings: Settings, deployed: str
) -> None:
    def broken_disk(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    with TestClient(create_app(home, test_settings, sync_file=broken_disk)) as http:
        response = http.post("/predict", json={"reviews": [REVIEW]})
        assert response.status_code == 503
        assert "capture unavailable" in response.json()["error"]
        assert "mlplatform_serving_capture_failures_total 1.0" in http.get("/metrics").text
    assert read_capture(home.capture).height == 0


def test_sampled_out_requests_are_answered_and_counted(
    home: PlatformHome, test_settings: Settings, deployed: str
) -> None:
    with TestClient(create_app(home, with_serving(test_settings, capture_sample_rate=0.0))) as http:
        assert http.post("/predict", json={"reviews": [REVIEW]}).status_code == 200
        assert "mlplatform_serving_capture_sampled_out_total 1.0" in http.get("/metrics").text
    assert read_capture(home.capture).height == 0


def test_metrics_report_requests_latency_batches_version_and_process(
    client: TestClient, deployed: str
) -> None:
    client.post("/predict", json={"reviews": [REVIEW, REVIEW]})
    client.post("/predict", json={"reviews": []})
    text = client.get("/metrics").text
    assert 'mlplatform_serving_requests_total{route="/predict",status="200"} 1.0' in text
    assert 'mlplatform_serving_requests_total{route="/predict",status="400"} 1.0' in text
    assert 'mlplatform_serving_request_latency_seconds_count{route="/predict"} 2.0' in text
    assert 'mlplatform_serving_batch_size_bucket{le="2.0"} 1.0' in text
    assert f'mlplatform_serving_model_version{{version="{deployed}"}} 1.0' in text
    assert "mlplatform_serving_ready 1.0" in text
    assert "process_resident_memory_bytes" in text and "process_cpu_seconds_total" in text


def test_every_capture_sync_is_measured_by_who_synced(
    home: PlatformHome, test_settings: Settings, deployed: str
) -> None:
    settings = with_serving(test_settings, capture_inline_warmup_syncs=2, capture_inline_sync_max_ms=1000.0)
    with TestClient(create_app(home, settings)) as http:
        for _ in range(5):  # one at a time: each request is alone in flight
            assert http.post("/predict", json={"reviews": [REVIEW]}).status_code == 200
        families = {
            sample.labels["by"]: sample.value
            for family in text_string_to_metric_families(http.get("/metrics").text)
            for sample in family.samples
            if sample.name == "mlplatform_serving_capture_sync_seconds_count"
        }
    # The warm-up's two syncs by the writer thread, then each lone request synced its own record.
    assert families == {"writer": 2.0, "request": 3.0}


def test_the_recent_window_of_metrics_comes_from_the_settings(
    home: PlatformHome, test_settings: Settings, deployed: str
) -> None:
    with TestClient(create_app(home, with_serving(test_settings, health_window_s=1))) as http:
        time.sleep(1.2)  # older than its window: the window is the setting, not the process's age
        http.post("/predict", json={"reviews": [REVIEW]})
        text = http.get("/metrics").text
    assert "mlplatform_serving_recent_window_seconds 1.0" in text
    assert "mlplatform_serving_recent_requests 1.0" in text


def test_an_unexpected_failure_is_a_500_with_the_request_id(
    home: PlatformHome, test_settings: Settings, deployed: str
) -> None:
    class BrokenModel:
        calls = 0
        classes = LABELS

        def predict(self, texts: list[str], explain_top_k: int = 0) -> Prediction:
            BrokenModel.calls += 1
            if BrokenModel.calls > 1:  # the warm-up passes, the first request does not
                raise RuntimeError("bug")
            probabilities = np.full((len(texts), 3), 1 / 3, dtype=np.float32)
            return Prediction(
                np.array(["neutral"] * len(texts), dtype=object), probabilities, np.zeros(len(texts), bool)
            )

    with TestClient(create_app(home, test_settings, loader=lambda path, sha: BrokenModel())) as http:
        response = http.post("/predict", json={"reviews": [REVIEW]}, headers={"X-Request-ID": "boom"})
    assert response.status_code == 500
    assert response.json() == {"error": "internal error", "id": "boom"}


# --- not servable -------------------------------------------------------------------------------------


def test_without_a_production_model_not_ready_and_503(home: PlatformHome, test_settings: Settings) -> None:
    with TestClient(create_app(home, test_settings)) as http:
        assert http.get("/v2/health/live").status_code == 200
        ready = http.get("/v2/health/ready")
        assert ready.status_code == 503 and "no production model" in ready.json()["error"]
        response = http.post(INFER, json=infer_body(["ok"]))
        assert response.status_code == 503 and "no production model" in response.json()["error"]
        assert http.get("/v2/models/sentiment").json()["version"] is None


def test_a_damaged_production_model_at_start_up_is_not_served(
    home: PlatformHome, test_settings: Settings, registry: ModelRegistry, deployed: str
) -> None:
    damage_model_file(registry, deployed, "corrupt")
    with TestClient(create_app(home, test_settings)) as http:
        assert http.get("/v2/models/sentiment/ready").status_code == 503
        assert http.post("/predict", json={"reviews": [REVIEW]}).status_code == 503
        metadata = http.get("/v2/models/sentiment").json()
        assert metadata["ready"] is False and "sha256" in metadata["reason"]


# --- hot swap under load --------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def test_swap_under_concurrent_load_answers_every_request(
    client: TestClient, home: PlatformHome, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    answers: list[tuple[int, str, str]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            response = client.post("/predict", json={"reviews": [{"text": "nice dress"}]})
            body = response.json()
            answers.append((response.status_code, body.get("model_version", ""), body.get("id", "")))

    def served_version() -> str:
        return client.get("/v2/models/sentiment").json()["version"]

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        deploy(registry, tiny_models[1])
        wait_until(lambda: served_version() == "v2")
        refused = register(registry, tiny_models[2])
        damage_model_file(registry, refused, "truncate")
        registry.promote(refused, by="test")
        wait_until(lambda: client.get("/v2/models/sentiment").json()["reason"] is not None)
        time.sleep(0.1)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    statuses = {status for status, _, _ in answers}
    assert statuses == {200}, f"non-2xx answers during the swap: {statuses}"
    assert {version for _, version, _ in answers} == {"v1", "v2"}  # v3 was refused; v2 kept serving
    assert served_version() == "v2"
    captured = dict(read_capture(home.capture).select("request_id", "model_version").iter_rows())
    assert captured == {request_id: version for _, version, request_id in answers}
