"""Failed-run alerts are keyed by what failed, so another run of the same job succeeding at something
else does not clear them (automation runs and UI materialisations share one job)."""

from __future__ import annotations

import dagster as dg
import pytest

from mlplatform.core.monitoring.alerts import FIRING, RESOLVED, AlertStore
from mlplatform.core.platform.settings import Settings
from mlplatform.defs.alerting import record_run_alerts, step_outcomes
from mlplatform.instance import open_instance

pytestmark = pytest.mark.filterwarnings("ignore")
BROKEN = {"training": True}


@dg.asset
def reviews() -> int:
    return 1


@dg.asset
def trained() -> int:
    if BROKEN["training"]:
        raise RuntimeError("out of memory while fitting")
    return 2


# One job for everything, as Dagster's automation and the UI's "Materialize" use __ASSET_JOB.
ASSET_JOB = dg.define_asset_job("asset_job", selection=[reviews, trained])
DEFS = dg.Definitions(assets=[reviews, trained], jobs=[ASSET_JOB])


def _run(instance: dg.DagsterInstance, *assets: dg.AssetsDefinition) -> str:
    job = DEFS.resolve_job_def("asset_job")
    result = job.execute_in_process(
        instance=instance, asset_selection=[asset.key for asset in assets], raise_on_error=False
    )
    return result.run_id


def _states(store: AlertStore) -> dict[str, str]:
    return {alert.key: alert.state for alert in store.list()}


def test_a_manual_success_of_another_asset_leaves_the_training_failure_alert_standing(home):
    store = AlertStore(home.alerts)
    BROKEN["training"] = True
    with open_instance(home) as instance:
        failed = _run(instance, trained)  # the automation run: training fails
        (alert,) = record_run_alerts(home, Settings.packaged(), instance, [failed], store)
        assert (alert.key, alert.source) == ("step:trained", "trained")
        assert "out of memory while fitting" in alert.message and failed in alert.message

        manual = _run(instance, reviews)  # someone materialises reviews in the UI: same job, success
        assert instance.get_run_by_id(manual).job_name == instance.get_run_by_id(failed).job_name
        assert record_run_alerts(home, Settings.packaged(), instance, [manual], store) == []
        assert _states(store) == {"step:trained": FIRING}

        BROKEN["training"] = False
        fixed = _run(instance, trained)  # training succeeds again: its alert clears
        record_run_alerts(home, Settings.packaged(), instance, [fixed], store)
        assert _states(store) == {"step:trained": RESOLVED}


def test_steps_are_judged_by_their_last_event():
    start, success, failure = (
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
    )
    events = [
        ("reviews", start),
        ("reviews", success),
        ("candidate_a", start),
        ("candidate_b", start),
        ("candidate_a", failure),
        ("best_model", start),  # the worker died here: the step never ended
    ]
    assert step_outcomes(events) == (["reviews"], ["candidate_a"], ["candidate_b", "best_model"])
