"""Check results: nested metadata from core as flat keys, unmeasured values left out."""

from __future__ import annotations

import dagster as dg

from mlplatform.defs.checks import check_result, flat_metadata


def test_nested_metadata_becomes_flat_keys_and_none_is_left_out() -> None:
    nested = {"gaps": {"age_band": {"max_recall_gap": 0.1, "max_predicted_rate_gap": None}}, "bound": 0.25}
    assert flat_metadata(nested) == {"gaps/age_band/max_recall_gap": 0.1, "bound": 0.25}


def test_a_check_result_carries_the_flat_metadata_and_its_severity() -> None:
    result = check_result("fairness_gap", False, "too wide", {"gaps": {"x": 0.4}}, warn_only=True)
    assert result.severity == dg.AssetCheckSeverity.WARN and not result.passed
    assert result.metadata["gaps/x"].value == 0.4
