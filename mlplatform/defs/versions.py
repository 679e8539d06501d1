"""Code versions: a hash of the code and the settings that decide an asset's output.

Dagster marks an asset stale when its code_version changes, so editing the module that computes it
or one of the settings it reads (e.g. a threshold or a hyperparameter grid) makes it due again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from types import ModuleType
from typing import Any


def code_version(modules: list[ModuleType], settings: Mapping[str, Any] | None = None) -> str:
    digest = hashlib.sha256()
    for module in sorted(modules, key=lambda m: m.__name__):
        digest.update(module.__name__.encode())
        digest.update(inspect.getsource(module).encode())
    if settings is not None:
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
