"""The home's Dagster instance is created once, even when several processes start at the same time;
SQLite by default, PostgreSQL (a private test server) with a pg_url."""

from __future__ import annotations

import multiprocessing
import stat
from pathlib import Path

import pytest

from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import RecordsUnavailable, sqlalchemy_url
from mlplatform.instance import dagster_yaml, open_instance, prepare_instance
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


def test_dagster_yaml_is_written_under_the_home(home):
    dagster_home = prepare_instance(home)
    text = (dagster_home / "dagster.yaml").read_text()
    assert str(home.dagster / "storage") in text and "telemetry" in text
    assert dagster_home == home.dagster


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
    assert "sqlite:" in text and "postgres" not in text


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
    assert (
        f'postgres_url: "{sqlalchemy_url(postgres_url)}"' in config.read_text()
        and "sqlite" not in config.read_text()
    )
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # the URL may carry a password


@pytest.mark.postgres
def test_an_unreachable_database_fails_the_instance_with_one_clear_line(tmp_path, postgres_server):
    url = f"postgresql://postgres@127.0.0.1:{postgres_server.port + 1}/gone?connect_timeout=2"
    with pytest.raises(RecordsUnavailable, match=r"database gone on 127\.0\.0\.1"):
        prepare_instance(PlatformHome(tmp_path / "home", pg_url=url))
