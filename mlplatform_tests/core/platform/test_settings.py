"""Settings: one typed field per key of config/platform.toml, every value validated when they load, and
each bad one told in one line naming its section and key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, RootModel

from mlplatform.core.platform.settings import (
    OPEN_TABLES,
    Approval,
    ClassFloors,
    Executor,
    Settings,
    SettingsError,
    packaged_config_text,
)

BAD_VALUES = [
    ('[gates]\nmin_macro_f1 = "high"\n', "[gates] min_macro_f1: must be a number, got 'high'"),
    ('[serving]\nmax_batch = "lots"\n', "[serving] max_batch: must be an integer, got 'lots'"),
    ("[gates]\nmin_macro_f1 = 5\n", "[gates] min_macro_f1: must be between 0 and 1, got 5"),
    (
        "[serving]\nswap_poll_interval_s = -1.0\n",
        "[serving] swap_poll_interval_s: must be positive, got -1.0",
    ),
]
"""The four examples of issue 14 item 13 and the one line each must give (the CLI and server tests too)."""


def _table_keys(table: dict[str, Any], where: str = "") -> set[str]:
    keys = set()
    for key, value in table.items():
        keys.add(f"{where}{key}")
        if isinstance(value, dict) and f"{where}{key}." not in OPEN_TABLES:
            keys |= _table_keys(value, f"{where}{key}.")
    return keys


def _field_keys(model: type[BaseModel], where: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        keys.add(f"{where}{name}")
        annotation = field.annotation
        is_table = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        if is_table and not issubclass(annotation, RootModel):
            keys |= _field_keys(annotation, f"{where}{name}.")
    return keys


def test_every_key_of_the_packaged_file_is_a_field_and_every_field_a_key() -> None:
    in_file = _table_keys(tomllib.loads(packaged_config_text("platform.toml")))
    assert in_file == _field_keys(Settings)
    # The open table is a field too: its keys are the deployment's own (its classes), `default` required.
    assert "gates.min_class_recall" in in_file
    assert Settings.packaged().gates.min_class_recall.default == 0.30


@pytest.mark.parametrize(("text", "line"), BAD_VALUES)
def test_a_bad_value_is_refused_when_the_settings_load_in_one_line(
    tmp_path: Path, text: str, line: str
) -> None:
    override = tmp_path / "platform.toml"
    override.write_text(text)
    with pytest.raises(SettingsError) as refused:
        Settings.load(override)
    assert str(refused.value) == f"{line} (in {override})"


def test_every_bad_value_is_named_at_once_in_the_order_of_the_file() -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.packaged().with_overrides(
            {
                "gates": {"min_macro_f1": 5, "min_class_recall": {"great": 1.5}},
                "monitoring": {"drift_warn": {"length_psi": 0.5}},
                "execution": {"executor": "spark", "max_concurrent_runs": True},
                "registry": {"approval": "sometimes"},
            },
            source="home",
        )
    assert str(refused.value) == (
        "[registry] approval: must be one of 'auto' or 'manual', got 'sometimes'; "
        "[gates] min_macro_f1: must be between 0 and 1, got 5; "
        "[gates.min_class_recall] great: must be between 0 and 1, got 1.5; "
        "[monitoring] each WARN bound must be at most its ERROR bound: "
        "drift_warn.length_psi 0.5 exceeds drift_error.length_psi 0.25; "
        "[execution] executor: must be one of 'in_process', 'multiprocess' or 'dask', got 'spark'; "
        "[execution] max_concurrent_runs: must be an integer, got true (in home)"
    )


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        ({"scoring": {"threads": 2.0}}, "[scoring] threads: must be an integer, got 2.0"),
        ({"splits": {"salt": ""}}, "[splits] salt: must not be empty, got ''"),
        (
            {"serving": {"capture_sample_rate": float("nan")}},
            "[serving] capture_sample_rate: must be between",
        ),
        ({"serving": {"model_name": "a/b"}}, "[serving] model_name: must be a name for the routes"),
        (
            {"monitoring": {"schedule_cron": "hourly"}},
            "[monitoring] schedule_cron: must be a cron expression",
        ),
        ({"monitoring": {"length_bins": 1}}, "[monitoring] length_bins: must be at least 2, got 1"),
        ({"deployment": {"endpoint_url": "localhost:9"}}, "[deployment] endpoint_url: must start with http"),
        ({"gates": {"min_class_recall": 0.3}}, "[gates.min_class_recall] must be a table, got 0.3"),
        ({"features": {"bias_warn": 0.1}}, "[features.bias_warn] must be a table, got 0.1"),
        (
            {"splits": {"validation_share": 0.6, "test_share": 0.4}},
            "[splits] validation_share 0.6 and test_share",
        ),
    ],
)
def test_types_ranges_choices_and_ordered_bounds(overrides: dict[str, Any], line: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.packaged().with_overrides(overrides)
    assert str(refused.value).startswith(line)


def test_unknown_keys_and_sections_are_refused_and_open_tables_take_new_keys() -> None:
    packaged = Settings.packaged()
    with pytest.raises(SettingsError, match=r"^\[gates\] min_f1: unknown setting"):
        packaged.with_overrides({"gates": {"min_f1": 0.5}})
    with pytest.raises(SettingsError, match=r"^\[gate\]: unknown settings section"):
        packaged.with_overrides({"gate": {"min_macro_f1": 0.5}})
    with pytest.raises(SettingsError, match=r"^\[monitoring.drift_warn\] accuracy: unknown setting"):
        packaged.with_overrides({"monitoring": {"drift_warn": {"accuracy": 0.5}}})
    floors = packaged.with_overrides({"gates": {"min_class_recall": {"great": 0.7}}}).gates.min_class_recall
    assert floors.for_classes(["great", "negative", "meh"]) == {"great": 0.7, "negative": 0.4, "meh": 0.3}


def test_sections_are_typed_and_a_validated_copy_replaces_keys() -> None:
    packaged = Settings.packaged()
    assert packaged.registry.approval is Approval.AUTO and packaged.registry.auto_approve
    assert packaged.execution.executor is Executor.IN_PROCESS
    assert packaged.deployment.endpoint_url is None
    assert packaged.serving.infer_path == "/v2/models/sentiment/infer"
    assert isinstance(packaged.gates.min_class_recall, ClassFloors)
    stricter = packaged.gates.replace(min_macro_f1=0.9)
    assert (stricter.min_macro_f1, packaged.gates.min_macro_f1) == (0.9, 0.55)
    with pytest.raises(SettingsError, match=r"^\[gates\] min_macro_f1: must be between 0 and 1, got 2$"):
        packaged.gates.replace(min_macro_f1=2)
    with pytest.raises(SettingsError, match=r"^\[monitoring.drift_\*\] length_ks: must be between 0 and 1"):
        packaged.monitoring.drift_warn.replace(length_ks=-0.1)
    with pytest.raises(ValueError, match="frozen"):
        packaged.gates.min_macro_f1 = 0.1  # type: ignore[misc]


def test_overrides_keep_the_keys_they_do_not_name(tmp_path: Path) -> None:
    override = tmp_path / "platform.toml"
    override.write_text('[deployment]\nendpoint_url = "http://127.0.0.1:9/"\n[gates]\nmin_macro_f1 = 0.6\n')
    loaded = Settings.load(override)
    assert loaded.deployment.endpoint_url == "http://127.0.0.1:9"
    assert loaded.gates.min_macro_f1 == 0.6 and loaded.gates.max_recall_gap == 0.25
    assert loaded.with_overrides({"gates": {"max_recall_gap": 0.1}}).gates.min_macro_f1 == 0.6
    assert Settings.load(tmp_path / "missing.toml") == Settings.packaged()


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    override = tmp_path / "platform.toml"
    override.write_text("[gates\nmin_macro_f1 = 0.5\n")
    with pytest.raises(SettingsError, match=r"^cannot read settings file .*platform.toml"):
        Settings.load(override)
