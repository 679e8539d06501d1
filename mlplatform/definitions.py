"""The one place that assembles the platform's Definitions (loaded by dg, dagster, workspace.yaml and the CLI)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from mlplatform.core.data.contract import load_contract
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.training.fit import load_training_config
from mlplatform.defs.alerting import build_alert_sensors
from mlplatform.defs.automation import build_automation_sensor, build_landing_sensor, with_platform_policy
from mlplatform.defs.deployment import BATCH_PREDICTIONS, BATCHES, build_deployment_assets
from mlplatform.defs.execution import executor_definition
from mlplatform.defs.features import build_feature_assets
from mlplatform.defs.ingest import DROPS, build_ingest_assets
from mlplatform.defs.io_manager import VersionedIOManager
from mlplatform.defs.monitoring import MONITORING_GROUP, build_monitoring_assets, monitoring_fingerprint
from mlplatform.defs.resources import PlatformResource, endpoint_resource
from mlplatform.defs.rollout import ROLLOUT, ROLLOUT_JOB, build_rollout_assets, build_rollout_sensor
from mlplatform.defs.training import build_training_assets
from mlplatform.errors import silence_dagster_stability_warnings
from mlplatform.instance import check_dagster_home

INGEST_JOB = "ingest_job"
PIPELINE_JOB = "pipeline_job"
BATCH_JOB = "batch_job"
MONITORING_JOB = "monitoring_job"
MONITORING_SCHEDULE = "monitoring_schedule"


def build_definitions(home: PlatformHome, settings: Settings | None = None) -> dg.Definitions:
    """The definitions of `home`, by `settings` (loaded from the home when the caller has none)."""
    settings = Settings.load(home.settings_file) if settings is None else settings
    contract = load_contract(home.dataset_file)  # a malformed contract stops here, before anything runs
    training_config = load_training_config(home.training_file if home.training_file.exists() else None)
    assets = [
        *build_ingest_assets(settings, contract),
        *build_feature_assets(settings, contract),
        *build_training_assets(settings, training_config),
        *build_deployment_assets(settings, contract),
        *build_monitoring_assets(settings),
        *build_rollout_assets(settings),
    ]
    ingest_job = dg.define_asset_job(
        INGEST_JOB,
        selection=dg.AssetSelection.assets("raw_reviews"),
        partitions_def=DROPS,
        description="Validate one drop; accept it into lake/raw or quarantine it.",
    )
    # Ingest, batch, monitoring and rollout rounds have their own jobs and triggers; the pipeline job is the rest.
    driven_elsewhere = dg.AssetSelection.assets(
        "raw_reviews", BATCH_PREDICTIONS, ROLLOUT
    ) | dg.AssetSelection.groups(MONITORING_GROUP)
    pipeline_job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.all() - driven_elsewhere,
        description="Everything downstream of the accepted drops, in dependency order (monitoring apart).",
        # The one job with independent heavy steps (the candidates): [execution].executor decides.
        executor_def=executor_definition(settings.execution),
    )
    batch_job = dg.define_asset_job(
        BATCH_JOB,
        selection=dg.AssetSelection.assets(BATCH_PREDICTIONS),
        partitions_def=BATCHES,
        description="Score one file of lake/batch with the production model.",
    )
    # Monitoring is its own job: it follows the capture (which the endpoint appends to), not the drops.
    monitoring_job = dg.define_asset_job(
        MONITORING_JOB,
        # With the sources: the run observes the capture first, so the log records the version it read.
        selection=dg.AssetSelection.groups(MONITORING_GROUP, include_sources=True),
        description="Read the capture and refresh drift, live quality, the product report and system health.",
    )
    rollout_job = dg.define_asset_job(
        ROLLOUT_JOB,
        selection=dg.AssetSelection.assets(ROLLOUT),
        description="One round of the running rollout: judge its step on live traffic, then advance, "
        "promote, abort or wait.",
    )
    monitoring_schedule = dg.ScheduleDefinition(
        name=MONITORING_SCHEDULE,
        job=monitoring_job,
        cron_schedule=settings.monitoring.schedule_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        # Before the endpoint captured anything there is nothing to monitor (and maybe no model yet).
        should_execute=lambda _context: monitoring_fingerprint(home, settings) is not None,
        description="The monitoring assets, every [monitoring].schedule_cron, once something was captured.",
    )
    definitions = dg.Definitions(
        assets=assets,
        # The other jobs' runs execute in one process: a subprocess per step costs 1.5-2 s each, more
        # than most of their steps take.
        executor=dg.in_process_executor,
        jobs=[ingest_job, pipeline_job, batch_job, monitoring_job, rollout_job],
        schedules=[monitoring_schedule],
        sensors=[
            build_landing_sensor(INGEST_JOB, settings.automation.landing_sensor_interval_s),
            build_automation_sensor(
                dg.AssetSelection.all() - driven_elsewhere, settings.automation.automation_interval_s
            ),
            build_rollout_sensor(settings.rollout.judge_interval_s),
            *build_alert_sensors(home, settings),
        ],
        resources={
            "io_manager": VersionedIOManager(home=str(home.root)),
            "platform": PlatformResource(home=str(home.root)),
            "endpoint": endpoint_resource(home, settings),
        },
    )
    # Platform-wide policy, applied once: how every downstream asset reacts to changes upstream.
    return with_platform_policy(definitions, driven_elsewhere)


def job_of_home(home_root: str, job_name: str) -> dg.JobDefinition:
    """Job `job_name` of the home at `home_root`: how step processes and Dask workers rebuild a job."""
    silence_dagster_stability_warnings()
    return build_definitions(PlatformHome.at(Path(home_root))).resolve_job_def(job_name)


@dg.definitions
def defs() -> dg.Definitions:
    """The code location `dagster`, `dg` and the UI load (as CODE_LOCATION, mlplatform/instance.py):
    the home of $MLPLATFORM_HOME (default ./.mlplatform), whose instance must be $DAGSTER_HOME's."""
    home = PlatformHome.from_env()
    check_dagster_home(home)
    return build_definitions(home)
