"""Resources: the only door from Dagster wiring to the outside world (the platform home)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mlplatform.core.home import PlatformHome
from mlplatform.core.lake import Lake
from mlplatform.core.registry import ModelRegistry
from mlplatform.core.settings import Settings


class PlatformResource(dg.ConfigurableResource):
    """The deployment's home: its settings, its lake and its registry."""

    home: str

    def platform_home(self) -> PlatformHome:
        return PlatformHome(Path(self.home))

    def settings(self) -> Settings:
        return Settings.load(self.platform_home().settings_file)

    def registry(self) -> ModelRegistry:
        return ModelRegistry(self.platform_home().ensure().registry)

    def lake(self) -> Lake:
        return Lake.from_settings(self.platform_home(), self.settings())
