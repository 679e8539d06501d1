"""The prediction log: repeated rows dropped, sorted by time, the day added, bad captures refused."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from mlplatform.core.monitoring.capture import CAPTURE_COLUMNS
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
        },
        schema_overrides={
            "time": pl.Datetime("us", "UTC"),
            "review_id": pl.String,
            "explanation": pl.List(pl.Struct({"ngram": pl.String, "weight": pl.Float64})),
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
