"""What the endpoint tells an orchestrator (liveness, readiness) and an operator (the reason) about itself.

Readiness (`GET /v2/health/ready`, `/v2/models/{name}/ready`): 200 only when an inference request
would be served now -- a verified model is loaded, the server is not shutting down, capture can write
(when it cannot, a request is refused rather than answered unrecorded) and a concurrency slot is
free. Otherwise 503 and a `state`:

    no_model         no production alias in the registry
    model_refused    the production model failed its check (SHA-256, load, warm-up), nothing older loaded
    shutting_down    SIGTERM/SIGINT: draining
    capture_failing  capture records cannot be written (disk full, I/O errors)
    at_capacity      `[serving] max_concurrency` requests are being scored

Each of these ends by itself: a refused model is checked again when its file changes (and every
`refused_model_retry_s`), capture tries its disk again every `capture_retry_s`, slots free up. So an
orchestrator should take a not-ready endpoint out of rotation and wait, not restart it.

Liveness (`GET /v2/health/live`): 200 while the endpoint can still recover by itself; 503 when a thread
it cannot work without has stopped (the model holder's poller: no swap and no recovery any more; the
capture writer: no request can be recorded any more). Only a restart helps then, so an orchestrator
should restart on failed liveness.

The reason behind a state names files and errors (registry paths, a load error, the disk's errno). With
API keys configured the open health routes give the state only; the reason is in the model metadata
route (`GET /v2/models/{name}`), behind the key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mlplatform.serving.admission import ConcurrencySlots
from mlplatform.serving.model_holder import HolderState, HolderStatus


class Readiness(StrEnum):
    READY = "ready"
    NO_MODEL = "no_model"
    MODEL_REFUSED = "model_refused"
    SHUTTING_DOWN = "shutting_down"
    CAPTURE_FAILING = "capture_failing"
    AT_CAPACITY = "at_capacity"


class Liveness(StrEnum):
    LIVE = "live"
    MODEL_POLLER_STOPPED = "model_poller_stopped"
    CAPTURE_WRITER_STOPPED = "capture_writer_stopped"


_FROM_HOLDER = {
    HolderState.NO_MODEL: Readiness.NO_MODEL,
    HolderState.REFUSED: Readiness.MODEL_REFUSED,
    HolderState.SHUTTING_DOWN: Readiness.SHUTTING_DOWN,
}
# What the open routes say when the reason is kept behind the API key.
PUBLIC_REASONS = {
    Readiness.NO_MODEL: "no production model",
    Readiness.MODEL_REFUSED: "the production model was refused",
    Readiness.SHUTTING_DOWN: "shutting down",
    Readiness.CAPTURE_FAILING: "capture cannot write",
    Readiness.AT_CAPACITY: "over capacity",
    Liveness.MODEL_POLLER_STOPPED: "the model poller stopped",
    Liveness.CAPTURE_WRITER_STOPPED: "the capture writer stopped",
}


@dataclass(frozen=True)
class Health:
    """One look at the endpoint: its liveness and readiness, with the reason when either is not good."""

    liveness: Liveness
    readiness: Readiness
    reason: str | None  # may name files and errors: only behind the API key when keys are configured
    version: str | None

    @property
    def live(self) -> bool:
        return self.liveness is Liveness.LIVE

    @property
    def ready(self) -> bool:
        return self.readiness is Readiness.READY


@dataclass(frozen=True)
class HealthSources:
    """Where the endpoint's health is read from (callables: read at each probe, never cached)."""

    holder_status: Callable[[], HolderStatus]
    holder_alive: Callable[[], bool]
    slots: ConcurrencySlots

    def now(self) -> Health:
        holder = self.holder_status()
        readiness, reason = _FROM_HOLDER.get(holder.state, Readiness.READY), holder.reason
        if readiness is Readiness.READY and self.slots.full:
            readiness, reason = Readiness.AT_CAPACITY, f"over capacity: {self.slots.limit} requests in flight"
        if readiness is Readiness.READY:
            reason = None
        liveness = Liveness.LIVE if self.holder_alive() else Liveness.MODEL_POLLER_STOPPED
        if liveness is not Liveness.LIVE and reason is None:
            reason = PUBLIC_REASONS[liveness]
        return Health(liveness, readiness, reason, holder.version)
