"""The home's Dagster instance is created once, even when several processes start at the same time;
SQLite by default, PostgreSQL (a private test server) with a pg_url."""

from __future__ import annotations

import multiprocessing
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
import yaml

from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import RecordsUnavailable, sqlalchemy_url
from mlplatform.instance import (
    CODE_LOCATION,
    DEFINITIONS_MODULE,
    InstanceError,
    check_dagster_home,
    dagster_yaml,
    open_instance,
    prepare_instance,
    read_config,
    workspace_file,
)
from mlplatform_tests.postgres import database_name


def _open_and_count_runs(root: str) -> int:
    with open_instance(PlatformHome(Path(root))) as instance:
        return len(instance.get_runs())


def test_concurrent_first_opens_share_one_healthy_instance(tmp_path):
    root = str(tmp_path / "home")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_open_and_count_runs, [root] * 4) == [0, 0, 0, 0]
    # and it is still usable afterwards (no "more than one head", no half-created tables)
    assert _open_and_count_runs(root) == 0


def test_dagster_yaml_is_written_under_the_home_and_names_no_path(home):
    dagster_home = prepare_instance(home)
    text = (dagster_home / "dagster.yaml").read_text()
    assert dagster_home == home.dagster
    assert "telemetry" in text and "run_monitoring" in text
    assert str(home.root) not in text and "base_dir" not in text
    assert (home.dagster / "history" / "runs.db").is_file()  # Dagster's default place under DAGSTER_HOME


def test_a_copied_home_uses_its_own_storage_whoever_opens_it_first(home, tmp_path):
    from dagster import DagsterInstance

    with open_instance(home) as instance:
        instance.add_dynamic_partitions("drops", ["landed-before-the-copy"])
    copy = PlatformHome(tmp_path / "elsewhere" / "home")
    shutil.copytree(home.root, copy.root)
    config_before = (copy.dagster / "dagster.yaml").read_bytes()
    # Dagster's own commands open $DAGSTER_HOME directly, before any mlplatform command ran there.
    with DagsterInstance.from_config(str(copy.dagster)) as opened_by_dagster:
        opened_by_dagster.add_dynamic_partitions("drops", ["landed-in-the-copy"])
    with open_instance(copy) as instance:
        assert set(instance.get_dynamic_partitions("drops")) == {
            "landed-before-the-copy",
            "landed-in-the-copy",
        }
    with open_instance(home) as instance:  # the original never saw the copy's partition
        assert instance.get_dynamic_partitions("drops") == ["landed-before-the-copy"]
    assert (copy.dagster / "dagster.yaml").read_bytes() == config_before


USER_KEYS = {
    "compute_logs": {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    },
    "retention": {"schedule": {"purge_after_days": 7}},
    "run_monitoring": {"start_timeout_seconds": 300, "max_runtime_seconds": 7200},
    "concurrency": {"runs": {"tag_concurrency_limits": [{"key": "team", "limit": 1}]}},
}


def test_the_users_keys_are_kept_and_the_platforms_merged_in(home):
    prepare_instance(home)
    config_path = home.dagster / "dagster.yaml"
    config_path.write_text(config_path.read_text() + yaml.safe_dump(USER_KEYS))
    home.settings_file.write_text("[execution]\nmax_run_retries = 3\nmax_concurrent_runs = 5\n")

    with open_instance(home) as instance:
        assert instance.run_retries_max_retries == 3
        assert instance.run_monitoring_settings["start_timeout_seconds"] == 300
        assert type(instance.compute_log_manager).__name__ == "NoOpComputeLogManager"
    config = read_config(config_path)
    assert (
        config["compute_logs"] == USER_KEYS["compute_logs"] and config["retention"] == USER_KEYS["retention"]
    )
    assert config["run_monitoring"]["max_runtime_seconds"] == 7200  # the user's, beside the platform's
    assert config["run_monitoring"]["enabled"] is True and config["run_retries"]["max_retries"] == 3
    assert config["concurrency"]["runs"] == {
        "tag_concurrency_limits": [{"key": "team", "limit": 1}],
        "max_concurrent_runs": 5,
    }


def test_the_file_is_not_rewritten_when_nothing_changed(home):
    prepare_instance(home)
    config_path = home.dagster / "dagster.yaml"
    # The user's own layout of the same keys: a comment, another order, another indentation.
    keys = read_config(config_path)
    own_layout = "# mine\n" + yaml.safe_dump(dict(reversed(list(keys.items()))), indent=4)
    config_path.write_text(own_layout)
    before = config_path.stat()
    prepare_instance(home)
    with open_instance(home):
        pass
    after = config_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert config_path.read_text() == own_layout


def test_a_home_from_before_keeps_its_run_history(home):
    """Homes written before named `dagster/storage` as their SQLite directory (an absolute path)."""
    from dagster import DagsterInstance

    home.ensure()
    legacy = (
        "storage:\n  sqlite:\n"
        f"    base_dir: {home.dagster / 'storage'}\n"
        "local_artifact_storage:\n  module: dagster._core.storage.root\n  class: LocalArtifactStorage\n"
        f"  config:\n    base_dir: {home.dagster}\n"
    )
    (home.dagster / "dagster.yaml").write_text(legacy)
    with DagsterInstance.from_config(str(home.dagster)) as old:
        old.add_dynamic_partitions("drops", ["from-before"])
    assert (home.dagster / "storage" / "history" / "runs.db").is_file()

    with open_instance(home) as instance:
        assert instance.get_dynamic_partitions("drops") == ["from-before"]
    assert (home.dagster / "history" / "runs.db").is_file() and (home.dagster / "schedules").is_dir()
    assert not (home.dagster / "storage" / "history").exists()
    assert "storage" not in read_config(home.dagster / "dagster.yaml")


