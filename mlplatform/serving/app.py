"""The real-time endpoint: a FastAPI app whose two inference routes are lean raw-ASGI handlers.

Routes (Open Inference Protocol v2 plus a plain JSON route):
    GET  /v2/health/live, /v2/health/ready          open even when API keys are configured
    GET  /v2/models/{name}, /v2/models/{name}/ready  metadata (version, and the reason when not servable)
    POST /v2/models/{name}/infer                      BYTES `text` [N] (+ optional `product_id`, `review_id`)
    POST /predict                                     {"reviews": [{"text", "product_id", "review_id"}]}
    GET  /metrics                                     Prometheus text

The inference routes skip FastAPI's per-request validation and serialisation: they read the body with a
byte limit (refused early on Content-Length, and while streaming), parse it with orjson, validate by
hand, score, build the response with orjson, make the capture record durable, then answer. Every
refusal is a 4xx/503 with `{"error": ..., "id": ...}`; only a bug is a 500 (`{"error": "internal error"}`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlplatform.core.features import LABELS, model_text_values
from mlplatform.core.home import PlatformHome
from mlplatform.core.registry import ModelRegistry
from mlplatform.core.scoring import ScoringRules, load_model
from mlplatform.core.settings import Settings
from mlplatform.serving.capture import CaptureConfig, CaptureError, CaptureWriter, encode_capture_rows
from mlplatform.serving.metrics import METRICS_CONTENT_TYPE, ServingMetrics
from mlplatform.serving.model_holder import ModelHolder, ModelLoader, Predictor, ProductionRegistry

log = logging.getLogger(__name__)

API_KEYS_ENV = "MLPLATFORM_API_KEYS"
REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID_SCOPE_KEY = "mlplatform.request_id"
STARTED_SCOPE_KEY = "mlplatform.started"
PREDICT_PATH = "/predict"
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]+")
_JSON_HEADERS = ((b"content-type", b"application/json"),)
_ID_INPUTS = ("product_id", "review_id")
_KNOWN_INPUTS = frozenset({"text", *_ID_INPUTS})

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class ServingConfig:
    """The `[serving]` settings the request path uses."""

    model_name: str
    max_batch: int
    max_body_bytes: int
    max_concurrency: int
    inline_max_batch: int
    max_request_id_chars: int
    swap_poll_interval_s: float
    graceful_shutdown_s: float
    capture_sample_rate: float
    capture_durable_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> ServingConfig:
        section = settings.section("serving")
        return cls(
            model_name=str(section["model_name"]),
            max_batch=int(section["max_batch"]),
            max_body_bytes=int(section["max_body_bytes"]),
            max_concurrency=int(section["max_concurrency"]),
            inline_max_batch=int(section["inline_max_batch"]),
            max_request_id_chars=int(section["max_request_id_chars"]),
            swap_poll_interval_s=float(section["swap_poll_interval_s"]),
            graceful_shutdown_s=float(section["graceful_shutdown_s"]),
            capture_sample_rate=float(section["capture_sample_rate"]),
            capture_durable_timeout_s=float(section["capture_durable_timeout_s"]),
        )

    @property
    def model_path(self) -> str:
        return f"/v2/models/{self.model_name}"

    @property
    def infer_path(self) -> str:
        return f"{self.model_path}/infer"


def api_keys_from_env(environ: Mapping[str, str]) -> frozenset[str]:
    """The accepted API keys from `MLPLATFORM_API_KEYS` (comma-separated); empty means no auth."""
    return frozenset(key.strip() for key in environ.get(API_KEYS_ENV, "").split(",") if key.strip())


class RequestRefused(Exception):
    """A request the endpoint answers with an error status and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Reviews:
    """The validated inputs of one inference request, one entry per review."""

    texts: list[str]
    product_ids: list[str | None]
    review_ids: list[str | None]


# --- parsing and validation -----------------------------------------------------------------------


