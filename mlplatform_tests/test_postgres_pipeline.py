"""The pipeline on PostgreSQL: Dagster's storage, the registry and the ledger all in a private server.

Demo data goes through ingest, features, training, best_model and deployment in-process, with the
instance built from the generated PostgreSQL dagster.yaml. The database then fails twice: it cuts the
registry's connection in the middle of the promotion (the run fails cleanly, nothing is promoted, and
a retry promotes the fully registered version), then it goes down between runs (a clear one-line
error; a retry after the restart works). One test: the pipeline run is the expensive part.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.platform.home import PG_URL_ENV, PlatformHome
from mlplatform.core.platform.records import RecordsUnavailable
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import APPROVED, PRODUCTION, ModelRegistry
from mlplatform.instance import open_instance
from mlplatform.runner import run_pending
from mlplatform_tests.postgres import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.filterwarnings("ignore")]
QUIET = "[lake]\nsettle_seconds = 0.0\n"


@pytest.fixture
def pg_home(tmp_path: Path, postgres_url: str, monkeypatch) -> PlatformHome:
    # Resources rebuild the home from the environment, as code locations of the daemon do.
    monkeypatch.setenv(PG_URL_ENV, postgres_url)
    home = PlatformHome.at(tmp_path / "home").ensure()
    home.settings_file.write_text(QUIET)
    Lake(home).land(write_demo_drops(tmp_path / "drops", n_drops=2, rows_per_drop=900, seed=21))
    return home


def test_outages_fail_runs_cleanly_promote_nothing_and_retries_succeed(
    pg_home: PlatformHome, postgres_server: PostgresServer, postgres_url: str
) -> None:
    registry = ModelRegistry.for_home(pg_home, Settings.load(pg_home.settings_file).storage)
    assert registry.events() == []  # creates the records tables
    postgres_server.cut_connection_on_event(postgres_url, "promoted")

    failed = run_pending(pg_home, say=lambda _: None)

    assert failed.exit_code == 1
    assert [b.asset for b in failed.blocked] == ["sentiment_endpoint"], failed.blocked
    assert "PostgreSQL records unavailable" in failed.blocked[0].reason
    assert "best_model" in failed.materialized
    with open_instance(pg_home) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_run_by_id(failed.run_ids[-1]).status == dg.DagsterRunStatus.FAILURE
    (version,) = registry.list()
    assert version.status == APPROVED and version.aliases == ()
    assert registry.aliases() == {}
    assert [e["event"] for e in registry.events()] == ["registered", "approved"]

    postgres_server.heal(postgres_url)
    retried = run_pending(pg_home, say=lambda _: None)

    assert retried.exit_code == 0, retried.blocked
    assert "sentiment_endpoint" in retried.materialized and "best_model" not in retried.materialized
    assert registry.aliases() == {PRODUCTION: version.version}
    assert [e["event"] for e in registry.events()] == ["registered", "approved", "promoted"]
    ledger = Lake(pg_home).audit()
    assert {entry.dataset for entry in ledger} >= {"raw_reviews", "reviews", "review_splits"}
    assert not Lake(pg_home).ledger_file.exists() and not registry.events_path.exists()

    # The whole server down between runs: one clear line, nothing changes; after the restart all is well.
    postgres_server.stop()
    try:
        with pytest.raises(RecordsUnavailable, match="PostgreSQL records unavailable") as caught:
            run_pending(pg_home, say=lambda _: None)
        assert "\n" not in str(caught.value)
    finally:
        postgres_server.start()
    again = run_pending(pg_home, say=lambda _: None)
    assert again.exit_code == 0 and again.materialized == []
    assert registry.aliases() == {PRODUCTION: version.version}
