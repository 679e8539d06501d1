"""Deploying a model: which registry version to deploy, whether it may go, and the smoke test.

The smoke test asks the serving model about reviews whose answer is not in doubt and judges the
answer: every label as expected, the answer names the version just deployed, latency within budget.
The reviews are the ones the version's model card records (`smoke_cases`: per class, the test reviews
the model labels right with the most confidence, whatever the classes); a version registered before
cards recorded them is asked the canned clothing reviews below (clearly negative, clearly positive).
Pure code: the endpoint call itself lives in the Dagster resource (defs/resources.py).

A deployment (promote, wait, smoke test, rollback) runs under the platform's deployment lock, so two
runs deploying at once take turns whatever Dagster's storage (its `deployment` pool is not strict on
SQLite). The lock lives where the registry's records do: an flock file in the home, or a PostgreSQL
advisory lock when the home has a pg_url; both hold across processes and machines sharing them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.fsio import LockTimeout, file_lock
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import RecordsLockTimeout, postgres_location, postgres_transaction
from mlplatform.core.platform.settings import DeploymentRules
from mlplatform.core.release.registry import (
    APPROVED,
    PENDING,
    PREVIOUS,
    PRODUCTION,
    ModelRegistry,
    ModelVersion,
)

DEPLOYMENT_LOCK = "mlplatform:deployment"  # the advisory lock's name on PostgreSQL
DEPLOYMENT_LOCK_FILE = ".deployment.lock"  # the flock file in the registry's directory


class DeployError(UserError, RuntimeError):
    """The deployment cannot go ahead (one-line message)."""


class DeploymentLockTimeout(DeployError):
    """Another deployment held the deployment lock for longer than `[deployment] lock_timeout_s`."""


@dataclass(frozen=True)
class SmokeCase:
    """A canned review and the only acceptable label for it."""

    text: str
    expected: str


# Unambiguous reviews in the clothing data set's own words (title and review text, as the model reads
# them): the smoke test of versions whose card records no smoke cases (registered before cards did).
SMOKE_CASES: tuple[SmokeCase, ...] = (
    SmokeCase(
        "Disappointed. Very disappointed with the quality. The fabric feels cheap and scratchy and "
        "the zipper came apart after one wash. Sadly going back, save your money.",
        "negative",
    ),
    SmokeCase(
        "Poor quality. It looked nothing like the picture online, it was huge and shapeless on me "
        "and not flattering at all. I returned it.",
        "negative",
    ),
    SmokeCase(
        "Love it! I love this dress, it fits perfectly and the fabric is so soft. The color is "
        "gorgeous and I get compliments every time I wear it. Highly recommend!",
        "positive",
    ),
    SmokeCase(
        "Perfect sweater. So comfortable and beautiful, great quality for the price. I bought it in "
        "two colors, that's how much I love it.",
        "positive",
    ),
)


class DeployAction(StrEnum):
    """What the deploy asset does with the version best_model registered."""

    DEPLOY = "deploy"
    WAIT_FOR_APPROVAL = "wait_for_approval"
    REFUSE = "refuse"


@dataclass(frozen=True)
class DeployDecision:
    action: DeployAction
    reason: str


def best_model_sha256(files: Mapping[str, bytes]) -> str:
    """The SHA-256 of best_model's ONNX file, checked against the one its model card records."""
    try:
        onnx_bytes, card = files["model.onnx"], json.loads(files["model_card.json"])
        recorded = card["onnx"]["sha256"]
    except (KeyError, TypeError, ValueError) as exc:
        raise DeployError(
            f"best_model's output lacks model.onnx or a model card with onnx.sha256: {exc!r}"
        ) from exc
    actual = hashlib.sha256(onnx_bytes).hexdigest()
    if actual != recorded:
        raise DeployError(f"best_model's model.onnx has sha256 {actual}, its model card records {recorded}")
    return actual


