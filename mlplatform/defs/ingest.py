"""Group `ingest`: `raw_reviews`, one dynamic partition per drop, validated before anything is written.

A drop is read and validated against the home's dataset contract (core/data/contract.py), chunk by
chunk from its file. A drop that fails a blocking check is quarantined with the check's reason, its
partition is removed (so nothing downstream ever waits for or reads it), and the step fails with the
check result recorded. An accepted drop keeps, in its sidecar, the fingerprint of the contract it was
accepted under. Materializing the partition of an accepted drop again (after the contract changed)
re-reads it under the current contract: if it fits, its new version is stored; if not, it stays
accepted as it was (raw drops are immutable) and the step reports why.
"""

import dagster as dg
from dagster import AssetExecutionContext

from mlplatform.core.data import quality, schema
from mlplatform.core.data.contract import DatasetContract
from mlplatform.core.data.quality import validate_drop
from mlplatform.core.platform.settings import Settings
from mlplatform.defs.checks import check_result
from mlplatform.defs.io_manager import versioned_output
from mlplatform.defs.resources import PlatformResource
from mlplatform.defs.versions import code_version

DROPS = dg.DynamicPartitionsDefinition(name="drops")
RAW_REVIEWS_CHECKS = {
    "schema": "The drop reads as the dataset contract describes it and satisfies the pandera schema "
    "generated from it (columns, types, nullability, bounds, allowed values, uniqueness).",
    "completeness": "Share of rows whose text columns are all empty stays under [ingest].max_missing_text_share.",
    "duplicates": "Share of duplicate rows stays under [ingest].max_duplicate_row_share.",
    "non_empty": "The drop holds at least [ingest].min_rows rows.",
}
# How a drop is cut into chunks changes its memory, never its verdict: not part of the code version.
_NOT_DECIDING = frozenset({"chunk_rows"})


def build_ingest_assets(settings: Settings, contract: DatasetContract) -> list[dg.AssetsDefinition]:
    deciding = settings.ingest.model_dump(mode="json", exclude=_NOT_DECIDING)

    @dg.asset(
        name="raw_reviews",
        group_name="ingest",
        partitions_def=DROPS,
        output_required=False,
        kinds={"polars"},
        code_version=code_version([schema, quality], deciding, contract),
        check_specs=[
            dg.AssetCheckSpec(name, asset="raw_reviews", blocking=True, description=text)
            for name, text in RAW_REVIEWS_CHECKS.items()
        ],
        description="One accepted drop of reviews, normalised to the contract's names and types.",
    )
    def raw_reviews(context: AssetExecutionContext, platform: PlatformResource):
        lake = platform.lake()
        contract = platform.contract()
        drop = lake.drop(context.partition_key)
        lake.record_read(
            "raw_reviews", drop.hash, consumer=f"{context.run_id}:raw_reviews", purpose="validate drop"
        )
        validation = validate_drop(
            lake.open_drop(drop.hash), drop.format, contract, platform.settings().ingest
        )
        if validation.passed:
            accepted = lake.accept(drop.hash, contract=contract.fingerprint)
            yield versioned_output(
                validation.frame,
                metadata={
                    "drop_hash": accepted.hash,
                    "drop_names": ", ".join(accepted.names),
                    "landed_at": accepted.landed_at,
                    "drop_size_bytes": accepted.size,
                    "contract": contract.fingerprint,
                },
                extra={
                    "drop_hash": accepted.hash,
                    "run_id": context.run_id,
                    "contract": contract.fingerprint,
                },
            )
        for outcome in validation.checks:
            yield check_result(outcome.name, outcome.passed, outcome.description, outcome.metadata)
        if not validation.passed:
            failure = validation.first_failure
            if drop.state == "accepted":
                context.log.error(
                    f"drop {drop.hash[:12]} (accepted under contract {drop.contract or 'unrecorded'}) does "
                    f"not satisfy the current contract {contract.fingerprint}: {failure.name}: "
                    f"{failure.description}; it stays accepted and its stored version unchanged"
                )
                return
            lake.quarantine(drop.hash, check=failure.name, reason=failure.description)
            context.log.error(f"drop {drop.hash[:12]} quarantined: {failure.name}: {failure.description}")
            context.instance.delete_dynamic_partition(DROPS.name, drop.hash)

    return [raw_reviews]
