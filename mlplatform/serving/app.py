"""The real-time endpoint: a FastAPI app whose two inference routes are lean raw-ASGI handlers.

Routes (Open Inference Protocol v2 plus a plain JSON route):
    GET  /v2/health/live, /v2/health/ready          open even when API keys are configured (state only)
    GET  /v2                                          server metadata: name, version, extensions
    GET  /v2/models/{name}, /v2/models/{name}/ready  metadata (version, the served model's classes and
                                                      outputs, and the reason when not servable)
    POST /v2/models/{name}/infer                      BYTES `text` [N] (+ optional `product_id`, `review_id`),
                                                      JSON or binary tensor data, parameter `explain`
    POST /predict                                     {"reviews": [{"text", "product_id", "review_id"}],
                                                       "explain": false}
    GET  /metrics                                     Prometheus text
    GET  /dashboard, /dashboard/data                  operations dashboard page (open: it holds no data) and its
                                                      JSON (serving/dashboard.py)

API keys (`MLPLATFORM_API_KEYS`, parsed by `mlplatform.core.home.api_keys_from_env`): when configured,
every route but the health routes and the dashboard page needs one, and the open health routes name a
state only (`no_model`, `capture_failing`, ...): the reason, which can name files and errors, is in the
metadata route behind the key.

The inference routes skip FastAPI's per-request validation and serialisation: they check the content
type, read the body with a byte limit and a deadline, take a concurrency slot (serving/admission.py),
parse it with orjson, validate by hand (the wire format: serving/protocol.py), score, build the
response with orjson, make the capture record durable, then answer. A request picks its model once
(`InferenceRoute._scored`: `holder.served`) and that one version scores, renders and is captured; during
a rollout (serving/rollout.py) a canary candidate may answer its share, and a shadow candidate scores a
copy once the answer is captured.

Explanations (`"explain": true`, OIP parameter `explain`): the top `[serving] explain_top_k` n-grams of
each review for its predicted class, from the model's own graph; a model registered before the graph
reported them answers 409 with the reason (retrain it), never a 500. They are captured with the
prediction (the capture's `explanation` column). Every refusal is a 4xx/503 with `{"error": ..., "id": ...}`; only a bug is a 500
(`{"error": "internal error"}`). Liveness and readiness: serving/health.py; the deadline for a
request's headers: serving/connection.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import importlib.metadata
import logging
import random
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mlplatform.core.monitoring.alerts import AlertStore, raise_rollout_abort
from mlplatform.core.monitoring.capture import CaptureError, CaptureRole, encode_capture_rows
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import ServingRules, Settings
from mlplatform.core.platform.storage import location_from_settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import (
    Rollout,
    RolloutStrategy,
    abort_rollout,
    rollout_events,
)
from mlplatform.core.scoring.model import Contribution, ExplanationUnavailable, load_model
from mlplatform.serving.admission import ConcurrencySlots, admit_content, read_whole_body
from mlplatform.serving.capture import CaptureConfig, CaptureState, CaptureStatus, CaptureWriter
from mlplatform.serving.dashboard import DASHBOARD_PATH, add_dashboard_routes, endpoint_health
from mlplatform.serving.health import PUBLIC_REASONS, Health, HealthSources, StandingAlert
from mlplatform.serving.metrics import METRICS_CONTENT_TYPE, ServingMetrics
from mlplatform.serving.model_holder import (
    Candidate,
    ModelHolder,
    ModelLoader,
    ProductionRegistry,
    ServedModel,
)
from mlplatform.serving.protocol import (
    BINARY_HEADER,
    BINARY_TYPE,
    EXPLANATION,
    ASGIReceive,
    ASGIScope,
    ASGISend,
    InferenceRequest,
    Rendered,
    RequestRefused,
    Scored,
    error_body,
    model_inputs,
    parse_infer_request,
    parse_predict_request,
    render_infer_response,
    render_predict_response,
    send_json,
)
from mlplatform.serving.rollout import ShadowJob, ShadowScorer, answer, request_key
from mlplatform.serving.workers import WorkerThreads

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = b"x-request-id"
CAPTURE_ID_HEADER = b"x-capture-id"
CAPTURE_ALERT_KIND = "capture"
REQUEST_ID_SCOPE_KEY = "mlplatform.request_id"
STARTED_SCOPE_KEY = "mlplatform.started"
PREDICT_PATH = "/predict"
_CLOSE_CONNECTION = ((b"connection", b"close"),)
_SAFE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]+")


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


# --- the request path -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServingState:
    """Everything one app instance owns; no module-level state."""

    config: ServingRules
    holder: ModelHolder
    capture: CaptureWriter
    metrics: ServingMetrics
    sampler: random.Random
    slots: ConcurrencySlots
    health: HealthSources
    workers: WorkerThreads
    shadow: ShadowScorer


Parser = Callable[[bytes, int | None, int], InferenceRequest]  # (body, binary header length, max_batch)
Renderer = Callable[[InferenceRequest, Scored], Rendered]


@dataclass(frozen=True)
class Answer:
    """What a request's work produced: the response, its capture lines and key (None: sampled out),
    its size."""

    response: Rendered
    capture_rows: bytes | None
    reviews: int
    capture_id: str | None
    shadow: ShadowJob | None = None  # to score with the shadow candidate once the answer is captured


class InferenceRoute:
    """Raw ASGI handler of one inference route: parse, score with one model version, capture, answer."""

    def __init__(
        self, state: ServingState, route: str, parse: Parser, render: Renderer, *, binary: bool = False
    ) -> None:
        self._state = state
        self._route = route
        self._parse = parse
        self._render = render
        self._binary = binary  # takes the binary tensor data extension (the OIP route)

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        request_id = scope[REQUEST_ID_SCOPE_KEY]
        try:
            answer = await self._answer(scope, receive, request_id)
        except RequestRefused as refused:
            headers = _CLOSE_CONNECTION if refused.close else ()
            await send_json(send, refused.status, error_body(refused.message, request_id), headers)
            return
        headers = [] if answer.capture_id is None else [(CAPTURE_ID_HEADER, answer.capture_id.encode())]
        response = answer.response
        if response.header_length is None:
            await send_json(send, 200, response.body, headers)
            return
        headers.append((BINARY_HEADER, b"%d" % response.header_length))
        await send_json(send, 200, response.body, headers, content_type=BINARY_TYPE)

    async def _answer(self, scope: ASGIScope, receive: ASGIReceive, request_id: str) -> Answer:
        config = self._state.config
        if scope["method"] != "POST":
            raise RequestRefused(405, f"{self._route} takes POST")
        header_length = admit_content(scope, binary_route=self._binary)
        received_at = time.time()
        raw = await read_whole_body(
            scope, receive, limit=config.max_body_bytes, timeout_s=config.body_timeout_s
        )
        with self._state.slots.hold():  # only now: a body still arriving holds no slot
            return await self._scored(raw, header_length, request_id, received_at, scope[STARTED_SCOPE_KEY])

    async def _scored(
        self, raw: bytes, header_length: int | None, request_id: str, received_at: float, started: float
    ) -> Answer:
        state = self._state
        config = state.config
        served = state.holder.served  # read once: this request's one model version
        candidate = state.holder.candidate  # and the rollout's candidate, if one runs
        if served is None:
            raise RequestRefused(503, f"model not servable: {state.holder.status().reason}")
        sampled = config.capture_sample_rate >= 1.0 or state.sampler.random() < config.capture_sample_rate
        capture_id = uuid.uuid4().hex if sampled else None  # the capture's key (capture.py: Keys)
        work = functools.partial(
            self._work, raw, header_length, served, candidate, request_id, received_at, started, capture_id
        )
        inline = len(raw) <= config.inline_max_body_bytes  # by size, not review count: serving/workers.py
        answer = work() if inline else await state.workers.run(work)
        state.metrics.observe_batch(answer.reviews)
        if answer.capture_rows is None:
            state.metrics.count_sampled_out()
        else:
            await self._make_durable(answer.capture_rows, inline=inline)
            if answer.shadow is not None:  # only now: a shadow row never stands beside an unanswered request
                state.shadow.offer(answer.shadow)
        return answer

    def _work(
        self,
        raw: bytes,
        header_length: int | None,
        production: ServedModel,
        candidate: Candidate | None,
        request_id: str,
        received_at: float,
        started: float,
        capture_id: str | None,
    ) -> Answer:
        """Everything a request costs in proportion to its size, in one call (on the loop or a worker)."""
        config = self._state.config
        request = self._parse(raw, header_length, config.max_batch)
        reviews = request.reviews
        if request.explain and not production.model.explains:
            raise RequestRefused(409, _cannot_explain(production.version))
        texts = model_inputs(reviews.texts)
        top_k = config.explain_top_k if request.explain else 0
        routed = answer(
            production,
            candidate,
            request_key(reviews.product_ids, request_id),
            texts,
            functools.partial(self._score, top_k=top_k),
        )
        served, labels, probabilities = routed.served, routed.labels, routed.probabilities
        scored = Scored(
            model_name=config.model_name,
            version=served.version,
            request_id=request_id,
            classes=served.model.classes,
            labels=labels,
            probabilities=probabilities,
            explanations=routed.explanations,
        )
        response = self._render(request, scored)
        if routed.failed is not None:
            self._state.metrics.count_canary_fallback()
        if capture_id is None:
            return Answer(response, None, len(labels), None)
        shared = {
            "request_id": request_id,
            "capture_id": capture_id,
            "received_at": received_at,
            "route": self._route,
            "texts": texts,
            "product_ids": reviews.product_ids,
            "review_ids": reviews.review_ids,
            "classes": scored.classes,
        }
        latency_ms = (time.perf_counter() - started) * 1000.0
        rows = encode_capture_rows(
            **shared,
            model_version=served.version,
            labels=labels,
            probabilities=probabilities,
            latency_ms=latency_ms,
            explanations=routed.explanations,
        )
        if routed.failed is not None:  # the canary candidate's failure, captured beside production's answer
            version, error = routed.failed
            rows += encode_capture_rows(
                **shared,
                model_version=version,
                labels=None,
                probabilities=None,
                latency_ms=latency_ms,
                role=CaptureRole.SHADOW,
                error=error,
            )
        shadow = None
        if candidate is not None and candidate.strategy is RolloutStrategy.SHADOW:
            job = {key: value for key, value in shared.items() if key != "classes"}
            shadow = ShadowJob(**job, version=candidate.served.version, sha256=candidate.served.sha256)
        return Answer(response, rows, len(labels), capture_id, shadow)

    @staticmethod
    def _score(
        served: ServedModel, texts: list[str], top_k: int
    ) -> tuple[list[str], np.ndarray, Sequence[Sequence[Contribution]] | None]:
        try:
            prediction = served.model.predict(texts, explain_top_k=top_k)
        except ExplanationUnavailable:
            raise RequestRefused(409, _cannot_explain(served.version)) from None
        if prediction.no_tokens.any():
            first = int(np.flatnonzero(prediction.no_tokens)[0])
            raise RequestRefused(
                400,
                f"review {first} has no word the model reads (empty after tokenising, only punctuation or "
                "unknown words): it cannot be labelled",
            )
        labels = [str(label) for label in prediction.labels]
        probabilities = np.ascontiguousarray(prediction.probabilities, dtype=np.float32)
        return labels, probabilities, prediction.explanations

    async def _make_durable(self, rows: bytes, *, inline: bool) -> None:
        # Only a small request may sync its own record on the loop: a large one's bytes go to the writer.
        alone = inline and self._state.slots.taken == 1
        try:
            async with asyncio.timeout(self._state.config.capture_durable_timeout_s):
                await self._state.capture.append(rows, alone=alone)
        except (CaptureError, TimeoutError) as exc:
            self._state.metrics.count_capture_failure()
            reason = str(exc) or "timed out waiting for the capture fsync"
            raise RequestRefused(503, f"capture unavailable, request not answered: {reason}") from None


def _cannot_explain(version: str) -> str:
    return (
        f"model version {version} cannot explain its predictions (registered before explanations): "
        "ask without explain, or retrain and deploy a model that explains"
    )


class RequestGate:
    """Pure ASGI middleware: request id, API keys, metrics, the 500 of last resort."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        *,
        state: ServingState,
        api_keys: Collection[str],
        inference_routes: Mapping[str, InferenceRoute],
    ) -> None:
        self._app = app
        self._state = state
        self._api_keys = tuple(key.encode() for key in api_keys)
        # The inference routes are called from here directly: the router and the exception and
        # exit-stack middlewares behind it add nothing to them but per-request cost.
        self._inference_routes = dict(inference_routes)
        config = state.config
        self._open_paths = frozenset(
            {"/v2/health/live", "/v2/health/ready", f"{config.model_path}/ready", DASHBOARD_PATH}
        )
        self._known_paths = frozenset(
            {*self._open_paths, *self._inference_routes, "/v2", config.model_path, "/metrics"}
        )

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

        inference_route = self._inference_routes.get(path)
        try:
            refusal = id_problem or self._auth_problem(path, presented_key)
            if refusal is not None:
                await send_json(send_with_id, refusal.status, error_body(refusal.message, request_id))
                return
            scope[REQUEST_ID_SCOPE_KEY] = request_id
            scope[STARTED_SCOPE_KEY] = started
            if inference_route is None:
                await self._app(scope, receive, send_with_id)
                return
            await inference_route(scope, receive, send_with_id)
        except Exception:
            log.exception(
                "internal error answering %s %s (request %s)", scope.get("method"), path, request_id
            )
            if response_started:
                raise
            await send_json(send_with_id, 500, error_body("internal error", request_id))
        finally:
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


