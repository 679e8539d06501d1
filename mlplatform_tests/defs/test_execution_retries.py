"""Step retries on the real training stage: a transient error is retried, a failed quality gate never is."""

from __future__ import annotations

import dagster as dg
import pytest

from mlplatform.core.training import fit
from mlplatform.definitions import PIPELINE_JOB, build_definitions
from mlplatform.defs.execution import execute
from mlplatform.instance import open_instance
from mlplatform.runner import QUIET_CONSOLE
from mlplatform_tests.defs.execution_support import candidate_keys, land_demo_data, materialized, step_events

pytestmark = pytest.mark.filterwarnings("ignore")


def test_a_transient_error_is_retried_and_a_failed_gate_is_not(home, tmp_path, monkeypatch):
    assert land_demo_data(home, tmp_path, groups=["features"]).exit_code == 0
    # In process (so the fault below reaches the steps), no wait between attempts, and a quality bar
    # no model reaches: best_model's blocking gate fails.
    home.settings_file.write_text(
        "[execution]\nexecutor = 'in_process'\nmax_step_retries = 2\nretry_delay_s = 0.0\n"
        "[gates]\nmin_macro_f1 = 0.999\n"
    )
    real_train = fit.train_candidate
    calls = []

    def train_with_one_transient_fault(*args, **kwargs):
        calls.append(args[0].name)
        if len(calls) == 1:
            raise OSError("simulated transient I/O error")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(fit, "train_candidate", train_with_one_transient_fault)
    job = build_definitions(home).resolve_job_def(PIPELINE_JOB)
    keys = candidate_keys(job)
    with open_instance(home) as instance:
        result = execute(
            job,
            str(home.root),
            instance,
            run_config=QUIET_CONSOLE,
            asset_selection=[*keys, dg.AssetKey("best_model")],
        )
        events = step_events(instance, result.run_id)

    assert not result.success
    # The faulty candidate ran twice (one retry) and was materialized like the others.
    assert len(calls) == len(keys) + 1 and calls.count(calls[0]) == 2
    assert {key.to_user_string() for key in keys} <= materialized(result)
    retried = [step for step, kinds in events.items() if "STEP_UP_FOR_RETRY" in kinds]
    assert len(retried) == 1 and retried[0].startswith("candidate_models")
    # best_model has the same retry policy, yet its failed gate ran once and failed for good.
    assert len(events["best_model"]["STEP_START"]) == 1
    assert "STEP_UP_FOR_RETRY" not in events["best_model"]
    failure = next(
        event
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.STEP_FAILURE and event.step_key == "best_model"
    )
    assert failure.step_failure_data.error.cls_name == "DagsterAssetCheckFailedError"
