"""Live model quality: predictions joined with ground truth that arrived later, per model version and day.

Ground truth is a frame keyed by `review_id` with either a `label` or a `rating` (mapped with the
platform's rule: 1-2 negative, 3 neutral, 4-5 positive). Each captured prediction of a labelled review
counts once, so a review scored twice (two requests) counts twice: both answers were served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from mlplatform.core.data.features import label_from_rating
from mlplatform.core.data.text import LABELS
from mlplatform.core.monitoring.prediction_log import model_versions
from mlplatform.core.monitoring.rules import (
    ERROR,
    MonitoringError,
    MonitoringRules,
    MonitorOutcome,
    not_enough_data,
    require_columns,
)
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.training.evaluation import classification_metrics

LIVE_QUALITY_CHECK = "live_quality"
BY_DAY_SCHEMA: dict[str, pl.DataType] = {
    "model_version": pl.String(),
    "day": pl.Date(),
    "rows": pl.Int64(),
    "accuracy": pl.Float64(),
    "macro_f1": pl.Float64(),
}


@dataclass(frozen=True)
class VersionQuality:
    """Live quality of one model version over every labelled prediction it made (None: no labelled rows)."""

    model_version: str
    rows_joined: int
    test_macro_f1: float
    metrics: dict[str, Any] | None
    outcome: MonitorOutcome

    def to_dict(self) -> dict[str, Any]:
        metrics = self.metrics or {}
        return {
            "model_version": self.model_version,
            "rows_joined": self.rows_joined,
            "test_macro_f1": self.test_macro_f1,
            "macro_f1": metrics.get("macro_f1"),
            "per_class_recall": (
                {label: metrics["per_class"][label]["recall"] for label in LABELS} if metrics else None
            ),
            "confusion_matrix": metrics.get("confusion_matrix"),
            "outcome": self.outcome.to_dict(),
        }


@dataclass(frozen=True)
class LiveQuality:
    """Per model version: metrics and the check outcome; per version and day: rows and macro-F1."""

    by_version: dict[str, VersionQuality]
    by_day: pl.DataFrame
    labelled_reviews: int
    rows_joined: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "labelled_reviews": self.labelled_reviews,
            "rows_joined": self.rows_joined,
            "by_version": {version: entry.to_dict() for version, entry in self.by_version.items()},
            "by_day": self.by_day.with_columns(pl.col("day").cast(pl.String)).to_dicts(),
        }


def ground_truth(labels: pl.DataFrame) -> pl.DataFrame:
    """`review_id` -> `true_label`, one row per review; conflicting or unmappable labels raise."""
    require_columns(labels, ("review_id",), "labels frame")
    if "label" in labels.columns:
        truth = labels.select("review_id", pl.col("label").cast(pl.String).alias("true_label"))
    elif "rating" in labels.columns:
        truth = labels.select("review_id", label_from_rating(pl.col("rating")).alias("true_label"))
    else:
        raise MonitoringError("labels frame needs a 'label' or a 'rating' column")
    bad = truth.filter(pl.col("review_id").is_null() | ~pl.col("true_label").is_in(LABELS).fill_null(False))
    if bad.height:
        raise MonitoringError(
            f"{bad.height} label rows lack a review id or a valid label/rating (e.g. {bad.row(0, named=True)})"
        )
    truth = truth.unique(maintain_order=True)
    conflicting = truth.filter(pl.col("review_id").is_duplicated())["review_id"].unique().sort()
    if conflicting.len():
        raise MonitoringError(
            f"{conflicting.len()} reviews have conflicting labels (e.g. {conflicting.head(3).to_list()})"
        )
    return truth


def _judge(
    version: str, rows: int, metrics: Mapping[str, Any] | None, test_macro_f1: float, rules: MonitoringRules
) -> MonitorOutcome:
    if metrics is None or rows < rules.min_labelled_rows:
        return not_enough_data(
            LIVE_QUALITY_CHECK, rows, rules.min_labelled_rows, f"labelled rows of {version}"
        )
    drop = test_macro_f1 - metrics["macro_f1"]
    passed = drop <= rules.max_macro_f1_drop
    description = (
        f"{version}: live macro-F1 {metrics['macro_f1']:.4f} vs test {test_macro_f1:.4f} on {rows} labelled rows: "
        f"drop {drop:+.4f} {'<=' if passed else '>'} allowed {rules.max_macro_f1_drop}"
    )
    metadata: dict[str, float | int | str] = {
        "evaluated": 1,
        "rows": rows,
        "macro_f1": metrics["macro_f1"],
        "test_macro_f1": test_macro_f1,
        "drop": drop,
        "max_macro_f1_drop": rules.max_macro_f1_drop,
        **{f"recall_{label}": metrics["per_class"][label]["recall"] for label in LABELS},
    }
    return MonitorOutcome(LIVE_QUALITY_CHECK, passed, None if passed else ERROR, description, metadata)


def _by_day(joined: pl.DataFrame) -> pl.DataFrame:
    records = []
    for (version, day), group in sorted(joined.partition_by(["model_version", "day"], as_dict=True).items()):
        metrics = classification_metrics(group["true_label"].to_list(), group["label"].to_list())
        records.append((version, day, group.height, metrics["accuracy"], metrics["macro_f1"]))
    return pl.DataFrame(records, schema=BY_DAY_SCHEMA, orient="row")


def live_quality(
    log: pl.DataFrame,
    labels: pl.DataFrame,
    card_metrics_by_version: Mapping[str, Mapping[str, Any]],
    rules: MonitoringRules,
) -> LiveQuality:
    """Join the prediction log with ground truth; macro-F1, per-class recall and confusion matrix per version.

    `card_metrics_by_version` maps each model version in the log to its model card's test metrics
    (`ModelRegistry.get(version).card["metrics"]["test"]`, at least `macro_f1`). Every version in the log
    gets an outcome: "not enough data" (WARN) under `min_labelled_rows` joined rows, else a failure (ERROR)
    when live macro-F1 is more than `max_macro_f1_drop` below the test macro-F1.
    """
    require_columns(log, ("model_version", "time", "review_id", "label"), "prediction log")
    truth = ground_truth(labels)
    if "day" not in log.columns:
        log = log.with_columns(pl.col("time").dt.date().alias("day"))
    joined = log.filter(pl.col("review_id").is_not_null()).join(truth, on="review_id", how="inner")
    by_version: dict[str, VersionQuality] = {}
    for version in sorted(log["model_version"].unique().to_list()):
        if version not in card_metrics_by_version:
            raise MonitoringError(f"no model-card test metrics given for model version {version}")
        test_macro_f1 = float(card_metrics_by_version[version]["macro_f1"])
        rows = joined.filter(pl.col("model_version") == version)
        metrics = (
            classification_metrics(rows["true_label"].to_list(), rows["label"].to_list())
            if rows.height
            else None
        )
        outcome = _judge(version, rows.height, metrics, test_macro_f1, rules)
        by_version[version] = VersionQuality(version, rows.height, test_macro_f1, metrics, outcome)
    return LiveQuality(by_version, _by_day(joined), truth.height, joined.height)


@dataclass(frozen=True)
class LiveQualityJudgement:
    """Live quality of every logged version, and the verdict on the version in production now."""

    judged_version: str | None
    quality: LiveQuality
    outcome: MonitorOutcome

    def metadata(self) -> dict[str, float | int | str]:
        """Counts, every version's joined rows and live macro-F1; the judged version's under plain keys."""
        quality, judged = self.quality, self.judged_version
        metadata: dict[str, float | int | str] = {
            "judged_version": str(judged),
            "labelled_reviews": quality.labelled_reviews,
            "rows_joined": quality.rows_joined,
        }
        for version, entry in quality.by_version.items():
            metadata[f"{version}/rows_joined"] = entry.rows_joined
            if entry.metrics is not None:
                metadata[f"{version}/macro_f1"] = entry.metrics["macro_f1"]
        if judged in quality.by_version and (metrics := quality.by_version[judged].metrics) is not None:
            metadata["macro_f1"] = metrics["macro_f1"]
            metadata["test_macro_f1"] = quality.by_version[judged].test_macro_f1
        return metadata


def judge_live_quality(
    log: pl.DataFrame, labels: pl.DataFrame, registry: ModelRegistry, rules: MonitoringRules
) -> LiveQualityJudgement:
    """`live_quality` of the log against each version's model card, judged on the production version
    (not enough data when it served no labelled row)."""
    cards = {version: registry.get(version).card["metrics"]["test"] for version in model_versions(log)}
    quality = live_quality(log, labels, cards, rules)
    production = registry.production()
    judged = None if production is None else production.version
    if judged in quality.by_version:
        outcome = quality.by_version[judged].outcome
    else:
        what = f"labelled rows of production version {judged}"
        outcome = not_enough_data(LIVE_QUALITY_CHECK, 0, rules.min_labelled_rows, what)
    return LiveQualityJudgement(judged, quality, outcome)