# --- the app ----------------------------------------------------------------------------------------


EXPLANATION_DOCUMENT = (
    'one JSON document per review: [{"ngram": str, "weight": float}, ...], the top [serving] explain_top_k '
    "n-grams for the predicted class, strongest first (weight: the n-gram's contribution to that class's "
    "score); returned when the request parameter explain is true"
)
SERVER_EXTENSIONS = ("binary_tensor_data",)


def _server_metadata() -> dict[str, Any]:
    """`GET /v2`: the Open Inference Protocol's server metadata."""
    try:
        version = importlib.metadata.version("mlplatform")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        version = "unknown"
    return {"name": "mlplatform", "version": version, "extensions": list(SERVER_EXTENSIONS)}


def _metadata(state: ServingState) -> dict[str, Any]:
    status, served = state.holder.status(), state.holder.served
    classes = list(served.model.classes) if served is not None else []
    health = state.health.now()
    outputs: list[dict[str, Any]] = [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        # The served model's own classes, in the order of its probability columns.
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(classes) or -1], "labels": classes},
    ]
    if served is not None and served.model.explains:
        outputs.append(
            {
                "name": EXPLANATION,
                "datatype": "BYTES",
                "shape": [-1],
                "optional": True,
                "content": EXPLANATION_DOCUMENT,
            }
        )
    return {
        "name": state.config.model_name,
        "versions": [status.version] if status.version else [],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "text", "datatype": "BYTES", "shape": [-1]},
            {"name": "product_id", "datatype": "BYTES", "shape": [-1], "optional": True},
            {"name": "review_id", "datatype": "BYTES", "shape": [-1], "optional": True},
        ],
        "outputs": outputs,
        "version": status.version,
        "ready": health.ready,
        "state": health.readiness,
        "live": health.live,
        # Why not ready (or not live), else why the latest production model was refused, if it was.
        "reason": health.reason if health.reason is not None else status.reason,
    }


