"""The judgement of a running rollout on the live traffic of its current step: advance, promote, abort or wait.

Input: the prediction log with shadow rows (core/monitoring/prediction_log.py, roles answered and
shadow), cut to the step's window (rows since the step began); the labels that arrived; the candidate's
drift baseline. Production's rows are its answered ones; the candidate's are every row in its name,
answered (canary) or shadow, and those with an `error` are its failures; a shadow the endpoint had no
room to hand over (`SHADOW_DROPPED`) is not the candidate's doing and is left out.

Checks (`MonitorOutcome`s; an ERROR decides, a WARN is reported):

- agreement: shadow: the share of the same requests the candidate labelled as production answered
  (rows paired by capture_id and row); canary, whose requests differ: 1 - TVD of the two versions'
  predicted-class shares. At least `[rollout] min_agreement`.
- class_shares: the largest gap in one class's predicted share, candidate vs production, at most
  `max_class_share_gap` (a candidate that quietly moves reviews from one class to another).
- error_rate: the candidate's failed predictions over all it was asked, at most `max_error_rate`.
- latency: the candidate's p99 (request latency of its answers; its own scoring time in a shadow), at
  most `max_p99_latency_ms`.
- live_quality: with at least `[monitoring] min_labelled_rows` labelled rows of each version in the
  window, the candidate's live macro-F1 at most `max_macro_f1_drop` below production's.
- drift: the candidate's inputs and outputs against its own training baseline (core/monitoring/drift.py,
  `[monitoring]` bounds): its worst metric's severity.

Until the candidate made `min_rows` predictions in the step a check is "not enough data yet": passed,
`evaluated = 0` (a rollout waiting for traffic is not a fault); live_quality and drift wait for their own
minimums and never hold a rollout back. Verdict (`RolloutAction`): abort when production moved or the
candidate was rejected meanwhile, or any check failed with ERROR; wait while data is short or the step
is younger than `min_step_s`; else advance a canary to its next percent, or promote (a shadow of a
version that is not Approved waits for a person instead).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl

from mlplatform.core.data.contract import DatasetContract
from mlplatform.core.monitoring.capture import SHADOW_DROPPED, CaptureRole
from mlplatform.core.monitoring.drift import DriftBaseline, MissingBaseline, drift_baseline, drift_report
from mlplatform.core.monitoring.health import ERROR_RATE_CHECK, LATENCY_CHECK
from mlplatform.core.monitoring.inputs import MonitoringInputs
from mlplatform.core.monitoring.live_quality import LIVE_QUALITY_CHECK
from mlplatform.core.monitoring.prediction_log import prediction_log
from mlplatform.core.monitoring.rules import ERROR, MonitorOutcome, require_columns
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import MonitoringRules, RolloutRules
from mlplatform.core.release.registry import APPROVED, PRODUCTION, REJECTED, IntegrityError, ModelRegistry
from mlplatform.core.release.rollout import (
    Rollout,
    RolloutAction,
    RolloutOutcome,
    RolloutStrategy,
    conclude,
    current_rollout,
)
from mlplatform.core.scoring.model import ScoringError, model_classes
from mlplatform.core.training.evaluation import classification_metrics

AGREEMENT_CHECK = "agreement"
CLASS_SHARES_CHECK = "class_shares"
DRIFT_CHECK = "drift"
ROLLOUT_CHECKS: tuple[str, ...] = (
    AGREEMENT_CHECK,
    CLASS_SHARES_CHECK,
    ERROR_RATE_CHECK,
    LATENCY_CHECK,
    LIVE_QUALITY_CHECK,
    DRIFT_CHECK,
)
"""Every check of a judgement, in order: also the `rollout` asset's check names."""
_LOG_COLUMNS = ("time", "model_version", "role", "error", "label", "latency_ms", "capture_id", "row")


@dataclass(frozen=True)
class RolloutJudgement:
    """One judgement of a rollout's current step: its numbers, its checks, and what to do."""

    rollout: Rollout
    judged_at: str
    numbers: dict[str, float | int | str]
    outcomes: tuple[MonitorOutcome, ...]
    action: RolloutAction
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout": self.rollout.to_dict(),
            "judged_at": self.judged_at,
            "action": self.action.value,
            "reason": self.reason,
            "numbers": dict(self.numbers),
            "outcomes": [outcome.to_dict() for outcome in self.outcomes],
        }

    def metadata(self) -> dict[str, float | int | str]:
        return {
            "rollout": self.rollout.id,
            "strategy": self.rollout.strategy.value,
            "candidate": self.rollout.candidate,
            "production": self.rollout.production,
            "percent": self.rollout.percent,
            "action": self.action.value,
            "reason": self.reason,
            **self.numbers,
        }


