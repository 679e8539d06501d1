"""How the platform's runs execute: the pipeline job's executor, step retry policies, the deployment pool.

Everything comes from the `[execution]` settings (`ExecutionRules`, validated when they load):

- `executor` picks how pipeline_job's steps run: "in_process" (one process, one step after another),
  "multiprocess" (a process per step, up to `max_concurrent` at once, of which at most
  `max_concurrent_training` train a candidate) or "dask" (each step a task on a Dask cluster: the
  scheduler at `dask_scheduler_address`, or a local cluster started for the run when it is empty).
- Steps that only read and write artifacts (candidates, best_model, batch scoring) retry after an
  exception, `max_step_retries` times. A failed quality gate is not an exception of the step's body but
  a failed blocking check, which Dagster never retries.
- sentiment_endpoint claims a slot of the `deployment` pool; the instance allows
  `deployment_pool_limit` claims at once across all runs, which queues deployments in the UI. What
  keeps two deployments apart, on every storage, is the deployment lock (core/release/deploy.py).
- A daemon-launched run whose worker process died is marked failed by run monitoring within
  `run_monitoring_interval_s` and relaunched up to `max_run_retries` times (`instance_config`).

Every run executed in this process goes through `core.platform.signals.sigterm_kept()`: a run leaves SIGTERM
ignored in a background job otherwise, and every child started later with it (the Dask workers and
compute-log tails that then survive `terminate()`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg

from mlplatform.core.platform.settings import ExecutionRules, Executor, SettingsError
from mlplatform.core.platform.signals import sigterm_kept

DEPLOYMENT_POOL = "deployment"
# Op tag on every candidate_models step; the multiprocess executor limits how many carry it at once.
STEP_KIND_TAG = "mlplatform/step"
TRAINING_STEP = "training"
TRAINING_OP_TAGS = {STEP_KIND_TAG: TRAINING_STEP}
# Where other processes (multiprocess steps, Dask workers) rebuild a job: a module-level function of
# (home root, job name), so a job built for any home, not only $MLPLATFORM_HOME's, crosses processes.
JOB_REBUILDER = ("mlplatform.definitions", "job_of_home")


class ExecutionSettingsError(SettingsError):
    """An `[execution]` setting has a value the platform cannot run with."""


def executor_definition(rules: ExecutionRules) -> dg.ExecutorDefinition:
    """The executor pipeline_job runs with, configured from the rules."""
    if rules.executor is Executor.IN_PROCESS:
        return dg.in_process_executor
    if rules.executor is Executor.MULTIPROCESS:
        config: dict[str, Any] = {
            # Steps fork from a server that imported the platform once: a spawned process would pay the
            # imports (scikit-learn, skl2onnx, dagster: ~3 s idle, ~7 s on a busy machine) per step.
            "start_method": {"forkserver": {"preload_modules": [JOB_REBUILDER[0]]}},
            "tag_concurrency_limits": [
                {"key": STEP_KIND_TAG, "value": TRAINING_STEP, "limit": rules.max_concurrent_training}
            ],
        }
        if rules.max_concurrent:
            config["max_concurrent"] = rules.max_concurrent
        return dg.multiprocess_executor.configured(config, name="multiprocess")
    return _dask_executor(rules)


def _dask_executor(rules: ExecutionRules) -> dg.ExecutorDefinition:
    try:
        from dagster_dask import dask_executor
    except ImportError as exc:
        raise ExecutionSettingsError(
            "[execution] executor = 'dask' needs dagster-dask: pip install 'mlplatform[distributed]'"
        ) from exc
    cluster: Mapping[str, Any]
    if rules.dask_scheduler_address:
        cluster = {"existing": {"address": rules.dask_scheduler_address}}
    else:
        # Worker processes, not threads: a Dagster step is not thread-safe, and training holds the GIL.
        local: dict[str, Any] = {"processes": True, "threads_per_worker": 1, "dashboard_address": None}
        if rules.max_concurrent:
            local["n_workers"] = rules.max_concurrent
        cluster = {"local": local}
    return dask_executor.configured({"cluster": cluster}, name="dask")


def step_retry_policy(rules: ExecutionRules) -> dg.RetryPolicy | None:
    """Retries for steps that are safe to run again (None when retries are off)."""
    if rules.max_step_retries == 0:
        return None
    return dg.RetryPolicy(
        max_retries=rules.max_step_retries, delay=rules.retry_delay_s, backoff=dg.Backoff.EXPONENTIAL
    )


def instance_config(rules: ExecutionRules) -> dict[str, Any]:
    """The dagster.yaml keys for run retries, run monitoring, the run queue's limit and the deployment pool.

    Run retries re-launch a run whose worker died (daemon-launched runs); a run that failed because a
    step failed, e.g. a quality gate, is not retried (`retry_on_asset_or_op_failure: false`): the steps
    carry their own retry policies. Run monitoring is what finds such a run: every
    `run_monitoring_interval_s` the daemon asks the run launcher (defs/launcher.py) whether each started
    run's worker lives, marks the dead ones failed (then retries apply), and frees the pool slots a
    finished run still holds (a worker killed inside sentiment_endpoint would hold the deployment slot
    forever, and every later deployment would queue behind it). Dead workers are not resumed
    (`max_resume_run_attempts: 0`): the launcher cannot resume a run, a retry re-executes it.

    Pool limits are claimed per step (`granularity: op`), so a run waits for the deployment slot only
    when it reaches sentiment_endpoint. `default_limit` is the limit of every pool without one set in
    the UI; the platform has one pool, `deployment`.
    """
    return {
        "run_retries": {
            "enabled": rules.max_run_retries > 0,
            "max_retries": rules.max_run_retries,
            "retry_on_asset_or_op_failure": False,
        },
        "run_monitoring": {
            "enabled": True,
            "poll_interval_seconds": rules.run_monitoring_interval_s,
            "free_slots_after_run_end_seconds": rules.run_monitoring_interval_s,
            "max_resume_run_attempts": 0,
        },
        "concurrency": {
            "runs": {"max_concurrent_runs": rules.max_concurrent_runs},
            "pools": {"granularity": "op", "default_limit": rules.deployment_pool_limit},
        },
        # The console of step worker processes logs at this level too (their DEBUG engine lines would
        # otherwise interleave with the CLI's output); the event log keeps every event regardless.
        "python_logs": {"python_log_level": "INFO"},
    }


def execute(
    job: dg.JobDefinition,
    home_root: str,
    instance: dg.DagsterInstance,
    *,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    asset_selection: list[dg.AssetKey] | None = None,
) -> dg.ExecutionResult:
    """Run `job` of the home at `home_root` synchronously with the job's own executor.

    An in-process job runs right here; any other executor needs the job rebuilt in other processes, so
    it goes through `dagster.execute_job` with a reconstructable pointer. Never raises for a failed
    step: the result says what failed, like `execute_in_process(raise_on_error=False)`.
    """
    if job.executor_def.name == dg.in_process_executor.name:
        with sigterm_kept():
            return job.execute_in_process(
                instance=instance,
                run_config=run_config,
                tags=tags,
                asset_selection=asset_selection,
                raise_on_error=False,
            )
    from dagster._core.definitions.reconstruct import build_reconstructable_job

    module, function = JOB_REBUILDER
    reconstructable = build_reconstructable_job(
        module, function, reconstructable_kwargs={"home_root": home_root, "job_name": job.name}
    )
    with sigterm_kept():  # the run is orchestrated in this process: Dagster's handlers change here too
        return dg.execute_job(
            reconstructable,
            instance,
            run_config=run_config,
            tags=tags,
            asset_selection=asset_selection,
            raise_on_error=False,
        )