def _readiness(health: Health, *, reveal: bool) -> Response:
    if health.ready:
        return json_response({"ready": True, "version": health.version})
    reason = health.reason if reveal else PUBLIC_REASONS[health.readiness]
    return json_response({"ready": False, "state": health.readiness, "error": reason}, status=503)


def _liveness(health: Health, *, reveal: bool) -> Response:
    if health.live:
        return json_response({"live": True})
    reason = health.reason if reveal else PUBLIC_REASONS[health.liveness]
    return json_response({"live": False, "state": health.liveness, "error": reason}, status=503)


def _add_info_routes(app: FastAPI, state: ServingState, *, reveal_reasons: bool) -> None:
    """`reveal_reasons`: the open health routes give the reason of a state, not just its name (only when
    no API keys are configured: then every route is open anyway)."""
    config = state.config

    @app.get("/v2/health/live", summary="Liveness: false only when a restart is needed (serving/health.py)")
    async def live() -> Response:
        return _liveness(state.health.now(), reveal=reveal_reasons)

    @app.get("/v2/health/ready", summary="Readiness: an inference request would be served now")
    async def ready() -> Response:
        return _readiness(state.health.now(), reveal=reveal_reasons)

    server_metadata = _server_metadata()

    @app.get("/v2", summary="Server metadata (Open Inference Protocol): name, version, extensions")
    async def server() -> Response:
        return json_response(server_metadata)

    @app.get(config.model_path, summary="Model metadata: version served, inputs, outputs, why not servable")
    async def metadata() -> Response:
        return json_response(_metadata(state))

    @app.get(f"{config.model_path}/ready", summary="Model readiness")
    async def model_ready() -> Response:
        return _readiness(state.health.now(), reveal=reveal_reasons)

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def _json_body(example: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object"}, "example": example}},
    }


