"""System health: the endpoint's recent error rate and latency, read from its Prometheus `/metrics`.

The endpoint keeps gauges over a recent window of inference requests (`[serving].health_window_s`), so a
burst of errors shows up even after a long healthy life; CPU share is averaged since the process started,
memory is the current resident size. An idle window is not judged (no fault, no WARN).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from mlplatform.core.monitoring.rules import ERROR, WARN, MonitoringError, MonitorOutcome
from mlplatform.core.platform.settings import MonitoringRules

ERROR_RATE_CHECK = "error_rate"
LATENCY_CHECK = "latency"
RECENT_WINDOW_SECONDS = "mlplatform_serving_recent_window_seconds"
RECENT_REQUESTS = "mlplatform_serving_recent_requests"
RECENT_ERRORS = "mlplatform_serving_recent_errors"
RECENT_REQUEST_RATE = "mlplatform_serving_recent_request_rate"
RECENT_ERROR_RATE = "mlplatform_serving_recent_error_rate"
RECENT_LATENCY_P50 = "mlplatform_serving_recent_latency_p50_seconds"
RECENT_LATENCY_P99 = "mlplatform_serving_recent_latency_p99_seconds"
"""The endpoint's gauges over its recent window of inference requests (`[serving].health_window_s`):
written by mlplatform/serving/metrics.py, read by `system_health_numbers`. The latency gauges are absent
while the window holds no request."""


def system_health_numbers(metrics_text: str, now: float) -> dict[str, float]:
    """The endpoint's health from its `/metrics` text: recent traffic, CPU and memory.

    Requests, request rate, 5xx count and share, p50/p99 latency (ms) are over the endpoint's recent
    window of inference requests (`window_s`: `[serving].health_window_s`, or the process's age while it
    is younger); p50/p99 are absent when that window holds no request. CPU share is averaged since the
    process started (`uptime_s`, from `now`), memory is the current resident size.
    """
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            values.setdefault(sample.name, sample.value)

    def single(name: str) -> float:
        if name not in values:
            raise MonitoringError(f"the endpoint's /metrics lacks {name}")
        return values[name]

    uptime = max(now - single("process_start_time_seconds"), 1e-9)
    requests = single(RECENT_REQUESTS)
    numbers = {
        "uptime_s": uptime,
        "cpu_share": single("process_cpu_seconds_total") / uptime,
        "memory_mb": single("process_resident_memory_bytes") / 1e6,
        "window_s": single(RECENT_WINDOW_SECONDS),
        "requests": requests,
        "request_rate_per_s": single(RECENT_REQUEST_RATE),
        "errors_5xx": single(RECENT_ERRORS),
        "error_rate": single(RECENT_ERROR_RATE),
    }
    if requests:
        numbers["p50_latency_ms"] = single(RECENT_LATENCY_P50) * 1000
        numbers["p99_latency_ms"] = single(RECENT_LATENCY_P99) * 1000
    return numbers


def health_outcomes(numbers: Mapping[str, float], rules: MonitoringRules) -> list[MonitorOutcome]:
    """Recent error rate and p99 latency against `[monitoring].max_error_rate` / `max_p99_latency_ms` (ERROR).

    A window without inference requests is not judged: both checks pass as "not enough data" with
    `evaluated = 0` (an idle endpoint is not a fault, so no WARN).
    """
    max_error_rate, max_p99 = rules.max_error_rate, rules.max_p99_latency_ms
    requests, window_s = int(numbers["requests"]), numbers["window_s"]
    if not requests:
        return [_no_recent_requests(name, window_s) for name in (ERROR_RATE_CHECK, LATENCY_CHECK)]
    window = f"{requests} inference requests in the last {window_s:.0f} s"
    error_rate, p99 = numbers["error_rate"], numbers["p99_latency_ms"]
    return [
        MonitorOutcome(
            ERROR_RATE_CHECK,
            error_rate <= max_error_rate,
            None if error_rate <= max_error_rate else ERROR,
            f"5xx share {error_rate:.4f} of {window} (bound {max_error_rate})",
            {"error_rate": error_rate, "requests": requests, "window_s": window_s, "bound": max_error_rate},
        ),
        MonitorOutcome(
            LATENCY_CHECK,
            p99 <= max_p99,
            None if p99 <= max_p99 else ERROR,
            f"p99 latency {p99:.1f} ms of {window} (bound {max_p99} ms)",
            {
                "p99_latency_ms": p99,
                "p50_latency_ms": numbers["p50_latency_ms"],
                "requests": requests,
                "window_s": window_s,
                "bound": max_p99,
            },
        ),
    ]


def _no_recent_requests(name: str, window_s: float) -> MonitorOutcome:
    return MonitorOutcome(
        name,
        True,
        None,
        f"not enough data: no inference requests in the last {window_s:.0f} s; not evaluated",
        {"evaluated": 0, "requests": 0, "window_s": window_s},
    )


NO_ENDPOINT = "no endpoint configured: system health is not observed"


@dataclass(frozen=True)
class HealthJudgement:
    """What was observed of the endpoint (its URL, its numbers or why there are none) and the verdicts."""

    record: dict[str, Any]
    outcomes: tuple[MonitorOutcome, ...]

    def metadata(self) -> dict[str, float | int | str]:
        metadata: dict[str, float | int | str] = {
            key: value for key, value in self.record.items() if isinstance(value, int | float)
        }
        metadata["endpoint_url"] = str(self.record["endpoint_url"] or "none configured")
        return metadata


def judge_system_health(
    endpoint_url: str | None,
    metrics_text: str | None,
    unreachable: str | None,
    rules: MonitoringRules,
    now: float,
) -> HealthJudgement:
    """Judge the endpoint at `endpoint_url` from its `/metrics` text (None: no endpoint configured, or
    `unreachable` says why it could not be read). Unobserved health fails both checks, never a pretend
    pass: an ERROR when the endpoint was unreachable, a WARN when there is none."""
    record: dict[str, Any] = {"endpoint_url": endpoint_url}
    if unreachable is not None:
        record["error"] = unreachable
        return HealthJudgement(record, _unobserved(f"endpoint unreachable: {unreachable}", ERROR))
    if metrics_text is None:
        return HealthJudgement(record, _unobserved(NO_ENDPOINT, WARN))
    numbers = system_health_numbers(metrics_text, now)
    record.update(numbers)
    return HealthJudgement(record, tuple(health_outcomes(numbers, rules)))


def _unobserved(reason: str, severity: str) -> tuple[MonitorOutcome, ...]:
    return tuple(
        MonitorOutcome(name, False, severity, reason, {"evaluated": 0})
        for name in (ERROR_RATE_CHECK, LATENCY_CHECK)
    )
