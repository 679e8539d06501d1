"""Live model quality: predictions joined with ground truth that arrived later, per model version and day.

Ground truth lands as files (lake/landing/labels/) read by the dataset contract (`ground_truth`): the
review id is a `review_id` column, else made from the contract's id (or identity) columns as the
reviews table makes it; the class is the contract's label rule applied to its label source column (the
rating by `from_rating`, the label column by `map`; by source or normalised name), else a `label`
column holding class names. A row without an id or with a value the rule does not map refuses the
file, naming the row: ground truth is never dropped silently.

Each captured prediction of a labelled review counts once, so a review scored twice (two requests)
counts twice: both answers were served. Each version is judged over its own classes (its model card's);
labelled rows whose class that version does not have (the contract changed since) are counted, not judged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from mlplatform.core.data.contract import DatasetContract
from mlplatform.core.data.features import class_labels, label_source, review_ids
from mlplatform.core.data.schema import POLARS_TYPES
from mlplatform.core.monitoring.prediction_log import model_versions
from mlplatform.core.monitoring.rules import (
    ERROR,
    MonitoringError,
    MonitorOutcome,
    not_enough_data,
    require_columns,
)
from mlplatform.core.platform.settings import MonitoringRules
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.training.evaluation import card_classes, classification_metrics

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
    rows_other_classes: int = 0

    def to_dict(self) -> dict[str, Any]:
        metrics = self.metrics or {}
        return {
            "model_version": self.model_version,
            "rows_joined": self.rows_joined,
            "rows_other_classes": self.rows_other_classes,
            "test_macro_f1": self.test_macro_f1,
            "macro_f1": metrics.get("macro_f1"),
            "per_class_recall": (
                {label: entry["recall"] for label, entry in metrics["per_class"].items()} if metrics else None
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


def _by_contract_names(labels: pl.DataFrame, contract: DatasetContract) -> pl.DataFrame:
    """The contract's columns a labels file holds, under their normalised names and dtypes."""
    renames = {
        column.source: column.name
        for column in contract.columns
        if column.source in labels.columns and column.name not in labels.columns
    }
    frame = labels.rename(renames)
    present = [column for column in contract.columns if column.name in frame.columns]
    try:
        return frame.with_columns(pl.col(column.name).cast(POLARS_TYPES[column.type]) for column in present)
    except pl.exceptions.PolarsError as exc:
        raise MonitoringError(f"a column of the labels does not have its contract type: {exc}") from None


def ground_truth(labels: pl.DataFrame, contract: DatasetContract) -> pl.DataFrame:
    """`review_id` -> `label` (a class), one row per review, from one labels file read by the contract
    (see the module docstring); a row without an id or a class, or conflicting labels, raise."""
    frame = _by_contract_names(labels, contract)
    id_columns = contract.id_columns if len(contract.id_columns) == 1 else contract.identity_columns
    if "review_id" in frame.columns:
        ids = frame["review_id"].cast(pl.String)
    elif all(column in frame.columns for column in id_columns):
        ids = review_ids(frame, contract)
    else:
        raise MonitoringError(
            f"labels need a 'review_id' column or the contract's id columns {list(id_columns)}"
        )
    source = label_source(contract)
    if source in frame.columns:
        classes = frame.select(class_labels(contract.labels, pl.col(source))).to_series()
        what = f"a {source} the contract's label rule maps"
    elif "label" in frame.columns:
        classes = frame["label"].cast(pl.String)
        what = f"a label among the classes {list(contract.classes)}"
    else:
        raise MonitoringError(
            f"labels need the contract's label source column {source!r} or a 'label' column of class names"
        )
    truth = pl.DataFrame(
        {"review_id": ids, "label": classes}, schema={"review_id": pl.String, "label": pl.String}
    )
    bad = truth.with_row_index("row").filter(
        pl.col("review_id").is_null() | ~pl.col("label").is_in(contract.classes).fill_null(False)
    )
    if bad.height:
        first = bad.row(0, named=True)["row"]
        raise MonitoringError(
            f"{bad.height} label rows lack a review id or {what} (e.g. row {first}: {labels.row(first, named=True)})"
        )
    return unique_truth(truth)