def _inference_route_docs(config: ServingRules) -> dict[str, Any]:
    """OpenAPI entries of the raw inference routes (FastAPI only documents its own route type)."""
    responses = {
        "200": {"description": "Predictions, with the model version and the request id"},
        "4XX": {"description": 'Bad input: {"error": ..., "id": ...}'},
        "408": {"description": "The body did not arrive within [serving] body_timeout_s"},
        "415": {"description": "Not a JSON content type"},
        "503": {"description": "No servable model, over capacity, or capture unavailable"},
    }
    text = {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["Love this dress, fits perfectly"]}
    review = {"text": "Love this dress, fits perfectly", "product_id": "1078", "review_id": "r-1"}
    return {
        config.infer_path: {
            "post": {
                "summary": (
                    "Open Inference Protocol v2 inference: BYTES `text` [N] -> `label`, `probabilities` "
                    "[N, classes], `explanation` with the parameter explain; JSON or binary tensor data"
                ),
                "requestBody": _json_body({"inputs": [text]}),
                "responses": responses,
            }
        },
        PREDICT_PATH: {
            "post": {
                "summary": "Plain JSON inference over a list of reviews",
                "requestBody": _json_body({"reviews": [review], "explain": False}),
                "responses": responses,
            }
        },
    }


def _document_inference_routes(app: FastAPI, config: ServingRules) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            generate()["paths"].update(_inference_route_docs(config))  # generate() caches the schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _add_error_handlers(app: FastAPI) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")
        return Response(
            error_body(str(exc.detail), request_id),
            exc.status_code,
            headers=exc.headers,
            media_type="application/json",
        )

    async def validation_error(request: Request, exc: Exception) -> Response:
        request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")
        return Response(error_body(f"invalid request: {exc}", request_id), 422, media_type="application/json")

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