def _waiting(name: str, why: str, metadata: Mapping[str, float | int | str] | None = None) -> MonitorOutcome:
    return MonitorOutcome(
        name, True, None, f"not enough data yet: {why}", {"evaluated": 0, **(metadata or {})}
    )


def _bounded(name: str, value: float, bound: float, *, at_least: bool, what: str) -> MonitorOutcome:
    """Passed when `value` is on the right side of `bound`; an ERROR otherwise."""
    passed = value >= bound if at_least else value <= bound
    relation = (">=" if passed else "<") if at_least else ("<=" if passed else ">")
    metadata = {"evaluated": 1, "value": value, "bound": bound}
    return MonitorOutcome(
        name, passed, None if passed else ERROR, f"{what} {value:.4f} {relation} {bound}", metadata
    )


def _shares(labels: pl.Series, classes: Sequence[str]) -> list[float]:
    counts = dict(labels.value_counts().iter_rows())
    total = labels.len()
    return [counts.get(label, 0) / total if total else 0.0 for label in classes]


def _p99(latencies: pl.Series) -> float:
    return float(np.percentile(latencies.drop_nulls().to_numpy(), 99))


def _macro_f1(rows: pl.DataFrame, truth: pl.DataFrame, classes: Sequence[str]) -> tuple[int, float | None]:
    joined = rows.filter(pl.col("review_id").is_not_null()).join(truth, on="review_id", how="inner")
    if joined.height == 0:
        return 0, None
    metrics = classification_metrics(joined["true_label"].to_list(), joined["label"].to_list(), classes)
    return joined.height, float(metrics["macro_f1"])


@dataclass(frozen=True)
class _Window:
    """The step's rows: production's answers, everything the candidate was asked, what it predicted."""

    production: pl.DataFrame
    candidate: pl.DataFrame
    predicted: pl.DataFrame
    answered: pl.DataFrame


def _window(log: pl.DataFrame, rollout: Rollout) -> _Window:
    require_columns(log, _LOG_COLUMNS, "prediction log")
    since = datetime.fromisoformat(rollout.step_started_at)
    window = log.filter(pl.col("time") >= since)
    answered = window.filter(pl.col("role") == CaptureRole.ANSWERED.value)
    dropped = pl.col("error").str.starts_with(SHADOW_DROPPED).fill_null(False)  # capacity, not the candidate
    candidate = window.filter((pl.col("model_version") == rollout.candidate) & ~dropped)
    return _Window(
        production=answered.filter(pl.col("model_version") == rollout.production),
        candidate=candidate,
        predicted=candidate.filter(pl.col("error").is_null()),
        answered=answered,
    )


def _agreement(
    window: _Window, rollout: Rollout, classes: Sequence[str], rules: RolloutRules
) -> MonitorOutcome:
    if rollout.strategy is RolloutStrategy.SHADOW:
        pairs = window.predicted.select("capture_id", "row", pl.col("label").alias("candidate_label")).join(
            window.production.select("capture_id", "row", "label"), on=["capture_id", "row"], how="inner"
        )
        if pairs.height == 0:
            return _waiting(AGREEMENT_CHECK, "no request answered by production and scored by the candidate")
        value = float((pairs["candidate_label"] == pairs["label"]).mean())
        what = f"{pairs.height} shadowed requests: the candidate agreed with production on"
    else:
        if window.production.height == 0:
            return _waiting(AGREEMENT_CHECK, "no request answered by production in this step")
        candidate, production = (
            _shares(window.predicted["label"], classes),
            _shares(window.production["label"], classes),
        )
        value = 1.0 - sum(abs(a - b) for a, b in zip(candidate, production, strict=True)) / 2
        what = "1 - TVD of the candidate's and production's predicted-class shares:"
    return _bounded(AGREEMENT_CHECK, value, rules.min_agreement, at_least=True, what=what)


