"""A daemon-launched run whose process is killed is marked failed and retried up to [execution]
max_run_retries; the deployment pool slot it held is freed; the failure alert names the step it died in.

The real daemon on a temporary home: drops land, the landing sensor and the automation run the chain up
to sentiment_endpoint, which waits for the deployment lock this test holds, so the run stays in that
step for as long as the test needs. Then:

1. its worker process is killed: the code server sees its child die and fails the run; run retries
   launch a retry, which can reach sentiment_endpoint only once run monitoring has freed the
   deployment pool slot the dead run still held;
2. the retry's worker is killed together with its code server, so nobody is left to notice but run
   monitoring, which asks the platform's run launcher whether the worker lives and fails the run; with
   max_run_retries = 1 it is not retried again.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.monitoring.alerts import FIRING, AlertStore
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.deploy import deployment_lock
from mlplatform.defs.execution import DEPLOYMENT_POOL
from mlplatform.instance import open_instance, prepare_instance, workspace_file
from mlplatform_tests.integration.processes import start, stop, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]
STEP = "sentiment_endpoint"
BIN = Path(sys.executable).parent


def _in_step(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The worker PID of run `run_id` once it is STARTED and inside STEP (None before)."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.status != dg.DagsterRunStatus.STARTED:
        return None
    started = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_START).records
    if not any(record.event_log_entry.step_key == STEP for record in started):
        return None
    (run_start,) = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START).records
    return run_start.event_log_entry.dagster_event.pid


def _run_in_step(instance: dg.DagsterInstance) -> tuple[str, int] | None:
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED])):
        pid = _in_step(instance, run.run_id)
        if pid is not None:
            return run.run_id, pid
    return None


def _failed(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run.status == dg.DagsterRunStatus.FAILURE and "dagster/will_retry" in run.tags else None


def _retry_of(instance: dg.DagsterInstance, run_id: str) -> str | None:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/parent_run_id": run_id}))
    return runs[0].run_id if runs else None


def _parent_pid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 1 :].split()[1])


def _failure_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    return [record.event_log_entry.dagster_event.message or "" for record in records]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the code server through /proc")
def test_a_killed_run_is_failed_retried_up_to_the_limit_and_its_pool_slot_freed(tmp_path):
    home = PlatformHome(tmp_path / "home").ensure()
    home.settings_file.write_text(
        "[lake]\nsettle_seconds = 0.5\n"
        "[automation]\nlanding_sensor_interval_s = 2\nautomation_interval_s = 3\n"
        "[execution]\nmax_run_retries = 1\nrun_monitoring_interval_s = 1\n"
        "[deployment]\nlock_timeout_s = 3600.0\n"
    )
    prepare_instance(home)
    workspace = workspace_file(home)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("MLPLATFORM_HOME", "DAGSTER_HOME")},
        "MLPLATFORM_HOME": str(home.root),
        "DAGSTER_HOME": str(home.dagster),
    }
    with ExitStack() as cleanup, open_instance(home) as instance:
        cleanup.enter_context(deployment_lock(home, timeout_s=5))  # deployments wait for this test
        daemon = start(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)], env, tmp_path / "daemon.log"
        )
        cleanup.callback(stop, daemon)
        Lake(home).land(write_demo_drops(tmp_path / "drops", n_drops=2, rows_per_drop=1500, seed=5))

        first, worker = wait_until(lambda: _run_in_step(instance), 600, f"a run in {STEP}")
        # Automation would request sentiment_endpoint again once this run ends; only the retry may run.
        stopped = start(
            [str(BIN / "dagster"), "sensor", "stop", "platform_automation", "-w", str(workspace)],
            env,
            tmp_path / "sensor-stop.log",
        )
        assert stopped.wait(timeout=300) == 0, (tmp_path / "sensor-stop.log").read_text()

        # 1. The worker alone dies.
        os.kill(worker, signal.SIGKILL)
        failed = wait_until(lambda: _failed(instance, first), 120, "the killed run to be marked failed")
        assert failed.tags["dagster/will_retry"] == "true"
        retry = wait_until(lambda: _retry_of(instance, first), 120, "a retry of the killed run")
        retry_worker = wait_until(
            lambda: _in_step(instance, retry), 300, f"the retry to get the deployment slot and reach {STEP}"
        )
        alerts = AlertStore(home.alerts)
        alert = wait_until(
            lambda: next((a for a in alerts.list() if a.key == f"step:{STEP}" and a.state == FIRING), None),
            180,
            "the failure alert of the killed run",
        )
        assert first in alert.message and f"during step {STEP}" in alert.message

        # 2. The worker dies with its code server: only run monitoring can tell.
        code_server = _parent_pid(retry_worker)
        os.kill(code_server, signal.SIGKILL)
        os.kill(retry_worker, signal.SIGKILL)
        gone = wait_until(lambda: _failed(instance, retry), 120, "run monitoring to fail the retry")
        assert gone.tags["dagster/will_retry"] == "false"  # max_run_retries = 1: no third run
        assert any(
            f"run worker process {retry_worker} is gone" in m for m in _failure_messages(instance, retry)
        )
        assert _retry_of(instance, retry) is None
        wait_until(
            lambda: not instance.event_log_storage.get_concurrency_info(DEPLOYMENT_POOL).claimed_slots,
            120,
            "the dead runs' deployment slot to be freed",
        )
