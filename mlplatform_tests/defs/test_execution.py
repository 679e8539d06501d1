"""Execution settings and wiring, and candidates training in parallel under the multiprocess executor."""

from __future__ import annotations

import signal

import dagster as dg
import pytest

from mlplatform.core.platform.settings import Executor, SettingsError
from mlplatform.core.training.fit import load_training_config
from mlplatform.definitions import BATCH_JOB, INGEST_JOB, MONITORING_JOB, PIPELINE_JOB, build_definitions
from mlplatform.defs.execution import (
    DEPLOYMENT_POOL,
    TRAINING_OP_TAGS,
    execute,
)
from mlplatform.defs.training import build_training_assets
from mlplatform.instance import open_instance
from mlplatform.runner import QUIET_CONSOLE
from mlplatform_tests.core.platform.test_signals import sigterm_in_a_new_process
from mlplatform_tests.defs.execution_support import (
    candidate_keys,
    land_demo_data,
    materialized,
    sigint_ignored,
    step_events,
    write_execution_settings,
)

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.mark.parametrize("executor", list(Executor))
def test_the_pipeline_job_runs_with_the_configured_executor_and_the_other_jobs_in_process(home, executor):
    write_execution_settings(home, executor=executor)
    defs = build_definitions(home)
    assert defs.resolve_job_def(PIPELINE_JOB).executor_def.name == executor
    for name in (INGEST_JOB, BATCH_JOB, MONITORING_JOB):
        assert defs.resolve_job_def(name).executor_def.name == "in_process"


def test_an_unknown_executor_is_refused_naming_the_choices(home):
    write_execution_settings(home, executor="spark")
    with pytest.raises(
        SettingsError,
        match=r"^\[execution\] executor: must be one of 'in_process', 'multiprocess' or 'dask', got 'spark'",
    ):
        build_definitions(home)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("max_concurrent", -1),
        ("max_concurrent_training", 0),
        ("max_step_retries", -1),
        ("deployment_pool_limit", 0),
    ],
)
def test_a_limit_below_its_floor_is_refused(home, key, value):
    write_execution_settings(home, **{key: value})
    with pytest.raises(
        SettingsError, match=rf"^\[execution\] {key}: must (be positive|not be negative), got {value}"
    ):
        build_definitions(home)


def test_deployment_claims_the_pool_and_only_idempotent_steps_retry(home):
    write_execution_settings(home, max_step_retries=3)
    defs = build_definitions(home)
    ops = {node.name: node for node in defs.resolve_job_def(PIPELINE_JOB).graph.node_defs}
    assert ops["sentiment_endpoint"].pool == DEPLOYMENT_POOL
    assert ops["sentiment_endpoint"].retry_policy is None
    assert ops["best_model"].retry_policy.max_retries == 3
    candidates = [op for name, op in ops.items() if name.startswith("candidate_models")]
    assert candidates and all(op.retry_policy.max_retries == 3 for op in candidates)
    assert all(op.tags.items() >= TRAINING_OP_TAGS.items() for op in candidates)
    batch_op = defs.resolve_job_def(BATCH_JOB).graph.node_defs[0]
    assert batch_op.retry_policy.max_retries == 3


def test_no_retry_policy_when_step_retries_are_off(settings):
    no_retries = settings.with_overrides({"execution": {"max_step_retries": 0}})
    assets = build_training_assets(no_retries, load_training_config(None))
    assert all(asset.op.retry_policy is None for asset in assets)


def test_the_instance_retries_dead_runs_but_not_runs_whose_steps_failed(home):
    write_execution_settings(home, max_run_retries=2, max_concurrent_runs=3)
    with open_instance(home) as instance:
        assert instance.run_retries_enabled
        assert instance.run_retries_max_retries == 2
        assert instance.run_retries_retry_on_asset_or_op_failure is False
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 3


def test_candidates_train_side_by_side_in_separate_processes(home, tmp_path, capfd):
    """The multiprocess executor runs candidates in their own processes, two at once: room for three
    processes (max_concurrent 3), so only the training limit (max_concurrent_training 2) holds the third."""
    write_execution_settings(home, executor="multiprocess", max_concurrent=3, max_concurrent_training=2)
    assert land_demo_data(home, tmp_path, groups=["features"]).exit_code == 0
    job = build_definitions(home).resolve_job_def(PIPELINE_JOB)
    keys = candidate_keys(job)
    capfd.readouterr()
    with open_instance(home) as instance:
        result = execute(job, str(home.root), instance, run_config=QUIET_CONSOLE, asset_selection=keys)
        assert result.success
        events = step_events(instance, result.run_id)
        worker_events = instance.get_records_for_run(
            result.run_id, of_type=dg.DagsterEventType.STEP_WORKER_STARTED
        ).records
    assert materialized(result) == {key.to_user_string() for key in keys}
    # The step processes' DEBUG engine lines stay out of the terminal, yet the event log keeps them.
    assert " - DEBUG - " not in capfd.readouterr().err
    assert len(worker_events) == 3

    steps = {step: events[step] for step in events if step.startswith("candidate_models")}
    intervals = sorted((kinds["STEP_START"][0][0], kinds["STEP_SUCCESS"][0][0]) for kinds in steps.values())
    pids = {kinds["STEP_START"][0][1] for kinds in steps.values()}
    assert len(pids) == len(steps) == 3
    # The first two start together; the third waits for a training slot (max_concurrent_training = 2).
    assert intervals[1][0] < intervals[0][1]
    assert intervals[2][0] >= min(intervals[0][1], intervals[1][1])


def test_runs_in_this_process_leave_sigterm_able_to_stop_it_and_the_children_it_starts(home, tmp_path):
    """With SIGINT ignored (a background job), a Dagster run here used to leave SIGTERM ignored too, for
    this process and every child started after it (mlplatform/core/platform/signals.py)."""
    with sigint_ignored():
        assert land_demo_data(home, tmp_path, groups=()).exit_code == 0  # the runner's partition runs
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        job = build_definitions(home).resolve_job_def(PIPELINE_JOB)
        with open_instance(home) as instance:
            reviews = [dg.AssetKey("reviews")]
            assert execute(job, str(home.root), instance, asset_selection=reviews).success  # in process
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        assert sigterm_in_a_new_process() == "SIG_DFL"
