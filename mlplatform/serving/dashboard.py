"""The operations dashboard: `GET /dashboard` (one offline HTML page) and `GET /dashboard/data` (its JSON).

`dashboard_data` only reads the home: the registry, the artifact store (latest materializations and the
monitoring assets), and the alert log. Dagster is never imported here: it would cost the server seconds.
Each section reports its own state -- "ok", "empty" (nothing written yet) or "error" (present but
unreadable, with the reason) -- so one broken source never blanks the page nor hides behind "no data".
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import polars as pl
from fastapi import FastAPI
from starlette.responses import Response

from mlplatform.core.monitoring.alerts import FIRING, AlertError, AlertStore
from mlplatform.core.platform.artifacts import ArtifactError, ArtifactStore, Bundle, StoredArtifact
from mlplatform.core.platform.errors import PlatformError
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import RecordsError
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import PREVIOUS, PRODUCTION, ModelRegistry, RegistryError
from mlplatform.serving.model_holder import HolderStatus

log = logging.getLogger(__name__)

DASHBOARD_PATH = "/dashboard"
DASHBOARD_DATA_PATH = "/dashboard/data"
PAGE_FILE = Path(__file__).parent / "static" / "dashboard.html"
DRIFT_ASSET = "drift_report"
LIVE_QUALITY_ASSET = "live_model_quality"
PRODUCT_REPORT_ASSET = "product_quality_report"
SYSTEM_HEALTH_ASSET = "system_health"
REPORT_WRAPPER_KEYS = ("by_version", "reports")
# The page is self-contained: nothing may load from anywhere but this endpoint.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'"
)
# What a section may fail with: unreadable files, or a value whose shape is not the expected one.
READ_ERRORS = (
    ArtifactError,
    RegistryError,
    AlertError,
    RecordsError,  # PostgreSQL records unreachable: the section shows the error, the page still loads
    OSError,
    ValueError,
    KeyError,
    TypeError,
)
Scalar = str | int | float | bool | None


class NoData(PlatformError, LookupError):
    """A source has not been written yet (a fresh home): the section shows "no data yet"."""


class UnrecognisedShape(PlatformError, ValueError):
    """A stored value exists but has none of the shapes the dashboard knows how to show."""


# --- small helpers ----------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN; a missing metric is shown as missing)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _scalar(value: Any) -> Scalar:
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, int | float):
        return _number(value)
    return json.dumps(value, default=str)[:200]


def _verdict(check: Mapping[str, Any]) -> dict[str, Any]:
    """A gate or check outcome as shown: name, passed, severity, description."""
    return {
        "name": str(check.get("name")),
        "passed": bool(check.get("passed")),
        "severity": _scalar(check.get("severity")),
        "description": _scalar(check.get("description")),
    }


def _section(read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section's reader: its data with state "ok", or "empty" / "error" with the reason."""
    try:
        return {"state": "ok", **read()}
    except NoData as exc:
        return {"state": "empty", "message": str(exc)}
    except READ_ERRORS as exc:
        log.warning("dashboard section unreadable: %s", exc)
        return {"state": "error", "error": f"{type(exc).__name__}: {exc}"}


def _latest_per_partition(store: ArtifactStore, asset: str) -> list[StoredArtifact]:
    """The latest stored version of each partition of `asset` (one entry when unpartitioned), newest first."""
    if asset not in store.assets():
        raise NoData(f"no {asset} materialized yet")
    latest: dict[str | None, StoredArtifact] = {}
    for record in store.versions(asset, "*"):  # oldest first: later records win
        latest[record.partition] = record
    return sorted(latest.values(), key=lambda record: record.created_at, reverse=True)


def _origin(record: StoredArtifact) -> dict[str, Any]:
    return {
        "partition": record.partition,
        "created_at": record.created_at,
        "run_id": record.extra.get("run_id"),
        "sha256": record.version,
    }


def _as_records(value: Any) -> list[dict[str, Any]]:
    """A stored value as a list of dict rows: a DataFrame's rows, a list of dicts, or one dict."""
    if isinstance(value, pl.DataFrame):
        return value.to_dicts()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, dict)]
    if isinstance(value, dict):
        return [value]
    raise UnrecognisedShape(f"expected a table or JSON object, got {type(value).__name__}")


