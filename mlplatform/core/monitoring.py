"""Monitoring of the live endpoint: the prediction log, the shared rules, the shape of a monitor's verdict
and the endpoint's system health (read from its /metrics).

The monitors themselves live next to this module: drift (core/drift.py), live quality
(core/live_quality.py) and the product report (core/product_report.py). All are pure functions on polars
frames; the Dagster assets in defs/ read the capture store and attach the numbers as metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from prometheus_client.parser import text_string_to_metric_families

from mlplatform.core.settings import Settings, SettingsError

ERROR = "ERROR"
WARN = "WARN"
DRIFT_METRICS: tuple[str, ...] = (
    "predicted_class_psi",
    "predicted_class_js",
    "length_psi",
    "length_ks",
    "oov_rate_increase",
    "short_text_share_increase",
)
"""Drift metrics; also the keys of `[monitoring.drift_warn]` / `[monitoring.drift_error]` and the names of
the drift outcomes."""

LOG_KEY: tuple[str, ...] = ("capture_id", "row")
"""One captured prediction: a captured request's row. `capture_id` is the endpoint's own key of a captured
request; `request_id` is the client's and may be reused, so it keys only rows captured before
`capture_id` existed (null there)."""
_REQUEST_KEY = "_request_key"

_LOG_REQUIRED_COLUMNS: tuple[str, ...] = (
    "request_id",
    "time",
    "model_version",
    "row",
    "text",
    "product_id",
    "review_id",
    "label",
)


class MonitoringError(ValueError):
    """A monitor's input is unusable (missing columns, unknown labels, inconsistent versions)."""


@dataclass(frozen=True)
class MonitorOutcome:
    """One monitor check's verdict: `severity` is "WARN" or "ERROR" when it failed, None when it passed.

    A check that could not be judged (too little data) is a failed WARN whose metadata says
    `evaluated = 0`, so a blind monitor is never mistaken for a healthy one.
    """

    name: str
    passed: bool
    severity: str | None
    description: str
    metadata: dict[str, float | int | str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "passed": self.passed,
            "severity": self.severity,
            "description": self.description,
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class MonitoringRules:
    """The `[monitoring]` settings."""

    min_rows: int
    length_bins: int
    short_text_chars: int
    psi_floor_share: float
    min_labelled_rows: int
    max_macro_f1_drop: float
    min_product_predictions: int
    wilson_z: float
    report_top_n: int
    drift_warn: Mapping[str, float]
    drift_error: Mapping[str, float]

    def __post_init__(self) -> None:
        for name, bounds in (("drift_warn", self.drift_warn), ("drift_error", self.drift_error)):
            if set(bounds) != set(DRIFT_METRICS):
                raise SettingsError(
                    f"[monitoring.{name}] must name exactly {DRIFT_METRICS}, got {sorted(bounds)}"
                )
        for metric in DRIFT_METRICS:
            if self.drift_warn[metric] > self.drift_error[metric]:
                raise SettingsError(
                    f"[monitoring] drift bound {metric}: WARN {self.drift_warn[metric]} exceeds "
                    f"ERROR {self.drift_error[metric]}"
                )
        if self.length_bins < 2:
            raise SettingsError(f"[monitoring].length_bins must be at least 2, got {self.length_bins}")
        if not 0.0 < self.psi_floor_share < 1.0:
            raise SettingsError(f"[monitoring].psi_floor_share must be in (0, 1), got {self.psi_floor_share}")
        if self.wilson_z <= 0:
            raise SettingsError(f"[monitoring].wilson_z must be positive, got {self.wilson_z}")

    @classmethod
    def from_settings(cls, settings: Settings) -> MonitoringRules:
        """Read the `[monitoring]` section (with its drift_warn / drift_error tables)."""
        section = settings.section("monitoring")
        try:
            return cls(
                min_rows=int(section["min_rows"]),
                length_bins=int(section["length_bins"]),
                short_text_chars=int(section["short_text_chars"]),
                psi_floor_share=float(section["psi_floor_share"]),
                min_labelled_rows=int(section["min_labelled_rows"]),
                max_macro_f1_drop=float(section["max_macro_f1_drop"]),
                min_product_predictions=int(section["min_product_predictions"]),
                wilson_z=float(section["wilson_z"]),
                report_top_n=int(section["report_top_n"]),
                drift_warn={key: float(value) for key, value in section["drift_warn"].items()},
                drift_error={key: float(value) for key, value in section["drift_error"].items()},
            )
        except KeyError as exc:
            raise SettingsError(f"settings section [monitoring] lacks key {exc.args[0]!r}") from None


def require_columns(frame: pl.DataFrame, columns: tuple[str, ...] | list[str], what: str) -> None:
    """Raise MonitoringError naming the columns `frame` lacks."""
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise MonitoringError(f"{what} lacks columns {missing}")


def not_enough_data(name: str, rows: int, minimum: int, what: str) -> MonitorOutcome:
    """The explicit verdict of a monitor that saw too little to judge."""
    return MonitorOutcome(
        name,
        False,
        WARN,
        f"not enough data: {rows} {what} < {minimum}; not evaluated",
        {"evaluated": 0, "rows": rows, "min_rows": minimum},
    )


# --- the prediction log --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionLogStats:
    """What `prediction_log` did: rows in and out, distinct requests, duplicates removed, rows per version."""

    rows_in: int
    rows: int
    requests: int
    duplicates_removed: int
    rows_by_version: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows_in": self.rows_in,
            "rows": self.rows,
            "requests": self.requests,
            "duplicates_removed": self.duplicates_removed,
            "rows_by_version": dict(self.rows_by_version),
        }


