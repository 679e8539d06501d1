"""The model the endpoint serves: the registry's production alias, checked, loaded, warmed up, hot-swapped.

The served model is one immutable `ServedModel` (version + loaded model) held in one attribute. A swap is
a single reference assignment, and a request reads `holder.served` once, so every response and capture
record names exactly one version, and requests in flight finish on the model they started with.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlplatform.core.scoring.model import Prediction

log = logging.getLogger(__name__)

# Scored once before a model is swapped in, so its first real request pays no lazy-initialisation cost.
WARMUP_TEXTS: tuple[str, ...] = (
    "warm-up review: lovely dress, fits well",
    "too small and the fabric is thin",
)
NO_PRODUCTION_MODEL = "no production model in the registry (approve and deploy a model first)"
SHUTTING_DOWN = "the endpoint is shutting down"


class Predictor(Protocol):
    """What the holder needs of `mlplatform.core.scoring.model.ScoringModel`: its classes (the order of
    its probability columns) and its predictions."""

    classes: tuple[str, ...]

    def predict(self, texts: Sequence[str], explain_top_k: int = 0) -> Prediction: ...


class ProductionRegistry(Protocol):
    """What the holder needs of `mlplatform.core.release.registry.ModelRegistry`."""

    def production_pointer(self) -> tuple[str | None, float]: ...

    def production(self) -> Any: ...

    def verify(self, version: str) -> Path: ...


ModelLoader = Callable[[Path, str], Predictor]


@dataclass(frozen=True)
class ServedModel:
    """One model version, loaded; never mutated (a swap replaces the whole object)."""

    version: str
    sha256: str
    model: Predictor


@dataclass(frozen=True)
class HolderStatus:
    """A snapshot for metadata, readiness and metrics."""

    version: str | None
    ready: bool
    reason: str | None  # why nothing is served, or why the latest production model was refused
    swaps: int
    refusals: int


class ModelHolder:
    """Serves the production alias; a background thread polls it and swaps models in when it moves."""

    def __init__(self, registry: ProductionRegistry, loader: ModelLoader, *, poll_interval_s: float) -> None:
        self._registry = registry
        self._loader = loader
        self._poll_interval_s = poll_interval_s
        self._served: ServedModel | None = None
        self._reason: str | None = NO_PRODUCTION_MODEL
        self._seen_pointer: tuple[str | None, float] | None = None
        self._swaps = 0
        self._refusals = 0
        self._shutting_down = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()

    @property
    def served(self) -> ServedModel | None:
        """The model to answer with (None: not servable, see `status().reason`). Read it once per request.

        It stays set during shutdown: only readiness goes false, so requests still arriving on open
        connections while uvicorn drains are answered rather than refused.
        """
        return self._served

    def status(self) -> HolderStatus:
        served, reason = self._served, self._reason
        if self._shutting_down:
            reason = SHUTTING_DOWN
        return HolderStatus(
            version=served.version if served else None,
            ready=served is not None and not self._shutting_down,
            reason=reason,
            swaps=self._swaps,
            refusals=self._refusals,
        )

    def start(self) -> None:
        """Load the production model now (a failure leaves the endpoint not ready), then poll in background."""
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="model-holder", daemon=True)
        self._thread.start()

    def begin_shutdown(self) -> None:
        """Readiness goes false first; requests already holding a model finish on it."""
        self._shutting_down = True

    def stop(self) -> None:
        self.begin_shutdown()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def refresh(self) -> None:
        """Check the production alias once; swap when it moved to a version that passes its checks."""
        with self._refresh_lock:
            pointer = self._registry.production_pointer()
            if pointer == self._seen_pointer:
                return
            if pointer[0] is None:
                self._served, self._reason = None, NO_PRODUCTION_MODEL
                log.warning(NO_PRODUCTION_MODEL)
            else:
                self._load_production()
            # Only now: a registry read error above leaves the pointer unseen, so the next poll retries.
            self._seen_pointer = pointer

    def _load_production(self) -> None:
        production = self._registry.production()
        if production is None:  # the alias was cleared between the two registry reads
            self._served, self._reason = None, NO_PRODUCTION_MODEL
            return
        if self._served is not None and self._served.version == production.version:
            return
        try:
            candidate = self._checked_model(production.version, production.sha256)
        except Exception as exc:  # any failure to check or load must leave the current model serving
            self._refusals += 1
            self._reason = f"production model {production.version} refused: {exc}"
            log.error(
                "%s (still serving %s)", self._reason, self._served.version if self._served else "nothing"
            )
            return
        previous = self._served
        self._served, self._reason = candidate, None
        self._swaps += 1
        log.info("serving model %s (was %s)", candidate.version, previous.version if previous else "nothing")

    def _checked_model(self, version: str, sha256: str) -> ServedModel:
        path = self._registry.verify(version)
        model = self._loader(path, sha256)
        prediction = model.predict(list(WARMUP_TEXTS))
        if len(prediction.labels) != len(WARMUP_TEXTS) or np.shape(prediction.probabilities)[0] != len(
            WARMUP_TEXTS
        ):
            raise ValueError("warm-up scoring returned the wrong number of rows")
        return ServedModel(version=version, sha256=sha256, model=model)

    def _poll(self) -> None:
        while not self._stop.wait(self._poll_interval_s):
            try:
                self.refresh()
            except Exception:  # the poller must outlive a transient registry read error
                log.exception("checking the production alias failed; retrying in %ss", self._poll_interval_s)
