"""The operations dashboard: `GET /dashboard` (one offline HTML page) and `GET /dashboard/data` (its JSON).

`dashboard_data` only reads the home: the registry (with the running rollout), the artifact store (latest
materializations, the monitoring assets and the rollout's judgement rounds), and the alert log. Dagster
is never imported here: it would cost the server seconds. The one thing it is handed rather than reads
is the serving endpoint's own health (`own_health`): the endpoint that serves the page knows its recent
traffic without `[deployment] endpoint_url`, so its system-health panel is live; a dashboard without one
shows the latest `system_health` materialization.
Each section reports its own state -- "ok", "empty" (nothing written yet) or "error" (present but
unreadable, with the reason) -- so one broken source never blanks the page nor hides behind "no data".
"""

from __future__ import annotations

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
from mlplatform.core.monitoring.health import health_outcomes, system_health_numbers
from mlplatform.core.platform.artifacts import ArtifactError, ArtifactStore, Bundle, StoredArtifact
from mlplatform.core.platform.errors import PlatformError
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import RecordsError
from mlplatform.core.platform.settings import MonitoringRules, Settings
from mlplatform.core.release.registry import PREVIOUS, PRODUCTION, ModelRegistry, RegistryError
from mlplatform.core.release.rollout import (
    RolloutError,
    RolloutStrategy,
    current_rollout,
    latest_round,
    rollout_events,
)
from mlplatform.serving.model_holder import HolderStatus

log = logging.getLogger(__name__)

DASHBOARD_PATH = "/dashboard"
DASHBOARD_DATA_PATH = "/dashboard/data"
PAGE_FILE = Path(__file__).parent / "static" / "dashboard.html"
DRIFT_ASSET = "drift_report"
LIVE_QUALITY_ASSET = "live_model_quality"
PRODUCT_REPORT_ASSET = "product_quality_report"
SYSTEM_HEALTH_ASSET = "system_health"
BIAS_DRIFT_ASSET = "bias_drift"
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
    RolloutError,
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


def _live_health(own_health: Mapping[str, Any]) -> dict[str, Any]:
    """This endpoint's own health, as the `system_health` asset would judge it, now."""
    checks = [_verdict(outcome.to_dict()) for outcome in own_health["checks"]]
    values = {str(key): _scalar(value) for key, value in own_health["numbers"].items()}
    return {
        "source": "this endpoint, live",
        "created_at": own_health["at"],
        "values": values,
        "checks": checks,
    }


def endpoint_health(metrics_text: str, rules: MonitoringRules, now: float) -> dict[str, Any]:
    """The endpoint's health from its own `/metrics` text (what `own_health` returns to the dashboard)."""
    numbers = system_health_numbers(metrics_text, now)
    return {
        "numbers": numbers,
        "checks": health_outcomes(numbers, rules),
        "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
    }


# --- rollout ------------------------------------------------------------------------------------------


_COMPARED = (
    ("predictions in this step", "candidate_rows", "production_rows"),
    ("p50 latency (ms)", "candidate_p50_latency_ms", "production_p50_latency_ms"),
    ("p99 latency (ms)", "candidate_p99_latency_ms", "production_p99_latency_ms"),
    ("live macro-F1", "candidate_macro_f1", "production_macro_f1"),
)


