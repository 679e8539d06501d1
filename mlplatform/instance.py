"""The Dagster instance of a platform home: its dagster.yaml, created once, under a lock.

Several processes creating a fresh SQLite instance at once corrupt it for good (`table alembic_version
already exists`, then `more than one head`), so exactly one process creates it: whoever holds the lock
writes dagster.yaml and runs the storage migrations; everybody else waits, then opens a ready instance.

With `MLPLATFORM_PG_URL` (PlatformHome.pg_url) runs, event logs and schedules live in PostgreSQL
(dagster-postgres, the `postgres` extra); the migrations then also run under a PostgreSQL advisory lock,
because homes on other machines may share the database.

dagster.yaml is shared between the platform and its user:

- The platform's keys (`platform_config`: storage, run launcher and coordinator, run retries, run
  monitoring, concurrency, log level, telemetry) are merged into the file each time the platform opens
  the instance; every other key stays as the user wrote it (compute logs, retention, run monitoring
  timeouts, ...). Within a section the platform sets only its own sub-keys. The file is written only
  when the merge changes it (comments are not kept then: the file is re-serialised).
- It names no path. Runs, event logs and schedules on SQLite, local artifacts and compute logs are in
  Dagster's default places, which Dagster derives from the directory it opens (the home's `dagster/`,
  $DAGSTER_HOME): a moved or copied home works as it is, whoever opens it first (`mlplatform`, `dg`,
  `dagster`). Homes written before kept SQLite under `dagster/storage/`; their history and schedules
  move once, under the lock, to `dagster/history/` and `dagster/schedules/`.

One code location name everywhere, `mlplatform` (CODE_LOCATION): Dagster keeps sensor cursors, run
keys and schedule state per location name, so `mlplatform ui` (the workspace file `workspace_file`
writes), `dg` and `dagster` (pyproject.toml's [tool.dg.project]) and workspace.yaml all use it.
`dagster` and `dg` find the instance through $DAGSTER_HOME, which the project root's `.env` sets;
`check_dagster_home` refuses definitions loaded for one home against another home's instance.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.fsio import file_lock, write_bytes_atomic
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import postgres_session_lock, require_postgres, sqlalchemy_url

if TYPE_CHECKING:
    from dagster import DagsterInstance

MIGRATION_LOCK = "mlplatform:dagster-instance"
CONFIG_FILE = "dagster.yaml"
WORKSPACE_FILE = "workspace.yaml"
CODE_LOCATION = "mlplatform"
DEFINITIONS_MODULE = "mlplatform.definitions"
# Top-level keys the platform owns whole: set to its value, or removed when it has none (SQLite
# storage and local artifacts are Dagster's defaults under the opened directory: no path is written).
OWNED_KEYS = ("storage", "local_artifact_storage", "run_launcher")
# Where SQLite storage lived in homes written before (`storage: sqlite: base_dir: <home>/dagster/storage`).
LEGACY_SQLITE_DIR = "storage"
SQLITE_DIRS = ("history", "schedules")
HEADER = (
    "# Dagster instance of an mlplatform home (mlplatform/instance.py). The platform merges its own keys\n"
    "# into this file when they change; add your own keys (compute_logs, retention, run_monitoring\n"
    "# timeouts, ...): they are kept. Paths are Dagster's defaults under this directory.\n"
)


class InstanceError(UserError, RuntimeError):
    """The home's Dagster instance cannot be opened as it is (a bad dagster.yaml, a wrong DAGSTER_HOME)."""


def platform_config(home: PlatformHome) -> dict[str, Any]:
    """The keys of dagster.yaml the platform manages, from the home's storage and [execution] settings."""
    config: dict[str, Any] = {}
    storage = _storage_config(home)
    if storage is not None:
        config["storage"] = storage
    config["run_launcher"] = {"module": "mlplatform.defs.launcher", "class": "PlatformRunLauncher"}
    config["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}
    config["telemetry"] = {"enabled": False}
    config["nux"] = {"enabled": False}
    config.update(_execution_config(home))
    return config


def dagster_yaml(home: PlatformHome) -> str:
    """The dagster.yaml of a home whose user added no keys."""
    return render_config(merge_config({}, platform_config(home)))


def merge_config(existing: Mapping[str, Any], platform: Mapping[str, Any]) -> dict[str, Any]:
    """`existing` with the platform's keys merged in: owned keys replaced or removed, sections merged."""
    merged = {key: copy.deepcopy(value) for key, value in platform.items()}
    for key, value in existing.items():
        if key in OWNED_KEYS:
            continue
        if key in merged:
            merged[key] = _merge_section(value, merged[key])
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _merge_section(user: Any, platform: Any) -> Any:
    """The platform's value with the user's own sub-keys kept (the platform's sub-keys win)."""
    if not isinstance(user, Mapping) or not isinstance(platform, Mapping):
        return copy.deepcopy(platform)
    merged = copy.deepcopy(dict(user))
    for key, value in platform.items():
        merged[key] = _merge_section(user.get(key), value) if key in user else copy.deepcopy(value)
    return merged


def render_config(config: Mapping[str, Any]) -> str:
    return HEADER + yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=False)


