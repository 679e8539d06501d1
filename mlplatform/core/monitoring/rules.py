"""What every monitor shares: the drift metrics, the shape of a verdict (`MonitorOutcome`, WARN or
ERROR) and the explicit "not enough data" verdict of a monitor that saw too little.

The monitors live next to this module: the prediction log (prediction_log.py), drift (drift.py), live
quality (live_quality.py), the product report (product_report.py) and system health (health.py). All are
functions on polars frames and plain values; the Dagster assets in defs/ hand them their inputs and turn
their verdicts into check results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import DriftBounds

ERROR = "ERROR"
WARN = "WARN"
DRIFT_METRICS: tuple[str, ...] = tuple(DriftBounds.model_fields)
"""Drift metrics: the keys of `[monitoring.drift_warn]` / `[monitoring.drift_error]` (`DriftBounds`) and
the names of the drift outcomes."""


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
