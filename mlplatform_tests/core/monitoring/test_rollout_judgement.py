"""The judgement of a rollout's step: every check on made-up live windows, and the verdict each leads to."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from mlplatform.core.data.text import TOKEN_PATTERN
from mlplatform.core.monitoring.drift import DriftBaseline, ModelVocabulary, TrainingBaseline
from mlplatform.core.monitoring.rollout_judgement import ROLLOUT_CHECKS, judge_rollout
from mlplatform.core.monitoring.rules import ERROR
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.rollout import Rollout, RolloutAction, RolloutStrategy

CLASSES = ("negative", "neutral", "positive")
STEP_START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
NOW = STEP_START + timedelta(hours=1)
RULES = Settings.packaged().rollout.replace(min_rows=100, min_step_s=600)
MONITORING = Settings.packaged().monitoring


def rollout(strategy: str = "shadow", steps: tuple[int, ...] = (), step: int = 0) -> Rollout:
    return Rollout(
        id="r1",
        strategy=RolloutStrategy(strategy),
        candidate="v2",
        production="v1",
        steps=steps,
        step=step,
        started_at=STEP_START.isoformat(),
        started_by="test",
        step_started_at=STEP_START.isoformat(),
    )


def row(index: int, version: str, label: str | None, *, role: str = "answered", **fields) -> dict:
    return {
        "time": STEP_START + timedelta(seconds=index),
        "request_id": f"req-{index}",
        "capture_id": f"cap-{index}",
        "row": 0,
        "model_version": version,
        "role": role,
        "error": None,
        "label": label,
        "latency_ms": 2.0,
        "text": "a perfectly ordinary review text about a dress",
        "product_id": str(index % 7),
        "review_id": f"review-{index}",
        **fields,
    }


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema_overrides={"time": pl.Datetime("us", "UTC"), "error": pl.String, "label": pl.String},
    )


def shadow_traffic(count: int, candidate_label=lambda i, label: label, **candidate_fields) -> pl.DataFrame:
    """Production answers every request (classes in turn); the candidate shadows each one."""
    rows = []
    for i in range(count):
        label = CLASSES[i % 3]
        rows.append(row(i, "v1", label))
        rows.append(row(i, "v2", candidate_label(i, label), role="shadow", **candidate_fields))
    return frame(rows)


def canary_traffic(count: int, percent: int) -> pl.DataFrame:
    """Every request answered by one version: `percent` of them by the candidate."""
    return frame([row(i, "v2" if i % 100 < percent else "v1", CLASSES[i % 3]) for i in range(count)])


NO_LABELS = pl.DataFrame(schema={"review_id": pl.String, "label": pl.String})


def judge(log: pl.DataFrame, on: Rollout | None = None, **overrides):
    options = {
        "labels": NO_LABELS,
        "classes": CLASSES,
        "baseline": None,
        "candidate_status": "Approved",
        "production_now": "v1",
        "rules": RULES,
        "monitoring": MONITORING,
        "now": NOW,
        **overrides,
    }
    labels = options.pop("labels")
    return judge_rollout(log, labels, on or rollout(), **options)


def outcome(judgement, name: str):
    return next(item for item in judgement.outcomes if item.name == name)


def test_a_fit_shadow_of_an_approved_version_is_promoted():
    judgement = judge(shadow_traffic(150))

    assert judgement.action is RolloutAction.PROMOTE, judgement.reason
    assert [item.name for item in judgement.outcomes] == list(ROLLOUT_CHECKS)
    assert all(item.passed for item in judgement.outcomes)
    numbers = judgement.numbers
    assert (numbers["candidate_rows"], numbers["production_rows"], numbers["agreement"]) == (150, 150, 1.0)
    assert numbers["candidate_share/positive"] == numbers["production_share/positive"] == pytest.approx(1 / 3)
    assert numbers["candidate_answer_share"] == 0.0  # a shadow answers nobody


def test_a_fit_shadow_of_a_pending_version_waits_for_a_person():
    judgement = judge(shadow_traffic(150), candidate_status="PendingManualApproval")
    assert judgement.action is RolloutAction.WAIT
    assert "promote it once approved (mlplatform models approve v2)" in judgement.reason


def test_too_little_traffic_waits_and_no_check_fails():
    judgement = judge(shadow_traffic(40))
    assert (
        judgement.action is RolloutAction.WAIT
        and judgement.reason == "40 of 100 candidate predictions in this step"
    )
    assert all(item.passed for item in judgement.outcomes)
    assert outcome(judgement, "agreement").metadata["evaluated"] == 0


def test_a_young_step_waits_however_much_traffic_it_saw():
    judgement = judge(shadow_traffic(150), now=STEP_START + timedelta(seconds=60))
    assert judgement.action is RolloutAction.WAIT and "ran 60 s of its 600 s" in judgement.reason


def test_disagreement_with_production_aborts():
    judgement = judge(shadow_traffic(150, lambda i, label: label if i % 2 else CLASSES[(i + 1) % 3]))
    assert judgement.action is RolloutAction.ABORT
    assert judgement.reason.startswith(
        "agreement: 150 shadowed requests: the candidate agreed with production on 0."
    )
    assert outcome(judgement, "agreement").severity == ERROR


def test_a_class_quietly_gaining_share_aborts_even_when_agreement_is_high():
    # 15% of requests move to positive: agreement 0.85 passes, the positive share grows by 0.15.
    judgement = judge(shadow_traffic(300, lambda i, label: "positive" if i % 20 in (0, 3, 6) else label))
    assert outcome(judgement, "agreement").passed
    assert judgement.action is RolloutAction.ABORT
    assert "class_shares: largest predicted-share gap (positive: +0.1" in judgement.reason


def test_failed_candidate_predictions_abort_over_the_error_rate():
    traffic = shadow_traffic(150, lambda i, label: None if i < 3 else label)
    traffic = traffic.with_columns(
        pl.when(pl.col("label").is_null()).then(pl.lit("boom")).otherwise(pl.col("error")).alias("error")
    )
    judgement = judge(traffic)
    assert judgement.action is RolloutAction.ABORT
    assert "error_rate: 3 of 150 candidate predictions failed: rate 0.0200 > 0.01" in judgement.reason
    assert judgement.numbers["candidate_failures"] == 3


def test_a_slow_candidate_aborts_on_latency():
    judgement = judge(shadow_traffic(150, latency_ms=900.0))
    assert (
        judgement.action is RolloutAction.ABORT
        and "latency: the candidate's p99 latency (ms) 900" in judgement.reason
    )
    assert judgement.numbers["candidate_p99_latency_ms"] == 900.0


def test_rows_before_the_step_began_are_not_judged():
    earlier = shadow_traffic(150, lambda i, label: CLASSES[(i + 1) % 3]).with_columns(
        pl.col("time") - timedelta(days=1), ("old-" + pl.col("capture_id")).alias("capture_id")
    )
    judgement = judge(pl.concat([earlier, shadow_traffic(150)]))
    assert judgement.action is RolloutAction.PROMOTE and judgement.numbers["candidate_rows"] == 150


def test_a_canary_step_advances_then_its_last_step_promotes():
    traffic = canary_traffic(1000, 25)
    first = judge(traffic, rollout("canary", (25, 50), 0))
    assert first.action is RolloutAction.ADVANCE and first.reason.endswith("on to 50%")
    assert first.numbers["candidate_answer_share"] == 0.25 and first.numbers["agreement"] == pytest.approx(
        1.0, abs=0.01
    )
    assert judge(traffic, rollout("canary", (25, 50), 1)).action is RolloutAction.PROMOTE


def test_a_canary_whose_answers_lean_to_one_class_aborts():
    rows = [row(i, "v2", "negative") if i % 4 == 0 else row(i, "v1", CLASSES[i % 3]) for i in range(800)]
    judgement = judge(frame(rows), rollout("canary", (25, 50), 0))
    assert judgement.action is RolloutAction.ABORT
    assert "agreement: 1 - TVD" in judgement.reason and "class_shares" in judgement.reason


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"production_now": "v9"}, "production moved from v1 to v9 during the rollout"),
        ({"candidate_status": "Rejected"}, "v2 was rejected during the rollout"),
    ],
)
def test_a_registry_that_moved_under_the_rollout_aborts_it(overrides, reason):
    judgement = judge(shadow_traffic(10), **overrides)
    assert (judgement.action, judgement.reason) == (RolloutAction.ABORT, reason)


def test_live_quality_aborts_a_candidate_much_worse_on_labelled_rows():
    # Production is right on every labelled review; the candidate on a third of them.
    traffic = shadow_traffic(150, lambda i, label: CLASSES[(i + 1) % 3] if i % 3 else label)
    labels = pl.DataFrame(
        {"review_id": [f"review-{i}" for i in range(150)], "label": [CLASSES[i % 3] for i in range(150)]}
    )
    lenient = RULES.replace(min_agreement=0.0, max_class_share_gap=1.0)
    judgement = judge(traffic, labels=labels, rules=lenient)
    assert judgement.action is RolloutAction.ABORT and judgement.reason.startswith(
        "live_quality: live macro-F1"
    )
    assert (
        judgement.numbers["production_macro_f1"] == 1.0
        and judgement.numbers["candidate_labelled_rows"] == 150
    )


def test_live_quality_waits_for_enough_labels_without_holding_the_rollout_back():
    labels = pl.DataFrame({"review_id": ["review-1", "review-2"], "label": ["neutral", "positive"]})
    judgement = judge(shadow_traffic(150), labels=labels)
    assert judgement.action is RolloutAction.PROMOTE
    assert "2 labelled rows of the candidate" in outcome(judgement, "live_quality").description


def test_drift_of_the_candidate_against_its_own_baseline_aborts():
    vocabulary = ModelVocabulary(
        frozenset({"perfectly", "ordinary", "review", "text", "about", "dress"}), TOKEN_PATTERN, True, 1
    )
    training = TrainingBaseline(
        rows=1000,
        predicted_class_shares={label: 1 / 3 for label in CLASSES},
        length_counts={500: 1000},  # training texts were all long
        tokens=10_000,
        oov_rate=0.0,
    )
    baseline = DriftBaseline(training, vocabulary, model_version="v2")
    judgement = judge(shadow_traffic(300), baseline=baseline)
    assert judgement.action is RolloutAction.ABORT and judgement.reason.startswith(
        "drift: length_ks 1.0000 > ERROR bound"
    )
    assert judgement.numbers["drift/length_ks"] == 1.0


def test_without_a_baseline_drift_is_not_judged():
    judgement = judge(shadow_traffic(300))
    assert outcome(judgement, "drift").metadata["evaluated"] == 0


def test_shadows_dropped_for_capacity_are_not_the_candidates_errors():
    traffic = shadow_traffic(150, lambda i, label: None if i < 30 else label)
    traffic = traffic.with_columns(
        pl.when(pl.col("label").is_null())
        .then(pl.lit("dropped: 1024 shadowed requests were waiting"))
        .otherwise(pl.col("error"))
        .alias("error")
    )
    judgement = judge(traffic)
    assert judgement.action is RolloutAction.PROMOTE, judgement.reason
    assert (judgement.numbers["candidate_rows"], judgement.numbers["candidate_failures"]) == (120, 0)