def _storage_config(home: PlatformHome) -> dict[str, Any] | None:
    """Runs, event logs and schedules: PostgreSQL when the home has a pg_url, else None (SQLite in
    Dagster's default place)."""
    if not home.pg_url:
        return None
    require_postgres()
    return {"postgres": {"postgres_url": sqlalchemy_url(home.pg_url)}}


def _migration_lock(home: PlatformHome) -> AbstractContextManager[None]:
    return postgres_session_lock(home.pg_url, MIGRATION_LOCK) if home.pg_url else nullcontext()


def _execution_config(home: PlatformHome) -> dict[str, Any]:
    """Run retries, run monitoring and the deployment pool's limit, from the home's [execution] settings."""
    from mlplatform.core.platform.settings import Settings
    from mlplatform.defs.execution import instance_config

    return instance_config(Settings.load(home.settings_file).execution)


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
        if not home.pg_url:
            _adopt_legacy_sqlite_layout(home)
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
    """Merge the platform's keys into the home's dagster.yaml; write it only if that changes it.

    True when written (a new home, changed settings, or a file from before).
    """
    config_path = home.dagster / CONFIG_FILE
    existing = read_config(config_path)
    wanted = merge_config(existing, platform_config(home))
    if config_path.exists() and wanted == existing:
        return False
    # Owner-only: with PostgreSQL the file holds the database URL, which may carry a password.
    write_bytes_atomic(config_path, render_config(wanted).encode("utf-8"), mode=0o600)
    return True


def read_config(config_path: Path) -> dict[str, Any]:
    """The keys of a dagster.yaml ({} when there is none); InstanceError when it is not a YAML mapping."""
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise InstanceError(
            f"{config_path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}"
        ) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise InstanceError(f"{config_path} must hold a YAML mapping of Dagster instance keys")
    return loaded


def _adopt_legacy_sqlite_layout(home: PlatformHome) -> None:
    """Move SQLite history and schedules from `dagster/storage/` (homes written before) to Dagster's
    default place, once. Both present means two histories: refuse rather than pick one."""
    legacy = home.dagster / LEGACY_SQLITE_DIR
    for name in SQLITE_DIRS:
        old, new = legacy / name, home.dagster / name
        if not old.is_dir():
            continue
        if new.exists():
            raise InstanceError(
                f"both {old} and {new} hold Dagster {name}: the first is from an earlier mlplatform; "
                "stop processes still running the earlier version, then move one of them away"
            )
        os.replace(old, new)


# ---- code location and DAGSTER_HOME ----------------------------------------------------------------


def workspace_yaml() -> str:
    """A workspace of the platform's one code location, under its one name."""
    location = {"python_module": {"module_name": DEFINITIONS_MODULE, "location_name": CODE_LOCATION}}
    return yaml.safe_dump({"load_from": [location]}, sort_keys=False)


def workspace_file(home: PlatformHome) -> Path:
    """The home's workspace file (written when missing or different), for `dagster dev -w` and daemons."""
    path = home.ensure().dagster / WORKSPACE_FILE
    text = workspace_yaml()
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_bytes_atomic(path, text.encode("utf-8"))
    return path


def check_dagster_home(home: PlatformHome, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to serve `home`'s definitions from a process whose DAGSTER_HOME is another instance.

    Dagster opens the instance from $DAGSTER_HOME before it loads the definitions, which find their
    home from $MLPLATFORM_HOME (default ./.mlplatform): if the two disagree, runs of one home would be
    recorded in another home's instance.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("DAGSTER_HOME")
    if not value:
        return
    if Path(value).expanduser().resolve() != home.dagster.resolve():
        raise InstanceError(
            f"DAGSTER_HOME is {value} but the platform home {home.root} keeps its Dagster instance in "
            f"{home.dagster}: set DAGSTER_HOME to that (the project's .env does for dagster and dg) "
            "or MLPLATFORM_HOME to the home that DAGSTER_HOME belongs to"
        )