def _class_shares(
    window: _Window, classes: Sequence[str], rules: RolloutRules
) -> tuple[MonitorOutcome, dict[str, float]]:
    if window.production.height == 0:
        return _waiting(CLASS_SHARES_CHECK, "no request answered by production in this step"), {}
    candidate, production = (
        _shares(window.predicted["label"], classes),
        _shares(window.production["label"], classes),
    )
    gaps = {label: a - b for label, a, b in zip(classes, candidate, production, strict=True)}
    worst = max(gaps, key=lambda label: abs(gaps[label]))
    numbers = {
        **{f"candidate_share/{label}": share for label, share in zip(classes, candidate, strict=True)},
        **{f"production_share/{label}": share for label, share in zip(classes, production, strict=True)},
    }
    outcome = _bounded(
        CLASS_SHARES_CHECK,
        abs(gaps[worst]),
        rules.max_class_share_gap,
        at_least=False,
        what=f"largest predicted-share gap ({worst}: {gaps[worst]:+.4f}), candidate vs production,",
    )
    return outcome, numbers


def _live_quality(
    window: _Window,
    labels: pl.DataFrame,
    classes: Sequence[str],
    rules: RolloutRules,
    monitoring: MonitoringRules,
) -> tuple[MonitorOutcome, dict[str, float | int]]:
    if labels.height == 0:
        return _waiting(LIVE_QUALITY_CHECK, "no labels have arrived"), {}
    truth = labels.select("review_id", pl.col("label").alias("true_label")).unique(subset="review_id")
    candidate_rows, candidate_f1 = _macro_f1(window.predicted, truth, classes)
    production_rows, production_f1 = _macro_f1(window.production, truth, classes)
    numbers = {"candidate_labelled_rows": candidate_rows, "production_labelled_rows": production_rows}
    numbers.update({"candidate_macro_f1": candidate_f1} if candidate_f1 is not None else {})
    numbers.update({"production_macro_f1": production_f1} if production_f1 is not None else {})
    if min(candidate_rows, production_rows) < monitoring.min_labelled_rows:
        why = (
            f"{candidate_rows} labelled rows of the candidate, {production_rows} of production "
            f"(each needs {monitoring.min_labelled_rows})"
        )
        return _waiting(LIVE_QUALITY_CHECK, why), numbers
    assert candidate_f1 is not None and production_f1 is not None
    drop = production_f1 - candidate_f1
    outcome = _bounded(
        LIVE_QUALITY_CHECK,
        drop,
        rules.max_macro_f1_drop,
        at_least=False,
        what=f"live macro-F1 {candidate_f1:.4f} vs production's {production_f1:.4f}: drop",
    )
    return outcome, numbers


def _drift(
    window: _Window, baseline: DriftBaseline | None, monitoring: MonitoringRules
) -> tuple[MonitorOutcome, dict[str, float]]:
    if baseline is None:
        return _waiting(DRIFT_CHECK, "the candidate has no training baseline"), {}
    rows = window.predicted.height
    if rows < monitoring.min_rows:
        return _waiting(
            DRIFT_CHECK, f"{rows} candidate predictions < [monitoring] min_rows {monitoring.min_rows}"
        ), {}
    report = drift_report(window.predicted, baseline, monitoring)
    failed = [outcome for outcome in report.outcomes if not outcome.passed]
    numbers = {f"drift/{name}": value for name, value in report.metrics.items()}
    severity = report.worst_severity
    if severity is None:
        return MonitorOutcome(
            DRIFT_CHECK,
            True,
            None,
            f"every drift metric of {rows} predictions within its WARN bound",
            {"evaluated": 1},
        ), numbers
    worst = [outcome for outcome in failed if outcome.severity == severity]
    description = "; ".join(outcome.description for outcome in worst)
    return MonitorOutcome(
        DRIFT_CHECK, False, severity, description, {"evaluated": 1, "failed": len(failed)}
    ), numbers


