"""Safe rollout: a new model version tried on live traffic before it takes all of it.

Two strategies (`RolloutStrategy`):

- shadow: every request is answered by production exactly as before and also scored by the candidate
  off the answer's path; the candidate's predictions are captured beside the answers, never returned.
  Any registered version that is not Rejected may be shadowed (a version waiting for a person can be
  watched on real traffic before anyone approves it).
- canary: `percent` of requests are answered by the candidate, chosen by a request key (serving/ does
  it), through a schedule of percents (`steps`, e.g. 5 -> 25 -> 50) that ends in promotion. Only an
  Approved version may answer a customer.

State: at most one rollout at a time, kept as the registry's `rollout` pointer (a JSON object beside
the aliases, see core/release/registry.py), so an endpoint notices a rollout with the same cheap poll
that tells it production moved. Every change happens in one exclusive section of the registry's
records and appends its event with who or what did it: `rollout_started`, `rollout_stepped`,
`rollout_promoted` (with the ordinary `promoted` event of the alias move, in the same section) and
`rollout_aborted` (`automatic` when a judgement or an endpoint aborted it). A promotion moves the
production alias (the old version becomes `previous`); an abort sends all traffic back to production
and leaves the candidate registered as it was.

Refused with one line, nothing changed (`RolloutError`): an unknown, Rejected or current-production
version; a canary of a version that is not Approved; a percent outside 1-99 or steps that are not
increasing percents; a second rollout while one runs; a candidate whose classes (read from its ONNX
graph) differ from production's; no production to compare with.

What to do next is decided elsewhere (core/monitoring/rollout_judgement.py judges the live window and
answers a `RolloutAction`); `conclude` carries the decision out. Transitions that change what answers
customers (start, step, promote) run under the deployment lock (core/release/deploy.py) so they never
interleave with a deployment's smoke test; an abort only sends traffic back to production and needs no
lock (an endpoint may abort from its poller without waiting behind a deployment that waits for it).
"""

from __future__ import annotations

import hashlib
import itertools
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import (
    MAX_PERCENT,
    DeploymentRules,
    DeploymentStrategy,
)
from mlplatform.core.release.deploy import (
    Deployment,
    DeployOutcome,
    DeployState,
    SmokeResult,
    SmokeTest,
    deploy_version,
    deployment_lock,
    smoke_or_reject,
)
from mlplatform.core.release.registry import (
    APPROVED,
    PREVIOUS,
    PRODUCTION,
    REJECTED,
    ModelRegistry,
    ModelVersion,
    RegistryError,
    RegistrySection,
)
from mlplatform.core.scoring.model import model_classes

ROLLOUT_POINTER = "rollout"
"""The registry pointer holding the running rollout (absent when none runs)."""
ROLLOUT_ASSET = "rollout"
"""The asset whose materializations are the judgement rounds (defs/rollout.py; each stores
core/monitoring/rollout_judgement.py's `RolloutRound.record()`)."""
ROUNDS_SEARCHED = 50
"""How many of the newest stored rounds `latest_round` looks through for one rollout's."""
CANARY_BUCKETS = 10_000
"""Request keys hash to this many buckets: a canary's share is exact to 0.01 percent of keys."""


class RolloutError(UserError, RuntimeError):
    """A rollout operation was refused (one line; nothing changed)."""


class RolloutStrategy(StrEnum):
    SHADOW = "shadow"
    CANARY = "canary"


class RolloutAction(StrEnum):
    """What a judgement of the live window decides."""

    WAIT = "wait"  # not enough data yet (or a fit shadow candidate waits for approval)
    ADVANCE = "advance"  # the canary moves to its next percent
    PROMOTE = "promote"  # the candidate becomes production
    ABORT = "abort"  # traffic back to production, an alert says why


class RolloutEvent(StrEnum):
    """The registry events of a rollout."""

    STARTED = "rollout_started"
    STEPPED = "rollout_stepped"
    PROMOTED = "rollout_promoted"
    ABORTED = "rollout_aborted"


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _percents(values: Sequence[Any], where: str) -> tuple[int, ...]:
    """Strictly increasing whole percents in 1-100 (RolloutError naming `where` otherwise)."""
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise RolloutError(f"{where} must list percents of traffic, e.g. 5,25,50,100")
    percents = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PERCENT:
            raise RolloutError(f"{where} must be whole percents from 1 to 100, got {value!r}")
        percents.append(value)
    if any(later <= earlier for earlier, later in itertools.pairwise(percents)):
        raise RolloutError(f"{where} must increase step by step, got {','.join(map(str, percents))}")
    return tuple(percents)


