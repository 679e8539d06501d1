"""Alerts from the platform's runs: failed checks, failed runs and model rollbacks, into `alerts/`.

One function does the work, `record_run_alerts(home, settings, instance, run_ids)`, and two callers drive it:

- `mlplatform run` (runner.py) calls it after its runs, for the runs it just made;
- the sensors `alerts_on_run_success` / `alerts_on_run_failure` (default running) call it for each run the
  daemon sees finish: schedule runs, UI launches and, when the daemon is up, `mlplatform run`'s runs too.

Both may see the same run: that is harmless, because every alert has a key naming its standing condition
and `AlertStore` keeps one firing alert per key:

- a check: key `<asset>:<check>`, raised when it fails (WARN or ERROR, its own severity), resolved when it
  passes again;
- a failed run: keyed by what failed, so that another run of the same job succeeding at something else
  (a UI materialisation of one asset, say, in the job automation runs use too) does not clear it:
  `step:<step key>` for each step that failed and for each step the run was in when it died (its
  worker killed), resolved by the next run in which that step succeeds, whatever its job; a run that
  failed before any step ran (it could not start) raises `run:<job>`, resolved by the job's next
  successful run;
- a rollback: key `rollback:<time>:<version>`, one per `rolled_back` registry event (manual or automatic),
  raised once and never resolved (it is an event, not a condition);
- an aborted rollout: key `rollout:<rollout id>:aborted`, one per `rollout_aborted` event that a
  judgement or an endpoint made (`automatic`; a person's `rollout stop` is no incident), saying why.

With `MLPLATFORM_ALERT_WEBHOOK` set, each raise and resolve is also posted (Slack-compatible body).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import dagster as dg

from mlplatform.core.monitoring.alerts import (
    Alert,
    AlertStore,
    alert_store_from_env,
    raise_rollout_abort,
    rollout_abort_key,
)
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import RolloutEvent

CHECK_KIND = "check"
RUN_FAILURE_KIND = "run_failure"
ROLLBACK_KIND = "rollback"


def alert_store(
    home: PlatformHome, settings: Settings, environ: Mapping[str, str] | None = None
) -> AlertStore:
    """The home's alert store, posting to the webhook named by MLPLATFORM_ALERT_WEBHOOK when set."""
    return alert_store_from_env(home.ensure(), os.environ if environ is None else environ, settings.alerts)


def record_check_alerts(instance: dg.DagsterInstance, run_id: str, store: AlertStore) -> list[Alert]:
    """Raise an alert for every failed check evaluation of the run, resolve it for every passed one.

    Returns the alerts newly raised (a condition already firing raises nothing new).
    """
    raised = []
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        asset = evaluation.asset_key.to_user_string()
        key = f"{asset}:{evaluation.check_name}"
        if evaluation.passed:
            store.resolve(key)
            continue
        alert = store.raise_alert(
            CHECK_KIND,
            evaluation.severity.value,
            asset,
            f"{key} failed: {evaluation.description or 'no description'}",
            key,
        )
        if alert is not None:
            raised.append(alert)
    return raised


STEP_KEY_PREFIX = "step:"
RUN_KEY_PREFIX = "run:"
_STEP_EVENTS = {
    dg.DagsterEventType.STEP_START,
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
}


def step_outcomes(events: Iterable[tuple[str, str]]) -> tuple[list[str], list[str], list[str]]:
    """(succeeded, failed, unfinished) step keys from a run's (step key, event type) pairs, in order.

    Unfinished: started and never ended, which in a run that ended means its worker died in them.
    """
    last: dict[str, str] = {}
    for step, kind in events:
        last[step] = kind
    by = {kind: [step for step, last_kind in last.items() if last_kind == kind] for kind in _STEP_EVENTS}
    return (
        by[dg.DagsterEventType.STEP_SUCCESS],
        by[dg.DagsterEventType.STEP_FAILURE],
        by[dg.DagsterEventType.STEP_START],
    )


