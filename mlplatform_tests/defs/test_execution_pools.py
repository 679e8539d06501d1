"""The deployment pool: two runs that deploy at the same moment never run their deployment steps together.

The runs are real: two processes, each executing a job on the home's instance (the dagster.yaml the
platform writes), released at once by a barrier. This module imports little on purpose: each spawned
process imports it again.

On PostgreSQL storage: Dagster claims a pool slot with SELECT ... FOR UPDATE SKIP LOCKED, which SQLite
ignores, so on the SQLite default two steps reaching the pool in the same instant can both claim its
one slot (seen under load). The README says so.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import dagster as dg
import pytest

from mlplatform.core.home import PG_URL_ENV, PlatformHome
from mlplatform.defs.execution import DEPLOYMENT_POOL
from mlplatform.instance import open_instance, prepare_instance

pytestmark = pytest.mark.filterwarnings("ignore")

DEPLOY_SECONDS = 2.0


@dg.asset(pool=DEPLOYMENT_POOL)
def slow_deployment() -> None:
    """Stands in for sentiment_endpoint: holds the deployment slot long enough for runs to collide."""
    time.sleep(DEPLOY_SECONDS)


def _deploy_job() -> dg.JobDefinition:
    return dg.Definitions(assets=[slow_deployment], jobs=[dg.define_asset_job("deploy_job")]).resolve_job_def(
        "deploy_job"
    )


def _deploy_when_released(home_root: str, barrier) -> None:
    job = _deploy_job()
    with open_instance(PlatformHome.at(Path(home_root))) as instance:
        barrier.wait(timeout=60)
        result = job.execute_in_process(instance=instance, raise_on_error=False)
    if not result.success:
        raise SystemExit(1)


def _deployment_intervals(home: PlatformHome) -> list[tuple[float, float]]:
    intervals = []
    with open_instance(home) as instance:
        for run in instance.get_runs():
            times = {
                record.dagster_event.event_type_value: record.timestamp
                for record in instance.all_logs(run.run_id)
                if record.dagster_event is not None
            }
            intervals.append((times["STEP_START"], times["STEP_SUCCESS"]))
    return sorted(intervals)


def test_the_instance_limits_the_deployment_pool_from_settings(home):
    home.settings_file.write_text("[execution]\ndeployment_pool_limit = 3\n")
    with open_instance(home) as instance:
        pool_config = instance.event_log_storage.get_pool_config()
        assert pool_config.default_pool_limit == 3
        assert pool_config.pool_granularity.value == "op"


@pytest.mark.postgres
def test_two_runs_that_deploy_at_once_take_turns_in_the_deployment_pool(home, postgres_url, monkeypatch):
    monkeypatch.setenv(PG_URL_ENV, postgres_url)  # the spawned runs inherit it
    home = PlatformHome.at(home.root)
    prepare_instance(home)  # created once, before the two runs race to open it
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    runs = [context.Process(target=_deploy_when_released, args=(str(home.root), barrier)) for _ in range(2)]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=120)
    assert [run.exitcode for run in runs] == [0, 0]

    (first_start, first_end), (second_start, second_end) = _deployment_intervals(home)
    # Without the pool both steps start within a fraction of a second (measured: 0.02 s apart).
    assert second_start >= first_end
    assert second_end - first_start >= 2 * DEPLOY_SECONDS
