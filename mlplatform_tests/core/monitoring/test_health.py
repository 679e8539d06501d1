"""System health read from the endpoint's /metrics: the recent window, error bursts, slow p99, idle."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlplatform.core.monitoring.health import (
    NO_ENDPOINT,
    health_outcomes,
    judge_system_health,
    system_health_numbers,
)
from mlplatform.core.monitoring.rules import MonitoringError
from mlplatform.core.platform.settings import Settings
from mlplatform.serving.metrics import ServingMetrics
from mlplatform.serving.model_holder import HolderStatus
from mlplatform_tests.serving.test_metrics import FakeClock

HEALTH_BOUNDS = Settings.packaged().monitoring.replace(max_error_rate=0.01, max_p99_latency_ms=500.0)


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
    assert lifetime_errors / 1010 < HEALTH_BOUNDS.max_error_rate  # since start: under 0.5%, hidden
    error_rate, latency = health_outcomes(system_health_numbers(text, now=time.time()), HEALTH_BOUNDS)
    assert (error_rate.name, error_rate.passed, error_rate.severity) == ("error_rate", False, "ERROR")
    assert "in the last 300 s" in error_rate.description and error_rate.metadata["window_s"] == 300
    assert latency.passed and latency.metadata["requests"] == 10


def test_a_slow_recent_p99_fails_the_latency_check() -> None:
    numbers = system_health_numbers(week_then_burst(), now=time.time())
    _, latency = health_outcomes(numbers, HEALTH_BOUNDS.replace(max_p99_latency_ms=100.0))
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


def test_judgement_of_a_scraped_endpoint_records_its_numbers() -> None:
    judgement = judge_system_health(
        "http://endpoint", week_then_burst(), None, HEALTH_BOUNDS, now=time.time()
    )
    assert [(o.name, o.passed) for o in judgement.outcomes] == [("error_rate", False), ("latency", True)]
    metadata = judgement.metadata()
    assert metadata["endpoint_url"] == "http://endpoint" and metadata["requests"] == 10


def test_unobserved_health_fails_both_checks_never_a_pretend_pass() -> None:
    unreachable = judge_system_health("http://endpoint", None, "connection refused", HEALTH_BOUNDS, now=1.0)
    assert [(o.passed, o.severity) for o in unreachable.outcomes] == [(False, "ERROR"), (False, "ERROR")]
    assert unreachable.outcomes[0].description == "endpoint unreachable: connection refused"
    assert unreachable.record["error"] == "connection refused"
    absent = judge_system_health(None, None, None, HEALTH_BOUNDS, now=1.0)
    assert [(o.passed, o.severity, o.description) for o in absent.outcomes] == [
        (False, "WARN", NO_ENDPOINT)
    ] * 2
    assert absent.metadata() == {"endpoint_url": "none configured"}
