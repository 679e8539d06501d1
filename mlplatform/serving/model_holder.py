"""The model the endpoint serves: the registry's production alias, checked, loaded, warmed up, hot-swapped.

The served model is one immutable `ServedModel` (version + loaded model) held in one attribute. A swap is
a single reference assignment, and a request reads `holder.served` once, so every response and capture
record names exactly one version, and requests in flight finish on the model they started with.

A production version that fails its check (SHA-256, load, warm-up) is refused: the model served before
keeps serving, or nothing is served (state `REFUSED`, readiness false). A refusal is not final: the
poller checks the refused file again at the first poll after it changes on disk (repaired, re-fetched)
and, whatever the reason was, every `[serving] refused_model_retry_s`, so a repaired model is served
without a restart.

The running rollout's candidate (core/release/rollout.py, the registry's `rollout` pointer, read when
the pointers' stamp moved) is held beside production as one immutable `Candidate` (its strategy, percent
and loaded model): a request reads `holder.candidate` once, with `holder.served`. A candidate that fails
the same check is never served: the holder drops it and calls `on_candidate_refused` (the app aborts the
rollout and raises an alert), once per rollout. A registry that cannot be read is no refusal: the next
poll tries again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlplatform.core.release.registry import IntegrityError
from mlplatform.core.release.rollout import ROLLOUT_POINTER, Rollout, RolloutStrategy, rollout_of
from mlplatform.core.scoring.model import Prediction, ScoringError

log = logging.getLogger(__name__)

# Scored once before a model is swapped in, so its first real request pays no lazy-initialisation cost.
WARMUP_TEXTS: tuple[str, ...] = (
    "warm-up review: lovely dress, fits well",
    "too small and the fabric is thin",
)
NO_PRODUCTION_MODEL = "no production model in the registry (approve and deploy a model first)"
SHUTTING_DOWN = "the endpoint is shutting down"


class Predictor(Protocol):
    """What the endpoint needs of `mlplatform.core.scoring.model.ScoringModel`."""

    classes: tuple[str, ...]  # the probability columns' classes, in order

    @property
    def explains(self) -> bool: ...  # its graph reports n-gram contributions (explain_top_k > 0 works)

    def predict(self, texts: Sequence[str], explain_top_k: int = 0) -> Prediction: ...


class ProductionRegistry(Protocol):
    """What the holder needs of `mlplatform.core.release.registry.ModelRegistry`."""

    def production_pointer(self) -> tuple[str | None, float]: ...

    def production(self) -> Any: ...

    def verify(self, version: str) -> Path: ...

    def get(self, version: str) -> Any: ...

    def pointer(self, name: str) -> Any: ...


ModelLoader = Callable[[Path, str], Predictor]
FileSignature = tuple[int, int, int] | None  # (inode, size, mtime_ns) of a model file; None: unreadable


class HolderState(StrEnum):
    """What the holder can answer with."""

    SERVING = "serving"
    NO_MODEL = "no_model"  # no production alias
    REFUSED = "model_refused"  # the production model failed its check and nothing older is loaded
    SHUTTING_DOWN = "shutting_down"


def file_signature(path: Path | None) -> FileSignature:
    """What changes when a file is replaced or rewritten (a cheap stat, no read)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


@dataclass(frozen=True)
class Refusal:
    """The production version last refused, and when to check it again."""

    version: str
    model_file: Path | None
    signature: FileSignature
    retry_at: float  # time.monotonic()


@dataclass(frozen=True)
class ServedModel:
    """One model version, loaded; never mutated (a swap replaces the whole object)."""

    version: str
    sha256: str
    model: Predictor


@dataclass(frozen=True)
class Candidate:
    """The running rollout's candidate, loaded: how it takes part, and the model. Never mutated."""

    rollout_id: str
    strategy: RolloutStrategy
    percent: int  # share of requests it answers (a canary's); a shadow answers none
    served: ServedModel


CandidateRefused = Callable[[Rollout, str], None]


