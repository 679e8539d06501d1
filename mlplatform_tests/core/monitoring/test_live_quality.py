"""Live quality: predictions joined with late ground truth, per version and day, against the test metrics."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.features import review_ids
from mlplatform.core.monitoring.live_quality import LIVE_QUALITY_CHECK, ground_truth, live_quality
from mlplatform.core.monitoring.rules import ERROR, WARN, MonitoringError
from mlplatform.core.platform.settings import MonitoringRules, Settings
from mlplatform_tests.core.data.generated import FIVE_CLASS, TWO_CLASS, generated_drop

CLOTHING = load_contract()
LABELS = CLOTHING.classes


def card(classes=LABELS, macro_f1: float = 0.80) -> dict:
    """The parts of a model card live quality reads: the classes and the test macro-F1."""
    return {"model": {"classes": list(classes)}, "metrics": {"test": {"macro_f1": macro_f1}}}


CARD_METRICS = {"v1": card(), "v2": card()}
START = datetime(2024, 5, 1, 8, tzinfo=UTC)


@pytest.fixture
def rules(settings: Settings) -> MonitoringRules:
    return settings.monitoring


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
    quality = live_quality(log, ground_truth(ratings, CLOTHING), CARD_METRICS, rules)
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
    with pytest.raises(MonitoringError, match="conflicting labels"):
        ground_truth(conflicting, CLOTHING)
    with pytest.raises(MonitoringError, match=r"the contract's label rule maps .*row 0"):
        ground_truth(pl.DataFrame({"review_id": ["r0"], "rating": [9]}), CLOTHING)
    with pytest.raises(MonitoringError, match="among the classes"):
        ground_truth(pl.DataFrame({"review_id": ["r0"], "label": ["great"]}), CLOTHING)
    with pytest.raises(MonitoringError, match="review_id"):
        ground_truth(pl.DataFrame({"rating": [1]}), CLOTHING)
    with pytest.raises(MonitoringError, match="label source column 'rating'"):
        ground_truth(pl.DataFrame({"review_id": ["r0"]}), CLOTHING)
    with pytest.raises(MonitoringError, match="v3"):
        live_quality(scored(truth, truth, version="v3"), labels_for(truth), CARD_METRICS, rules)


def test_ground_truth_follows_the_contracts_id_and_label_rule() -> None:
    # five classes: the id column (by its source name) and the 1-10 rating (by its source name)
    landed = pl.DataFrame({"ReviewKey": ["key-1", "key-2", "key-3"], "Stars": ["1", "6", "10"]})
    truth = ground_truth(landed, FIVE_CLASS)
    assert truth.rows() == [("key-1", "awful"), ("key-2", "okay"), ("key-3", "great")]
    # two classes, no id column: the content hash of the identity columns, as the reviews table makes it
    drop = generated_drop(TWO_CLASS, rows=4)
    landed = drop.select(pl.col("sentence"), pl.col("label").cast(pl.String))
    truth = ground_truth(landed, TWO_CLASS)
    assert truth["review_id"].to_list() == review_ids(drop, TWO_CLASS).to_list()
    mapped = {"0": "negative", "1": "positive"}
    assert truth["label"].to_list() == [mapped[value] for value in drop["label"].to_list()]
    with pytest.raises(MonitoringError, match=r"lack a review id or a label the contract's label rule maps"):
        ground_truth(landed.with_columns(pl.lit("2").alias("label")), TWO_CLASS)


@pytest.mark.parametrize("contract", [TWO_CLASS, FIVE_CLASS], ids=["two-class", "five-class"])
def test_live_quality_is_judged_over_each_versions_own_classes(contract, rules) -> None:
    classes = contract.classes
    truth = [classes[index % len(classes)] for index in range(300)]
    wrong = [
        classes[(classes.index(label) + 1) % len(classes)] if index % 2 else label
        for index, label in enumerate(truth)
    ]
    cards = {"v1": card(classes, 0.9), "v2": card(classes, 0.9)}
    log = pl.concat([scored(truth, truth), scored(truth, wrong, version="v2")])
    quality = live_quality(log, labels_for(truth), cards, rules)
    good, bad = quality.by_version["v1"], quality.by_version["v2"]
    assert good.outcome.passed and good.metrics["macro_f1"] == 1.0
    assert list(good.to_dict()["per_class_recall"]) == list(classes)
    assert not bad.outcome.passed and bad.outcome.severity == ERROR
    assert {f"recall_{label}" for label in classes} <= set(bad.outcome.metadata)
    assert len(bad.to_dict()["confusion_matrix"]["matrix"]) == len(classes)


def test_labelled_rows_of_classes_a_version_does_not_have_are_counted_not_judged(rules) -> None:
    truth = ["negative", "neutral", "positive"] * 50
    two = ("negative", "positive")
    predicted = [label if label in two else "positive" for label in truth]
    quality = live_quality(scored(truth, predicted), labels_for(truth), {"v1": card(two, 0.9)}, rules)
    entry = quality.by_version["v1"]
    assert entry.rows_joined == 100 and entry.rows_other_classes == 50
    assert entry.metrics["macro_f1"] == 1.0
