"""What every monitor shares: the `[monitoring]` rules, the shape of a verdict (`MonitorOutcome`, WARN or
ERROR) and the explicit "not enough data" verdict of a monitor that saw too little.

The monitors live next to this module: the prediction log (prediction_log.py), drift (drift.py), live
quality (live_quality.py), the product report (product_report.py) and system health (health.py). All are
functions on polars frames and plain values; the Dagster assets in defs/ hand them their inputs and turn
their verdicts into check results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import Settings, SettingsError

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


class MonitoringError(UserError, ValueError):
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
    report_ngrams: int
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
                report_ngrams=int(section["report_ngrams"]),
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
