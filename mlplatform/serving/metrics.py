"""Prometheus metrics of the endpoint, on a registry owned by one app (no process-global registry).

Request counters and histograms are updated on the request path through cached label children (a dict
hit instead of `labels()` per request). What the model holder knows (served version, readiness, swaps,
refusals) is read at scrape time by a collector, so it costs the request path nothing.

The inference routes' recent traffic (requests, 5xx, latency) is also kept in a rolling window of
per-second buckets (`RecentRequests`, `[serving].health_window_s`), so `/metrics` reports the request
rate, error rate and p50/p99 of the last minutes next to the since-start counters: a burst of failures
after a week of good service shows at once instead of vanishing into the lifetime average.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from mlplatform.core.monitoring.health import (
    RECENT_ERROR_RATE,
    RECENT_ERRORS,
    RECENT_LATENCY_P50,
    RECENT_LATENCY_P99,
    RECENT_REQUEST_RATE,
    RECENT_REQUESTS,
    RECENT_WINDOW_SECONDS,
)
from mlplatform.serving.model_holder import HolderStatus

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CAPTURE_SYNC_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
SHADOW_OUTCOMES = ("scored", "failed", "dropped")
_NS_PER_S = 1_000_000_000
_REQUESTS, _ERRORS, _LATENCY = 1, 2, 3  # positions in a RecentRequests slot (0: the second it counts)
_CLEARED_SLOT = (0,) * (2 + len(LATENCY_BUCKETS_S) + 1)  # requests, 5xx, each latency bucket and +Inf


def is_inference_route(route: str) -> bool:
    """Whether `route` (as the request gate labels it) answers predictions."""
    return route == "/predict" or route.endswith("/infer")


def histogram_quantile(quantile: float, bounds: Sequence[float], counts: Sequence[int]) -> float:
    """Prometheus' `histogram_quantile` on per-bucket counts: `counts[i]` observations in
    (`bounds[i-1]`, `bounds[i]`], the last one beyond `bounds[-1]` (+Inf); linear within a bucket.

    A quantile in the +Inf bucket is the last finite bound, the most the histogram can say.
    """
    total = sum(counts)
    if total <= 0:
        raise ValueError("a quantile of an empty histogram")
    rank = quantile * total
    lower, below = 0.0, 0
    for bound, count in zip(bounds, counts, strict=False):
        if count and below + count >= rank:
            return lower + (bound - lower) * (rank - below) / count
        lower, below = bound, below + count
    return lower


@dataclass(frozen=True)
class RecentFigures:
    """The inference requests of the last `window_s` seconds (the process's age while it is younger)."""

    window_s: float
    requests: int
    errors: int
    latency_counts: tuple[int, ...]  # per LATENCY_BUCKETS_S bucket, then +Inf

    @property
    def request_rate(self) -> float:
        return self.requests / self.window_s

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def latency_quantile(self, quantile: float) -> float | None:
        """Seconds; None when the window holds no request."""
        return histogram_quantile(quantile, LATENCY_BUCKETS_S, self.latency_counts) if self.requests else None


class RecentRequests:
    """A rolling window of inference requests: one bucket per second, the last `window_s` seconds.

    Slot `second % window_s` is one list `[second, requests, 5xx, latency bucket counts...]`; a slot
    still holding an older second is cleared when its second comes round again, and `figures()` skips
    slots older than the window. `clock_ns` reads nanoseconds (integer arithmetic on the request path). Only
    the event loop's thread calls `observe` (and `/metrics` scrapes run there too), so no lock.
    """

    __slots__ = ("_clock", "_slots", "_started_ns", "_window_s")

    def __init__(self, window_s: int, clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        if window_s < 1:
            raise ValueError(f"[serving].health_window_s must be at least 1 second, got {window_s}")
        self._window_s = window_s
        self._clock = clock_ns
        self._started_ns = clock_ns()
        self._slots = [[-1, *_CLEARED_SLOT] for _ in range(window_s)]

    def observe(self, status: int, seconds: float) -> None:
        """Count one request: the hot path, a clock read and a few integer increments."""
        second = self._clock() // _NS_PER_S
        counts = self._slots[second % self._window_s]
        if counts[0] != second:  # the slot still counts a second that has left the window
            counts[0] = second
            counts[1:] = _CLEARED_SLOT
        counts[_REQUESTS] += 1
        if status >= 500:
            counts[_ERRORS] += 1
        counts[_LATENCY + bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    def figures(self) -> RecentFigures:
        """The window's totals now (computed per scrape, never per request)."""
        now_ns = self._clock()
        oldest = now_ns // _NS_PER_S - self._window_s + 1
        totals = [0] * len(_CLEARED_SLOT)
        for counts in self._slots:
            if counts[0] >= oldest:
                for index, count in enumerate(counts[1:]):
                    totals[index] += count
        # Per-second buckets cannot tell a window shorter than a second.
        window_s = min(float(self._window_s), max((now_ns - self._started_ns) / _NS_PER_S, 1.0))
        requests, errors = totals[_REQUESTS - 1], totals[_ERRORS - 1]
        return RecentFigures(window_s, requests, errors, tuple(totals[_LATENCY - 1 :]))


class _HolderCollector:
    """Model version served (an info-style gauge with a `version` label), readiness, swaps, refusals."""

    def __init__(self, status: Callable[[], HolderStatus], ready: Callable[[], bool] | None = None) -> None:
        self._status = status
        self._ready = ready

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        served = GaugeMetricFamily(
            "mlplatform_serving_model_version", "1 for the model version being served", labels=["version"]
        )
        if status.version is not None:
            served.add_metric([status.version], 1.0)
        yield served
        ready = status.ready if self._ready is None else self._ready()
        yield GaugeMetricFamily(
            "mlplatform_serving_ready",
            "1 when the endpoint is ready (/v2/health/ready answers 200: it would serve an inference request now)",
            value=float(ready),
        )
        yield CounterMetricFamily(
            "mlplatform_serving_model_swaps", "Production models swapped in", value=status.swaps
        )
        yield CounterMetricFamily(
            "mlplatform_serving_model_refusals",
            "Production models refused (integrity or load failure)",
            value=status.refusals,
        )
        rollout = GaugeMetricFamily(
            "mlplatform_serving_rollout_percent",
            "Share of requests the running rollout's candidate answers (a shadow answers none, scores all)",
            labels=["version", "strategy"],
        )
        candidate = status.candidate
        if candidate is not None:
            rollout.add_metric([candidate.served.version, candidate.strategy.value], float(candidate.percent))
        yield rollout
        yield CounterMetricFamily(
            "mlplatform_serving_candidate_refusals",
            "Rollout candidates refused (integrity or load failure): each one's rollout is aborted",
            value=status.candidate_refusals,
        )


class _RecentCollector:
    """The recent window's figures as gauges, computed when /metrics is scraped."""

    def __init__(self, recent: RecentRequests) -> None:
        self._recent = recent

    def collect(self) -> Iterator[Metric]:
        figures = self._recent.figures()
        gauges = [
            (
                RECENT_WINDOW_SECONDS,
                "Seconds the recent-window figures cover ([serving].health_window_s, or the process's age)",
                figures.window_s,
            ),
            (RECENT_REQUESTS, "Inference requests in the recent window", figures.requests),
            (RECENT_ERRORS, "Inference requests answered 5xx in the recent window", figures.errors),
            (
                RECENT_REQUEST_RATE,
                "Inference requests per second over the recent window",
                figures.request_rate,
            ),
            (RECENT_ERROR_RATE, "5xx share of the recent window's inference requests", figures.error_rate),
        ]
        for name, quantile in ((RECENT_LATENCY_P50, 0.50), (RECENT_LATENCY_P99, 0.99)):
            seconds = figures.latency_quantile(quantile)
            if seconds is not None:  # no request in the window: no latency to report
                gauges.append(
                    (name, f"p{quantile * 100:.0f} inference latency over the recent window", seconds)
                )
        for name, documentation, value in gauges:
            yield GaugeMetricFamily(name, documentation, value=value)


class ServingMetrics:
    """All metrics of one endpoint app; `render()` is the `/metrics` body.

    `health_window_s` is `[serving].health_window_s`: the rolling window of the recent-request gauges.
    `ready` is the endpoint's readiness (default: the model holder's alone).
    """

    def __init__(
        self,
        holder_status: Callable[[], HolderStatus],
        *,
        health_window_s: int,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process CPU seconds, resident memory, open fds
        self.registry.register(_HolderCollector(holder_status, ready))
        recent = RecentRequests(health_window_s, clock_ns)
        self.registry.register(_RecentCollector(recent))
        self._observe_recent = recent.observe  # bound once: the request path skips an attribute lookup
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
        self._header_timeouts = Counter(
            "mlplatform_serving_header_timeouts",
            "Connections closed because a request's headers were not complete within [serving] header_timeout_s",
            registry=self.registry,
        )
        self._capture_failures = Counter(
            "mlplatform_serving_capture_failures",
            "Inference requests answered 503 because capture could not be made durable",
            registry=self.registry,
        )
        capture_sync = Histogram(
            "mlplatform_serving_capture_sync_seconds",
            "Time to make capture records durable, one sync each, by who synced: a request alone in "
            "flight (request) or the writer thread for a group (writer)",
            ["by"],
            buckets=CAPTURE_SYNC_BUCKETS_S,
            registry=self.registry,
        )
        self._capture_sync_children = {
            True: capture_sync.labels("request"),
            False: capture_sync.labels("writer"),
        }
        shadow = Counter(
            "mlplatform_serving_shadow_predictions",
            "Answered requests the shadow candidate scored, by outcome: scored, failed (its error is captured) "
            "or dropped (its queue full, or capture refusing: captured as failed when it can be)",
            ["outcome"],
            registry=self.registry,
        )
        self._shadow_children = {outcome: shadow.labels(outcome) for outcome in SHADOW_OUTCOMES}
        self._canary_fallbacks = Counter(
            "mlplatform_serving_canary_fallbacks",
            "Requests routed to the canary candidate that it failed, answered by production instead",
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, int], Any] = {}
        self._latency_children: dict[str, Any] = {}
        self._inference_routes: set[str] = set()

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        key = (route, status)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self._requests.labels(route, str(status))
        counter.inc()
        histogram = self._latency_children.get(route)
        if histogram is None:
            histogram = self._latency_children[route] = self._latency.labels(route)
            if is_inference_route(route):
                self._inference_routes.add(route)
        histogram.observe(seconds)
        if route in self._inference_routes:
            self._observe_recent(status, seconds)

    def observe_batch(self, size: int) -> None:
        self._batch_size.observe(size)

    def count_sampled_out(self) -> None:
        self._sampled_out.inc()

    def count_header_timeout(self) -> None:
        self._header_timeouts.inc()

    def count_capture_failure(self) -> None:
        self._capture_failures.inc()

    def count_shadow(self, outcome: str) -> None:
        """One answered request's shadow: `outcome` one of SHADOW_OUTCOMES (from any thread)."""
        self._shadow_children[outcome].inc()

    def count_canary_fallback(self) -> None:
        self._canary_fallbacks.inc()

    def observe_capture_sync(self, seconds: float, inline: bool) -> None:
        """One sync of capture records: by the request itself (`inline`) or by the writer thread."""
        self._capture_sync_children[inline].observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
