"""Turning core check outcomes into Dagster check results (one shape for every stage).

Every number a check judges is in its metadata, so the UI shows (and plots) it beside the verdict:
nested mappings from core (a gate's per-class recalls, per-facet gaps) become flat `outer/inner` keys,
and a value that was not measured (None) is left out rather than shown as a number.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from mlplatform.core.monitoring.rules import WARN, MonitorOutcome


def flat_metadata(metadata: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"gaps": {"age": {"max_recall_gap": 0.1}}}` as `{"gaps/age/max_recall_gap": 0.1}`; None dropped."""
    flat: dict[str, Any] = {}
    for key, value in metadata.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_metadata(value, f"{name}/"))
        elif value is not None:
            flat[name] = value
    return flat


def check_result(
    name: str,
    passed: bool,
    description: str,
    metadata: Mapping[str, Any] | None = None,
    *,
    warn_only: bool = False,
    asset_key: dg.AssetKey | None = None,
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        check_name=name,
        asset_key=asset_key,
        passed=bool(passed),
        severity=dg.AssetCheckSeverity.WARN if warn_only else dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata=flat_metadata(metadata or {}),
    )


def monitor_check(outcome: MonitorOutcome, asset: str) -> dg.AssetCheckResult:
    """A core monitor's outcome as a check result: a WARN outcome warns, anything else fails as an ERROR."""
    return check_result(
        outcome.name,
        outcome.passed,
        outcome.description,
        outcome.metadata,
        warn_only=outcome.severity == WARN,
        asset_key=dg.AssetKey(asset),
    )
