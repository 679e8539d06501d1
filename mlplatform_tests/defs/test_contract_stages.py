"""A home with its own dataset contract (two classes, no facets, no product): features -> training ->
registered model in-process, and the product report skipped with its reason.

The drops enter as the reader hands them over for that contract (`raw_reviews`' output: the contract's
normalised columns plus `source_row`), so these stages are tested whatever reads the files.
"""

from __future__ import annotations

import dagster as dg
import pytest

from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.training.fit import TrainingConfig
from mlplatform.defs.features import build_feature_assets
from mlplatform.defs.ingest import DROPS
from mlplatform.defs.io_manager import VersionedIOManager, versioned_output
from mlplatform.defs.monitoring import PRODUCT_QUALITY_REPORT, build_monitoring_assets
from mlplatform.defs.resources import PlatformResource, endpoint_resource
from mlplatform.defs.training import build_training_assets
from mlplatform_tests.core.data.generated import TWO_CLASS, generated_drop
from mlplatform_tests.core.data.test_contract import UCI
from mlplatform_tests.core.training.training_data import TRAINING_SEARCH

pytestmark = pytest.mark.filterwarnings("ignore")
DROP_KEYS = ("1", "2")


@dg.asset(name="raw_reviews", partitions_def=DROPS)
def raw_reviews(context) -> dg.Output:
    """What ingest accepts for the two-class contract: generated sentences and their 0/1 labels."""
    seed = int(context.partition_key)
    frame = generated_drop(TWO_CLASS, rows=300, seed=seed, start=seed * 1000)
    return versioned_output(frame, extra={"drop_hash": context.partition_key})


def _check(result: dg.ExecuteInProcessResult, asset: str, name: str) -> dg.AssetCheckEvaluation:
    return next(
        evaluation
        for evaluation in result.get_asset_check_evaluations()
        if evaluation.asset_key == dg.AssetKey(asset) and evaluation.check_name == name
    )


def test_a_two_class_contract_trains_gates_and_registers_a_two_class_model(home: PlatformHome) -> None:
    home.dataset_file.write_text(UCI)
    settings = Settings.load(home.settings_file)
    resources = {
        "io_manager": VersionedIOManager(home=str(home.root)),
        "platform": PlatformResource(home=str(home.root)),
        "endpoint": endpoint_resource(home, settings),
    }
    assert resources["platform"].contract().classes == ("negative", "positive")
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DROPS.name, list(DROP_KEYS))
    for key in DROP_KEYS:
        assert dg.materialize(
            [raw_reviews], partition_key=key, resources=resources, instance=instance
        ).success

    assets = [
        *build_feature_assets(settings, resources["platform"].contract()),
        *build_training_assets(settings, TrainingConfig.from_toml(TRAINING_SEARCH)),
        *build_monitoring_assets(settings),
    ]
    downstream = [
        dg.AssetKey("reviews"),
        dg.AssetKey("review_splits"),
        *(key for definition in assets for key in definition.keys if key.path[0] == "candidate_models"),
        dg.AssetKey("best_model"),
    ]
    result = dg.materialize(
        [raw_reviews.to_source_asset(), *assets],
        selection=downstream,
        resources=resources,
        instance=instance,
    )
    assert result.success

    store = ArtifactStore(home.artifacts)
    reviews = store.load(store.latest("reviews"))
    assert set(reviews["label"].unique()) == {"negative", "positive"}
    assert reviews.columns == ["review_id", "drop_hash", "source_row", "sentence", "text", "label"]
    bias = _check(result, "reviews", "pretraining_bias")
    assert bias.passed and "no facet declared" in bias.description
    coverage = _check(result, "review_splits", "class_coverage")
    assert coverage.passed and coverage.description == "all 2 classes in all 3 splits"
    quality = _check(result, "best_model", "quality_bar")
    assert quality.passed, quality.description
    assert {"recall/negative", "recall/positive"} <= quality.metadata.keys()
    assert "recall/neutral" not in quality.metadata

    (version,) = ModelRegistry(home.registry).list()
    assert version.status == "Approved"
    card = version.card
    assert card["model"]["classes"] == ["negative", "positive"]
    assert card["facets"] == {}
    assert card["drift_baseline"]["classes"] == ["negative", "positive"]
    assert {case["expected"] for case in card["smoke_cases"]} == {"negative", "positive"}
    assert set(card["hyperparameters"]["class_offsets"]) == {"negative", "positive"}

    # the product report: this contract has no product column, so it is skipped and says why
    report = dg.materialize(
        [raw_reviews.to_source_asset(), *assets],
        selection=[dg.AssetKey("prediction_log"), dg.AssetKey(PRODUCT_QUALITY_REPORT)],
        resources=resources,
        instance=instance,
    )
    assert report.success
    (materialization,) = report.asset_materializations_for_node(PRODUCT_QUALITY_REPORT)
    assert materialization.metadata["skipped"].value.startswith(
        "skipped: the dataset contract declares no product column"
    )
    assert set(store.load(store.latest("review_splits"))["split"].unique()) == {"train", "validation", "test"}
