"""What the endpoint does while a rollout runs: who answers a request, and the shadow's copy of it.

The model holder keeps the rollout's candidate beside production (serving/model_holder.py); a request
reads both once.

Canary (`answer`): the candidate answers the requests whose key falls in its share
(core/release/rollout.py `answers_with_candidate`): the key is the request's first product id when it
names one, else its request id, so one product sees one version. The answer and its capture rows name
the version that answered. A candidate that fails a request (an error, or a text it has no word for) is
replaced by production for that request: the client gets production's answer, and the candidate's
failure is captured as a `shadow` row with its error (so the judgement counts it; never a 5xx the
candidate caused).

Shadow (`ShadowScorer`): production answers exactly as without a rollout. Once the answer's capture is
durable, the request is handed to a shadow worker: a process of its own (started at the first shadowed
request, `[rollout] shadow_nice` below the endpoint's CPU priority), so the candidate never shares the
endpoint's interpreter lock, a slow one only ever waits on itself, and one that crashes cannot take the
endpoint with it. The hand-off is one non-blocking message on a local socket (SOCK_SEQPACKET): never a
wait. The worker gathers what arrives within `[rollout] shadow_batch_ms` of the first waiting request,
scores it in one ONNX Runtime call with the candidate (loaded by version and hash from the registry),
writes the `shadow` rows durably to capture segments of its own, and acknowledges them.

Every answered request gets its shadow rows: when `[rollout] shadow_queue_max` requests await their
acknowledgement (or the socket is full) the endpoint itself captures the request's shadow as dropped
(`error` "dropped: ...", core/monitoring/capture.py `SHADOW_DROPPED`: capacity, not the candidate's
fault, so the judgement leaves drops out of the error rate); a request the candidate cannot score is
captured as failed by the worker; requests a dead worker never acknowledged are captured as failed by
the endpoint. /metrics counts each outcome. On shutdown the worker finishes what it holds before the
endpoint's capture closes. A shadow row's `latency_ms` is its share of its batch's scoring time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.process
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlplatform.core.monitoring.capture import SHADOW_DROPPED, CaptureError, CaptureRole, encode_capture_rows
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.platform.storage import location_from_settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import RolloutStrategy, answers_with_candidate
from mlplatform.core.scoring.model import Contribution, ScoringModel, ScoringRules, load_model
from mlplatform.serving.capture import CaptureConfig, CaptureWriter
from mlplatform.serving.metrics import ServingMetrics
from mlplatform.serving.model_holder import Candidate, ServedModel

log = logging.getLogger(__name__)

Scorer = Callable[
    [ServedModel, list[str]], tuple[list[str], np.ndarray, Sequence[Sequence[Contribution]] | None]
]
"""The endpoint's scoring of texts by a served model: (labels, probabilities, explanations or None), or
an exception for a text it cannot label."""
STOP = b"stop"
"""The message that ends the shadow worker (a job is a JSON object: it never reads as this)."""
SOCKET_BUFFER_BYTES = 4 << 20
"""Asked of the kernel for the socket (it may grant less: net.core.wmem_max): a job larger than the
socket takes is captured as dropped."""
ACK_BUFFER_BYTES = 1 << 20
MAX_BATCH_JOBS = 1024
"""Most requests in one batch (its acknowledgement stays one small message)."""
UNCAPTURED = "uncaptured"
WORKER_STOP_TIMEOUT_S = 60.0


def request_key(product_ids: Sequence[str | None], request_id: str) -> str:
    """What routes a request in a canary: its first product id when it names one, else its request id."""
    return product_ids[0] if product_ids and product_ids[0] else request_id


@dataclass(frozen=True)
class Routed:
    """Who answered a request and how; `failed` is a canary candidate that failed it: (version, error)."""

    served: ServedModel
    labels: list[str]
    probabilities: np.ndarray
    explanations: Sequence[Sequence[Contribution]] | None
    failed: tuple[str, str] | None = None


def answer(
    production: ServedModel, candidate: Candidate | None, key: str, texts: list[str], score: Scorer
) -> Routed:
    """The answer to `texts`: the canary candidate's for its share of keys (production's when it fails),
    else production's."""
    if (
        candidate is not None
        and candidate.strategy is RolloutStrategy.CANARY
        and answers_with_candidate(key, candidate.rollout_id, candidate.percent)
    ):
        try:
            return Routed(candidate.served, *score(candidate.served, texts))
        except Exception as exc:  # the candidate's failure is production's to answer for
            failed = (candidate.served.version, f"canary candidate failed, production answered: {exc}")
            return Routed(production, *score(production, texts), failed=failed)
    return Routed(production, *score(production, texts))


