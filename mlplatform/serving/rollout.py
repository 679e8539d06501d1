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

Shadow (`ShadowScorer`): production answers exactly as without a rollout; once the answer's capture is
durable, the request is handed to one thread (a bounded queue, `[rollout] shadow_queue_max`) that scores
it with the candidate and submits its `shadow` rows to the capture writer, nobody waiting on them. A
slow shadow never delays an answer: the hand-off is a non-blocking put, and a full queue (or capture
refusing) records the request's shadow as dropped instead, so every answered request has its shadow
rows, scored or failed, and /metrics counts each outcome. On shutdown the queue is drained before the
capture writer closes. Only captured requests are shadowed (the shadow rows sit beside the answer's).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from mlplatform.core.monitoring.capture import CaptureRole, encode_capture_rows
from mlplatform.core.release.rollout import RolloutStrategy, answers_with_candidate
from mlplatform.serving.capture import CaptureWriter
from mlplatform.serving.metrics import ServingMetrics
from mlplatform.serving.model_holder import Candidate, Predictor, ServedModel

log = logging.getLogger(__name__)

Scorer = Callable[[Predictor, list[str]], tuple[list[str], np.ndarray]]
"""The endpoint's scoring of texts by a model: (labels, probabilities), or an exception for a text it
cannot label."""
_STOP = object()


def request_key(product_ids: Sequence[str | None], request_id: str) -> str:
    """What routes a request in a canary: its first product id when it names one, else its request id."""
    return product_ids[0] if product_ids and product_ids[0] else request_id


@dataclass(frozen=True)
class Routed:
    """Who answered a request and how; `failed` is a canary candidate that failed it: (version, error)."""

    served: ServedModel
    labels: list[str]
    probabilities: np.ndarray
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
            return Routed(candidate.served, *score(candidate.served.model, texts))
        except Exception as exc:  # the candidate's failure is production's to answer for
            failed = (candidate.served.version, f"canary candidate failed, production answered: {exc}")
            return Routed(production, *score(production.model, texts), failed=failed)
    return Routed(production, *score(production.model, texts))


@dataclass(frozen=True)
class ShadowJob:
    """An answered, captured request to score again with the shadow candidate."""

    request_id: str
    capture_id: str
    received_at: float
    route: str
    texts: list[str]
    product_ids: Sequence[str | None]
    review_ids: Sequence[str | None]
    candidate: ServedModel

    def rows(
        self, labels: list[str] | None, probabilities: np.ndarray | None, latency_ms: float, error: str | None
    ) -> bytes:
        return encode_capture_rows(
            request_id=self.request_id,
            capture_id=self.capture_id,
            received_at=self.received_at,
            route=self.route,
            model_version=self.candidate.version,
            texts=self.texts,
            product_ids=self.product_ids,
            review_ids=self.review_ids,
            labels=labels,
            probabilities=probabilities,
            latency_ms=latency_ms,
            classes=self.candidate.model.classes,
            role=CaptureRole.SHADOW,
            error=error,
        )


class ShadowScorer:
    """Scores answered requests with the shadow candidate on its own thread (see the module docstring)."""

    def __init__(
        self, capture: CaptureWriter, metrics: ServingMetrics, score: Scorer, queue_max: int
    ) -> None:
        self._capture = capture
        self._metrics = metrics
        self._score = score
        self._queue: queue.Queue = queue.Queue(maxsize=queue_max)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="shadow-scorer", daemon=True)
        self._thread.start()

    def offer(self, job: ShadowJob) -> None:
        """Hand a request over without waiting; a full queue records its shadow as dropped."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._submit(job.rows(None, None, 0.0, "dropped: the shadow queue was full"), "dropped")

    def stop(self) -> None:
        """Score what is queued, then end the thread (before the capture writer closes)."""
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        while (job := self._queue.get()) is not _STOP:
            try:
                self._submit(*self._scored(job))
            except Exception:  # a bug here must not end the thread: the next request is shadowed again
                log.exception("shadow scoring of request %s failed", job.request_id)
                self._metrics.count_shadow("failed")

    def _scored(self, job: ShadowJob) -> tuple[bytes, str]:
        started = time.perf_counter()
        try:
            labels, probabilities = self._score(job.candidate.model, job.texts)
        except Exception as exc:  # its failure is the rollout's evidence: captured, counted
            latency_ms = (time.perf_counter() - started) * 1000.0
            return job.rows(None, None, latency_ms, f"shadow candidate failed: {exc}"), "failed"
        latency_ms = (time.perf_counter() - started) * 1000.0
        return job.rows(labels, probabilities, latency_ms, None), "scored"

    def _submit(self, rows: bytes, outcome: str) -> None:
        self._metrics.count_shadow(outcome if self._capture.submit(rows) else "dropped")
