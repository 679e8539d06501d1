"""The monitoring rules: read from settings, a WARN bound never above its ERROR bound."""

from __future__ import annotations

import pytest

from mlplatform.core.monitoring.rules import MonitoringRules
from mlplatform.core.platform.settings import Settings, SettingsError


def test_rules_read_from_settings_and_refuse_a_warn_bound_above_its_error_bound(settings: Settings) -> None:
    rules = MonitoringRules.from_settings(settings)
    assert rules.drift_warn["length_psi"] <= rules.drift_error["length_psi"]
    values = dict(settings.values)
    monitoring = dict(values["monitoring"])
    monitoring["drift_warn"] = {**monitoring["drift_warn"], "length_psi": 1.0}
    with pytest.raises(SettingsError, match="length_psi"):
        MonitoringRules.from_settings(Settings({**values, "monitoring": monitoring}))