@dataclass(frozen=True)
class ShadowJob:
    """An answered, captured request to score again with the shadow candidate (`version`, `sha256`)."""

    request_id: str
    capture_id: str
    received_at: float
    route: str
    texts: list[str]
    product_ids: Sequence[str | None]
    review_ids: Sequence[str | None]
    version: str
    sha256: str

    def message(self) -> bytes:
        """The job as the endpoint hands it to the shadow worker."""
        return orjson.dumps({field: getattr(self, field) for field in self.__dataclass_fields__})

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> ShadowJob:
        return cls(**message)

    def rows(
        self,
        labels: Sequence[str] | None,
        probabilities: np.ndarray | None,
        latency_ms: float,
        error: str | None,
        model: Any = None,
    ) -> bytes:
        """The request's `shadow` rows: the candidate's labels (by `model`), or `error` and none."""
        return encode_capture_rows(
            request_id=self.request_id,
            capture_id=self.capture_id,
            received_at=self.received_at,
            route=self.route,
            model_version=self.version,
            texts=self.texts,
            product_ids=self.product_ids,
            review_ids=self.review_ids,
            labels=labels,
            probabilities=probabilities,
            latency_ms=latency_ms,
            classes=() if model is None else model.classes,
            role=CaptureRole.SHADOW,
            error=error,
        )


