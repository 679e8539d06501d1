"""The platform's run launcher tells run monitoring whether a started run's worker still lives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import dagster as dg
import pytest
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from mlplatform.defs.launcher import PlatformRunLauncher
from mlplatform.instance import open_instance

pytestmark = pytest.mark.filterwarnings("ignore")


@dg.op
def wait() -> None:
    pass


@dg.job
def long_job():
    wait()


def _started_run(instance: dg.DagsterInstance, pid: int | None, grpc_info: dict | None) -> dg.DagsterRun:
    """A run as a code server's worker `pid` would have started it (None: not through a code server)."""
    tags = {} if grpc_info is None else {GRPC_INFO_TAG: json.dumps(grpc_info)}
    run = instance.create_run_for_job(long_job, tags=tags)
    instance.report_dagster_event(
        dg.DagsterEvent(dg.DagsterEventType.RUN_START.value, long_job.name, pid=pid), run.run_id
    )
    return instance.get_run_by_id(run.run_id)


def test_the_instance_runs_the_platform_launcher_with_run_monitoring(home):
    home.settings_file.write_text("[execution]\nrun_monitoring_interval_s = 7\nmax_run_retries = 2\n")
    with open_instance(home) as instance:
        assert isinstance(instance.run_launcher, PlatformRunLauncher)
        assert instance.run_launcher.supports_check_run_worker_health
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0
        assert instance.run_monitoring_settings["poll_interval_seconds"] == 7
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 7
        assert instance.run_retries_enabled and instance.run_retries_max_retries == 2


def test_a_run_whose_local_worker_died_is_failed_and_one_still_running_is_not(home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open_instance(home) as instance:
        launcher = instance.run_launcher
        alive = launcher.check_run_worker_health(_started_run(instance, os.getpid(), {"socket": "/tmp/s"}))
        assert alive.status == WorkerStatus.RUNNING
        gone = launcher.check_run_worker_health(
            _started_run(instance, dead.pid, {"host": "localhost", "port": 1})
        )
        assert gone.status == WorkerStatus.FAILED and str(dead.pid) in gone.msg


def test_runs_it_cannot_see_are_left_to_their_own_process(home):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open_instance(home) as instance:
        launcher = instance.run_launcher
        # `mlplatform run` executes in its own process, no code server: it reports its own end.
        in_process = launcher.check_run_worker_health(_started_run(instance, dead.pid, None))
        assert in_process.status == WorkerStatus.RUNNING
        # A code server on another machine: a PID here says nothing about its worker.
        remote = launcher.check_run_worker_health(
            _started_run(instance, dead.pid, {"host": "worker-7.example", "port": 4000})
        )
        assert remote.status == WorkerStatus.RUNNING