class _GatedFastAPI(FastAPI):
    """FastAPI with the RequestGate outside its whole middleware stack, error middleware included:
    the inference routes are answered before any of FastAPI's per-request layers run."""

    def __init__(self, gate: Callable[[Any], RequestGate], **options: Any) -> None:
        super().__init__(**options)
        self._gate = gate

    def build_middleware_stack(self) -> Any:
        return self._gate(super().build_middleware_stack())


def _abort_refused_rollout(
    registry: ProductionRegistry, alerts: AlertStore, by: str, rollout: Rollout, reason: str
) -> None:
    """A candidate this endpoint refused (its file failed its check): abort its rollout and say why."""
    if not isinstance(registry, ModelRegistry):  # a test's stand-in registry holds no rollouts to end
        return
    abort_rollout(registry, rollout.id, by=by, reason=reason, automatic=True)
    for event in rollout_events(registry.events(), rollout.id):
        if event["event"] == "rollout_aborted":
            raise_rollout_abort(alerts, event)


def create_app(
    home: PlatformHome,
    settings: Settings,
    *,
    api_keys: Collection[str] = (),
    registry: ProductionRegistry | None = None,
    loader: ModelLoader | None = None,
    sync_file: Callable[[int], None] | None = None,
    alerts: AlertStore | None = None,
) -> FastAPI:
    """The endpoint app for `home`. `api_keys` empty: no auth (see `mlplatform.core.home.api_keys_from_env`).

    The model holder and capture writer start with the app's lifespan and stop with it; `registry`,
    `loader` and `sync_file` are injectable for tests. `alerts` is where the endpoint raises its own
    alerts (default: the home's alert store, without a webhook; `mlplatform serve` passes the one of
    `alert_store_from_env`).
    """
    config = settings.serving
    registry = registry if registry is not None else ModelRegistry.for_home(home, settings.storage)
    alert_store = alerts if alerts is not None else AlertStore.for_home(home)
    host = socket.gethostname()
    holder = ModelHolder(
        registry,
        loader if loader is not None else functools.partial(load_model, rules=settings.scoring),
        poll_interval_s=config.swap_poll_interval_s,
        refused_retry_s=config.refused_model_retry_s,
        on_candidate_refused=functools.partial(
            _abort_refused_rollout, registry, alert_store, f"endpoint {host}"
        ),
    )
    capture_config = CaptureConfig.from_settings(settings.serving)
    capture_alert = StandingAlert(
        alert_store,
        kind=CAPTURE_ALERT_KIND,
        source="endpoint",
        key=f"endpoint:capture:{host}",
        retry_s=capture_config.retry_s,
    )

    def on_capture_state(status: CaptureStatus) -> None:
        capture_alert.set(
            status.state is CaptureState.FAILING,
            f"capture cannot write on {host} ({home.capture}): {status.error}; the endpoint answers "
            "inference 503 and is not ready until it can",
        )

    slots = ConcurrencySlots(config.max_concurrency)
    metrics = ServingMetrics(
        holder.status, health_window_s=config.health_window_s, ready=lambda: health.now().ready
    )
    capture = CaptureWriter(
        home.capture,
        capture_config,
        sync_file=sync_file,
        publish_to=location_from_settings(home, settings.storage, "capture"),
        on_sync=metrics.observe_capture_sync,
        on_state=on_capture_state,
    )
    health = HealthSources(holder.status, lambda: holder.alive, capture.status, slots)
    workers = WorkerThreads(config.worker_threads)
    shadow = ShadowScorer(home, settings, capture, metrics)
    state = ServingState(config, holder, capture, metrics, random.Random(), slots, health, workers, shadow)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        capture_alert.start()
        capture.start()
        holder.start()
        try:
            yield
        finally:
            holder.begin_shutdown()
            shadow.stop()  # the shadow worker's last rows are written before the capture closes
            capture.close()
            holder.stop()
            capture_alert.stop()

    inference_routes = {
        config.infer_path: InferenceRoute(
            state, config.infer_path, parse_infer_request, render_infer_response, binary=True
        ),
        PREDICT_PATH: InferenceRoute(state, PREDICT_PATH, parse_predict_request, render_predict_response),
    }
    app = _GatedFastAPI(
        functools.partial(RequestGate, state=state, api_keys=api_keys, inference_routes=inference_routes),
        title="mlplatform sentiment endpoint",
        description="Open Inference Protocol v2 endpoint for the production sentiment model.",
        lifespan=lifespan,
    )
    app.state.serving = state
    for path, handler in inference_routes.items():  # listed in the app's routes too (RequestGate serves them)
        app.router.routes.append(Route(path, handler))
    _add_info_routes(app, state, reveal_reasons=not api_keys)
    monitoring = settings.monitoring
    add_dashboard_routes(
        app,
        home,
        settings,
        holder.status,
        own_health=lambda: endpoint_health(metrics.render().decode(), monitoring, time.time()),
    )
    _add_error_handlers(app)
    _document_inference_routes(app, config)
    return app