def version_with_sha256(versions: Iterable[ModelVersion], sha256: str) -> ModelVersion:
    """The registered version whose ONNX file has this SHA-256 (DeployError when none has)."""
    for version in versions:
        if version.sha256 == sha256:
            return version
    raise DeployError(f"no registered model version has ONNX sha256 {sha256}: best_model was not registered")


def deploy_decision(version: ModelVersion) -> DeployDecision:
    """Approved versions are deployed; pending ones wait for a person; rejected ones never go."""
    if version.status == APPROVED:
        return DeployDecision(DeployAction.DEPLOY, f"{version.version} is {APPROVED}")
    if version.status == PENDING:
        return DeployDecision(
            DeployAction.WAIT_FOR_APPROVAL,
            f"{version.version} is {PENDING}: waiting for approval (mlplatform models approve {version.version})",
        )
    return DeployDecision(DeployAction.REFUSE, f"{version.version} is {version.status}: it is never deployed")


def smoke_cases(card: Mapping[str, Any]) -> tuple[SmokeCase, ...]:
    """The reviews a version's smoke test asks: its card's `smoke_cases`, else the canned `SMOKE_CASES`."""
    recorded = card.get("smoke_cases")
    if not recorded:
        return SMOKE_CASES
    return tuple(SmokeCase(str(case["text"]), str(case["expected"])) for case in recorded)


def smoke_request(cases: Sequence[SmokeCase] = SMOKE_CASES) -> dict[str, Any]:
    """The `POST /predict` body asking about the smoke reviews."""
    return {
        "reviews": [
            {"text": case.text, "product_id": "smoke-test", "review_id": f"smoke-{index}"}
            for index, case in enumerate(cases)
        ]
    }


@dataclass(frozen=True)
class SmokeResult:
    """The judged smoke test: passed, the one-line reason when not, and what was seen."""

    passed: bool
    reason: str
    served_version: str | None
    latency_ms: float
    labels: tuple[str | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "served_version": self.served_version,
            "latency_ms": round(self.latency_ms, 3),
            "labels": list(self.labels),
        }


def _answered_labels(body: Mapping[str, Any], expected_count: int) -> tuple[list[str | None], str | None]:
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        return [], "the answer has no 'predictions' list"
    labels = [entry.get("label") if isinstance(entry, Mapping) else None for entry in predictions]
    if len(labels) != expected_count:
        return labels, f"{len(labels)} predictions for {expected_count} reviews"
    return labels, None


def judge_smoke(
    body: Mapping[str, Any],
    latency_ms: float,
    expected_version: str,
    max_latency_ms: float,
    cases: Sequence[SmokeCase] = SMOKE_CASES,
) -> SmokeResult:
    """Judge a `/predict` answer to `smoke_request(cases)`: labels, the version named, the latency."""
    served = body.get("model_version")
    served_version = served if isinstance(served, str) else None
    problems = []
    if served_version != expected_version:
        problems.append(f"answered by model version {served_version!r}, expected {expected_version!r}")
    labels, shape_problem = _answered_labels(body, len(cases))
    if shape_problem is not None:
        problems.append(shape_problem)
    else:
        wrong = [
            f"review {index} ({case.expected}) labelled {label!r}"
            for index, (case, label) in enumerate(zip(cases, labels, strict=True))
            if label != case.expected
        ]
        if wrong:
            problems.append(f"{len(wrong)} of {len(cases)} smoke reviews wrong: {', '.join(wrong)}")
    if latency_ms > max_latency_ms:
        problems.append(f"latency {latency_ms:.1f} ms over the {max_latency_ms:.0f} ms budget")
    reason = "; ".join(problems)
    return SmokeResult(not problems, reason, served_version, latency_ms, tuple(labels))


def failed_smoke(reason: str, latency_ms: float = 0.0, served_version: str | None = None) -> SmokeResult:
    """A smoke test that could not be judged (endpoint unreachable, never reported the version...)."""
    return SmokeResult(False, reason, served_version, latency_ms, ())


