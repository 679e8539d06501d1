"""The prediction log: repeated rows dropped, sorted by time, the day added, bad captures refused."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from mlplatform.core.monitoring.capture import CAPTURE_COLUMNS, CaptureRole
from mlplatform.core.monitoring.prediction_log import prediction_log
from mlplatform.core.monitoring.rules import MonitoringError


def capture_rows(records: list[tuple[str, int, str, str]]) -> pl.DataFrame:
    """Capture-shaped rows from (request_id, row, ISO time, model_version)."""
    frame = pl.DataFrame(
        {
            "request_id": [record[0] for record in records],
            "capture_id": [f"capture-{record[0]}" for record in records],
            "time": [datetime.fromisoformat(record[2]).replace(tzinfo=UTC) for record in records],
            "route": "/predict",
            "model_version": [record[3] for record in records],
            "row": [record[1] for record in records],
            "text": [f"text {record[0]}/{record[1]}" for record in records],
            "product_id": "1078",
            "review_id": None,
            "label": "positive",
            "p_negative": 0.1,
            "p_neutral": 0.1,
            "p_positive": 0.8,
            "latency_ms": 2.0,
            "explanation": None,
            "role": None,  # written before roles: answered
            "error": None,
        },
        schema_overrides={
            "time": pl.Datetime("us", "UTC"),
            "review_id": pl.String,
            "explanation": pl.List(pl.Struct({"ngram": pl.String, "weight": pl.Float64})),
            "role": pl.String,
            "error": pl.String,
        },
    )
    return frame.select(CAPTURE_COLUMNS)


def test_prediction_log_drops_repeated_rows_sorts_by_time_and_adds_the_day() -> None:
    capture = capture_rows(
        [
            ("b", 0, "2024-05-02T09:00:00", "v2"),
            ("a", 0, "2024-05-01T23:59:00", "v1"),
            ("a", 1, "2024-05-01T23:59:00", "v1"),
            ("a", 1, "2024-05-01T23:59:00", "v1"),  # the same row read twice
            ("b", 0, "2024-05-02T09:00:00", "v2"),
        ]
    )
    log, stats = prediction_log(capture)
    assert log.select("request_id", "row").rows() == [("a", 0), ("a", 1), ("b", 0)]
    assert log["day"].cast(pl.String).to_list() == ["2024-05-01", "2024-05-01", "2024-05-02"]
    assert stats.to_dict() == {
        "rows_in": 5,
        "rows": 3,
        "requests": 2,
        "duplicates_removed": 2,
        "rows_by_version": {"v1": 2, "v2": 1},
    }


def test_prediction_log_keeps_the_first_capture_of_a_row() -> None:
    capture = capture_rows([("a", 0, "2024-05-01T10:00:00", "v1"), ("a", 0, "2024-05-01T10:00:00", "v1")])
    capture = capture.with_columns(pl.Series("label", ["negative", "positive"]))
    log, _ = prediction_log(capture)
    assert log["label"].to_list() == ["negative"]


def test_prediction_log_keeps_two_requests_a_client_sent_with_one_request_id() -> None:
    capture = capture_rows(
        [("retry", 0, "2024-05-01T10:00:00", "v1"), ("retry", 0, "2024-05-01T10:00:05", "v1")]
    )
    capture = capture.with_columns(pl.Series("capture_id", ["first-capture", "second-capture"]))
    log, stats = prediction_log(capture)
    assert log["capture_id"].to_list() == ["first-capture", "second-capture"]
    assert (stats.rows, stats.requests, stats.duplicates_removed) == (2, 2, 0)


def test_rows_captured_before_capture_ids_are_keyed_by_request_id() -> None:
    legacy = capture_rows([("a", 0, "2024-05-01T10:00:00", "v1"), ("a", 0, "2024-05-01T10:00:00", "v1")])
    for capture in (
        legacy.drop("capture_id"),
        legacy.with_columns(pl.lit(None, pl.String).alias("capture_id")),
    ):
        log, stats = prediction_log(capture)
        assert (log.height, stats.requests, stats.duplicates_removed) == (1, 1, 1)


def test_prediction_log_refuses_rows_without_a_model_version_or_missing_columns() -> None:
    capture = capture_rows([("a", 0, "2024-05-01T10:00:00", "v1")])
    with pytest.raises(MonitoringError, match="no model_version"):
        prediction_log(capture.with_columns(pl.lit(None, dtype=pl.String).alias("model_version")))
    with pytest.raises(MonitoringError, match="lacks columns"):
        prediction_log(capture.drop("row"))


def test_shadow_rows_stay_out_of_the_log_unless_asked_for_and_never_count_as_duplicates() -> None:
    answered = capture_rows([("a", 0, "2024-05-01T10:00:00", "v1"), ("b", 0, "2024-05-01T10:00:01", "v1")])
    shadow = capture_rows([("a", 0, "2024-05-01T10:00:00", "v2"), ("b", 0, "2024-05-01T10:00:01", "v2")])
    shadow = shadow.with_columns(pl.lit("shadow").alias("role"))
    capture = pl.concat([answered, shadow, shadow.head(1)])  # one shadow row read twice

    log, stats = prediction_log(capture)
    assert log["model_version"].to_list() == ["v1", "v1"] and log["role"].to_list() == ["answered"] * 2
    assert (stats.rows_in, stats.duplicates_removed) == (2, 0)

    both, stats = prediction_log(capture, roles=(CaptureRole.ANSWERED, CaptureRole.SHADOW))
    assert both.select("request_id", "role").rows() == [
        ("a", "answered"),
        ("a", "shadow"),
        ("b", "answered"),
        ("b", "shadow"),
    ]
    assert (stats.rows_in, stats.rows, stats.duplicates_removed) == (5, 4, 1)
    assert stats.rows_by_version == {"v1": 2, "v2": 2}