def canary_schedule(percent: int | None, steps: Sequence[int]) -> tuple[int, ...]:
    """The percents a canary goes through: `percent` (default: the first step), then every step above it
    and below 100. Advancing past the last one promotes (100% is production)."""
    schedule = _percents(steps, "canary steps")
    start = schedule[0] if percent is None else percent
    if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start < MAX_PERCENT:
        raise RolloutError(f"--percent must be a whole percent from 1 to 99, got {start!r}")
    return (start, *(step for step in schedule if start < step < MAX_PERCENT))


@dataclass(frozen=True)
class Rollout:
    """The running rollout: what is tried against what, where it stands, since when and who started it.

    `steps` are a canary's percents (empty for a shadow) and `step` the index of the current one.
    """

    id: str
    strategy: RolloutStrategy
    candidate: str
    production: str
    steps: tuple[int, ...]
    step: int
    started_at: str
    started_by: str
    step_started_at: str

    @property
    def percent(self) -> int:
        """The share of requests the candidate answers now (a shadow answers none)."""
        return self.steps[self.step] if self.strategy is RolloutStrategy.CANARY else 0

    @property
    def next_percent(self) -> int | None:
        """The canary's next percent; None at its last step (the next move is promotion) or for a shadow."""
        if self.strategy is RolloutStrategy.SHADOW or self.step + 1 >= len(self.steps):
            return None
        return self.steps[self.step + 1]

    def describe(self) -> str:
        """One line: 'canary of v4 against production v3 at 25% (step 2 of 3) since ...'."""
        where = (
            f"at {self.percent}% (step {self.step + 1} of {len(self.steps)})"
            if self.strategy is RolloutStrategy.CANARY
            else "(shadow: production answers every request)"
        )
        return (
            f"{self.strategy.value} of {self.candidate} against production {self.production} {where} "
            f"since {self.step_started_at}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "strategy": self.strategy.value,
            "candidate": self.candidate,
            "production": self.production,
            "steps": list(self.steps),
            "step": self.step,
            "percent": self.percent,
            "started_at": self.started_at,
            "started_by": self.started_by,
            "step_started_at": self.step_started_at,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        """The rollout `to_dict` wrote (RolloutError when the stored record is damaged)."""
        try:
            rollout = cls(
                id=str(data["id"]),
                strategy=RolloutStrategy(data["strategy"]),
                candidate=str(data["candidate"]),
                production=str(data["production"]),
                steps=tuple(int(step) for step in data["steps"]),
                step=int(data["step"]),
                started_at=str(data["started_at"]),
                started_by=str(data["started_by"]),
                step_started_at=str(data["step_started_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RolloutError(f"the registry's rollout record is unreadable: {exc!r}") from None
        if rollout.strategy is RolloutStrategy.CANARY and not 0 <= rollout.step < len(rollout.steps):
            raise RolloutError(f"the registry's rollout record is at step {rollout.step} of {rollout.steps}")
        return rollout


def answers_with_candidate(key: str, rollout_id: str, percent: int) -> bool:
    """Whether the canary's candidate answers the request with this key (the product id when the request
    names one, else the request id; serving/ chooses). A stable hash of the rollout and the key: one
    product sees one version through a step, and a key on the candidate stays there as its percent grows
    (its bucket stays under the rising bound)."""
    digest = hashlib.blake2b(f"{rollout_id}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % CANARY_BUCKETS < percent * CANARY_BUCKETS // MAX_PERCENT


def rollout_of(pointer: Any) -> Rollout | None:
    """The rollout a `rollout` pointer value holds (None: no rollout runs)."""
    return None if pointer is None else Rollout.from_dict(pointer)


def current_rollout(registry: ModelRegistry) -> Rollout | None:
    """The running rollout, or None."""
    return rollout_of(registry.pointer(ROLLOUT_POINTER))


# --- starting ----------------------------------------------------------------------------------------


def _candidate_refusal(candidate: ModelVersion, strategy: RolloutStrategy, production: str) -> str | None:
    if candidate.version == production:
        return f"{candidate.version} already serves production"
    if candidate.status == REJECTED:
        return f"{candidate.version} is {REJECTED}: it is never deployed"
    if strategy is RolloutStrategy.CANARY and candidate.status != APPROVED:
        return (
            f"a canary answers customers, so it needs an {APPROVED} version: {candidate.version} is "
            f"{candidate.status} (approve it with `mlplatform models approve {candidate.version}`, or shadow it)"
        )
    return None


def start_rollout(
    registry: ModelRegistry,
    strategy: RolloutStrategy,
    candidate: str,
    *,
    by: str,
    percent: int | None = None,
    steps: Sequence[int] = (),
    classes_of: Callable[[Path], tuple[str, ...]] = model_classes,
) -> Rollout:
    """Start a shadow or a canary of `candidate` against the production version, or refuse (RolloutError).

    A canary goes through `canary_schedule(percent, steps)`; a shadow takes neither. The candidate's
    classes are compared with production's from their verified files, outside the exclusive section
    (reading models is slow); the section then checks again that production is still the version
    compared. Call it under the deployment lock.
    """
    strategy = RolloutStrategy(strategy)
    if strategy is RolloutStrategy.CANARY:
        schedule = canary_schedule(percent, steps)
    elif percent is not None or steps:
        raise RolloutError("a shadow answers no request: --percent and --steps are for a canary")
    else:
        schedule = ()
    what = f"cannot start a {strategy.value} of {candidate}"
    try:
        production = registry.aliases().get(PRODUCTION)
        if production is None:
            raise RolloutError(f"{what}: no version serves production to compare it with")
        refusal = _candidate_refusal(registry.get(candidate), strategy, production)
        if refusal is not None:
            raise RolloutError(f"{what}: {refusal}")
        candidate_classes = classes_of(registry.verify(candidate))
        production_classes = classes_of(registry.verify(production))
    except RegistryError as exc:
        raise RolloutError(f"{what}: {exc}") from None
    if candidate_classes != production_classes:
        raise RolloutError(
            f"{what}: it answers the classes {list(candidate_classes)}, production {production} answers "
            f"{list(production_classes)}"
        )
    with registry.exclusive() as section:
        running = rollout_of(section.pointer(ROLLOUT_POINTER))
        if running is not None:
            raise RolloutError(
                f"{what}: a {running.describe()} runs; stop it first (mlplatform rollout stop [--promote])"
            )
        if section.aliases().get(PRODUCTION) != production:
            raise RolloutError(f"{what}: production moved from {production} meanwhile; try again")
        refusal = _candidate_refusal(section.version(candidate), strategy, production)
        if refusal is not None:
            raise RolloutError(f"{what}: {refusal}")
        now = _utc_now()
        rollout = Rollout(
            id=uuid.uuid4().hex[:16],
            strategy=strategy,
            candidate=candidate,
            production=production,
            steps=schedule,
            step=0,
            started_at=now,
            started_by=by,
            step_started_at=now,
        )
        section.set_pointer(ROLLOUT_POINTER, rollout.to_dict())
        section.append(
            {
                "event": RolloutEvent.STARTED.value,
                "rollout": rollout.id,
                "strategy": strategy.value,
                "version": candidate,
                "production": production,
                "percent": rollout.percent,
                "steps": list(schedule),
                "by": by,
                "time": now,
            }
        )
    return rollout


# --- moving on ---------------------------------------------------------------------------------------


def _running(section: RegistrySection, rollout_id: str | None, what: str) -> Rollout:
    """The running rollout, which must be `rollout_id` when one is named (a judgement of an older one
    must not move a newer one)."""
    rollout = rollout_of(section.pointer(ROLLOUT_POINTER))
    if rollout is None:
        raise RolloutError(f"cannot {what}: no rollout is running")
    if rollout_id is not None and rollout.id != rollout_id:
        raise RolloutError(f"cannot {what}: rollout {rollout_id} is over ({rollout.describe()} runs now)")
    return rollout


def advance_rollout(registry: ModelRegistry, rollout_id: str, *, by: str, reason: str) -> Rollout:
    """The canary's next percent (RolloutError at its last step: promote instead). Under the deployment lock."""
    with registry.exclusive() as section:
        rollout = _running(section, rollout_id, "advance the rollout")
        if rollout.next_percent is None:
            raise RolloutError(f"cannot advance the {rollout.describe()}: its next move is promotion")
        now = _utc_now()
        advanced = replace(rollout, step=rollout.step + 1, step_started_at=now)
        section.set_pointer(ROLLOUT_POINTER, advanced.to_dict())
        section.append(
            {
                "event": RolloutEvent.STEPPED.value,
                "rollout": rollout.id,
                "version": rollout.candidate,
                "from_percent": rollout.percent,
                "to_percent": advanced.percent,
                "by": by,
                "reason": reason,
                "time": now,
            }
        )
    return advanced


def promote_rollout(registry: ModelRegistry, rollout_id: str | None, *, by: str, reason: str) -> Rollout:
    """The candidate becomes production (the old production `previous`) and the rollout ends, in one
    section. Refused unless the candidate is Approved and production is still the rollout's. Under the
    deployment lock. Returns the rollout that ended."""
    with registry.exclusive() as section:
        rollout = _running(section, rollout_id, "promote the rollout")
        production = section.aliases().get(PRODUCTION)
        if production != rollout.production:
            raise RolloutError(
                f"cannot promote {rollout.candidate}: production moved from {rollout.production} to "
                f"{production} during the rollout (stop it: mlplatform rollout stop)"
            )
        status = section.version(rollout.candidate).status
        if status != APPROVED:
            raise RolloutError(
                f"cannot promote {rollout.candidate}: it is {status}, only {APPROVED} can be promoted "
                f"(mlplatform models approve {rollout.candidate})"
            )
        section.promote(rollout.candidate, by, rollout=rollout.id, reason=reason)
        section.set_pointer(ROLLOUT_POINTER, None)
        section.append(
            {
                "event": RolloutEvent.PROMOTED.value,
                "rollout": rollout.id,
                "strategy": rollout.strategy.value,
                "version": rollout.candidate,
                "from": rollout.production,
                "to": rollout.candidate,
                "by": by,
                "reason": reason,
            }
        )
    return rollout


def abort_rollout(
    registry: ModelRegistry, rollout_id: str | None, *, by: str, reason: str, automatic: bool
) -> Rollout | None:
    """End the rollout without promotion: all traffic back to production, the candidate registered as it
    was. `rollout_id` None ends whichever runs. None when that rollout is over already (an abort is
    idempotent: several endpoints may refuse one candidate at once)."""
    with registry.exclusive() as section:
        rollout = rollout_of(section.pointer(ROLLOUT_POINTER))
        if rollout is None or (rollout_id is not None and rollout.id != rollout_id):
            return None
        section.set_pointer(ROLLOUT_POINTER, None)
        section.append(
            {
                "event": RolloutEvent.ABORTED.value,
                "rollout": rollout.id,
                "strategy": rollout.strategy.value,
                "version": rollout.candidate,
                "production": rollout.production,
                "percent": rollout.percent,
                "by": by,
                "reason": reason,
                "automatic": automatic,
            }
        )
    return rollout


@dataclass(frozen=True)
class RolloutOutcome:
    """What `conclude` did: the action taken, why, and the rollout as it stands after it (None: ended)."""

    action: RolloutAction
    reason: str
    rollout: Rollout | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "reason": self.reason,
            "rollout": None if self.rollout is None else self.rollout.to_dict(),
        }


def conclude(
    home: PlatformHome,
    registry: ModelRegistry,
    rollout: Rollout,
    action: RolloutAction,
    *,
    reason: str,
    by: str,
    lock_timeout_s: float,
) -> RolloutOutcome:
    """Carry out a judgement's decision on `rollout`: advance and promote under the deployment lock,
    abort without it (automatic: an alert follows from its event), wait by doing nothing."""
    if action is RolloutAction.WAIT:
        return RolloutOutcome(action, reason, rollout)
    if action is RolloutAction.ABORT:
        abort_rollout(registry, rollout.id, by=by, reason=reason, automatic=True)
        return RolloutOutcome(action, reason, None)
    with deployment_lock(home, lock_timeout_s):
        if action is RolloutAction.ADVANCE:
            return RolloutOutcome(action, reason, advance_rollout(registry, rollout.id, by=by, reason=reason))
        promote_rollout(registry, rollout.id, by=by, reason=reason)
        return RolloutOutcome(action, reason, None)


def rollout_events(
    events: Sequence[Mapping[str, Any]], rollout_id: str | None = None
) -> list[dict[str, Any]]:
    """The registry's rollout events (of one rollout when `rollout_id` is given), oldest first."""
    kinds = {event.value for event in RolloutEvent}
    return [
        dict(event)
        for event in events
        if event.get("event") in kinds and (rollout_id is None or event.get("rollout") == rollout_id)
    ]


# --- a new version, deployed by the strategy --------------------------------------------------------


def deploy_by_strategy(
    home: PlatformHome,
    registry: ModelRegistry,
    target: ModelVersion,
    *,
    live_smoke_test: SmokeTest,
    offline_smoke_test: SmokeTest,
    rules: DeploymentRules,
    live: bool,
    endpoint_url: str | None,
    by: str,
) -> Deployment:
    """Deploy an Approved `target` as `[deployment] strategy` says (sentiment_endpoint's one call).

    Direct, or no production yet (nothing to compare with): `deploy_version` (promote and smoke-test);
    a running rollout of another version is ended first, superseded. Shadow or canary: under the
    deployment lock, smoke-test the version in-process (the endpoint answers with production) and start
    its rollout, ending a rollout of an older version (superseded: the newest version is the one worth
    trying); a version failing the smoke test is rejected, never rolled out. A version whose rollout
    runs already changes nothing.
    """
    running = current_rollout(registry)
    direct = rules.strategy is DeploymentStrategy.DIRECT or registry.aliases().get(PRODUCTION) is None
    if direct or PRODUCTION in target.aliases:
        if running is not None and running.candidate != target.version and PRODUCTION not in target.aliases:
            abort_rollout(
                registry,
                running.id,
                by=by,
                reason=f"superseded: {target.version} deployed directly",
                automatic=False,
            )
        return deploy_version(
            home, registry, target, live_smoke_test, rules, live=live, endpoint_url=endpoint_url, by=by
        )
    if running is not None and running.candidate == target.version:
        unchanged = DeployOutcome(DeployState.IN_ROLLOUT, SmokeResult(True, "", None, 0.0, ()))
        return _deployment(registry, target, unchanged, endpoint_url, running)
    strategy = RolloutStrategy(rules.strategy.value)
    with deployment_lock(home, rules.lock_timeout_s) as waited_s:
        smoke = smoke_or_reject(registry, registry.get(target.version), offline_smoke_test, by)
        if not smoke.passed:
            return _deployment(
                registry, target, DeployOutcome(DeployState.REFUSED, smoke, waited_s), endpoint_url
            )
        running = current_rollout(registry)
        if running is not None:
            abort_rollout(
                registry,
                running.id,
                by=by,
                reason=f"superseded by a {strategy.value} of {target.version}",
                automatic=False,
            )
        steps = rules.canary_steps if strategy is RolloutStrategy.CANARY else ()
        started = start_rollout(registry, strategy, target.version, by=by, steps=steps)
    state = DeployOutcome(DeployState.ROLLOUT_STARTED, smoke, waited_s)
    return _deployment(registry, target, state, endpoint_url, started)


def _deployment(
    registry: ModelRegistry,
    target: ModelVersion,
    outcome: DeployOutcome,
    endpoint_url: str | None,
    rollout: Rollout | None = None,
) -> Deployment:
    aliases = registry.aliases()
    return Deployment(
        target,
        outcome,
        aliases.get(PRODUCTION),
        aliases.get(PREVIOUS),
        endpoint_url,
        None if rollout is None else rollout.to_dict(),
    )


def latest_round(store: ArtifactStore, rollout_id: str | None = None) -> dict[str, Any] | None:
    """The newest stored round that judged a rollout (of `rollout_id` when given): what `mlplatform
    rollout status` and the dashboard show. None when there is none among the newest `ROUNDS_SEARCHED`."""
    if ROLLOUT_ASSET not in store.assets():
        return None
    for record in reversed(store.versions(ROLLOUT_ASSET)[-ROUNDS_SEARCHED:]):
        stored = store.load(record)
        judged = stored.get("rollout") if isinstance(stored, Mapping) else None
        if isinstance(judged, Mapping) and (rollout_id is None or judged.get("id") == rollout_id):
            return dict(stored)
    return None