def _comparison(numbers: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The two versions side by side: what both have a number for in the judgement."""
    rows = [
        {
            "metric": metric,
            "candidate": _number(numbers.get(mine)),
            "production": _number(numbers.get(theirs)),
        }
        for metric, mine, theirs in _COMPARED
        if mine in numbers or theirs in numbers
    ]
    for key in sorted(numbers):
        if key.startswith("candidate_share/"):
            label = key.split("/", 1)[1]
            rows.append(
                {
                    "metric": f"predicted share: {label}",
                    "candidate": _number(numbers[key]),
                    "production": _number(numbers.get(f"production_share/{label}")),
                }
            )
    return rows


def _rollout(registry: ModelRegistry, store: ArtifactStore, max_rows: int) -> dict[str, Any]:
    events = rollout_events(registry.events())
    rollout = current_rollout(registry)
    if rollout is None and not events:
        raise NoData("no rollout yet")
    recent = [
        {key: _scalar(event.get(key)) for key in ("time", "event", "version", "by", "reason")}
        for event in reversed(events[-max_rows:])
    ]
    if rollout is None:
        return {"running": None, "events": recent}
    shadow = rollout.strategy is RolloutStrategy.SHADOW
    shares = [
        {"version": rollout.production, "role": "production", "share": 100 - rollout.percent},
        {
            "version": rollout.candidate,
            "role": "shadow (scores a copy of every request)" if shadow else "canary",
            "share": rollout.percent,
        },
    ]
    judged = latest_round(store, rollout.id)
    judgement = None
    if judged is not None:
        numbers = judged.get("numbers") if isinstance(judged.get("numbers"), Mapping) else {}
        after = judged.get("after") if isinstance(judged.get("after"), Mapping) else {}
        judgement = {
            "judged_at": _scalar(judged.get("judged_at")),
            "action": _scalar(after.get("action", judged.get("action"))),
            "reason": _scalar(after.get("reason", judged.get("reason"))),
            "checks": [
                _verdict(outcome) for outcome in judged.get("outcomes") or [] if isinstance(outcome, Mapping)
            ],
            "numbers": {str(key): _scalar(value) for key, value in numbers.items()},
            "comparison": _comparison(numbers),
        }
    running = {
        **{key: _scalar(value) for key, value in rollout.to_dict().items() if key != "steps"},
        "steps": list(rollout.steps),
        "candidate_status": registry.get(rollout.candidate).status,
        "shares": shares,
        "judgement": judgement,
    }
    return {"running": running, "events": recent}


def _bias_drift(store: ArtifactStore) -> dict[str, Any]:
    record = _latest_per_partition(store, BIAS_DRIFT_ASSET)[0]
    report = store.load(record)
    if not isinstance(report, Mapping) or not isinstance(report.get("facets"), list):
        raise UnrecognisedShape(f"{BIAS_DRIFT_ASSET} {record.version[:12]} holds no bias drift report")
    outcome = report.get("outcome") if isinstance(report.get("outcome"), Mapping) else {}
    by_day = [row for row in report.get("by_day") or [] if isinstance(row, Mapping)]
    facets = []
    for facet in report["facets"]:
        if not isinstance(facet, Mapping):
            continue
        values = [value for value in facet.get("values") or [] if isinstance(value, Mapping)]
        judged = [value for value in values if _number(value.get("shift")) is not None]
        worst = max(judged, key=lambda value: value["shift"], default=None)
        label = worst.get("worst_class") if worst is not None else None
        name = facet.get("facet")
        points = [
            {"day": str(row.get("day")), "value": _scalar(row.get("value")), "rate": _number(row.get("rate"))}
            for row in by_day
            if row.get("facet") == name and row.get("label") == label
        ]
        facets.append(
            {
                "facet": _scalar(name),
                "source": _scalar(facet.get("source")),
                "reason": _scalar(facet.get("reason")),
                "charted_class": _scalar(label),
                "points": points,
                "values": [
                    {
                        "value": _scalar(value.get("value")),
                        "rows": _number(value.get("rows")),
                        "shift": _number(value.get("shift")),
                        "severity": _scalar(value.get("severity")),
                        "note": _scalar(value.get("note")),
                    }
                    for value in values
                ],
            }
        )
    return {
        **_origin(record),
        "judged_version": _scalar(report.get("judged_version")),
        "check": _verdict(outcome) if outcome else None,
        "facets": facets,
    }


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
    home: PlatformHome,
    settings: Settings,
    served: Mapping[str, Any] | None = None,
    own_health: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything the dashboard shows, read from `home` now; `served` is this endpoint's own model status,
    `own_health` its own health (`endpoint_health`; None: the latest `system_health` materialization)."""
    config = settings.serving
    registry = ModelRegistry.for_home(home, settings.storage)
    store = ArtifactStore.from_settings(home, settings.storage)
    health = (lambda: _live_health(own_health)) if own_health is not None else (lambda: _system_health(store))
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
        "system_health": _section(health),
        "rollout": _section(lambda: _rollout(registry, store, config.dashboard_max_rows)),
        "bias_drift": _section(lambda: _bias_drift(store)),
        "alerts": _section(lambda: _alerts(AlertStore.for_home(home), config.dashboard_max_rows)),
    }


def add_dashboard_routes(
    app: FastAPI,
    home: PlatformHome,
    settings: Settings,
    served: Callable[[], HolderStatus],
    own_health: Callable[[], Mapping[str, Any]] | None = None,
) -> None:
    """Mount `GET /dashboard` (the page) and `GET /dashboard/data` (its JSON); `served()` is the holder
    status, `own_health()` the endpoint's own health (`endpoint_health`), read on the event loop.

    API keys, when configured, gate both like every non-health route (the app's RequestGate does it).
    """
    page = PAGE_FILE.read_bytes()  # read once at start-up: a missing page fails the app, not a request
    headers = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"}

    @app.get(DASHBOARD_PATH, summary="Operations dashboard (HTML)", include_in_schema=True)
    async def dashboard_page() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    @app.get(DASHBOARD_DATA_PATH, summary="The dashboard's data (JSON)")
    async def dashboard_json() -> Response:
        # The endpoint's own figures on the loop (where its metrics are kept), then file reads and a few
        # small artifact loads off it, so inference is never held up.
        health = own_health() if own_health is not None else None
        data = await anyio.to_thread.run_sync(dashboard_data, home, settings, served().to_dict(), health)
        return Response(
            json.dumps(data, allow_nan=False).encode(),
            media_type="application/json",
            headers={"Cache-Control": "no-store"},
        )