def prediction_log(capture: pl.DataFrame) -> tuple[pl.DataFrame, PredictionLogStats]:
    """The captured predictions as one table: one row per (capture_id, row), the first capture kept.

    Two requests a client sent with one request id are two requests here. Sorted by time (then request
    key and row, so equal times stay in a stable order), with a `day` column (UTC date) to partition by.
    A row repeated across segments (a replayed or re-read capture) counts in `duplicates_removed`.
    """
    require_columns(capture, _LOG_REQUIRED_COLUMNS, "capture frame")
    if not isinstance(capture.schema["time"], pl.Datetime):
        raise MonitoringError(f"capture column 'time' must be a Datetime, got {capture.schema['time']}")
    unknown_versions = capture.filter(pl.col("model_version").is_null()).height
    if unknown_versions:
        raise MonitoringError(f"{unknown_versions} capture rows have no model_version")
    capture_id = pl.col("capture_id") if "capture_id" in capture.columns else pl.lit(None, pl.String)
    keyed = capture.with_columns(pl.coalesce(capture_id, pl.col("request_id")).alias(_REQUEST_KEY))
    log = (
        keyed.unique(subset=[_REQUEST_KEY, "row"], keep="first", maintain_order=True)
        .sort(["time", _REQUEST_KEY, "row"])
        .with_columns(pl.col("time").dt.date().alias("day"))
    )
    requests = log[_REQUEST_KEY].n_unique()
    log = log.drop(_REQUEST_KEY)
    counts = log.group_by("model_version").len().sort("model_version")
    stats = PredictionLogStats(
        rows_in=capture.height,
        rows=log.height,
        requests=requests,
        duplicates_removed=capture.height - log.height,
        rows_by_version=dict(counts.iter_rows()),
    )
    return log, stats


# --- system health: the endpoint's /metrics ------------------------------------------------------------

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


def health_outcomes(
    numbers: Mapping[str, float], monitoring_section: Mapping[str, Any]
) -> list[MonitorOutcome]:
    """Recent error rate and p99 latency against `[monitoring].max_error_rate` / `max_p99_latency_ms` (ERROR).

    A window without inference requests is not judged: both checks pass as "not enough data" with
    `evaluated = 0` (an idle endpoint is not a fault, so no WARN).
    """
    max_error_rate = float(monitoring_section["max_error_rate"])
    max_p99 = float(monitoring_section["max_p99_latency_ms"])
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