def unique_truth(truth: pl.DataFrame) -> pl.DataFrame:
    """Ground truth (`review_id`, `label`) with each review once; conflicting labels raise."""
    require_columns(truth, ("review_id", "label"), "labels frame")
    truth = truth.select("review_id", pl.col("label").cast(pl.String)).unique(maintain_order=True)
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
        **{f"recall_{label}": entry["recall"] for label, entry in metrics["per_class"].items()},
    }
    return MonitorOutcome(LIVE_QUALITY_CHECK, passed, None if passed else ERROR, description, metadata)


def _by_day(judged: Mapping[str, tuple[pl.DataFrame, tuple[str, ...]]]) -> pl.DataFrame:
    records = []
    for version, (rows, classes) in sorted(judged.items()):
        for (day,), group in sorted(rows.partition_by(["day"], as_dict=True).items()):
            metrics = classification_metrics(group["true_label"].to_list(), group["label"].to_list(), classes)
            records.append((version, day, group.height, metrics["accuracy"], metrics["macro_f1"]))
    return pl.DataFrame(records, schema=BY_DAY_SCHEMA, orient="row")


def live_quality(
    log: pl.DataFrame,
    truth: pl.DataFrame,
    cards_by_version: Mapping[str, Mapping[str, Any]],
    rules: MonitoringRules,
) -> LiveQuality:
    """Join the prediction log with ground truth (`review_id`, `label`: classes, as `ground_truth` reads
    them); macro-F1, per-class recall and confusion matrix per version, over that version's classes.

    `cards_by_version` maps each model version in the log to its model card (its classes and its test
    metrics' `macro_f1`). Every version in the log gets an outcome: "not enough data" (WARN) under
    `min_labelled_rows` joined rows, else a failure (ERROR) when live macro-F1 is more than
    `max_macro_f1_drop` below the test macro-F1.
    """
    require_columns(log, ("model_version", "time", "review_id", "label"), "prediction log")
    truth = unique_truth(truth).rename({"label": "true_label"})
    if "day" not in log.columns:
        log = log.with_columns(pl.col("time").dt.date().alias("day"))
    joined = log.filter(pl.col("review_id").is_not_null()).join(truth, on="review_id", how="inner")
    by_version: dict[str, VersionQuality] = {}
    judged: dict[str, tuple[pl.DataFrame, tuple[str, ...]]] = {}
    for version in sorted(log["model_version"].unique().to_list()):
        if version not in cards_by_version:
            raise MonitoringError(f"no model card given for model version {version}")
        card = cards_by_version[version]
        test_macro_f1, classes = float(card["metrics"]["test"]["macro_f1"]), card_classes(card)
        of_version = joined.filter(pl.col("model_version") == version)
        rows = of_version.filter(pl.col("true_label").is_in(classes))
        judged[version] = (rows, classes)
        metrics = (
            classification_metrics(rows["true_label"].to_list(), rows["label"].to_list(), classes)
            if rows.height
            else None
        )
        outcome = _judge(version, rows.height, metrics, test_macro_f1, rules)
        by_version[version] = VersionQuality(
            version, rows.height, test_macro_f1, metrics, outcome, of_version.height - rows.height
        )
    return LiveQuality(by_version, _by_day(judged), truth.height, joined.height)


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
    log: pl.DataFrame, truth: pl.DataFrame, registry: ModelRegistry, rules: MonitoringRules
) -> LiveQualityJudgement:
    """`live_quality` of the log against each version's model card, judged on the production version
    (not enough data when it served no labelled row)."""
    cards = {version: registry.get(version).card for version in model_versions(log)}
    quality = live_quality(log, truth, cards, rules)
    production = registry.production()
    judged = None if production is None else production.version
    if judged in quality.by_version:
        outcome = quality.by_version[judged].outcome
    else:
        what = f"labelled rows of production version {judged}"
        outcome = not_enough_data(LIVE_QUALITY_CHECK, 0, rules.min_labelled_rows, what)
    return LiveQualityJudgement(judged, quality, outcome)