# ------------------------------------------------------------------------------ the deploy section


def deployment_lock_path(home: PlatformHome) -> Path:
    """The flock file serialising deployments of a home on the file backend."""
    return home.registry / DEPLOYMENT_LOCK_FILE


def _lock_location(home: PlatformHome) -> str:
    if home.pg_url is None:
        return str(deployment_lock_path(home))
    return f"PostgreSQL advisory lock {DEPLOYMENT_LOCK!r}, {postgres_location(home.pg_url)}"


@contextmanager
def deployment_lock(home: PlatformHome, timeout_s: float) -> Iterator[float]:
    """Hold the home's deployment lock for the block; yields how many seconds it waited for it.

    Waits at most `timeout_s` for a deployment holding it to end, then raises DeploymentLockTimeout
    (nothing inside the block has run). Released when the block ends, however it ends.
    """
    started = time.monotonic()
    with ExitStack() as held:
        try:
            if home.pg_url is None:
                held.enter_context(file_lock(deployment_lock_path(home), timeout_s=timeout_s))
            else:
                held.enter_context(
                    postgres_transaction(home.pg_url, lock=DEPLOYMENT_LOCK, lock_timeout_s=timeout_s)
                )
        except (LockTimeout, RecordsLockTimeout):
            raise DeploymentLockTimeout(
                f"another deployment held the deployment lock ({_lock_location(home)}) for more than "
                f"{timeout_s:g} s ([deployment] lock_timeout_s): nothing was deployed, aliases untouched"
            ) from None
        yield time.monotonic() - started


class DeployState(StrEnum):
    """How a deployment ended."""

    DEPLOYED = "deployed"  # promoted and smoke-tested
    ROLLED_BACK = "rolled_back"  # promoted, smoke test failed, both aliases restored
    REFUSED = "refused"  # failed the in-process smoke test, never promoted
    ROLLOUT_STARTED = (
        "rollout_started"  # smoke-tested in-process, now shadowed or canaried (core/release/rollout.py)
    )
    IN_ROLLOUT = "in_rollout"  # its rollout already runs: nothing changed


@dataclass(frozen=True)
class DeployOutcome:
    """What a deployment did, its smoke test, and how long it waited for the deployment lock."""

    state: DeployState
    smoke: SmokeResult
    lock_wait_s: float = 0.0


SmokeTest = Callable[[ModelVersion], SmokeResult]


def deploy_live(
    registry: ModelRegistry, target: ModelVersion, smoke_test: SmokeTest, by: str
) -> DeployOutcome:
    """Promote, smoke-test what now serves production, restore both aliases exactly on failure.

    Call it under `deployment_lock`: another deployment moving the aliases in between would be judged
    (and rolled back) as this one.
    """
    before = registry.aliases()
    registry.promote(target.version, by=by)
    try:
        smoke = smoke_test(target)
    except Exception as exc:  # a smoke test that crashed did not pass: never leave the promotion behind
        _restore(registry, before, by, f"smoke_test crashed: {exc}")
        raise
    if smoke.passed:
        return DeployOutcome(DeployState.DEPLOYED, smoke)
    _restore(registry, before, by, f"smoke_test: {smoke.reason}")
    return DeployOutcome(DeployState.ROLLED_BACK, smoke)


def _restore(registry: ModelRegistry, before: Mapping[str, str], by: str, reason: str) -> None:
    registry.restore_aliases(before.get(PRODUCTION), before.get(PREVIOUS), by=by, reason=reason)


def smoke_or_reject(
    registry: ModelRegistry, target: ModelVersion, smoke_test: SmokeTest, by: str
) -> SmokeResult:
    """Smoke-test the version in-process; one that fails is rejected (unless it serves production)."""
    smoke = smoke_test(target)
    if not smoke.passed and PRODUCTION not in target.aliases:
        registry.reject(target.version, reason=f"smoke_test: {smoke.reason}", by=by)
    return smoke