@dataclass(frozen=True)
class HolderStatus:
    """A snapshot for metadata, readiness and metrics."""

    version: str | None
    ready: bool
    reason: str | None  # why nothing is served, or why the latest production model was refused
    swaps: int
    refusals: int
    state: HolderState = HolderState.SERVING
    candidate: Candidate | None = None
    candidate_refusals: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what the dashboard shows as what this endpoint serves): the candidate by name."""
        candidate = self.candidate
        return {
            "version": self.version,
            "ready": self.ready,
            "reason": self.reason,
            "swaps": self.swaps,
            "refusals": self.refusals,
            "state": self.state.value,
            "candidate": None
            if candidate is None
            else {
                "version": candidate.served.version,
                "strategy": candidate.strategy.value,
                "percent": candidate.percent,
            },
            "candidate_refusals": self.candidate_refusals,
        }


class ModelHolder:
    """Serves the production alias; a background thread polls it and swaps models in when it moves."""

    def __init__(
        self,
        registry: ProductionRegistry,
        loader: ModelLoader,
        *,
        poll_interval_s: float,
        refused_retry_s: float = 30.0,
        monotonic: Callable[[], float] = time.monotonic,
        on_candidate_refused: CandidateRefused | None = None,
    ) -> None:
        self._registry = registry
        self._on_candidate_refused = on_candidate_refused
        self._candidate: Candidate | None = None
        self._refused_rollout: str | None = None
        self._candidate_refusals = 0
        self._loader = loader
        self._poll_interval_s = poll_interval_s
        self._refused_retry_s = refused_retry_s
        self._monotonic = monotonic
        self._served: ServedModel | None = None
        self._reason: str | None = NO_PRODUCTION_MODEL
        self._refusal: Refusal | None = None
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

    @property
    def candidate(self) -> Candidate | None:
        """The running rollout's candidate (None: no rollout, or its candidate was refused). Read it once
        per request, with `served`."""
        return self._candidate

    def status(self) -> HolderStatus:
        served, reason, refusal = self._served, self._reason, self._refusal
        if self._shutting_down:
            state, reason = HolderState.SHUTTING_DOWN, SHUTTING_DOWN
        elif served is not None:
            state = HolderState.SERVING
        else:
            state = HolderState.REFUSED if refusal is not None else HolderState.NO_MODEL
        return HolderStatus(
            version=served.version if served else None,
            ready=state is HolderState.SERVING,
            reason=reason,
            swaps=self._swaps,
            refusals=self._refusals,
            state=state,
            candidate=self._candidate,
            candidate_refusals=self._candidate_refusals,
        )

    @property
    def alive(self) -> bool:
        """The poller runs (False before `start` and after `stop`): without it no swap, no recovery."""
        return self._thread is not None and self._thread.is_alive()

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
        """Check the production alias once; swap when it moved to a version that passes its checks, or
        when the version refused last is due to be checked again."""
        with self._refresh_lock:
            pointer = self._registry.production_pointer()
            if pointer == self._seen_pointer and not self._retry_due():
                return
            if pointer[0] is None:
                self._served, self._reason, self._refusal = None, NO_PRODUCTION_MODEL, None
                log.warning(NO_PRODUCTION_MODEL)
            else:
                self._load_production()
            self._load_candidate()
            # Only now: a registry read error above leaves the pointer unseen, so the next poll retries.
            self._seen_pointer = pointer

    def _retry_due(self) -> bool:
        """A refused version is checked again once its file changed, or its retry time came."""
        refusal = self._refusal
        if refusal is None:
            return False
        return (
            self._monotonic() >= refusal.retry_at or file_signature(refusal.model_file) != refusal.signature
        )

    def _load_production(self) -> None:
        production = self._registry.production()
        if production is None:  # the alias was cleared between the two registry reads
            self._served, self._reason, self._refusal = None, NO_PRODUCTION_MODEL, None
            return
        if self._served is not None and self._served.version == production.version:
            self._refusal = None
            return
        model_file = getattr(production, "model_file", None)  # the local file (cache file when remote)
        signature = file_signature(model_file)  # before the check: a repair during it triggers a retry
        try:
            candidate = self._checked_model(production.version, production.sha256)
        except Exception as exc:  # any failure to check or load must leave the current model serving
            self._refusals += 1
            self._reason = f"production model {production.version} refused: {exc}"
            self._refusal = Refusal(
                production.version, model_file, signature, self._monotonic() + self._refused_retry_s
            )
            log.error(
                "%s (still serving %s; checked again when its file changes, or in %gs)",
                self._reason,
                self._served.version if self._served else "nothing",
                self._refused_retry_s,
            )
            return
        previous = self._served
        self._served, self._reason, self._refusal = candidate, None, None
        self._swaps += 1
        log.info("serving model %s (was %s)", candidate.version, previous.version if previous else "nothing")

    def _load_candidate(self) -> None:
        """Hold the running rollout's candidate (loaded once per rollout; a step only changes its percent)."""
        rollout = rollout_of(self._registry.pointer(ROLLOUT_POINTER))
        if rollout is None or rollout.id == self._refused_rollout:
            self._candidate = None
            return
        held = self._candidate
        if held is not None and held.rollout_id == rollout.id:
            if held.percent != rollout.percent:
                self._candidate = Candidate(rollout.id, rollout.strategy, rollout.percent, held.served)
            return
        try:
            served = self._checked_model(rollout.candidate, self._registry.get(rollout.candidate).sha256)
        except (IntegrityError, ScoringError, ValueError) as exc:  # its file or model is bad: never serve it
            self._refuse_candidate(rollout, f"candidate {rollout.candidate} refused: {exc}")
            return
        self._candidate = Candidate(rollout.id, rollout.strategy, rollout.percent, served)
        log.info("holding candidate %s for the %s", rollout.candidate, rollout.describe())

    def _refuse_candidate(self, rollout: Rollout, reason: str) -> None:
        self._candidate, self._refused_rollout = None, rollout.id
        self._candidate_refusals += 1
        log.error("%s: the %s is aborted", reason, rollout.describe())
        if self._on_candidate_refused is not None:
            try:
                self._on_candidate_refused(rollout, reason)
            except Exception:  # the abort is retried by the next judgement round; never stop polling
                log.exception("aborting the rollout of refused candidate %s failed", rollout.candidate)

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