# --- registry ---------------------------------------------------------------------------------------


def _card_test_metrics(card: Mapping[str, Any], meta_metrics: Mapping[str, Any]) -> Mapping[str, Any]:
    metrics = card.get("metrics")
    if isinstance(metrics, Mapping) and isinstance(metrics.get("test"), Mapping):
        return metrics["test"]
    return meta_metrics


def _per_class_recall(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    per_class = metrics.get("per_class")
    if not isinstance(per_class, Mapping):
        return {}
    return {
        str(label): _number(entry.get("recall"))
        for label, entry in per_class.items()
        if isinstance(entry, Mapping)
    }


def _gates(card: Mapping[str, Any]) -> list[dict[str, Any]]:
    gates = card.get("gates")
    if not isinstance(gates, list):
        return []
    return [_verdict(gate) for gate in gates if isinstance(gate, Mapping)]


def _models(registry: ModelRegistry, max_versions: int) -> dict[str, Any]:
    versions = registry.list()[:max_versions]  # newest first
    if not versions:
        raise NoData("no model version registered yet")
    models = []
    for version in reversed(versions):  # oldest first: the order of the chart's x axis
        metrics = _card_test_metrics(version.card, version.metrics)
        lineage = version.card.get("lineage")
        models.append(
            {
                "version": version.version,
                "status": version.status,
                "aliases": list(version.aliases),
                "created_at": version.created_at,
                "run_id": lineage.get("run_id") if isinstance(lineage, Mapping) else None,
                "macro_f1": _number(metrics.get("macro_f1")),
                "accuracy": _number(metrics.get("accuracy")),
                "per_class_recall": _per_class_recall(metrics),
                "gates": _gates(version.card),
            }
        )
    return {"versions": models}


def _production(registry: ModelRegistry, served: Mapping[str, Any] | None) -> dict[str, Any]:
    aliases = registry.aliases()
    version = aliases.get(PRODUCTION)
    if version is None:
        raise NoData("no model version in production yet")
    model = registry.get(version)
    metrics = _card_test_metrics(model.card, model.metrics)
    return {
        "version": version,
        "since": registry.in_production_since(),
        "previous": aliases.get(PREVIOUS),
        "status": model.status,
        "macro_f1": _number(metrics.get("macro_f1")),
        "served": dict(served) if served is not None else None,
    }


def _registry_events(registry: ModelRegistry, max_rows: int) -> dict[str, Any]:
    events = registry.events()
    if not events:
        raise NoData("no registry events yet")
    keys = ("time", "event", "version", "from", "to", "by", "reason")
    return {
        "events": [{key: _scalar(event.get(key)) for key in keys} for event in reversed(events[-max_rows:])]
    }


# --- artifact store ---------------------------------------------------------------------------------


def _materializations(store: ArtifactStore) -> dict[str, Any]:
    assets = store.assets()
    if not assets:
        raise NoData("nothing materialized yet")
    latest = []
    for asset in assets:
        records = store.versions(asset, "*")
        newest = max(records, key=lambda record: record.created_at)
        latest.append(
            {
                "asset": asset,
                **_origin(newest),
                "rows": newest.rows,
                "stored_versions": len(records),
                "partitions": len({record.partition for record in records if record.partition is not None}),
            }
        )
    latest.sort(key=lambda entry: entry["created_at"], reverse=True)
    return {"assets": latest}


def _report_dicts(value: Any) -> list[dict[str, Any]]:
    """Per-model-version drift reports out of a `DriftReport.to_dict()`, a list of them, or a wrapper of them
    (`{"judged_version": ..., "by_version": {version: report}}`, as the drift_report asset stores them)."""
    found: list[dict[str, Any]] = []
    for item in _as_records(value):
        if "outcomes" in item or "metrics" in item:
            found.append(item)
        elif any(isinstance(item.get(key), list | dict) for key in REPORT_WRAPPER_KEYS):
            key = next(key for key in REPORT_WRAPPER_KEYS if isinstance(item.get(key), list | dict))
            reports = item[key]
            found.extend(_report_dicts(list(reports.values()) if isinstance(reports, dict) else reports))
        elif item and all(isinstance(entry, dict) for entry in item.values()):
            found.extend(_report_dicts(list(item.values())))
    return found


def _drift_bars(report: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One bar per drift metric: its value and WARN/ERROR bounds (from each outcome's metadata)."""
    outcomes = [outcome for outcome in report.get("outcomes") or [] if isinstance(outcome, Mapping)]
    metrics = report.get("metrics") if isinstance(report.get("metrics"), Mapping) else {}
    bars = []
    for outcome in outcomes:
        metadata = outcome.get("metadata") if isinstance(outcome.get("metadata"), Mapping) else {}
        name = str(outcome.get("name"))
        bars.append(
            {
                "name": name,
                "value": _number(metadata.get("value", metrics.get(name))),
                "warn_bound": _number(metadata.get("warn_bound")),
                "error_bound": _number(metadata.get("error_bound")),
                "passed": bool(outcome.get("passed")),
                "severity": _scalar(outcome.get("severity")),
                "description": _scalar(outcome.get("description")),
            }
        )
    return bars


def _drift(store: ArtifactStore, max_versions: int) -> dict[str, Any]:
    reports = []
    for record in _latest_per_partition(store, DRIFT_ASSET)[:max_versions]:
        value = store.load(record)
        found = _report_dicts(value)
        if not found:
            raise UnrecognisedShape(f"{DRIFT_ASSET} {record.version[:12]} holds no drift report")
        for report in found:
            reports.append(
                {
                    **_origin(record),
                    "model_version": _scalar(report.get("model_version", record.partition)),
                    "rows": _number(report.get("rows")),
                    "bars": _drift_bars(report),
                }
            )
    return {"reports": reports}


def _live_quality(store: ArtifactStore, max_versions: int) -> dict[str, Any]:
    points: list[dict[str, Any]] = []
    versions: list[dict[str, Any]] = []
    origins = []
    for record in _latest_per_partition(store, LIVE_QUALITY_ASSET)[:max_versions]:
        for item in _as_records(store.load(record)):
            if "by_day" not in item and "by_version" not in item:
                raise UnrecognisedShape(
                    f"{LIVE_QUALITY_ASSET} {record.version[:12]} has no by_day/by_version"
                )
            origins.append(_origin(record))
            points.extend(_quality_points(item.get("by_day") or []))
            versions.extend(_quality_versions(item.get("by_version") or {}))
    points.sort(key=lambda point: (str(point["day"]), str(point["model_version"])))
    return {"points": points, "by_version": versions, "sources": origins}


def _quality_points(by_day: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {
            "day": str(row.get("day")),
            "model_version": _scalar(row.get("model_version")),
            "rows": _number(row.get("rows")),
            "macro_f1": _number(row.get("macro_f1")),
        }
        for row in by_day
        if isinstance(row, Mapping) and _number(row.get("macro_f1")) is not None
    ]


def _quality_versions(by_version: Any) -> list[dict[str, Any]]:
    entries = by_version.values() if isinstance(by_version, Mapping) else by_version
    result = []
    for entry in entries:
        if not isinstance(entry, Mapping):
            continue
        outcome = entry.get("outcome") if isinstance(entry.get("outcome"), Mapping) else {}
        result.append(
            {
                "model_version": _scalar(entry.get("model_version")),
                "macro_f1": _number(entry.get("macro_f1")),
                "test_macro_f1": _number(entry.get("test_macro_f1")),
                "rows_joined": _number(entry.get("rows_joined")),
                "passed": outcome.get("passed"),
                "severity": _scalar(outcome.get("severity")),
                "description": _scalar(outcome.get("description")),
            }
        )
    return result


def _table_of_bundle(value: Any) -> Any:
    """The CSV member of a Bundle as a table (the product report is stored as CSV + Markdown); else `value`."""
    if not isinstance(value, Bundle):
        return value
    csv_members = [name for name in value.files if name.endswith(".csv")]
    if len(csv_members) != 1:
        raise UnrecognisedShape(f"expected one CSV file in the bundle, got {sorted(value.files)}")
    # Text cells stay text: the CSV's formula-neutralising quote is part of what a person should see.
    return pl.read_csv(io.BytesIO(value.files[csv_members[0]]), infer_schema_length=10_000)


def _flagged_products(store: ArtifactStore, max_rows: int) -> dict[str, Any]:
    record = _latest_per_partition(store, PRODUCT_REPORT_ASSET)[0]
    value = _table_of_bundle(store.load(record))
    rows = [] if isinstance(value, pl.DataFrame) and value.height == 0 else _as_records(value)
    columns = (
        list(value.columns) if isinstance(value, pl.DataFrame) else sorted({k for row in rows for k in row})
    )
    return {
        **_origin(record),
        "columns": columns,
        "rows": [{key: _scalar(row.get(key)) for key in columns} for row in rows[:max_rows]],
        "total": len(rows),
    }


def _system_health(store: ArtifactStore) -> dict[str, Any]:
    record = _latest_per_partition(store, SYSTEM_HEALTH_ASSET)[0]
    records = _as_records(store.load(record))
    if len(records) != 1:
        raise UnrecognisedShape(f"{SYSTEM_HEALTH_ASSET} should hold one object or row, got {len(records)}")
    health = records[0]
    nested = health.get("metrics")
    source = nested if isinstance(nested, Mapping) else health
    values = {
        str(key): _scalar(value)
        for key, value in source.items()
        if value is None or isinstance(value, str | int | float | bool)
    }
    outcomes = health.get("outcomes") or health.get("checks") or []
    checks = [_verdict(check) for check in outcomes if isinstance(check, Mapping)]
    return {**_origin(record), "values": values, "checks": checks}


# --- alerts -----------------------------------------------------------------------------------------


def _alerts(store: AlertStore, max_rows: int) -> dict[str, Any]:
    alerts = [alert.to_dict() for alert in store.list()]
    if not alerts:
        raise NoData("no alert raised yet")
    keys = ("time", "kind", "severity", "source", "message", "state", "resolved_at")
    firing = [alert for alert in alerts if alert["state"] == FIRING]
    recent = list(reversed(alerts))[:max_rows]
    return {
        "firing_count": len(firing),
        "firing": [{key: _scalar(alert.get(key)) for key in keys} for alert in reversed(firing)][:max_rows],
        "recent": [{key: _scalar(alert.get(key)) for key in keys} for alert in recent],
    }


# --- the whole page ---------------------------------------------------------------------------------


def dashboard_data(
    home: PlatformHome, settings: Settings, served: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Everything the dashboard shows, read from `home` now; `served` is this endpoint's own model status."""
    config = settings.serving
    registry = ModelRegistry.for_home(home, settings.storage)
    store = ArtifactStore.from_settings(home, settings.storage)
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "refresh_s": config.dashboard_refresh_s,
        "production": _section(lambda: _production(registry, served)),
        "models": _section(lambda: _models(registry, config.dashboard_max_versions)),
        "registry_events": _section(lambda: _registry_events(registry, config.dashboard_max_rows)),
        "materializations": _section(lambda: _materializations(store)),
        "drift": _section(lambda: _drift(store, config.dashboard_max_versions)),
        "live_quality": _section(lambda: _live_quality(store, config.dashboard_max_versions)),
        "flagged_products": _section(lambda: _flagged_products(store, config.dashboard_max_rows)),
        "system_health": _section(lambda: _system_health(store)),
        "alerts": _section(lambda: _alerts(AlertStore.for_home(home), config.dashboard_max_rows)),
    }


def add_dashboard_routes(
    app: FastAPI, home: PlatformHome, settings: Settings, served: Callable[[], HolderStatus]
) -> None:
    """Mount `GET /dashboard` (the page) and `GET /dashboard/data` (its JSON); `served()` is the holder status.

    API keys, when configured, gate both like every non-health route (the app's RequestGate does it).
    """
    page = PAGE_FILE.read_bytes()  # read once at start-up: a missing page fails the app, not a request
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"}

    @app.get(DASHBOARD_PATH, summary="Operations dashboard (HTML)", include_in_schema=True)
    async def dashboard_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @app.get(DASHBOARD_DATA_PATH, summary="The dashboard's data (JSON)")
    async def dashboard_json() -> Response:
        # File reads and a few small artifact loads: off the event loop, so inference is never held up.
        data = await anyio.to_thread.run_sync(dashboard_data, home, settings, dataclasses.asdict(served()))
        return Response(
            json.dumps(data, allow_nan=False).encode(),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
