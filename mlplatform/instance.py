"""The Dagster instance of a platform home: its dagster.yaml, created once, under a lock.

Several processes creating a fresh SQLite instance at once corrupt it for good (`table alembic_version
already exists`, then `more than one head`), so exactly one process creates it: whoever holds the lock
writes dagster.yaml and runs the storage migrations; everybody else waits, then opens a ready instance.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlplatform.core.home import PlatformHome


def dagster_yaml(home: PlatformHome) -> str:
    """The instance configuration the platform writes (SQLite under the home by default)."""
    storage = home.dagster / "storage"
    return "\n".join(
        [
            "# Written by mlplatform (mlplatform/instance.py); edits are overwritten.",
            "storage:",
            "  sqlite:",
            f"    base_dir: {storage}",
            "local_artifact_storage:",
            "  module: dagster._core.storage.root",
            "  class: LocalArtifactStorage",
            "  config:",
            f"    base_dir: {home.dagster}",
            "run_coordinator:",
            "  module: dagster._core.run_coordinator",
            "  class: QueuedRunCoordinator",
            "  config:",
            "    max_concurrent_runs: 2",
            "telemetry:",
            "  enabled: false",
            "nux:",
            "  enabled: false",
            "",
        ]
    )


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_instance(home: PlatformHome) -> Path:
    """Write dagster.yaml and create the instance's storage once; return DAGSTER_HOME.

    Safe to call from any number of processes at once: the first creates, the rest find it ready.
    """
    from dagster import DagsterInstance

    home.ensure()
    with _exclusive(home.dagster / ".instance.lock"):
        config_path = home.dagster / "dagster.yaml"
        wanted = dagster_yaml(home)
        if not config_path.exists() or config_path.read_text(encoding="utf-8") != wanted:
            tmp = config_path.with_suffix(".yaml.tmp")
            tmp.write_text(wanted, encoding="utf-8")
            os.replace(tmp, config_path)
        # Opening the instance creates and migrates its storage; do it here, under the lock.
        with DagsterInstance.from_config(str(home.dagster)) as instance:
            instance.get_runs(limit=1)
    return home.dagster


def open_instance(home: PlatformHome):
    """The home's DagsterInstance, created first if needed."""
    from dagster import DagsterInstance

    return DagsterInstance.from_config(str(prepare_instance(home)))
