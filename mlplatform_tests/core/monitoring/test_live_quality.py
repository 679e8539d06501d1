"""Live quality: predictions joined with late ground truth, per version and day, against the test metrics."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from mlplatform.core.data.text import LABELS
from mlplatform.core.monitoring.live_quality import LIVE_QUALITY_CHECK, live_quality
from mlplatform.core.monitoring.rules import ERROR, WARN, MonitoringError, MonitoringRules
from mlplatform.core.platform.settings import Settings

CARD_METRICS = {"v1": {"macro_f1": 0.80}, "v2": {"macro_f1": 0.80}}
START = datetime(2024, 5, 1, 8, tzinfo=UTC)


@pytest.fixture
def rules(settings: Settings) -> MonitoringRules:
    return MonitoringRules.from_settings(settings)


def scored(truth: list[str], predicted: list[str], version: str = "v1", prefix: str = "r") -> pl.DataFrame:
    """Log rows over two days whose predictions are `predicted` for reviews labelled `truth`."""
    return pl.DataFrame(
        {
            "model_version": version,
            "time": [START + timedelta(hours=index * 24 // len(truth)) for index in range(len(truth))],
            "review_id": [f"{prefix}{index}" for index in range(len(truth))],
            "label": predicted,
        },
        schema_overrides={"time": pl.Datetime("us", "UTC")},
    )


def labels_for(truth: list[str], prefix: str = "r") -> pl.DataFrame:
    return pl.DataFrame({"review_id": [f"{prefix}{index}" for index in range(len(truth))], "label": truth})


def balanced_truth(rows: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(LABELS) for _ in range(rows)]


def test_predictions_that_agree_with_the_labels_pass(rules) -> None:
    truth = balanced_truth(300, seed=1)
    quality = live_quality(scored(truth, truth), labels_for(truth), CARD_METRICS, rules)
    version = quality.by_version["v1"]
    assert version.rows_joined == 300
    assert version.metrics["macro_f1"] == 1.0
    assert version.outcome.passed and version.outcome.severity is None
    assert quality.by_day["day"].n_unique() == 2
    assert quality.by_day["rows"].sum() == 300


def test_predictions_that_disagree_with_the_labels_fail(rules) -> None:
    truth = balanced_truth(300, seed=2)
    rotated = [
        LABELS[(LABELS.index(label) + 1) % 3] if index % 2 else label for index, label in enumerate(truth)
    ]
    quality = live_quality(scored(truth, rotated), labels_for(truth), CARD_METRICS, rules)
    outcome = quality.by_version["v1"].outcome
    assert outcome.name == LIVE_QUALITY_CHECK
    assert not outcome.passed and outcome.severity == ERROR
    assert outcome.metadata["drop"] > rules.max_macro_f1_drop
    matrix = quality.by_version["v1"].to_dict()["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == 300
    assert sum(matrix[i][i] for i in range(3)) == sum(a == b for a, b in zip(truth, rotated, strict=True))


def test_ratings_map_to_labels_and_unlabelled_versions_are_not_enough_data(rules) -> None:
    truth = ["negative", "neutral", "positive"] * 40
    ratings = pl.DataFrame({"review_id": [f"r{i}" for i in range(120)], "rating": [1, 3, 5] * 40})
    log = pl.concat([scored(truth, truth), scored(truth, truth, version="v2", prefix="unlabelled")])
    quality = live_quality(log, ratings, CARD_METRICS, rules)
    assert quality.by_version["v1"].metrics["macro_f1"] == 1.0
    assert quality.by_version["v1"].outcome.passed
    v2 = quality.by_version["v2"]
    assert v2.rows_joined == 0 and v2.metrics is None
    assert not v2.outcome.passed and v2.outcome.severity == WARN
    assert "not enough data" in v2.outcome.description


def test_conflicting_labels_and_missing_card_metrics_are_refused(rules) -> None:
    truth = ["positive"] * 5
    conflicting = pl.DataFrame({"review_id": ["r0", "r0"], "label": ["positive", "negative"]})
    with pytest.raises(MonitoringError, match="conflicting labels"):
        live_quality(scored(truth, truth), conflicting, CARD_METRICS, rules)
    with pytest.raises(MonitoringError, match="valid label"):
        live_quality(
            scored(truth, truth), pl.DataFrame({"review_id": ["r0"], "rating": [9]}), CARD_METRICS, rules
        )
    with pytest.raises(MonitoringError, match="v3"):
        live_quality(scored(truth, truth, version="v3"), labels_for(truth), CARD_METRICS, rules)
