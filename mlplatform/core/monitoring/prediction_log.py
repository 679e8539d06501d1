"""The prediction log: the capture as one table, one row per (request_id, row), with its model version.

By default it holds what clients were answered (`answered` rows): what the monitors judge. A rollout's
judgement also asks for the `shadow` rows (core/monitoring/capture.py: Roles), which share their
answered row's key: the log is then one row per (capture_id, row, role), with a `role` column.

The capture only grows (append-only segments), so the log is always the whole history, deduplicated (a
row re-read from a replayed capture counts once, the first capture kept). A `PredictionLog` carries the
fingerprint of what it was read from (inputs.py), so a later run can tell whether the capture or the
labels moved on since.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import polars as pl

from mlplatform.core.monitoring.capture import CaptureRole, role_of_rows
from mlplatform.core.monitoring.rules import MonitoringError, require_columns

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


def prediction_log(
    capture: pl.DataFrame, roles: tuple[CaptureRole, ...] = (CaptureRole.ANSWERED,)
) -> tuple[pl.DataFrame, PredictionLogStats]:
    """The captured predictions of `roles` as one table: one row per (capture_id, row, role), the first
    capture kept, with a `role` column (old rows: answered).

    Two requests a client sent with one request id are two requests here. Sorted by time (then request
    key, row and role, so equal times stay in a stable order), with a `day` column (UTC date) to
    partition by. A row repeated across segments (a replayed or re-read capture) counts in
    `duplicates_removed`; rows of other roles are not counted at all.
    """
    require_columns(capture, _LOG_REQUIRED_COLUMNS, "capture frame")
    if not isinstance(capture.schema["time"], pl.Datetime):
        raise MonitoringError(f"capture column 'time' must be a Datetime, got {capture.schema['time']}")
    role = role_of_rows() if "role" in capture.columns else pl.lit(CaptureRole.ANSWERED.value)
    capture = capture.with_columns(role.alias("role")).filter(
        pl.col("role").is_in([CaptureRole(name).value for name in roles])
    )
    unknown_versions = capture.filter(pl.col("model_version").is_null()).height
    if unknown_versions:
        raise MonitoringError(f"{unknown_versions} capture rows have no model_version")
    capture_id = pl.col("capture_id") if "capture_id" in capture.columns else pl.lit(None, pl.String)
    keyed = capture.with_columns(pl.coalesce(capture_id, pl.col("request_id")).alias(_REQUEST_KEY))
    log = (
        keyed.unique(subset=[_REQUEST_KEY, "row", "role"], keep="first", maintain_order=True)
        .sort(["time", _REQUEST_KEY, "row", "role"])
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


INPUT_FINGERPRINT = "input_fingerprint"
"""The metadata key of the fingerprint of what a prediction log was read from (capture and labels)."""


def model_versions(log: pl.DataFrame) -> list[str]:
    """The model versions that answered the logged requests, sorted."""
    return sorted(log["model_version"].unique().to_list())


@dataclass(frozen=True)
class PredictionLog:
    """The log as read from a home's capture, with what it was read from."""

    frame: pl.DataFrame
    stats: PredictionLogStats
    input_fingerprint: str | None

    def metadata(self) -> dict[str, int | str]:
        """The counts (also per model version), the input fingerprint and the time range."""
        metadata: dict[str, int | str] = {
            key: value for key, value in self.stats.to_dict().items() if isinstance(value, int)
        }
        metadata.update({f"rows/{version}": rows for version, rows in self.stats.rows_by_version.items()})
        metadata[INPUT_FINGERPRINT] = self.input_fingerprint or "nothing captured"
        if self.frame.height:
            metadata["first_time"] = str(self.frame["time"].min())
            metadata["last_time"] = str(self.frame["time"].max())
        return metadata
