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


def _merge(defaults: Mapping[str, Any], overrides: Mapping[str, Any], where: str) -> dict[str, Any]:
    merged = dict(defaults)
    for key, value in overrides.items():
        if key not in defaults:
            raise SettingsError(f"unknown setting '{where}{key}' (see config/platform.toml for the keys)")
        if isinstance(defaults[key], Mapping) and isinstance(value, Mapping):
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
