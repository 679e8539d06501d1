"""The endpoint's metrics: the rolling window of recent inference requests behind the recent_* gauges."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlplatform.serving.metrics import (
    LATENCY_BUCKETS_S,
    RecentRequests,
    ServingMetrics,
    histogram_quantile,
)
from mlplatform.serving.model_holder import HolderStatus

PREDICT = "/predict"
INFER = "/v2/models/sentiment/infer"


class FakeClock:
    """Monotonic nanoseconds that only move when told."""

    def __init__(self, start_s: float = 1_000.0) -> None:
        self.now_ns = int(start_s * 1e9)

    def __call__(self) -> int:
        return self.now_ns

    def advance(self, seconds: float) -> None:
        self.now_ns += int(seconds * 1e9)


def serving_metrics(clock: FakeClock, window_s: int = 300) -> ServingMetrics:
    return ServingMetrics(
        lambda: HolderStatus("3", True, None, 0, 0), health_window_s=window_s, clock_ns=clock
    )


def gauges(metrics: ServingMetrics) -> dict[str, float]:
    """Every sample of the rendered /metrics text by name (labels dropped: the recent gauges have none)."""
    text = metrics.render().decode()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_the_recent_error_rate_is_the_windows_not_the_lifetimes() -> None:
    clock = FakeClock()
    metrics = serving_metrics(clock)
    for _ in range(1000):
        metrics.observe_request(PREDICT, 200, 0.002)
    clock.advance(3600)  # an hour of good service later, half of the requests fail
    for status in (200, 503) * 5:
        metrics.observe_request(INFER, status, 0.002)
    values = gauges(metrics)
    assert values["mlplatform_serving_recent_requests"] == 10
    assert values["mlplatform_serving_recent_errors"] == 5
    assert values["mlplatform_serving_recent_error_rate"] == 0.5
    assert values["mlplatform_serving_recent_window_seconds"] == 300
    assert values["mlplatform_serving_recent_request_rate"] == pytest.approx(10 / 300)
    lifetime = [
        (sample.labels["status"], sample.value)
        for family in text_string_to_metric_families(metrics.render().decode())
        for sample in family.samples
        if sample.name == "mlplatform_serving_requests_total"
    ]  # the since-start counters still count everything: 5 failures in 1010 requests
    assert sum(value for _, value in lifetime) == 1010
    assert sum(value for status, value in lifetime if status == "503") == 5


def test_buckets_older_than_the_window_are_forgotten() -> None:
    clock = FakeClock()
    metrics = serving_metrics(clock, window_s=60)
    metrics.observe_request(PREDICT, 500, 0.001)
    clock.advance(59)
    metrics.observe_request(PREDICT, 200, 0.001)
    assert gauges(metrics)["mlplatform_serving_recent_requests"] == 2  # 59 s ago: still inside
    clock.advance(1)  # the first request's second is now 60 s old, and its slot comes round again
    assert gauges(metrics)["mlplatform_serving_recent_requests"] == 1
    metrics.observe_request(PREDICT, 200, 0.001)  # reuses the first request's slot: cleared, not added to
    values = gauges(metrics)
    assert (values["mlplatform_serving_recent_requests"], values["mlplatform_serving_recent_errors"]) == (
        2,
        0,
    )
    clock.advance(600)
    values = gauges(metrics)
    assert values["mlplatform_serving_recent_requests"] == 0
    assert values["mlplatform_serving_recent_error_rate"] == 0.0


def test_the_p99_comes_from_the_windows_histogram() -> None:
    clock = FakeClock()
    metrics = serving_metrics(clock)
    for _ in range(100):
        metrics.observe_request(PREDICT, 200, 2.0)  # a slow spell, long gone by the scrape
    clock.advance(1000)
    for index in range(100):
        metrics.observe_request(PREDICT, 200, 0.3 if index < 2 else 0.0007)
    values = gauges(metrics)
    # rank 99 of 100: the 2 requests in (0.25, 0.5], halfway; rank 50 of the 98 in (0.0005, 0.001]
    assert values["mlplatform_serving_recent_latency_p99_seconds"] == pytest.approx(0.375)
    assert values["mlplatform_serving_recent_latency_p50_seconds"] == pytest.approx(0.0005 + 0.0005 * 50 / 98)


def test_a_young_process_reports_its_age_as_the_window() -> None:
    clock = FakeClock()
    metrics = serving_metrics(clock)
    clock.advance(10)
    for _ in range(20):
        metrics.observe_request(PREDICT, 200, 0.001)
    values = gauges(metrics)
    assert values["mlplatform_serving_recent_window_seconds"] == 10
    assert values["mlplatform_serving_recent_request_rate"] == 2.0


def test_only_inference_routes_count_and_an_empty_window_has_no_latency() -> None:
    clock = FakeClock()
    metrics = serving_metrics(clock)
    for route in ("/v2/health/ready", "/metrics", "other", "/v2/models/sentiment"):
        metrics.observe_request(route, 503, 0.001)
    values = gauges(metrics)
    assert values["mlplatform_serving_recent_requests"] == 0
    assert values["mlplatform_serving_recent_error_rate"] == 0.0
    assert "mlplatform_serving_recent_latency_p50_seconds" not in values
    assert "mlplatform_serving_recent_latency_p99_seconds" not in values


def test_histogram_quantile_follows_prometheus() -> None:
    bounds = (0.1, 0.2)
    assert histogram_quantile(0.5, bounds, (0, 4, 0)) == pytest.approx(0.15)
    assert histogram_quantile(0.25, bounds, (4, 0, 0)) == pytest.approx(0.025)
    assert histogram_quantile(0.99, bounds, (1, 0, 99)) == 0.2  # in +Inf: the last finite bound
    with pytest.raises(ValueError, match="empty histogram"):
        histogram_quantile(0.5, bounds, (0, 0, 0))


def test_a_latency_beyond_the_last_bucket_lands_in_inf() -> None:
    clock = FakeClock()
    window = RecentRequests(5, clock)
    window.observe(200, 60.0)
    window.observe(200, LATENCY_BUCKETS_S[0])  # on a bound: that bucket (le)
    figures = window.figures()
    assert figures.latency_counts[0] == 1 and figures.latency_counts[-1] == 1
    assert figures.latency_quantile(0.99) == LATENCY_BUCKETS_S[-1]


def test_a_window_under_a_second_is_refused() -> None:
    with pytest.raises(ValueError, match="health_window_s"):
        RecentRequests(0)
