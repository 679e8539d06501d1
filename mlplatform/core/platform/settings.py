"""Platform settings: packaged defaults (config/platform.toml) merged with the home's overrides.

Every threshold and tunable lives in exactly one place: a key of config/platform.toml. A deployment
overrides any key by writing the same key into `$MLPLATFORM_HOME/platform.toml`.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mlplatform.core.platform.errors import UserError


class SettingsError(UserError, ValueError):
    """A settings file is unreadable or names a key the platform does not know."""


def packaged_config_text(name: str) -> str:
    return resources.files("mlplatform.config").joinpath(name).read_text(encoding="utf-8")


OPEN_TABLES = frozenset({"gates.min_class_recall."})
"""Tables whose keys a deployment may add (they name things of its own, e.g. its classes)."""
MOVED_TO_CONTRACT = {
    "features.facets": 'declare facet columns in dataset.toml (role = "facet")',
    "features.age_band_edges": "declare `bins` on the facet column in dataset.toml",
}
"""Settings that describe the data and moved to the dataset contract, with where they went."""


def _merge(defaults: Mapping[str, Any], overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in overrides.items():
        if f"{where}{key}" in MOVED_TO_CONTRACT:
            raise SettingsError(
                f"setting '{where}{key}' describes the data, which the dataset contract does now: "
                f"{MOVED_TO_CONTRACT[f'{where}{key}']}"
            )
        if key not in defaults and where not in OPEN_TABLES:
            raise SettingsError(f"unknown setting '{where}{key}' (see config/platform.toml for the keys)")
        if isinstance(defaults.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            merged[key] = value
    return merged


@dataclass(frozen=True)
class Settings:
    values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, override_file: Path | None = None) -> Settings:
        defaults = tomllib.loads(packaged_config_text("platform.toml"))
        if override_file is None or not override_file.exists():
            return cls(defaults)
        try:
            overrides = tomllib.loads(override_file.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read settings file {override_file}: {exc}") from exc
        return cls(_merge(defaults, overrides, ""))

    def section(self, name: str) -> Mapping[str, Any]:
        try:
            return self.values[name]
        except KeyError:
            raise SettingsError(f"settings have no section [{name}]") from None
