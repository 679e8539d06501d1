"""The `rollout` asset (group deployment) and what drives it: the live judgement of a shadow or a canary.

Each materialization is one round (core/monitoring/rollout_judgement.py): read the capture since the
rollout's current step began and the labels that arrived, judge the step with its checks, and carry the
verdict out: advance the canary to its next percent, promote the candidate (under the deployment lock),
abort (traffic back to production; its registry event becomes an alert, defs/alerting.py) or wait for
more data. The checks are blocking: an ERROR is what aborts. With no rollout running every check passes
saying so, and nothing changes.

Drivers: `rollout_sensor` (running by default) asks for a round every `[rollout] judge_interval_s`
while a rollout runs, never while one is still in flight, so the daemon takes a rollout from its first
step to promotion on its own; `mlplatform run` does one round (runner.py); the UI can materialize it.
"""

import time
from datetime import UTC, datetime

import dagster as dg

from mlplatform.core.monitoring import rollout_judgement
from mlplatform.core.monitoring.rollout_judgement import ROLLOUT_CHECKS, judge_running_rollout
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release import rollout as rollout_state
from mlplatform.core.release.rollout import current_rollout
from mlplatform.defs.checks import monitor_check
from mlplatform.defs.deployment import SENTIMENT_ENDPOINT
from mlplatform.defs.execution import DEPLOYMENT_POOL
from mlplatform.defs.io_manager import versioned_output
from mlplatform.defs.monitoring import CAPTURE, monitoring_inputs
from mlplatform.defs.resources import PlatformResource
from mlplatform.defs.versions import code_version

ROLLOUT = rollout_state.ROLLOUT_ASSET
ROLLOUT_JOB = "rollout_job"
ROLLOUT_SENSOR = "rollout_sensor"
JUDGED_BY = "rollout"
"""Who the registry's events name for what a judgement did."""
ROLLOUT_TAG = "mlplatform/rollout"
_CHECK_DESCRIPTIONS = {
    "agreement": "Shadow: the candidate labels the same requests as production; canary: 1 - TVD of their "
    "predicted-class shares. At least [rollout] min_agreement.",
    "class_shares": "The largest gap in one class's predicted share, candidate vs production, at most "
    "[rollout] max_class_share_gap.",
    "error_rate": "The candidate's failed predictions over all it was asked, at most [rollout] max_error_rate "
    "(a candidate file failing its hash check fails it at once).",
    "latency": "The candidate's p99 latency at most [rollout] max_p99_latency_ms.",
    "live_quality": "With enough labelled rows, the candidate's live macro-F1 at most [rollout] "
    "max_macro_f1_drop below production's.",
    "drift": "The candidate's inputs and outputs against its own training baseline ([monitoring] bounds).",
}


def _rollout_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=ROLLOUT,
        group_name="deployment",
        deps=[SENTIMENT_ENDPOINT, CAPTURE],
        kinds={"polars"},
        code_version=code_version([rollout_judgement, rollout_state], settings.rollout),
        # A round may promote: it queues behind (and never interleaves with) a deployment.
        pool=DEPLOYMENT_POOL,
        check_specs=[
            dg.AssetCheckSpec(name, asset=ROLLOUT, blocking=True, description=_CHECK_DESCRIPTIONS[name])
            for name in ROLLOUT_CHECKS
        ],
        description="The live judgement of the running shadow or canary: advance, promote, abort or wait.",
    )
    def rollout_asset(context: dg.AssetExecutionContext, platform: PlatformResource):
        home, settings_now = platform.platform_home(), platform.settings()
        round_ = judge_running_rollout(
            home,
            platform.registry(),
            ArtifactStore.from_settings(home, settings_now.storage),
            monitoring_inputs(home.ensure(), settings_now),
            platform.contract(),
            rules=settings_now.rollout,
            monitoring=settings_now.monitoring,
            lock_timeout_s=settings_now.deployment.lock_timeout_s,
            now=datetime.now(UTC),
            by=JUDGED_BY,
        )
        if round_.outcome is not None:
            context.log.info(f"rollout: {round_.outcome.action.value}: {round_.outcome.reason}")
        yield versioned_output(round_.record(), metadata=round_.metadata())
        for outcome in round_.outcomes:
            yield monitor_check(outcome, ROLLOUT)

    return rollout_asset


def build_rollout_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return [_rollout_asset(settings)]


IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def build_rollout_sensor(interval_seconds: int) -> dg.SensorDefinition:
    """Asks for a round of `rollout_job` every `interval_seconds` while a rollout runs (one at a time)."""

    @dg.sensor(
        name=ROLLOUT_SENSOR,
        job_name=ROLLOUT_JOB,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Judges the running rollout every [rollout] judge_interval_s: the daemon advances, "
        "promotes or aborts it on its own.",
    )
    def rollout_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource):
        rollout = current_rollout(platform.registry())
        if rollout is None:
            return dg.SkipReason("no rollout is running")
        in_flight = context.instance.get_run_records(
            dg.RunsFilter(job_name=ROLLOUT_JOB, statuses=IN_FLIGHT), limit=1
        )
        if in_flight:
            return dg.SkipReason(f"a round of {rollout.describe()} is still being judged")
        # One round per interval at most, even when the daemon restarts mid-tick.
        tick = int(time.time() // interval_seconds)
        return dg.RunRequest(run_key=f"{rollout.id}:{rollout.step}:{tick}", tags={ROLLOUT_TAG: rollout.id})

    return rollout_sensor
