"""Group `ingest`: `raw_reviews`, one dynamic partition per drop, validated before anything is written.

A drop that fails a blocking check is quarantined with the check's reason, its partition is removed
(so nothing downstream ever waits for or reads it), and the step fails with the check result recorded.
"""

import dagster as dg
from dagster import AssetExecutionContext

from mlplatform.core.data import quality, schema
from mlplatform.core.data.quality import IngestRules, validate_drop
from mlplatform.core.platform.settings import Settings
from mlplatform.defs.checks import check_result
from mlplatform.defs.io_manager import versioned_output
from mlplatform.defs.resources import PlatformResource
from mlplatform.defs.versions import code_version

DROPS = dg.DynamicPartitionsDefinition(name="drops")
RAW_REVIEWS_CHECKS = {
    "schema": "Columns, types and value ranges of the published layout (pandera contract).",
    "completeness": "Share of rows without review text stays under [ingest].max_missing_review_text_share.",
    "duplicates": "Share of duplicate rows stays under [ingest].max_duplicate_row_share.",
    "non_empty": "The drop holds at least [ingest].min_rows rows.",
}


def build_ingest_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    @dg.asset(
        name="raw_reviews",
        group_name="ingest",
        partitions_def=DROPS,
        output_required=False,
        kinds={"polars"},
        code_version=code_version([schema, quality], settings.section("ingest")),
        check_specs=[
            dg.AssetCheckSpec(name, asset="raw_reviews", blocking=True, description=text)
            for name, text in RAW_REVIEWS_CHECKS.items()
        ],
        description="One accepted drop of reviews, normalised to snake_case names and strict types.",
    )
    def raw_reviews(context: AssetExecutionContext, platform: PlatformResource):
        lake = platform.lake()
        drop = lake.drop(context.partition_key)
        lake.record_read(
            "raw_reviews", drop.hash, consumer=f"{context.run_id}:raw_reviews", purpose="validate drop"
        )
        payload = lake.open_drop(drop.hash).read_bytes()
        validation = validate_drop(payload, drop.format, IngestRules.from_settings(platform.settings()))
        if validation.passed:
            accepted = lake.accept(drop.hash)
            yield versioned_output(
                validation.frame,
                metadata={
                    "drop_hash": accepted.hash,
                    "drop_names": ", ".join(accepted.names),
                    "landed_at": accepted.landed_at,
                    "drop_size_bytes": accepted.size,
                },
                extra={"drop_hash": accepted.hash, "run_id": context.run_id},
            )
        for outcome in validation.checks:
            yield check_result(outcome.name, outcome.passed, outcome.description, outcome.metadata)
        if not validation.passed:
            failure = validation.first_failure
            lake.quarantine(drop.hash, check=failure.name, reason=failure.description)
            context.log.error(f"drop {drop.hash[:12]} quarantined: {failure.name}: {failure.description}")
            context.instance.delete_dynamic_partition(DROPS.name, drop.hash)

    return [raw_reviews]
