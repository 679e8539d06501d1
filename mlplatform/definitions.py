"""The one place that assembles the platform's Definitions (loaded by workspace.yaml and the CLI)."""

from __future__ import annotations

import dagster as dg

from mlplatform.core.home import PlatformHome
from mlplatform.core.settings import Settings
from mlplatform.core.training import load_training_config
from mlplatform.defs.deployment import BATCH_PREDICTIONS, BATCHES, build_deployment_assets
from mlplatform.defs.features import build_feature_assets
from mlplatform.defs.ingest import DROPS, build_ingest_assets
from mlplatform.defs.io_manager import VersionedIOManager
from mlplatform.defs.resources import PlatformResource, endpoint_resource
from mlplatform.defs.training import build_training_assets

INGEST_JOB = "ingest_job"
PIPELINE_JOB = "pipeline_job"
BATCH_JOB = "batch_job"


def build_definitions(home: PlatformHome) -> dg.Definitions:
    settings = Settings.load(home.settings_file)
    training_config = load_training_config(home.training_file if home.training_file.exists() else None)
    assets = [
        *build_ingest_assets(settings),
        *build_feature_assets(settings),
        *build_training_assets(settings, training_config),
        *build_deployment_assets(settings),
    ]
    ingest_job = dg.define_asset_job(
        INGEST_JOB,
        selection=dg.AssetSelection.assets("raw_reviews"),
        partitions_def=DROPS,
        description="Validate one drop; accept it into lake/raw or quarantine it.",
    )
    pipeline_job = dg.define_asset_job(
        PIPELINE_JOB,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets("raw_reviews", BATCH_PREDICTIONS),
        description="Everything downstream of the accepted drops, in dependency order.",
    )
    batch_job = dg.define_asset_job(
        BATCH_JOB,
        selection=dg.AssetSelection.assets(BATCH_PREDICTIONS),
        partitions_def=BATCHES,
        description="Score one file of lake/batch with the production model.",
    )
    return dg.Definitions(
        assets=assets,
        jobs=[ingest_job, pipeline_job, batch_job],
        resources={
            "io_manager": VersionedIOManager(home=str(home.root)),
            "platform": PlatformResource(home=str(home.root)),
            "endpoint": endpoint_resource(home, settings),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(PlatformHome.from_env())