def _verdict(
    rollout: Rollout,
    outcomes: Sequence[MonitorOutcome],
    *,
    asked: int,
    step_age_s: float,
    candidate_status: str,
    production_now: str | None,
    rules: RolloutRules,
) -> tuple[RolloutAction, str]:
    if production_now != rollout.production:
        return (
            RolloutAction.ABORT,
            f"production moved from {rollout.production} to {production_now} during the rollout",
        )
    if candidate_status == REJECTED:
        return RolloutAction.ABORT, f"{rollout.candidate} was rejected during the rollout"
    failed = [outcome for outcome in outcomes if not outcome.passed and outcome.severity == ERROR]
    if failed:
        return RolloutAction.ABORT, "; ".join(f"{outcome.name}: {outcome.description}" for outcome in failed)
    if asked < rules.min_rows:
        return RolloutAction.WAIT, f"{asked} of {rules.min_rows} candidate predictions in this step"
    if step_age_s < rules.min_step_s:
        return RolloutAction.WAIT, f"the step ran {step_age_s:.0f} s of its {rules.min_step_s:g} s"
    if rollout.next_percent is not None:
        return (
            RolloutAction.ADVANCE,
            f"step at {rollout.percent}% fit on {asked} predictions: on to {rollout.next_percent}%",
        )
    if candidate_status != APPROVED:
        return RolloutAction.WAIT, (
            f"fit on {asked} predictions, but {rollout.candidate} is {candidate_status}: "
            f"promote it once approved (mlplatform models approve {rollout.candidate})"
        )
    return RolloutAction.PROMOTE, f"every check fit on {asked} predictions of {rollout.candidate}"


def judge_rollout(
    log: pl.DataFrame,
    labels: pl.DataFrame,
    rollout: Rollout,
    *,
    classes: Sequence[str],
    baseline: DriftBaseline | None,
    candidate_status: str,
    production_now: str | None,
    rules: RolloutRules,
    monitoring: MonitoringRules,
    now: datetime,
) -> RolloutJudgement:
    """Judge `rollout`'s current step on `log` (answered and shadow rows; see the module docstring).

    `labels` is ground truth (`review_id`, `label`; possibly empty); `classes` the classes both versions
    answer; `candidate_status` and `production_now` are the registry's as of now.
    """
    window = _window(log, rollout)
    asked = window.candidate.height
    failures = asked - window.predicted.height
    numbers: dict[str, float | int | str] = {
        "window_start": rollout.step_started_at,
        "candidate_rows": asked,
        "candidate_failures": failures,
        "production_rows": window.production.height,
        "answered_rows": window.answered.height,
    }
    if window.answered.height:
        served = window.answered.filter(pl.col("model_version") == rollout.candidate).height
        numbers["candidate_answer_share"] = served / window.answered.height
    enough = asked >= rules.min_rows
    short = f"{asked} of {rules.min_rows} candidate predictions in this step"
    live_quality, quality_numbers = _live_quality(window, labels, classes, rules, monitoring)
    drift, drift_numbers = _drift(window, baseline, monitoring)
    if enough and window.predicted.height:
        agreement = _agreement(window, rollout, classes, rules)
        class_shares, share_numbers = _class_shares(window, classes, rules)
        latency = _bounded(
            LATENCY_CHECK,
            _p99(window.predicted["latency_ms"]),
            rules.max_p99_latency_ms,
            at_least=False,
            what="the candidate's p99 latency (ms)",
        )
    else:
        agreement, class_shares, latency, share_numbers = (
            _waiting(AGREEMENT_CHECK, short),
            _waiting(CLASS_SHARES_CHECK, short),
            _waiting(LATENCY_CHECK, short),
            {},
        )
    error_rate = (
        _bounded(
            ERROR_RATE_CHECK,
            failures / asked,
            rules.max_error_rate,
            at_least=False,
            what=f"{failures} of {asked} candidate predictions failed: rate",
        )
        if enough
        else _waiting(ERROR_RATE_CHECK, short)
    )
    for name, rows in (("candidate", window.predicted), ("production", window.production)):
        if rows.height:
            numbers[f"{name}_p50_latency_ms"] = float(
                np.percentile(rows["latency_ms"].drop_nulls().to_numpy(), 50)
            )
            numbers[f"{name}_p99_latency_ms"] = _p99(rows["latency_ms"])
    for outcome in (agreement, class_shares, error_rate):
        if outcome.metadata.get("evaluated"):
            numbers[outcome.name] = outcome.metadata["value"]
    numbers.update(share_numbers)
    numbers.update(quality_numbers)
    numbers.update(drift_numbers)
    outcomes = (agreement, class_shares, error_rate, latency, live_quality, drift)
    step_age_s = (now - datetime.fromisoformat(rollout.step_started_at)).total_seconds()
    numbers["step_age_s"] = step_age_s
    action, reason = _verdict(
        rollout,
        outcomes,
        asked=asked,
        step_age_s=step_age_s,
        candidate_status=candidate_status,
        production_now=production_now,
        rules=rules,
    )
    return RolloutJudgement(rollout, now.isoformat(timespec="seconds"), numbers, outcomes, action, reason)