def deploy_offline(
    registry: ModelRegistry, target: ModelVersion, smoke_test: SmokeTest, by: str
) -> DeployOutcome:
    """Smoke-test the version in-process, then promote; a failing version is rejected, never promoted."""
    smoke = smoke_or_reject(registry, target, smoke_test, by)
    if smoke.passed:
        registry.promote(target.version, by=by)
        return DeployOutcome(DeployState.DEPLOYED, smoke)
    return DeployOutcome(DeployState.REFUSED, smoke)


def deploy_exclusively(
    home: PlatformHome,
    registry: ModelRegistry,
    target: ModelVersion,
    smoke_test: SmokeTest,
    *,
    live: bool,
    lock_timeout_s: float,
    by: str,
) -> DeployOutcome:
    """Deploy `target` (live: `deploy_live`, else `deploy_offline`) under the home's deployment lock.

    The version is read again once the lock is held: a deployment that ran meanwhile may have moved
    its aliases. DeploymentLockTimeout when the lock is not taken within `lock_timeout_s`.
    """
    with deployment_lock(home, lock_timeout_s) as waited_s:
        current = registry.get(target.version)
        deploy_with = deploy_live if live else deploy_offline
        outcome = deploy_with(registry, current, smoke_test, by)
    return DeployOutcome(outcome.state, outcome.smoke, waited_s)


@dataclass(frozen=True)
class Deployment:
    """A finished deployment of `target`: its outcome and where the aliases and the endpoint stand now."""

    target: ModelVersion
    outcome: DeployOutcome
    production: str | None
    previous: str | None
    endpoint_url: str | None
    rollout: Mapping[str, Any] | None = None  # the rollout it started or is in (Rollout.to_dict())

    @property
    def smoke_description(self) -> str:
        smoke = self.outcome.smoke
        if self.outcome.state is DeployState.IN_ROLLOUT:
            return f"{self.target.version} is in its rollout already: smoke-tested when it started"
        return smoke.reason or f"{len(smoke.labels)} smoke reviews right, answered by {self.target.version}"

    def record(self) -> dict[str, Any]:
        """What `sentiment_endpoint` stores: the state, the versions the aliases name, the smoke test."""
        return {
            "state": self.outcome.state.value,
            "deployed_version": self.target.version,
            "production": self.production,
            "previous": self.previous,
            "endpoint_url": self.endpoint_url,
            "smoke_test": self.outcome.smoke.to_dict(),
            "rollout": None if self.rollout is None else dict(self.rollout),
        }

    def metadata(self) -> dict[str, float | str]:
        smoke = self.outcome.smoke
        return {
            "state": self.outcome.state.value,
            "deployed_version": self.target.version,
            "production": str(self.production),
            "previous": str(self.previous),
            "endpoint_url": str(self.endpoint_url or "in-process (no endpoint configured)"),
            "smoke_latency_ms": smoke.latency_ms,
            "lock_wait_s": round(self.outcome.lock_wait_s, 3),
            "reason": smoke.reason or "smoke test passed",
            **(
                {}
                if self.rollout is None
                else {"rollout": f"{self.rollout['strategy']} {self.rollout['id']}"}
            ),
        }


def deploy_version(
    home: PlatformHome,
    registry: ModelRegistry,
    target: ModelVersion,
    smoke_test: SmokeTest,
    rules: DeploymentRules,
    *,
    live: bool,
    endpoint_url: str | None,
    by: str,
) -> Deployment:
    """`deploy_exclusively` within `rules.lock_timeout_s`, and the aliases as the deployment left them."""
    outcome = deploy_exclusively(
        home, registry, target, smoke_test, live=live, lock_timeout_s=rules.lock_timeout_s, by=by
    )
    aliases = registry.aliases()
    return Deployment(target, outcome, aliases.get(PRODUCTION), aliases.get(PREVIOUS), endpoint_url)
