"""Homes with their own dataset contract, in-process.

- Two classes, no facets, no product: features -> training -> registered model, and the product report
  skipped with its reason. The drops enter as the reader hands them over for that contract
  (`raw_reviews`' output: the contract's normalised columns plus `source_row`), so these stages are
  tested whatever reads the files.
- A third layout (issue 12's proof; generated.RENAMED): Parquet files with their own column names, a
  1-10 rating mapped to three classes, a product key, a string and a binned numeric facet, landed with a
  drop that breaks the contract, through `mlplatform run` (runner.run_pending): quarantine -> features
  -> training -> registration -> batch scoring -> product report.
"""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest
from fastapi.testclient import TestClient

from mlplatform.core.data.lake import Lake
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.fsio import sha256_file
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
from mlplatform.runner import run_pending
from mlplatform.serving.app import create_app
from mlplatform_tests.core.data.generated import (
    RENAMED,
    RENAMED_TOML,
    SKUS,
    TWO_CLASS,
    class_words,
    generated_drop,
    source_parquet,
)
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


# --- a third layout, from landing to the product report ------------------------------------------------

SEEDED = SKUS[5]  # the product the complaints below are about
UNHAPPY_TEXT = " ".join(class_words("unhappy")[:4])


def test_a_renamed_parquet_layout_runs_from_landing_to_the_product_report(
    home: PlatformHome, tmp_path
) -> None:
    """Parquet with its own column names (`name = ...`), a 1-10 rating mapped to three classes, a product
    key, a string facet and a binned numeric one; and a drop that breaks the contract."""
    home.dataset_file.write_text(RENAMED_TOML)
    home.settings_file.write_text("[lake]\nsettle_seconds = 0.0\n")
    drops = tmp_path / "drops"
    drops.mkdir()
    for seed in (1, 2):
        frame = generated_drop(RENAMED, rows=450, seed=seed, start=seed * 1000)
        (drops / f"export-{seed}.parquet").write_bytes(source_parquet(frame, RENAMED))
    broken = generated_drop(RENAMED, rows=60, seed=3, start=5000)
    broken = broken.with_columns(score=pl.when(pl.col("source_row") == 5037).then(11).otherwise("score"))
    (drops / "export-broken.parquet").write_bytes(source_parquet(broken, RENAMED))
    landed = {result.name: result for result in Lake(home).land(sorted(drops.iterdir()))}

    report = run_pending(home, say=lambda _: None)

    # the broken drop: quarantined with the column (as the file names it), the value and the row; bytes kept
    bad = landed["export-broken.parquet"]
    assert report.exit_code == 1 and report.quarantined == [bad.hash]
    drop = Lake(home).drop(bad.hash)
    assert drop.state == "quarantined" and drop.check == "schema"
    assert (
        """score (file column "Score (1-10)") in_range(1, 10): '11' at row 38 (source_row 37)"""
        in drop.reason
    )
    assert drop.path.read_bytes() == (drops / "export-broken.parquet").read_bytes()
    # the good drops carried on: features -> splits -> candidates -> gates -> registered and deployed
    assert sorted(report.accepted) == sorted(landed[f"export-{seed}.parquet"].hash for seed in (1, 2))
    assert {"reviews", "review_splits", "best_model", "sentiment_endpoint"} <= set(report.materialized)

    store = ArtifactStore(home.artifacts)
    reviews = store.load(store.latest("reviews"))
    assert reviews.columns == [
        "review_id", "drop_hash", "source_row", "key", "body", "text", "score", "label", "article", "region",
        "income", "income_band",
    ]  # fmt: skip
    assert reviews["review_id"].to_list() == reviews["key"].to_list()  # the id column is the review id
    assert set(reviews["label"]) == {"unhappy", "mixed", "happy"}
    assert set(reviews["income_band"]) == {"<40000", "40000-90000", "90000+", "unknown"}
    (version,) = ModelRegistry(home.registry).list()
    assert (
        version.status == "Approved" and ModelRegistry(home.registry).production().version == version.version
    )
    card = version.card
    assert card["model"]["classes"] == ["unhappy", "mixed", "happy"]
    assert set(card["facets"]) == {"region", "income_band"}
    assert {case["expected"] for case in card["smoke_cases"]} == {"unhappy", "mixed", "happy"}

    # batch scoring: a Parquet file of the export's id and text columns only, by their names in the file
    new = generated_drop(RENAMED, rows=40, seed=9, start=9000)
    batch = home.batch / "new.parquet"
    new.select(pl.col("key").alias("Review Key"), pl.col("body").alias("Comment Body")).write_parquet(batch)
    # ... and traffic at the endpoint, with the product key: complaints about one product
    traffic = [
        {"text": text, "product_id": SKUS[index % 5], "review_id": key}  # every class for each product
        for index, (text, key) in enumerate(zip(new["body"], new["key"], strict=True))
    ] * 3 + [{"text": UNHAPPY_TEXT, "product_id": SEEDED}] * 30
    app = create_app(home, Settings.load(home.settings_file))
    with TestClient(app) as client:
        answer = client.post("/predict", json={"reviews": traffic})
        assert answer.status_code == 200, answer.text
        assert set(answer.json()["predictions"][0]["probabilities"]) == {"unhappy", "mixed", "happy"}

    report = run_pending(home, say=lambda _: None)
    assert "batch_predictions[new.parquet]" in report.materialized, report
    scored = store.load(store.latest("batch_predictions", sha256_file(batch)))
    assert scored["row_id"].to_list() == new["key"].to_list()
    assert {"p_unhappy", "p_mixed", "p_happy"} <= set(scored.columns) and scored.height == 40
    bundle = store.load(store.latest(PRODUCT_QUALITY_REPORT)).files
    flagged = pl.read_csv(bundle["product_quality_report.csv"], schema_overrides={"product_id": pl.String})
    assert flagged.columns[:2] == ["product_id", "region"] and "unhappy_share" in flagged.columns
    assert flagged["product_id"].to_list() == [SEEDED]