def test_two_run_histories_are_refused_rather_than_one_picked(home):
    prepare_instance(home)
    (home.dagster / "storage" / "history").mkdir(parents=True)
    with pytest.raises(InstanceError, match=r"both .*storage/history and .*history hold Dagster history"):
        prepare_instance(home)


def test_a_dagster_yaml_that_is_not_yaml_is_one_clear_error(home):
    home.ensure()
    (home.dagster / "dagster.yaml").write_text("run_monitoring:\n  enabled: [true\n")
    with pytest.raises(InstanceError, match=r"dagster\.yaml is not valid YAML \(line \d+\)"):
        prepare_instance(home)


def test_definitions_refuse_another_homes_instance(home, tmp_path):
    check_dagster_home(home, {})
    check_dagster_home(home, {"DAGSTER_HOME": str(home.dagster)})
    with pytest.raises(InstanceError, match=r"DAGSTER_HOME is .*other/dagster but the platform home"):
        check_dagster_home(home, {"DAGSTER_HOME": str(tmp_path / "other" / "dagster")})


def test_one_code_location_name_everywhere(home):
    """Dagster keeps sensor cursors, run keys and schedule state per location name."""
    root = Path(__file__).resolve().parents[1]
    pyproject = tomllib.loads((root / "pyproject.toml").read_text())
    dg_project = pyproject["tool"]["dg"]["project"]
    workspace = yaml.safe_load((root / "workspace.yaml").read_text())
    ui_workspace = yaml.safe_load(workspace_file(home).read_text())
    names = {
        dg_project["code_location_name"],
        *(entry["python_module"]["location_name"] for entry in workspace["load_from"]),
        *(entry["python_module"]["location_name"] for entry in ui_workspace["load_from"]),
    }
    assert names == {CODE_LOCATION}
    assert dg_project["code_location_target_module"] == DEFINITIONS_MODULE
    assert "dagster" not in pyproject["tool"]  # [tool.dagster] would win over [tool.dg] for `dagster dev`


def test_open_instance_opens_the_instance_once_and_hands_back_the_prepared_one(home, monkeypatch):
    from dagster import DagsterInstance

    opened = []
    from_config = DagsterInstance.from_config

    def counting_from_config(*args, **kwargs):
        opened.append(from_config(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(DagsterInstance, "from_config", staticmethod(counting_from_config))
    with open_instance(home) as instance:
        assert opened == [instance]  # the one that created the storage and set the pool's limit
        assert instance.event_log_storage.get_pool_config().default_pool_limit is not None
    with open_instance(home) as again:  # a ready instance: still one open per call
        assert opened == [instance, again]
    assert stat.S_IMODE((home.dagster / "dagster.yaml").stat().st_mode) == 0o600


def test_without_a_pg_url_the_instance_stays_on_sqlite(home):
    text = dagster_yaml(home)
    assert "storage" not in yaml.safe_load(text) and "postgres" not in text


def _open_on_postgres_and_count_runs(root: str, pg_url: str) -> int:
    with open_instance(PlatformHome(Path(root), pg_url=pg_url)) as instance:
        return len(instance.get_runs())


@pytest.mark.postgres
def test_with_a_pg_url_runs_events_and_schedules_live_in_postgres(tmp_path, postgres_server, postgres_url):
    root = str(tmp_path / "home")
    # Several first opens at once: one migrates (file lock + advisory lock), the others find it ready.
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        assert pool.starmap(_open_on_postgres_and_count_runs, [(root, postgres_url)] * 2) == [0, 0]

    home = PlatformHome(Path(root), pg_url=postgres_url)
    with open_instance(home) as instance:
        storages = (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
        assert [type(storage).__name__ for storage in storages] == [
            "PostgresRunStorage",
            "PostgresEventLogStorage",
            "PostgresScheduleStorage",
        ]
        instance.add_dynamic_partitions("drops", ["a-drop"])
    tables = {
        row[0]
        for row in postgres_server.execute("SELECT tablename FROM pg_tables", database_name(postgres_url))
    }
    assert {"runs", "event_logs", "jobs", "dynamic_partitions"} <= tables
    config = home.dagster / "dagster.yaml"
    assert read_config(config)["storage"] == {"postgres": {"postgres_url": sqlalchemy_url(postgres_url)}}
    assert "sqlite" not in config.read_text()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # the URL may carry a password


@pytest.mark.postgres
def test_an_unreachable_database_fails_the_instance_with_one_clear_line(tmp_path, postgres_server):
    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port + 1}/gone?connect_timeout=2"
    with pytest.raises(RecordsUnavailable, match=r"database gone on 127\.0\.0\.1"):
        prepare_instance(PlatformHome(tmp_path / "home", pg_url=url))
