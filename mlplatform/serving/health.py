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

An operator also hears of a capture that cannot write through the platform's alerts (core/monitoring/alerts.py):
`StandingAlert` raises one ERROR alert (kind `capture`, key `endpoint:capture:<host>`) when capture
turns FAILING and resolves it when capture writes again. The alert store may sit on the very disk that
is full, so a thread of its own records the change, and retries every `capture_retry_s` until it can.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from mlplatform.core.monitoring.alerts import AlertStore
from mlplatform.serving.admission import ConcurrencySlots
from mlplatform.serving.capture import CaptureState, CaptureStatus
from mlplatform.serving.model_holder import HolderState, HolderStatus

log = logging.getLogger(__name__)


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
    capture_status: Callable[[], CaptureStatus]
    slots: ConcurrencySlots

    def now(self) -> Health:
        holder, capture = self.holder_status(), self.capture_status()
        readiness, reason = _FROM_HOLDER.get(holder.state, Readiness.READY), holder.reason
        if readiness is Readiness.READY and capture.state is CaptureState.FAILING:
            readiness, reason = Readiness.CAPTURE_FAILING, capture.error
        if readiness is Readiness.READY and self.slots.full:
            readiness, reason = Readiness.AT_CAPACITY, f"over capacity: {self.slots.limit} requests in flight"
        if readiness is Readiness.READY:
            reason = None
        liveness = Liveness.LIVE
        if not self.holder_alive():
            liveness = Liveness.MODEL_POLLER_STOPPED
        elif not capture.alive:
            liveness = Liveness.CAPTURE_WRITER_STOPPED
        if liveness is not Liveness.LIVE and reason is None:
            reason = PUBLIC_REASONS[liveness]
        return Health(liveness, readiness, reason, holder.version)


class StandingAlert:
    """Keeps one alert of the alert store in line with a condition: firing while it holds, resolved after.

    `set(firing, message)` may be called from any thread and returns at once; a thread of its own writes
    the change to the store, retrying every `retry_s` while the store cannot be written. It starts by
    resolving the key (a process that died while the condition held left it firing).
    """

    def __init__(self, store: AlertStore, *, kind: str, source: str, key: str, retry_s: float) -> None:
        self._store = store
        self._kind, self._source, self._key = kind, source, key
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._wanted: tuple[bool, str] = (False, "")
        self._recorded: bool | None = None  # unknown until the first write
        self._changed = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def set(self, firing: bool, message: str = "") -> None:
        with self._lock:
            self._wanted = (firing, message)
        self._changed.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="standing-alert", daemon=True)
        self._thread.start()
        self._changed.set()

    def stop(self) -> None:
        """Record the last change if the store takes it now, then stop."""
        self._stopping = True
        self._changed.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        failed_with: str | None = None
        while True:
            self._changed.wait(timeout=None if failed_with is None else self._retry_s)
            self._changed.clear()
            with self._lock:
                firing, message = self._wanted
            if firing != self._recorded:
                try:
                    if firing:
                        self._store.raise_alert(self._kind, "ERROR", self._source, message, key=self._key)
                    else:
                        self._store.resolve(self._key)
                except Exception as exc:  # the store may be on the full disk, or its database away
                    if str(exc) != failed_with:
                        log.error(
                            "alert %s could not be recorded (retried every %gs): %s",
                            self._key,
                            self._retry_s,
                            exc,
                        )
                    failed_with = str(exc)
                else:
                    self._recorded, failed_with = firing, None
            if self._stopping:
                return
