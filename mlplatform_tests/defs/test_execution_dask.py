"""The distributed executor for real: features -> candidates on a Dask cluster of worker processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import dagster as dg
import pytest

from mlplatform.core.platform.settings import ExecutionRules
from mlplatform.definitions import PIPELINE_JOB, build_definitions
from mlplatform.defs.execution import execute, executor_definition
from mlplatform.instance import open_instance
from mlplatform.runner import QUIET_CONSOLE
from mlplatform_tests.defs.execution_support import (
    candidate_keys,
    land_demo_data,
    materialized,
    sigint_ignored,
    step_events,
    write_execution_settings,
)

distributed = pytest.importorskip(
    "distributed", reason="dagster-dask is not installed (mlplatform[distributed])"
)
pytestmark = pytest.mark.filterwarnings("ignore")


def _resolved_config(rules: ExecutionRules) -> dict:
    return executor_definition(rules).config_schema.resolve_config({}).value["config"]


def test_an_empty_scheduler_address_starts_a_local_cluster_of_processes(settings):
    rules = settings.execution.replace(executor="dask", max_concurrent=3)
    local = _resolved_config(rules)["cluster"]["local"]
    assert local["processes"] is True and local["n_workers"] == 3 and local["threads_per_worker"] == 1

    remote = rules.replace(dask_scheduler_address="tcp://10.0.0.5:8786")
    assert _resolved_config(remote)["cluster"] == {"existing": {"address": "tcp://10.0.0.5:8786"}}


def compute_log_tails(home) -> list[int]:
    """Processes still following one of this home's compute logs (Dagster's `tail -F`, one per stream)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0") if entry.name.isdigit() else []
        except OSError:  # gone meanwhile
            continue
        if args and Path(args[0].decode()).name == "tail" and str(home.root).encode() in b" ".join(args):
            found.append(int(entry.name))
    return found


def sigterm_disposition() -> str:
    return signal.getsignal(signal.SIGTERM).name


@pytest.fixture
def cluster(home, tmp_path):
    """Drops validated by in-process runs first, then worker processes started by this process: in a
    background job those runs used to leave SIGTERM ignored here, the workers inherited it, and so did
    the compute-log tails of every step, which then outlived it (30 s of cleanup per step)."""
    with sigint_ignored():
        assert land_demo_data(home, tmp_path, groups=()).exit_code == 0  # nothing downstream yet
        with (
            distributed.LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as local_cluster,
            distributed.Client(local_cluster) as client,
        ):
            yield local_cluster, client


def test_features_and_candidates_materialize_on_dask_worker_processes(home, cluster):
    local_cluster, client = cluster
    assert set(client.run(sigterm_disposition).values()) == {"SIG_DFL"}
    write_execution_settings(home, executor="dask", dask_scheduler_address=local_cluster.scheduler_address)
    job = build_definitions(home).resolve_job_def(PIPELINE_JOB)
    assert job.executor_def.name == "dask"
    selection = [dg.AssetKey("reviews"), dg.AssetKey("review_splits"), *candidate_keys(job)]

    with open_instance(home) as instance:
        result = execute(job, str(home.root), instance, run_config=QUIET_CONSOLE, asset_selection=selection)
        assert result.success
        events = step_events(instance, result.run_id)

    assert materialized(result) == {key.to_user_string() for key in selection}
    worker_pids = set(client.run(os.getpid).values())
    step_pids = {kinds["STEP_START"][0][1] for kinds in events.values()}
    assert step_pids and step_pids <= worker_pids and os.getpid() not in step_pids
    # Every step stopped its compute-log tails with SIGTERM when it ended: none outlives the run.
    assert compute_log_tails(home) == []
