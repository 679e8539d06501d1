"""The monitoring rules: read from settings, a WARN bound never above its ERROR bound."""

from __future__ import annotations

import pytest

from mlplatform.core.monitoring.rules import DRIFT_METRICS
from mlplatform.core.platform.settings import Settings, SettingsError


def test_rules_read_from_settings_and_refuse_a_warn_bound_above_its_error_bound(settings: Settings) -> None:
    rules = settings.monitoring
    assert all(rules.drift_warn.bound(metric) <= rules.drift_error.bound(metric) for metric in DRIFT_METRICS)
    with pytest.raises(
        SettingsError, match=r"^\[monitoring\] each WARN bound .*drift_warn\.length_psi 1\.0 exceeds"
    ):
        settings.with_overrides({"monitoring": {"drift_warn": {"length_psi": 1.0}}})
    with pytest.raises(KeyError):
        rules.drift_warn.bound("accuracy")
