"""Prometheus metrics of the endpoint, on a registry owned by one app (no process-global registry).

Request counters and histograms are updated on the request path through cached label children (a dict
hit instead of `labels()` per request). What the model holder knows (served version, readiness, swaps,
refusals) is read at scrape time by a collector, so it costs the request path nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mlplatform.serving.model_holder import HolderStatus

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


class _HolderCollector:
    """Model version served (an info-style gauge with a `version` label), readiness, swaps, refusals."""

    def __init__(self, status: Callable[[], HolderStatus]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        served = GaugeMetricFamily(
            "mlplatform_serving_model_version", "1 for the model version being served", labels=["version"]
        )
        if status.version is not None:
            served.add_metric([status.version], 1.0)
        yield served
        yield GaugeMetricFamily(
            "mlplatform_serving_ready", "1 when the endpoint serves a model", value=float(status.ready)
        )
        yield CounterMetricFamily(
            "mlplatform_serving_model_swaps", "Production models swapped in", value=status.swaps
        )
        yield CounterMetricFamily(
            "mlplatform_serving_model_refusals",
            "Production models refused (integrity or load failure)",
            value=status.refusals,
        )


class ServingMetrics:
    """All metrics of one endpoint app; `render()` is the `/metrics` body."""

    def __init__(self, holder_status: Callable[[], HolderStatus]) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process CPU seconds, resident memory, open fds
        self.registry.register(_HolderCollector(holder_status))
        self._requests = Counter(
            "mlplatform_serving_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "mlplatform_serving_request_latency_seconds",
            "Request latency by route (until the response is sent, capture fsync included)",
            ["route"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._batch_size = Histogram(
            "mlplatform_serving_batch_size",
            "Reviews per inference request",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self._sampled_out = Counter(
            "mlplatform_serving_capture_sampled_out",
            "2xx inference requests not captured because of the sampling rate",
            registry=self.registry,
        )
        self._capture_failures = Counter(
            "mlplatform_serving_capture_failures",
            "Inference requests answered 503 because capture could not be made durable",
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(route, str(status))
        counter.inc()
        histogram = self._latency_children.get(route)
        if histogram is None:
            histogram = self._latency_children[route] = self._latency.labels(route)
        histogram.observe(seconds)

    def observe_batch(self, size: int) -> None:
        self._batch_size.observe(size)

    def count_sampled_out(self) -> None:
        self._sampled_out.inc()

    def count_capture_failure(self) -> None:
        self._capture_failures.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