def _step_events(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    records = instance.get_records_for_run(run_id, of_type=_STEP_EVENTS).records
    return [
        (record.event_log_entry.step_key, record.event_log_entry.dagster_event.event_type)
        for record in records
        if record.event_log_entry.step_key and record.event_log_entry.dagster_event is not None
    ]


def _step_errors(instance: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    """Each failed step's error: its innermost cause's first line."""
    errors = {}
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        error = record.event_log_entry.dagster_event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None and error.message.strip():
            errors[record.event_log_entry.step_key] = error.message.strip().splitlines()[0]
    return errors


def _run_failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """What the run's end says (and why its worker ended, when the engine recorded it)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    for record in records:
        return (record.event_log_entry.dagster_event.message or "run failed").strip().splitlines()[0]
    return "run failed"


def record_run_status_alert(instance: dg.DagsterInstance, run_id: str, store: AlertStore) -> list[Alert]:
    """A failed run raises an alert per failed step (or `run:<job>`); every step that succeeded in the
    run resolves its own. Runs not yet finished change nothing. Returns the alerts newly raised."""
    run = instance.get_run_by_id(run_id)
    if run is None:
        raise dg.DagsterInvariantViolationError(f"no run {run_id} in this instance")
    if run.status not in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE):
        return []
    succeeded, failed, unfinished = step_outcomes(_step_events(instance, run_id))
    for step in succeeded:
        store.resolve(f"{STEP_KEY_PREFIX}{step}")
    if run.status == dg.DagsterRunStatus.SUCCESS:
        store.resolve(f"{RUN_KEY_PREFIX}{run.job_name}")
        return []
    errors = _step_errors(instance, run_id)
    ended = _run_failure_message(instance, run_id)
    raised = []
    for step in failed:
        message = f"step {step} failed in run {run_id} of {run.job_name}: {errors.get(step, ended)}"
        raised.append(store.raise_alert(RUN_FAILURE_KIND, "ERROR", step, message, f"{STEP_KEY_PREFIX}{step}"))
    for step in unfinished:
        message = f"run {run_id} of {run.job_name} ended during step {step}: {ended}"
        raised.append(store.raise_alert(RUN_FAILURE_KIND, "ERROR", step, message, f"{STEP_KEY_PREFIX}{step}"))
    if not failed and not unfinished:
        message = f"run {run_id} of {run.job_name} failed before any step ran: {ended}"
        raised.append(
            store.raise_alert(
                RUN_FAILURE_KIND, "ERROR", run.job_name, message, f"{RUN_KEY_PREFIX}{run.job_name}"
            )
        )
    return [alert for alert in raised if alert is not None]


def record_rollback_alerts(registry: ModelRegistry, store: AlertStore) -> list[Alert]:
    """One alert per `rolled_back` registry event ever recorded (already alerted events are skipped)."""
    known = {alert.key for alert in store.list()}
    raised = []
    for event in registry.events():
        if event["event"] != "rolled_back":
            continue
        key = f"rollback:{event['time']}:{event.get('to')}"
        if key in known:
            continue
        how = "automatically" if event.get("automatic") else f"by {event.get('by')}"
        message = (
            f"production rolled back {how} from {event.get('from')} to {event.get('to')}: "
            f"{event.get('reason') or 'no reason given'}"
        )
        alert = store.raise_alert(ROLLBACK_KIND, "ERROR", "registry", message, key)
        if alert is not None:
            raised.append(alert)
    return raised


def record_rollout_alerts(registry: ModelRegistry, store: AlertStore) -> list[Alert]:
    """One alert per automatic `rollout_aborted` registry event (already alerted events are skipped)."""
    known = {alert.key for alert in store.list()}
    raised = []
    for event in registry.events():
        if event["event"] != RolloutEvent.ABORTED.value or not event.get("automatic"):
            continue
        if rollout_abort_key(str(event.get("rollout"))) in known:
            continue
        alert = raise_rollout_abort(store, event)
        if alert is not None:
            raised.append(alert)
    return raised


def record_run_alerts(
    home: PlatformHome,
    settings: Settings,
    instance: dg.DagsterInstance,
    run_ids: Iterable[str],
    store: AlertStore | None = None,
) -> list[Alert]:
    """Checks and status of each run, then the registry's rollbacks and aborted rollouts: every alert
    newly raised."""
    store = alert_store(home, settings) if store is None else store
    raised: list[Alert] = []
    for run_id in run_ids:
        raised.extend(record_check_alerts(instance, run_id, store))
        raised.extend(record_run_status_alert(instance, run_id, store))
    registry = ModelRegistry.for_home(home.ensure(), settings.storage)
    raised.extend(record_rollback_alerts(registry, store))
    raised.extend(record_rollout_alerts(registry, store))
    return raised


def build_alert_sensors(home: PlatformHome, settings: Settings) -> list[dg.SensorDefinition]:
    """Sensors that turn every finished run (success or failure) into alerts, on by default."""

    @dg.run_status_sensor(
        name="alerts_on_run_success",
        run_status=dg.DagsterRunStatus.SUCCESS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Alerts for the failed (non-blocking) checks of a successful run; resolves cleared ones.",
    )
    def alerts_on_run_success(context: dg.RunStatusSensorContext):
        record_run_alerts(home, settings, context.instance, [context.dagster_run.run_id])

    @dg.run_failure_sensor(
        name="alerts_on_run_failure",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="An alert for every failed run, plus its failed checks.",
    )
    def alerts_on_run_failure(context: dg.RunFailureSensorContext):
        record_run_alerts(home, settings, context.instance, [context.dagster_run.run_id])

    return [alerts_on_run_success, alerts_on_run_failure]