class ShadowScorer:
    """The endpoint's side of the shadow: hands answered requests to the shadow worker without waiting
    (see the module docstring). Used on the event loop's thread only."""

    def __init__(
        self,
        home: PlatformHome,
        settings: Settings,
        capture: CaptureWriter,
        metrics: ServingMetrics,
    ) -> None:
        self._home = home
        self._settings = settings
        self._capture = capture
        self._metrics = metrics
        self._queue_max = settings.rollout.shadow_queue_max
        self._socket: socket.socket | None = None
        self._process: multiprocessing.process.BaseProcess | None = None
        self._in_flight: dict[str, ShadowJob] = {}
        self._gone: str | None = None  # why the worker is no more
        self._acks = bytearray(ACK_BUFFER_BYTES)

    @property
    def worker_pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def worker_alive(self) -> bool:
        """The shadow worker runs (False before the first shadowed request, and once it is gone)."""
        return self._process is not None and self._gone is None

    def offer(self, job: ShadowJob) -> None:
        """Hand a request over without waiting; a full queue captures its shadow as dropped."""
        if self._process is None and self._gone is None:
            self._start()
        if self._gone is not None:
            self._record(job, f"shadow worker stopped: {self._gone}", "failed")
            return
        if len(self._in_flight) >= self._queue_max:
            self._record(job, f"{SHADOW_DROPPED}{self._queue_max} shadowed requests were waiting", "dropped")
            return
        try:
            self._socket.send(job.message())
        except OSError as exc:  # full (BlockingIOError), or larger than the socket takes (EMSGSIZE)
            self._record(job, f"{SHADOW_DROPPED}the shadow worker's socket took no more ({exc})", "dropped")
            return
        self._in_flight[job.capture_id] = job

    def stop(self) -> None:
        """Let the worker finish what it holds and end; what it never acknowledged is captured as failed.
        Called at shutdown (on the loop: nothing is answered any more), before the capture closes."""
        if self._process is None:
            return
        asyncio.get_running_loop().remove_reader(self._socket.fileno())
        with contextlib.suppress(OSError):
            self._socket.setblocking(True)
            self._socket.settimeout(WORKER_STOP_TIMEOUT_S)
            self._socket.send(STOP)
        self._process.join(WORKER_STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._socket.setblocking(False)
        self._read_acks()
        self._lost(f"the endpoint stopped (worker exit code {self._process.exitcode})")
        self._socket.close()
        self._process = None
        self._gone = "the endpoint stopped"

    def _start(self) -> None:
        endpoint, worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with contextlib.suppress(OSError):
            endpoint.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
        endpoint.setblocking(False)
        context = multiprocessing.get_context("spawn")  # a fresh interpreter: nothing of the endpoint's state
        self._process = context.Process(
            target=run_shadow_worker,
            args=(worker, str(self._home.root), self._settings),
            name="mlplatform-shadow",
            daemon=True,
        )
        self._process.start()
        worker.close()
        self._socket = endpoint
        asyncio.get_running_loop().add_reader(endpoint.fileno(), self._on_acks)
        log.info("shadow worker started (pid %s)", self._process.pid)

    def _on_acks(self) -> None:
        if not self._read_acks():
            asyncio.get_running_loop().remove_reader(self._socket.fileno())
            self._process.join(1.0)  # its socket closed: it is gone or going
            self._gone = f"exit code {self._process.exitcode}"
            log.error("the shadow worker stopped (%s)", self._gone)
            self._lost(f"shadow worker stopped: {self._gone}")

    def _read_acks(self) -> bool:
        """Count the worker's acknowledgements; False once it is gone (end of stream)."""
        while True:
            try:
                size = self._socket.recv_into(self._acks)
            except BlockingIOError:
                return True
            except OSError:
                return False
            if size == 0:
                return False
            for capture_id, outcome in orjson.loads(self._acks[:size]):
                job = self._in_flight.pop(capture_id, None)
                if outcome == UNCAPTURED and job is not None:  # the worker could not write its rows
                    self._record(job, "shadow rows not captured by the shadow worker", "failed")
                else:
                    self._metrics.count_shadow(outcome)

    def _lost(self, why: str) -> None:
        """Requests handed over but never acknowledged: their shadow rows, failed."""
        for job in list(self._in_flight.values()):
            self._record(job, why, "failed")
        self._in_flight.clear()

    def _record(self, job: ShadowJob, error: str, outcome: str) -> None:
        accepted = self._capture.submit(job.rows(None, None, 0.0, error))
        self._metrics.count_shadow(outcome if accepted else "dropped")


# --- the shadow worker (its own process) -----------------------------------------------------------------


def run_shadow_worker(connection: socket.socket, home_root: str, settings: Settings) -> None:
    """The shadow worker process: score what the endpoint hands over until STOP or the endpoint is gone."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s shadow: %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the endpoint says when to stop (a Ctrl-C reaches both)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(settings.rollout.shadow_nice)
    asyncio.run(_serve(connection, PlatformHome.at(Path(home_root)), settings))


async def _serve(connection: socket.socket, home: PlatformHome, settings: Settings) -> None:
    connection.setblocking(False)
    loop = asyncio.get_running_loop()
    capture = CaptureWriter(
        home.capture,
        CaptureConfig.from_settings(settings.serving),
        publish_to=location_from_settings(home, settings.storage, "capture"),
    )
    capture.start()
    models = _Candidates(ModelRegistry.for_home(home, settings.storage), settings.scoring)
    batch_s = settings.rollout.shadow_batch_ms / 1000.0
    buffer = bytearray(SOCKET_BUFFER_BYTES)

    async def receive(timeout_s: float | None) -> bytes | None:
        """The next message; None at the batch deadline; b"" when the endpoint is gone."""
        try:
            size = await asyncio.wait_for(loop.sock_recv_into(connection, buffer), timeout_s)
        except TimeoutError:
            return None
        return bytes(buffer[:size])

    try:
        stopping = False
        while not stopping:
            first = await receive(None)
            if first in (b"", STOP):
                break
            batch = [orjson.loads(first)]
            deadline = loop.time() + batch_s
            while (remaining := deadline - loop.time()) > 0 and len(batch) < MAX_BATCH_JOBS:
                message = await receive(remaining)
                if message is None:
                    break
                if message in (b"", STOP):
                    stopping = True
                    break
                batch.append(orjson.loads(message))
            rows, acks = models.score(batch)
            try:
                await capture.append(rows)
            except CaptureError as exc:  # nothing durable: the endpoint captures them as failed
                log.error("shadow rows not captured: %s", exc)
                acks = [(capture_id, UNCAPTURED) for capture_id, _ in acks]
            await loop.sock_sendall(connection, orjson.dumps(acks))
    finally:
        capture.close()
        connection.close()


class _Candidates:
    """The candidates' models in the worker, by sha256 (a rollout's candidate is loaded once)."""

    def __init__(self, registry: ModelRegistry, rules: ScoringRules) -> None:
        self._registry, self._rules = registry, rules
        self._models: dict[str, ScoringModel] = {}

    def score(self, batch: list[dict[str, Any]]) -> tuple[bytes, list[tuple[str, str]]]:
        """Capture rows and acknowledgements of a batch: one call per candidate, request by request
        only when that call fails (to tell whose text it could not read)."""
        rows, acks = [], []
        for sha256 in dict.fromkeys(message["sha256"] for message in batch):
            jobs = [ShadowJob.from_message(message) for message in batch if message["sha256"] == sha256]
            try:
                model = self._model(jobs[0].version, sha256)
            except Exception as exc:  # its file or model: every request of it fails
                for job in jobs:
                    rows.append(job.rows(None, None, 0.0, f"shadow candidate failed to load: {exc}"))
                    acks.append((job.capture_id, "failed"))
                continue
            for job, (row, outcome) in zip(jobs, _scored_together(model, jobs), strict=True):
                rows.append(row)
                acks.append((job.capture_id, outcome))
        return b"".join(rows), acks

    def _model(self, version: str, sha256: str) -> ScoringModel:
        if sha256 not in self._models:
            self._models = {sha256: load_model(self._registry.verify(version), sha256, self._rules)}
        return self._models[sha256]


def _scored_together(model: ScoringModel, jobs: list[ShadowJob]) -> list[tuple[bytes, str]]:
    texts = [text for job in jobs for text in job.texts]
    started = time.perf_counter()
    try:
        labels, probabilities = _labels(model, texts)
    except Exception:  # someone's text: find whose, request by request
        return [_scored_alone(model, job) for job in jobs]
    per_text_ms = (time.perf_counter() - started) * 1000.0 / len(texts)
    scored, start = [], 0
    for job in jobs:
        end = start + len(job.texts)
        latency_ms = per_text_ms * len(job.texts)
        scored.append(
            (job.rows(labels[start:end], probabilities[start:end], latency_ms, None, model), "scored")
        )
        start = end
    return scored


def _scored_alone(model: ScoringModel, job: ShadowJob) -> tuple[bytes, str]:
    started = time.perf_counter()
    try:
        labels, probabilities = _labels(model, job.texts)
    except Exception as exc:  # its failure is the rollout's evidence: captured, counted
        latency_ms = (time.perf_counter() - started) * 1000.0
        return job.rows(None, None, latency_ms, f"shadow candidate failed: {exc}", model), "failed"
    latency_ms = (time.perf_counter() - started) * 1000.0
    return job.rows(labels, probabilities, latency_ms, None, model), "scored"


def _labels(model: ScoringModel, texts: list[str]) -> tuple[list[str], np.ndarray]:
    """What the endpoint would answer: a text with no word the model reads cannot be labelled."""
    prediction = model.predict(texts)
    if prediction.no_tokens.any():
        first = int(np.flatnonzero(prediction.no_tokens)[0])
        raise ValueError(f"review {first} has no word the candidate reads")
    return [str(label) for label in prediction.labels], prediction.probabilities