# --- one round: read the window, judge it, act ------------------------------------------------------


NO_ROLLOUT = "no rollout is running"


@dataclass(frozen=True)
class RolloutRound:
    """One round of the `rollout` asset: the judgement (None: no rollout ran) and what was done."""

    judgement: RolloutJudgement | None
    outcome: RolloutOutcome | None

    @property
    def outcomes(self) -> tuple[MonitorOutcome, ...]:
        """The checks; with no rollout running each passes, saying so (nothing to judge is no fault)."""
        if self.judgement is None:
            return tuple(
                MonitorOutcome(name, True, None, NO_ROLLOUT, {"evaluated": 0}) for name in ROLLOUT_CHECKS
            )
        return self.judgement.outcomes

    def record(self) -> dict[str, Any]:
        """What the asset stores: the judgement with its numbers and the action taken."""
        if self.judgement is None or self.outcome is None:
            return {"rollout": None, "action": None, "reason": NO_ROLLOUT}
        return {**self.judgement.to_dict(), "after": self.outcome.to_dict()}

    def metadata(self) -> dict[str, float | int | str]:
        """The judgement's numbers, and the action taken with its reason (a verdict the rollout's
        change meanwhile kept from being carried out says so)."""
        if self.judgement is None or self.outcome is None:
            return {"action": "none", "reason": NO_ROLLOUT}
        return {
            **self.judgement.metadata(),
            "action": self.outcome.action.value,
            "reason": self.outcome.reason,
        }


def _refused_candidate(rollout: Rollout, reason: str, now: datetime) -> RolloutJudgement:
    """The judgement of a candidate whose file cannot be used: abort at once."""
    refused = MonitorOutcome(ERROR_RATE_CHECK, False, ERROR, reason, {"evaluated": 1})
    others = tuple(
        _waiting(name, "the candidate was refused") for name in ROLLOUT_CHECKS if name != ERROR_RATE_CHECK
    )
    return RolloutJudgement(
        rollout, now.isoformat(timespec="seconds"), {}, (refused, *others), RolloutAction.ABORT, reason
    )


def judge_running_rollout(
    home: PlatformHome,
    registry: ModelRegistry,
    store: ArtifactStore,
    inputs: MonitoringInputs,
    contract: DatasetContract,
    *,
    rules: RolloutRules,
    monitoring: MonitoringRules,
    lock_timeout_s: float,
    now: datetime,
    by: str,
) -> RolloutRound:
    """Judge the running rollout on the capture and labels `inputs` names (labels read by `contract`),
    then carry the verdict out.

    A candidate whose file fails its hash check (or cannot be read as a model) is aborted at once.
    """
    rollout = current_rollout(registry)
    if rollout is None:
        return RolloutRound(None, None)
    try:
        classes = model_classes(registry.verify(rollout.candidate))
    except (IntegrityError, ScoringError) as exc:
        judgement = _refused_candidate(rollout, f"candidate {rollout.candidate} refused: {exc}", now)
    else:
        log, _ = prediction_log(inputs.capture(), roles=(CaptureRole.ANSWERED, CaptureRole.SHADOW))
        try:
            baseline: DriftBaseline | None = drift_baseline(store, registry, rollout.candidate)
        except MissingBaseline:
            baseline = None
        judgement = judge_rollout(
            log,
            inputs.labels(contract),
            rollout,
            classes=classes,
            baseline=baseline,
            candidate_status=registry.get(rollout.candidate).status,
            production_now=registry.aliases().get(PRODUCTION),
            rules=rules,
            monitoring=monitoring,
            now=now,
        )
    outcome = conclude(
        home,
        registry,
        rollout,
        judgement.action,
        reason=judgement.reason,
        by=by,
        lock_timeout_s=lock_timeout_s,
    )
    return RolloutRound(judgement, outcome)
