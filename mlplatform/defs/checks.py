"""Turning core check outcomes into Dagster check results (one shape for every stage)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg


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
        metadata=dict(metadata or {}),
    )
