"""A large request does nothing heavy on the event loop; the loop, and the health probes, keep turning.

No wall-clock thresholds: the proof is structural. A profiler on the loop's thread lists which of the
request's size-proportional steps ran there, and a model whose scoring waits for the loop to answer a
health probe would wait for ever if it ran on the loop.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import orjson
import pytest

from mlplatform.core.monitoring import capture
from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.scoring.model import Prediction, load_model
from mlplatform.serving import protocol
from mlplatform.serving.app import create_app
from mlplatform_tests.core.scoring.models import RULES
from mlplatform_tests.serving.conftest import deploy, with_serving
from mlplatform_tests.serving.test_app import JSON, async_client

INLINE_MAX_BODY_BYTES = 1024
# The steps whose cost grows with the body: none of them may run on the loop for a large body.
HEAVY_STEPS: dict[Any, str] = {
    protocol.decode_json.__code__: "decode_json",
    protocol.parse_predict_request.__code__: "parse_predict_request",
    protocol.model_inputs.__code__: "model_inputs (text cleaning)",
    protocol.render_predict_response.__code__: "render_predict_response",
    capture.encode_capture_rows.__code__: "encode_capture_rows",
}
HEAVY_BUILTINS = {orjson.loads: "orjson.loads", orjson.dumps: "orjson.dumps"}


def body_of(text: str, reviews: int = 1) -> bytes:
    return orjson.dumps({"reviews": [{"text": text}] * reviews})


@pytest.fixture
def settings_for_test(fast_settings: Settings) -> Settings:
    return with_serving(fast_settings, inline_max_body_bytes=INLINE_MAX_BODY_BYTES)


class ThreadRecordingModel:
    """The real model, noting which thread each `predict` ran on."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.classes = model.classes
        self.threads: list[int] = []

    def predict(self, texts: list[str], explain_top_k: int = 0) -> Any:
        self.threads.append(threading.get_ident())
        return self._model.predict(texts, explain_top_k)


def run_profiled(app: Any, body: bytes) -> tuple[int, set[str], int]:
    """POST `body` to /predict; (status, heavy steps that ran on the loop's thread, that thread's id)."""
    seen: set[str] = set()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code in HEAVY_STEPS:
            seen.add(HEAVY_STEPS[frame.f_code])
        elif event == "c_call" and arg in HEAVY_BUILTINS:
            seen.add(HEAVY_BUILTINS[arg])

    async def scenario() -> int:
        async with async_client(app) as http:
            sys.setprofile(profile)  # this thread only: the loop's
            try:
                response = await http.post("/predict", content=body, headers=JSON)
            finally:
                sys.setprofile(None)
            return response.status_code

    status = asyncio.run(scenario())
    return status, seen, threading.get_ident()


def recording_loader(models: list[ThreadRecordingModel]) -> Callable[[Path, str], ThreadRecordingModel]:
    def load(path: Path, sha256: str) -> ThreadRecordingModel:
        model = ThreadRecordingModel(load_model(path, sha256, RULES))
        models.append(model)
        return model

    return load


def test_a_large_body_is_decoded_cleaned_scored_rendered_and_encoded_off_the_loop(
    home: PlatformHome, settings_for_test: Settings, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    deploy(registry, tiny_models[0])
    models: list[ThreadRecordingModel] = []
    app = create_app(home, settings_for_test, loader=recording_loader(models))
    body = body_of("lovely dress but the fabric is thin " * 200)  # one review, far over the inline limit
    assert len(body) > INLINE_MAX_BODY_BYTES

    status, on_loop, loop_thread = run_profiled(app, body)

    assert status == 200
    assert on_loop == set()
    assert models[-1].threads[-1] != loop_thread
    assert read_capture(home.capture).height == 1


def test_a_small_body_is_answered_on_the_loop(
    home: PlatformHome, settings_for_test: Settings, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    """The other side of the size rule, and the proof that the profiler sees these steps at all."""
    deploy(registry, tiny_models[0])
    models: list[ThreadRecordingModel] = []
    app = create_app(home, settings_for_test, loader=recording_loader(models))

    status, on_loop, loop_thread = run_profiled(app, body_of("short and sweet", reviews=8))

    assert status == 200
    assert on_loop == {*HEAVY_STEPS.values(), *HEAVY_BUILTINS.values()}
    assert models[-1].threads[-1] == loop_thread


REQUEST_REVIEWS = 3


class LoopWaitingModel:
    """Scores only once `go` is set: by the loop, after it answered a health probe mid-inference."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.scoring = threading.Event()

    classes = ("negative", "neutral", "positive")

    def predict(self, texts: list[str], explain_top_k: int = 0) -> Prediction:
        if len(texts) == REQUEST_REVIEWS:  # a request, not the warm-up (two texts, before serving)
            self.scoring.set()
            if not self.go.wait(timeout=30):
                raise RuntimeError("the event loop never came back while this request was scored")
        labels = np.array(["neutral"] * len(texts), dtype=object)
        return Prediction(
            labels, np.full((len(texts), 3), 1 / 3, dtype=np.float32), np.zeros(len(texts), bool)
        )


def test_health_probes_are_answered_while_large_requests_score(
    home: PlatformHome, settings_for_test: Settings, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    deploy(registry, tiny_models[0])
    model = LoopWaitingModel()
    app = create_app(home, settings_for_test, loader=lambda path, sha256: model)

    async def scenario() -> tuple[list[int], int]:
        async with async_client(app) as http:
            requests = [
                asyncio.create_task(
                    http.post(
                        "/predict", content=body_of("great " * 600, reviews=REQUEST_REVIEWS), headers=JSON
                    )
                )
                for _ in range(4)
            ]
            await asyncio.to_thread(model.scoring.wait, 30)
            probes = [(await http.get(path)).status_code for path in ("/v2/health/live", "/v2/health/ready")]
            model.go.set()
            answers = await asyncio.gather(*requests)
            return probes, len([answer for answer in answers if answer.status_code == 200])

    probes, answered = asyncio.run(scenario())
    assert probes == [200, 200]
    assert answered == 4