def _check_batch_size(size: int, max_batch: int, what: str) -> None:
    if size == 0:
        raise RequestRefused(400, f"{what} is empty: send at least one review")
    if size > max_batch:
        raise RequestRefused(413, f"{what} has {size} reviews, over the maximum of {max_batch} per request")


def _optional_id(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RequestRefused(400, f"{where} must be a string, an integer or null")


def parse_predict_request(document: Any, max_batch: int) -> Reviews:
    """`{"reviews": [{"text": str, "product_id"?: str|int|null, "review_id"?: str|int|null}, ...]}`."""
    if not isinstance(document, dict):
        raise RequestRefused(400, 'body must be a JSON object {"reviews": [...]}')
    reviews = document.get("reviews")
    if not isinstance(reviews, list):
        raise RequestRefused(400, '"reviews" must be a list of {"text": ...} objects')
    _check_batch_size(len(reviews), max_batch, '"reviews"')
    texts, product_ids, review_ids = [], [], []
    for index, review in enumerate(reviews):
        if not isinstance(review, dict):
            raise RequestRefused(400, f"reviews[{index}] must be an object with a text")
        text = review.get("text")
        if not isinstance(text, str):
            raise RequestRefused(400, f"reviews[{index}].text must be a string")
        texts.append(text)
        product_ids.append(_optional_id(review.get("product_id"), f"reviews[{index}].product_id"))
        review_ids.append(_optional_id(review.get("review_id"), f"reviews[{index}].review_id"))
    return Reviews(texts, product_ids, review_ids)


def _tensor_strings(tensor: Any, index: int, max_batch: int) -> tuple[str, list[str]]:
    """Validate one v2 input tensor (BYTES, shape [N] or [N, 1], N strings); return (name, data)."""
    if not isinstance(tensor, dict):
        raise RequestRefused(400, f"inputs[{index}] must be a tensor object")
    name = tensor.get("name")
    if name not in _KNOWN_INPUTS:
        raise RequestRefused(400, f"inputs[{index}].name must be one of {sorted(_KNOWN_INPUTS)}, got {name!r}")
    if tensor.get("datatype") != "BYTES":
        raise RequestRefused(400, f'input {name!r}: datatype must be "BYTES"')
    data, shape = tensor.get("data"), tensor.get("shape")
    if not isinstance(data, list):
        raise RequestRefused(400, f"input {name!r}: data must be a list of strings")
    _check_batch_size(len(data), max_batch, f"input {name!r}")
    valid_shape = (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(isinstance(dim, int) and not isinstance(dim, bool) for dim in shape)
        and shape[0] == len(data)
        and (len(shape) == 1 or shape[1] == 1)
    )
    if not valid_shape:
        raise RequestRefused(400, f"input {name!r}: shape must be [{len(data)}] (or [{len(data)}, 1]), got {shape!r}")
    if not all(isinstance(item, str) for item in data):
        raise RequestRefused(400, f"input {name!r}: every element must be a string")
    return name, data


def parse_infer_request(document: Any, max_batch: int) -> Reviews:
    """Open Inference Protocol v2 request: BYTES `text` [N], optional BYTES `product_id`, `review_id` [N]."""
    if not isinstance(document, dict):
        raise RequestRefused(400, 'body must be a JSON object {"inputs": [...]}')
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestRefused(400, '"inputs" must be a non-empty list of tensors')
    tensors: dict[str, list[str]] = {}
    for index, tensor in enumerate(inputs):
        name, data = _tensor_strings(tensor, index, max_batch)
        if name in tensors:
            raise RequestRefused(400, f"input {name!r} given twice")
        tensors[name] = data
    texts = tensors.get("text")
    if texts is None:
        raise RequestRefused(400, "the BYTES input 'text' is required")
    for name in _ID_INPUTS:
        if name in tensors and len(tensors[name]) != len(texts):
            raise RequestRefused(400, f"input {name!r} has {len(tensors[name])} elements, 'text' has {len(texts)}")
    missing: list[str | None] = [None] * len(texts)
    return Reviews(texts, tensors.get("product_id", missing), tensors.get("review_id", missing))


def model_inputs(texts: Sequence[str]) -> list[str]:
    """The text the model sees (same cleaning as training); a review with no words is a 400."""
    cleaned = [model_text_values(None, text) for text in texts]
    for index, text in enumerate(cleaned):
        if not text:
            raise RequestRefused(400, f"review {index} has an empty text")
    return cleaned


# --- responses --------------------------------------------------------------------------------------


def render_infer_response(
    model_name: str, version: str, request_id: str, labels: Sequence[str], probabilities: np.ndarray
) -> bytes:
    size = len(labels)
    return orjson.dumps(
        {
            "model_name": model_name,
            "model_version": version,
            "id": request_id,
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [size], "data": labels},
                {"name": "probabilities", "datatype": "FP32", "shape": [size, len(LABELS)], "data": probabilities.ravel()},
            ],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def render_predict_response(
    model_name: str, version: str, request_id: str, labels: Sequence[str], probabilities: np.ndarray
) -> bytes:
    predictions = [
        {"label": label, "probabilities": dict(zip(LABELS, row, strict=True))}
        for label, row in zip(labels, probabilities, strict=True)
    ]
    return orjson.dumps(
        {"id": request_id, "model_version": version, "predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY
    )


def error_body(message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": message, "id": request_id})


async def send_json(send: ASGISend, status: int, body: bytes) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


async def read_body(scope: ASGIScope, receive: ASGIReceive, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed `limit` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise RequestRefused(400, "Content-Length is not a number")
            if int(value) > limit:
                raise RequestRefused(413, f"body of {int(value)} bytes is over the limit of {limit} bytes")
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestRefused(400, "client disconnected before the body was complete")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:  # chunked bodies have no Content-Length: count what streams in
            raise RequestRefused(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRefused(400, f"body is not valid JSON (UTF-8, no NaN/Infinity): {exc}") from None


# --- the request path -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingState:
    """Everything one app instance owns; no module-level state."""

    config: ServingConfig
    holder: ModelHolder
    capture: CaptureWriter
    metrics: ServingMetrics
    sampler: random.Random


Renderer = Callable[[str, str, str, Sequence[str], np.ndarray], bytes]
Parser = Callable[[Any, int], Reviews]


class InferenceRoute:
    """Raw ASGI handler of one inference route: parse, score with one model version, capture, answer."""

    def __init__(self, state: ServingState, route: str, parse: Parser, render: Renderer) -> None:
        self._state = state
        self._route = route
        self._parse = parse
        self._render = render

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        request_id = scope[REQUEST_ID_SCOPE_KEY]
        try:
            body = await self._answer(scope, receive, request_id)
        except RequestRefused as refused:
            await send_json(send, refused.status, error_body(refused.message, request_id))
            return
        await send_json(send, 200, body)

    async def _answer(self, scope: ASGIScope, receive: ASGIReceive, request_id: str) -> bytes:
        state = self._state
        config = state.config
        if scope["method"] != "POST":
            raise RequestRefused(405, f"{self._route} takes POST")
        served = state.holder.served  # read once: this request's one model version
        if served is None:
            raise RequestRefused(503, f"model not servable: {state.holder.status().reason}")
        received_at = time.time()
        reviews = self._parse(decode_json(await read_body(scope, receive, config.max_body_bytes)), config.max_batch)
        labels, probabilities = await self._score(served.model, model_inputs(reviews.texts))
        state.metrics.observe_batch(len(labels))
        body = self._render(config.model_name, served.version, request_id, labels, probabilities)
        if config.capture_sample_rate >= 1.0 or state.sampler.random() < config.capture_sample_rate:
            latency_ms = (time.perf_counter() - scope[STARTED_SCOPE_KEY]) * 1000.0
            rows = encode_capture_rows(
                request_id=request_id,
                received_at=received_at,
                route=self._route,
                model_version=served.version,
                texts=reviews.texts,
                product_ids=reviews.product_ids,
                review_ids=reviews.review_ids,
                labels=labels,
                probabilities=probabilities,
                latency_ms=latency_ms,
            )
            await self._make_durable(rows)
        else:
            state.metrics.count_sampled_out()
        return body

    async def _score(self, model: Predictor, texts: list[str]) -> tuple[list[str], np.ndarray]:
        # A single review scores in well under a millisecond: a thread hop would cost more than it saves.
        if len(texts) <= self._state.config.inline_max_batch:
            labels, probabilities = model.predict(texts)
        else:
            labels, probabilities = await anyio.to_thread.run_sync(model.predict, texts)
        return [str(label) for label in labels], np.ascontiguousarray(probabilities, dtype=np.float32)

    async def _make_durable(self, rows: bytes) -> None:
        try:
            async with asyncio.timeout(self._state.config.capture_durable_timeout_s):
                await self._state.capture.append(rows)
        except (CaptureError, TimeoutError) as exc:
            self._state.metrics.count_capture_failure()
            reason = str(exc) or "timed out waiting for the capture fsync"
            raise RequestRefused(503, f"capture unavailable, request not answered: {reason}") from None


class RequestGate:
    """Pure ASGI middleware: request id, API keys, the concurrency limit, metrics, the 500 of last resort."""

    def __init__(
        self, app: Callable[..., Awaitable[None]], *, state: ServingState, api_keys: frozenset[str]
    ) -> None:
        self._app = app
        self._state = state
        self._api_keys = tuple(key.encode() for key in api_keys)
        config = state.config
        self._open_paths = frozenset({"/v2/health/live", "/v2/health/ready", f"{config.model_path}/ready"})
        self._limited_paths = frozenset({config.infer_path, PREDICT_PATH})
        self._known_paths = frozenset({*self._open_paths, *self._limited_paths, config.model_path, "/metrics"})
        self._in_flight = 0

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"]
        given_id, presented_key = None, None
        for name, value in scope["headers"]:
            if name == REQUEST_ID_HEADER:
                given_id = value
            elif name == b"x-api-key":
                presented_key = value
            elif name == b"authorization" and value[:7].lower() == b"bearer ":
                presented_key = value[7:].strip()
        request_id, id_problem = self._request_id(given_id)
        id_header = (b"x-request-id", request_id.encode())
        status = 500
        response_started = False

        async def send_with_id(message: MutableMapping[str, Any]) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        limited = path in self._limited_paths
        took_slot = False
        try:
            refusal = id_problem or self._auth_problem(path, presented_key) or self._capacity_problem(limited)
            if refusal is not None:
                await send_json(send_with_id, refusal.status, error_body(refusal.message, request_id))
                return
            if limited:
                self._in_flight += 1
                took_slot = True
            scope[REQUEST_ID_SCOPE_KEY] = request_id
            scope[STARTED_SCOPE_KEY] = started
            await self._app(scope, receive, send_with_id)
        except Exception:
            log.exception("internal error answering %s %s (request %s)", scope.get("method"), path, request_id)
            if response_started:
                raise
            await send_json(send_with_id, 500, error_body("internal error", request_id))
        finally:
            if took_slot:
                self._in_flight -= 1
            route = path if path in self._known_paths else "other"
            self._state.metrics.observe_request(route, status, time.perf_counter() - started)

    def _request_id(self, given: bytes | None) -> tuple[str, RequestRefused | None]:
        if given is None:
            return str(uuid.uuid4()), None
        text = given.decode("latin-1")
        if len(text) <= self._state.config.max_request_id_chars and _SAFE_REQUEST_ID.fullmatch(text):
            return text, None
        problem = RequestRefused(
            400,
            f"X-Request-ID must be 1-{self._state.config.max_request_id_chars} characters of A-Z a-z 0-9 . _ : -",
        )
        return str(uuid.uuid4()), problem

    def _auth_problem(self, path: str, presented: bytes | None) -> RequestRefused | None:
        if not self._api_keys or path in self._open_paths:
            return None
        if presented is None:
            return RequestRefused(401, "missing API key (Authorization: Bearer <key> or X-API-Key)")
        accepted = False
        for key in self._api_keys:  # compare with every key, in constant time, without stopping early
            accepted |= hmac.compare_digest(presented, key)
        return None if accepted else RequestRefused(401, "invalid API key")

    def _capacity_problem(self, limited: bool) -> RequestRefused | None:
        if limited and self._in_flight >= self._state.config.max_concurrency:
            return RequestRefused(503, f"over capacity: {self._state.config.max_concurrency} requests in flight")
        return None


# --- the app ----------------------------------------------------------------------------------------


def _metadata(state: ServingState) -> dict[str, Any]:
    status = state.holder.status()
    return {
        "name": state.config.model_name,
        "versions": [status.version] if status.version else [],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
            {"name": "product_id", "datatype": "BYTES", "shape": [-1], "optional": True},
            {"name": "review_id", "datatype": "BYTES", "shape": [-1], "optional": True},
        ],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(LABELS)], "labels": list(LABELS)},
        ],
        "version": status.version,
        "ready": status.ready,
        "reason": status.reason,
    }


def _readiness(state: ServingState) -> Response:
    status = state.holder.status()
    if status.ready:
        return json_response({"ready": True, "version": status.version})
    return json_response({"ready": False, "error": status.reason}, status=503)


def _add_info_routes(app: FastAPI, state: ServingState) -> None:
    config = state.config

    @app.get("/v2/health/live", summary="Liveness")
    async def live() -> Response:
        return json_response({"live": True})

    @app.get("/v2/health/ready", summary="Readiness: a model is loaded and the server is not shutting down")
    async def ready() -> Response:
        return _readiness(state)

    @app.get(config.model_path, summary="Model metadata: version served, inputs, outputs, why not servable")
    async def metadata() -> Response:
        return json_response(_metadata(state))

    @app.get(f"{config.model_path}/ready", summary="Model readiness")
    async def model_ready() -> Response:
        return _readiness(state)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def _add_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")
        return Response(error_body(str(exc.detail), request_id), exc.status_code, headers=exc.headers, media_type="application/json")

    async def validation_error(request: Request, exc: Exception) -> Response:
        request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")
        return Response(error_body(f"invalid request: {exc}", request_id), 422, media_type="application/json")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


def create_app(
    home: PlatformHome,
    settings: Settings,
    *,
    api_keys: frozenset[str] = frozenset(),
    registry: ProductionRegistry | None = None,
    loader: ModelLoader | None = None,
    sync_file: Callable[[int], None] = os.fsync,
) -> FastAPI:
    """The endpoint app for `home`. `api_keys` empty: no auth (see `api_keys_from_env`).

    The model holder and capture writer start with the app's lifespan and stop with it; `registry`,
    `loader` and `sync_file` are injectable for tests.
    """
    config = ServingConfig.from_settings(settings)
    holder = ModelHolder(
        registry if registry is not None else ModelRegistry(home.registry),
        loader if loader is not None else functools.partial(load_model, rules=ScoringRules.from_settings(settings)),
        poll_interval_s=config.swap_poll_interval_s,
    )
    capture = CaptureWriter(
        home.capture, CaptureConfig.from_settings(settings.section("serving")), sync_file=sync_file
    )
    state = ServingState(config, holder, capture, ServingMetrics(holder.status), random.Random())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        capture.start()
        holder.start()
        try:
            yield
        finally:
            holder.begin_shutdown()
            capture.close()
            holder.stop()

    app = FastAPI(
        title="mlplatform sentiment endpoint",
        description="Open Inference Protocol v2 endpoint for the production sentiment model.",
        lifespan=lifespan,
    )
    app.state.serving = state
    app.router.routes.append(
        Route(config.infer_path, InferenceRoute(state, config.infer_path, parse_infer_request, render_infer_response))
    )
    app.router.routes.append(
        Route(PREDICT_PATH, InferenceRoute(state, PREDICT_PATH, parse_predict_request, render_predict_response))
    )
    _add_info_routes(app, state)
    _add_error_handlers(app)
    app.add_middleware(RequestGate, state=state, api_keys=api_keys)
    return app
