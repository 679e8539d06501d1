"""Deploying a model: which registry version to deploy, whether it may go, and the smoke test.

The smoke test asks the serving model about a few canned clothing reviews whose answer is not in
doubt (clearly negative, clearly positive; the neutral class is too fuzzy to assert) and judges the
answer: every label as expected, the answer names the version just deployed, latency within budget.
Pure code: the endpoint call itself lives in the Dagster resource (defs/resources.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from mlplatform.core.registry import APPROVED, PENDING, ModelVersion
from mlplatform.core.settings import Settings, SettingsError


class DeployError(RuntimeError):
    """The deployment cannot go ahead (one-line message)."""


@dataclass(frozen=True)
class SmokeCase:
    """A canned review and the only acceptable label for it."""

    text: str
    expected: str


# Unambiguous reviews in the data set's own words (title and review text, as the model reads them).
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


@dataclass(frozen=True)
class DeploymentRules:
    """Deployment settings from `[deployment]`."""

    endpoint_url: str | None
    wait_timeout_s: float
    poll_interval_s: float
    request_timeout_s: float
    smoke_max_latency_ms: float

    @classmethod
    def from_settings(cls, settings: Settings) -> DeploymentRules:
        section = settings.section("deployment")
        url = str(section["endpoint_url"]).strip().rstrip("/")
        rules = cls(
            endpoint_url=url or None,
            wait_timeout_s=float(section["wait_timeout_s"]),
            poll_interval_s=float(section["poll_interval_s"]),
            request_timeout_s=float(section["request_timeout_s"]),
            smoke_max_latency_ms=float(section["smoke_max_latency_ms"]),
        )
        if url and not url.startswith(("http://", "https://")):
            raise SettingsError(f"[deployment] endpoint_url must start with http:// or https://, got {url!r}")
        if min(rules.wait_timeout_s, rules.poll_interval_s, rules.request_timeout_s) <= 0:
            raise SettingsError(
                "[deployment] wait_timeout_s, poll_interval_s and request_timeout_s must be > 0"
            )
        return rules


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


def smoke_request(cases: Sequence[SmokeCase] = SMOKE_CASES) -> dict[str, Any]:
    """The `POST /predict` body asking about the canned reviews."""
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
            problems.append(f"{len(wrong)} of {len(cases)} canned reviews wrong: {', '.join(wrong)}")
    if latency_ms > max_latency_ms:
        problems.append(f"latency {latency_ms:.1f} ms over the {max_latency_ms:.0f} ms budget")
    reason = "; ".join(problems)
    return SmokeResult(not problems, reason, served_version, latency_ms, tuple(labels))


def failed_smoke(reason: str, latency_ms: float = 0.0, served_version: str | None = None) -> SmokeResult:
    """A smoke test that could not be judged (endpoint unreachable, never reported the version...)."""
    return SmokeResult(False, reason, served_version, latency_ms, ())
