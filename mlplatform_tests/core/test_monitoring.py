"""The prediction log, the monitoring rules and the system health read from the endpoint's /metrics."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlplatform.core.monitoring import (
    MonitoringError,
    MonitoringRules,
    health_outcomes,
    prediction_log,
    system_health_numbers,
)
from mlplatform.core.settings import Settings, SettingsError
from mlplatform.serving.capture import CAPTURE_COLUMNS
from mlplatform.serving.metrics import ServingMetrics
from mlplatform.serving.model_holder import HolderStatus
from mlplatform_tests.serving.test_metrics import FakeClock


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
        },
        schema_overrides={"time": pl.Datetime("us", "UTC"), "review_id": pl.String},
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


def test_rules_read_from_settings_and_refuse_a_warn_bound_above_its_error_bound(settings: Settings) -> None:
    rules = MonitoringRules.from_settings(settings)
    assert rules.drift_warn["length_psi"] <= rules.drift_error["length_psi"]
    values = dict(settings.values)
    monitoring = dict(values["monitoring"])
    monitoring["drift_warn"] = {**monitoring["drift_warn"], "length_psi": 1.0}
    with pytest.raises(SettingsError, match="length_psi"):
        MonitoringRules.from_settings(Settings({**values, "monitoring": monitoring}))


# --- system health -------------------------------------------------------------------------------------

HEALTH_BOUNDS = {"max_error_rate": 0.01, "max_p99_latency_ms": 500.0}


def endpoint_metrics(clock: FakeClock) -> ServingMetrics:
    return ServingMetrics(lambda: HolderStatus("3", True, None, 0, 0), health_window_s=300, clock_ns=clock)


def week_then_burst() -> str:
    """/metrics of an endpoint that served 1000 requests well, then failed 5 of its last 10 an hour later."""
    clock = FakeClock()
    metrics = endpoint_metrics(clock)
    for _ in range(1000):
        metrics.observe_request("/predict", 200, 0.002)
    clock.advance(3600)
    for status in (200, 503) * 5:
        metrics.observe_request("/predict", status, 0.3 if status == 503 else 0.0007)
    return metrics.render().decode()


def test_system_health_numbers_read_the_recent_window_from_metrics() -> None:
    numbers = system_health_numbers(week_then_burst(), now=time.time())
    assert (numbers["requests"], numbers["errors_5xx"], numbers["error_rate"]) == (10, 5, 0.5)
    assert numbers["window_s"] == 300 and numbers["request_rate_per_s"] == pytest.approx(10 / 300)
    # rank 9.9 of 10: the fifth of the 5 requests in (0.25, 0.5]; rank 5: the last of the 5 in (0.0005, 0.001]
    assert numbers["p99_latency_ms"] == pytest.approx(250 + 250 * 4.9 / 5)
    assert numbers["p50_latency_ms"] == pytest.approx(1.0)
    assert numbers["memory_mb"] > 0 and numbers["cpu_share"] >= 0 and numbers["uptime_s"] > 0


def test_a_recent_error_burst_fails_the_check_the_lifetime_average_would_pass() -> None:
    text = week_then_burst()
    lifetime_errors = sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "mlplatform_serving_requests_total" and sample.labels["status"] == "503"
    )
    assert lifetime_errors / 1010 < HEALTH_BOUNDS["max_error_rate"]  # since start: under 0.5%, hidden
    error_rate, latency = health_outcomes(system_health_numbers(text, now=time.time()), HEALTH_BOUNDS)
    assert (error_rate.name, error_rate.passed, error_rate.severity) == ("error_rate", False, "ERROR")
    assert "in the last 300 s" in error_rate.description and error_rate.metadata["window_s"] == 300
    assert latency.passed and latency.metadata["requests"] == 10


def test_a_slow_recent_p99_fails_the_latency_check() -> None:
    numbers = system_health_numbers(week_then_burst(), now=time.time())
    _, latency = health_outcomes(numbers, {**HEALTH_BOUNDS, "max_p99_latency_ms": 100.0})
    assert (latency.name, latency.passed, latency.severity) == ("latency", False, "ERROR")


def test_an_idle_window_is_not_enough_data_and_no_warn() -> None:
    clock = FakeClock()
    metrics = endpoint_metrics(clock)
    metrics.observe_request("/predict", 503, 0.002)
    clock.advance(301)
    numbers = system_health_numbers(metrics.render().decode(), now=time.time())
    assert numbers["requests"] == 0 and "p99_latency_ms" not in numbers
    outcomes = health_outcomes(numbers, HEALTH_BOUNDS)
    assert [(o.name, o.passed, o.severity) for o in outcomes] == [
        ("error_rate", True, None),
        ("latency", True, None),
    ]
    assert all(
        o.description.startswith("not enough data: no inference requests in the last 300 s") for o in outcomes
    )
    assert all(o.metadata["evaluated"] == 0 for o in outcomes)


def test_metrics_without_the_recent_gauges_are_refused() -> None:
    old_endpoint = (
        "process_start_time_seconds 1.0\nprocess_cpu_seconds_total 2.0\nprocess_resident_memory_bytes 3.0\n"
    )
    with pytest.raises(MonitoringError, match="lacks mlplatform_serving_recent_requests"):
        system_health_numbers(old_endpoint, now=10.0)
