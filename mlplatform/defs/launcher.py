"""The run launcher of the platform's instances: Dagster's default one, plus a run-worker health check.

Runs launched by the daemon (sensors, automation, schedules, the UI) execute in a run-worker process
that a code server starts. When that process dies (killed, out of memory, the machine or `mlplatform
ui` stopped), the run must not stay STARTED forever: it must be marked failed, so that run retries
(`[execution] max_run_retries`) relaunch it, and so that the pool slot its step held (the `deployment`
pool) is freed. While the code server lives, Dagster's code server notices a dead worker itself; when
the code server died with it, nobody does, because Dagster's DefaultRunLauncher cannot tell whether a
run worker lives (`supports_check_run_worker_health` is False), so run monitoring only applies
timeouts to its runs.

`PlatformRunLauncher` adds that check, which Dagster's run monitoring (the daemon's MONITORING loop,
configured by mlplatform/instance.py) calls for every STARTED run:

- a run launched through a local code server is judged by its worker process: the PID of the process
  that reported the run's start (its RUN_START event) must still be that live process
  (core/platform/processes.py: not gone, not a zombie, not a newer process that reused the PID);
- runs this launcher cannot see are reported RUNNING and left alone: runs executed in their own
  process by `mlplatform run` or `dagster asset materialize` (no code server: that process reports the
  run's end itself) and runs on a code server on another host.

Launching is unchanged (DefaultRunLauncher). The instance's dagster.yaml names this class, so every
process that opens a platform instance imports this module: it imports Dagster only.
"""

from __future__ import annotations

import json
import socket

from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from mlplatform.core.platform.processes import process_alive

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", "", None}


class PlatformRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher whose run workers' health run monitoring can check."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        grpc_info = run.tags.get(GRPC_INFO_TAG)
        if grpc_info is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not launched through a code server")
        if not _is_local(json.loads(grpc_info)):
            return CheckRunHealthResult(WorkerStatus.RUNNING, "its code server is on another host")
        start = self._run_start(run.run_id)
        if start is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "its worker has not reported the start yet")
        pid, started_at = start
        if process_alive(pid, started_at):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker process {pid} is alive")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"run worker process {pid} is gone (killed, or its code server stopped)",
            run_worker_id=str(pid),
        )

    def _run_start(self, run_id: str) -> tuple[int, float] | None:
        """(pid, time) of the run's RUN_START event: the worker process and when it was running."""
        records = self._instance.get_records_for_run(
            run_id, of_type=DagsterEventType.RUN_START, limit=1
        ).records
        if not records or records[0].event_log_entry.dagster_event is None:
            return None
        entry = records[0].event_log_entry
        pid = entry.dagster_event.pid
        return None if pid is None else (int(pid), entry.timestamp)


def _is_local(grpc_info: dict) -> bool:
    """A code server on this machine: a Unix socket, or a loopback or own host name."""
    return bool(grpc_info.get("socket")) or grpc_info.get("host") in LOCAL_HOSTS | {socket.gethostname()}
