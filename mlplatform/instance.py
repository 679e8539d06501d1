"""The Dagster instance of a platform home: its dagster.yaml, created once, under a lock.

Several processes creating a fresh SQLite instance at once corrupt it for good (`table alembic_version
already exists`, then `more than one head`), so exactly one process creates it: whoever holds the lock
writes dagster.yaml and runs the storage migrations; everybody else waits, then opens a ready instance.

With `MLPLATFORM_PG_URL` (PlatformHome.pg_url) runs, event logs and schedules live in PostgreSQL
(dagster-postgres); the migrations then also run under a PostgreSQL advisory lock, because homes on
other machines may share the database.
"""

from __future__ import annotations

import json
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from mlplatform.core.platform.fsio import file_lock, write_bytes_atomic
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import postgres_session_lock, sqlalchemy_url

if TYPE_CHECKING:
    from dagster import DagsterInstance

MIGRATION_LOCK = "mlplatform:dagster-instance"


def dagster_yaml(home: PlatformHome) -> str:
    """The instance configuration the platform writes (SQLite under the home by default)."""
    return "\n".join(
        [
            "# Written by mlplatform (mlplatform/instance.py); edits are overwritten.",
            *_storage_yaml(home),
            "local_artifact_storage:",
            "  module: dagster._core.storage.root",
            "  class: LocalArtifactStorage",
            "  config:",
            f"    base_dir: {home.dagster}",
            "run_coordinator:",
            "  module: dagster._core.run_coordinator",
            "  class: QueuedRunCoordinator",
            "telemetry:",
            "  enabled: false",
            "nux:",
            "  enabled: false",
            *_execution_yaml(home),
            "",
        ]
    )


def _storage_yaml(home: PlatformHome) -> list[str]:
    """Runs, event logs and schedules: PostgreSQL when the home has a pg_url, else SQLite files."""
    if home.pg_url:
        # A JSON string is a valid double-quoted YAML scalar, whatever the URL holds.
        return ["storage:", "  postgres:", f"    postgres_url: {json.dumps(sqlalchemy_url(home.pg_url))}"]
    return ["storage:", "  sqlite:", f"    base_dir: {home.dagster / 'storage'}"]


def _migration_lock(home: PlatformHome) -> AbstractContextManager[None]:
    return postgres_session_lock(home.pg_url, MIGRATION_LOCK) if home.pg_url else nullcontext()


def _execution_yaml(home: PlatformHome) -> list[str]:
    """Run retries and the deployment pool's limit, from the home's [execution] settings."""
    from mlplatform.core.platform.settings import Settings
    from mlplatform.defs.execution import ExecutionRules, instance_yaml_lines

    return instance_yaml_lines(ExecutionRules.from_settings(Settings.load(home.settings_file)))


def prepare_instance(home: PlatformHome) -> Path:
    """Write dagster.yaml and create the instance's storage once; return DAGSTER_HOME.

    Safe to call from any number of processes at once: the first creates, the rest find it ready.
    """
    with _open_prepared(home):
        pass
    return home.dagster


def open_instance(home: PlatformHome) -> DagsterInstance:
    """The home's DagsterInstance, created first if needed; the caller closes it (`with`)."""
    return _open_prepared(home)


def _open_prepared(home: PlatformHome) -> DagsterInstance:
    """Write dagster.yaml if it changed and open the instance, creating its storage, under the lock(s).

    The instance that prepared the storage is the one returned, so each caller opens it once.
    """
    from dagster import DagsterInstance

    home.ensure()
    with file_lock(home.dagster / ".instance.lock"):
        changed = _write_config(home)
        # Opening the instance creates and migrates its storage; do it here, under the lock(s).
        with _migration_lock(home), ExitStack() as close_on_error:
            instance = close_on_error.enter_context(DagsterInstance.from_config(str(home.dagster)))
            instance.get_runs(limit=1)
            if changed:
                # Dagster sets a pool's limit on the first step that claims it; two runs reaching
                # the pool at once on a fresh instance could both do so and both get a slot. So the
                # platform's pool gets its limit here, once, under the lock.
                from mlplatform.defs.execution import DEPLOYMENT_POOL

                instance.event_log_storage.initialize_concurrency_limit_to_default(DEPLOYMENT_POOL)
            close_on_error.pop_all()
    return instance


def _write_config(home: PlatformHome) -> bool:
    """Write the home's dagster.yaml unless it already says what the platform wants; True if written."""
    config_path = home.dagster / "dagster.yaml"
    wanted = dagster_yaml(home)
    if config_path.exists() and config_path.read_text(encoding="utf-8") == wanted:
        return False
    # Owner-only: with PostgreSQL the file holds the database URL, which may carry a password.
    write_bytes_atomic(config_path, wanted.encode("utf-8"), mode=0o600)
    return True
