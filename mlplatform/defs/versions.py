"""Code versions: a hash of the code, the settings and the dataset contract that decide an asset's output.

Dagster marks an asset stale when its code_version changes, so editing the module that computes it,
one of the settings it reads (e.g. a threshold or a hyperparameter grid) or the home's dataset contract
(for the assets that read drops by it) makes it due again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from pydantic import BaseModel

from mlplatform.core.data.contract import DatasetContract


def _settings_value(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else str(value)


def code_version(
    modules: list[ModuleType],
    settings: BaseModel | Mapping[str, Any] | None = None,
    contract: DatasetContract | None = None,
) -> str:
    """The hash of `modules`' source, the settings that tune them (a section, or a mapping of values and
    sections) and, for assets that read drops by it, the `contract`'s fingerprint (what it says, not how
    its file is spelled)."""
    digest = hashlib.sha256()
    for module in sorted(modules, key=lambda m: m.__name__):
        digest.update(module.__name__.encode())
        digest.update(inspect.getsource(module).encode())
    if settings is not None:
        digest.update(json.dumps(settings, sort_keys=True, default=_settings_value).encode())
    if contract is not None:
        digest.update(f"contract:{contract.fingerprint}".encode())
    return digest.hexdigest()[:16]
