"""Group `features`: `reviews` (all accepted drops, labelled) and `review_splits` (train/validation/test)."""

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from mlplatform.core.data import bias, features, schema, splits
from mlplatform.core.data.bias import check_bias, pretraining_bias
from mlplatform.core.data.contract import DatasetContract
from mlplatform.core.data.features import build_reviews, check_label_distribution
from mlplatform.core.data.splits import (
    assign_splits,
    check_class_coverage,
    check_no_leakage,
    check_proportions,
    split_metadata,
)
from mlplatform.core.platform.settings import Settings
from mlplatform.defs.checks import check_result
from mlplatform.defs.io_manager import versioned_output
from mlplatform.defs.resources import PlatformResource
from mlplatform.defs.versions import code_version

LABEL_SHARE_PREFIX = "label_share/"


def _previous_label_shares(context: AssetExecutionContext) -> dict[str, float] | None:
    """Label shares recorded by the previous materialization of `reviews` (its metadata, not its data)."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    if event is None or event.asset_materialization is None:
        return None
    metadata = event.asset_materialization.metadata
    shares = {
        key[len(LABEL_SHARE_PREFIX) :]: float(value.value)
        for key, value in metadata.items()
        if key.startswith(LABEL_SHARE_PREFIX)
    }
    return shares or None


def build_feature_assets(settings: Settings, contract: DatasetContract) -> list[dg.AssetsDefinition]:
    features_version = code_version([features, bias, schema], settings.features, contract)

    @dg.asset(
        name="reviews",
        group_name="features",
        ins={"raw_reviews": dg.AssetIn(partition_mapping=dg.AllPartitionMapping())},
        kinds={"polars"},
        code_version=features_version,
        check_specs=[
            dg.AssetCheckSpec(
                "label_distribution",
                asset="reviews",
                description="Every class of the dataset contract present; shift vs the previous version "
                "under its bound (WARN).",
            ),
            dg.AssetCheckSpec(
                "pretraining_bias",
                asset="reviews",
                description="Class imbalance, DPL, KL, JS, TVD and KS by the contract's facets under their "
                "bounds, label metrics judging its favourable class (WARN); no facet declared: passes.",
            ),
        ],
        description="All accepted drops, deduplicated by review id, labelled, with the text a model sees.",
    )
    def reviews(
        context: AssetExecutionContext, raw_reviews: dict[str, pl.DataFrame], platform: PlatformResource
    ):
        rules, contract = platform.settings().features, platform.contract()
        # Never mix layouts: every drop must hold the current contract's normalised columns.
        accepted_under = {drop.hash: drop.contract for drop in platform.lake().drops()}
        schema.check_layouts(raw_reviews, accepted_under, contract)
        table = build_reviews(raw_reviews, contract)
        previous = _previous_label_shares(context)
        yield versioned_output(table.frame, metadata=table.stats.as_metadata())
        facets = contract.facet_columns
        for outcome in (
            check_label_distribution(table.frame, previous, rules, contract.classes),
            check_bias(
                pretraining_bias(table.frame, facets, contract.labels, min_rows=rules.min_facet_rows),
                rules.bias_warn.as_dict(),
                facets,
                contract.labels,
            ),
        ):
            yield check_result(
                outcome.name, outcome.passed, outcome.description, outcome.metadata, warn_only=True
            )

    @dg.asset(
        name="review_splits",
        group_name="features",
        kinds={"polars"},
        code_version=code_version([splits], settings.splits),
        check_specs=[
            dg.AssetCheckSpec("no_leakage", asset="review_splits", blocking=True),
            dg.AssetCheckSpec("proportions", asset="review_splits", blocking=True),
            dg.AssetCheckSpec("class_coverage", asset="review_splits", blocking=True),
        ],
        description="Train / validation / test, a pure function of each review's stable id.",
    )
    def review_splits(reviews: pl.DataFrame, platform: PlatformResource):
        rules, classes = platform.settings().splits, platform.contract().classes
        frame = assign_splits(reviews, rules)
        yield versioned_output(frame, metadata=split_metadata(frame, classes))
        for outcome in (
            check_no_leakage(frame),
            check_proportions(frame, rules, classes),
            check_class_coverage(frame, classes),
        ):
            yield check_result(outcome.name, outcome.passed, outcome.description, outcome.metadata)

    return [reviews, review_splits]
