"""Lineage on a home built by the real pipeline and answered by the real endpoint (built once)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import polars as pl
import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.monitoring.lineage import (
    LineageError,
    asset_lineage,
    list_artifact_versions,
    prediction_lineage,
    render_lineage_text,
)
from mlplatform.core.platform.artifacts import ArtifactStore, IntegrityError
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.training.evaluation import card_classes
from mlplatform_tests.core.monitoring.lineage_fixtures import (
    REQUEST_ID,
    REUSED_REQUEST_ID,
    REVIEWS,
    TracedHome,
    build_traced_home,
)

pytestmark = pytest.mark.filterwarnings("ignore")
STORAGE = Settings.packaged().storage  # the traced home keeps everything in its own directories


def model_classes(traced: TracedHome) -> tuple[str, ...]:
    return card_classes(ModelRegistry(traced.home.registry).get(traced.model_version).card)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> TracedHome:
    return build_traced_home(tmp_path_factory.mktemp("lineage"))


@pytest.fixture(scope="module")
def capture(traced: TracedHome) -> pl.DataFrame:
    return read_capture(traced.home.capture)


def _landed_drops(traced: TracedHome) -> dict[str, tuple[str, ...]]:
    """Hash -> names of the drops the fixture landed (as the lake recorded them)."""
    lake = Lake(traced.home)
    return {result.hash: lake.drop(result.hash).names for result in traced.landed}


def test_prediction_lineage_reaches_the_exact_landed_drops(traced, capture):
    chain = prediction_lineage(traced.home, STORAGE, REQUEST_ID, capture)

    request = chain["request"]
    assert request["request_id"] == REQUEST_ID and request["route"] == "/predict" and request["rows"] == 2
    assert [given["review_id"] for given in request["inputs"]] == [r["review_id"] for r in REVIEWS]
    assert [given["text"] for given in request["inputs"]] == [r["text"] for r in REVIEWS]
    answered = [prediction["label"] for prediction in traced.answer["predictions"]]
    assert [output["label"] for output in request["outputs"]] == answered
    assert set(request["outputs"][0]["probabilities"]) == set(model_classes(traced))

    assert chain["model_version"]["version"] == traced.model_version == traced.answer["model_version"]
    model = ModelRegistry(traced.home.registry).get(traced.model_version)
    assert chain["model_version"]["sha256"] == model.sha256

    training = chain["training"]
    landed = _landed_drops(traced)
    assert [drop["hash"] for drop in training["drops"]] == [result.hash for result in traced.landed]
    for drop in training["drops"]:
        assert tuple(drop["names"]) == landed[drop["hash"]]
        assert drop["landed_at"] == Lake(traced.home).drop(drop["hash"]).landed_at
        assert drop["state"] == "accepted"
    assert {name for names in landed.values() for name in names} == {r.name for r in traced.landed}

    store = ArtifactStore(traced.home.artifacts)
    splits = store.latest("review_splits")
    assert [(s["asset"], s["version"]) for s in training["splits"]] == [("review_splits", splits.version)]
    assert training["run_id"] == store.latest("best_model").extra["run_id"]
    assert training["hyperparameters"] == model.card["hyperparameters"]
    assert training["code_version"] == model.card["lineage"]["code_version"]
    assert training["candidate_code_version"] == model.card["lineage"]["candidate_code_version"]


def test_a_shadowed_request_is_traced_to_the_version_that_answered_it(traced, capture):
    answered = capture.filter(pl.col("request_id") == REQUEST_ID)
    shadow = answered.with_columns(pl.lit("v99").alias("model_version"), pl.lit("shadow").alias("role"))
    chain = prediction_lineage(traced.home, STORAGE, REQUEST_ID, pl.concat([capture, shadow]))
    assert chain["model_version"]["version"] == answered["model_version"][0]
    assert chain["request"]["rows"] == answered.height


def test_prediction_lineage_text_shows_the_chain(traced, capture):
    text = render_lineage_text(prediction_lineage(traced.home, STORAGE, REQUEST_ID, capture))
    assert text.startswith(f"request {REQUEST_ID}")
    assert f"answered by model {traced.model_version}" in text
    for result in traced.landed:
        assert result.hash in text and result.name in text


def test_unknown_and_reused_request_ids_are_refused(traced, capture):
    with pytest.raises(LineageError, match="'no-such-request' is not in the capture log"):
        prediction_lineage(traced.home, STORAGE, "no-such-request", capture)
    with pytest.raises(LineageError, match=r"names 2 requests .*capture id") as refused:
        prediction_lineage(traced.home, STORAGE, REUSED_REQUEST_ID, capture)
    assert all(capture_id in str(refused.value) for capture_id in traced.reused_capture_ids)


def test_each_request_sent_with_a_reused_id_is_traced_by_its_capture_id(traced, capture):
    texts = []
    for capture_id in traced.reused_capture_ids:
        chain = prediction_lineage(traced.home, STORAGE, capture_id, capture)
        assert (chain["request"]["request_id"], chain["request"]["capture_id"]) == (
            REUSED_REQUEST_ID,
            capture_id,
        )
        assert chain["model_version"]["version"] == traced.model_version
        texts.append(chain["request"]["inputs"][0]["text"])
    assert texts == [review["text"] for review in REVIEWS]
    assert f"capture id {traced.reused_capture_ids[0]}" in render_lineage_text(
        prediction_lineage(traced.home, STORAGE, traced.reused_capture_ids[0], capture)
    )


def test_a_missing_link_is_named(traced, capture, tmp_path):
    unknown_model = capture.with_columns(pl.lit("v99").alias("model_version"))
    with pytest.raises(LineageError, match="model version v99 is not in the registry"):
        prediction_lineage(traced.home, STORAGE, REQUEST_ID, unknown_model)

    damaged = PlatformHome(tmp_path / "home")
    shutil.copytree(traced.home.root, damaged.root, ignore=shutil.ignore_patterns("dagster"))
    shutil.rmtree(damaged.artifacts / "review_splits")
    with pytest.raises(
        LineageError, match=r"split version review_splits [0-9a-f]{64} is not in the artifact"
    ):
        prediction_lineage(damaged, STORAGE, REQUEST_ID, capture)


def test_reviews_and_splits_list_the_drops_they_were_built_from(traced):
    store = ArtifactStore(traced.home.artifacts)
    for asset in ("reviews", "review_splits"):
        latest = store.latest(asset)
        chain = asset_lineage(traced.home, STORAGE, asset)
        assert chain["artifact"]["version"] == latest.version
        assert chain["artifact"]["run_id"] == latest.extra["run_id"]
        assert chain["artifact"]["code_version"] == latest.extra["code_version"]
        assert [drop["hash"] for drop in chain["upstream"]["drops"]] == [r.hash for r in traced.landed]
        by_prefix = asset_lineage(traced.home, STORAGE, asset, latest.version[:10])
        assert by_prefix == chain


def test_each_raw_reviews_partition_leads_to_its_drop(traced):
    for result in traced.landed:
        stored = ArtifactStore(traced.home.artifacts).latest("raw_reviews", result.hash)
        chain = asset_lineage(traced.home, STORAGE, "raw_reviews", stored.version)
        assert chain["artifact"]["partition"] == result.hash
        assert [(d["hash"], d["names"][0]) for d in chain["upstream"]["drops"]] == [
            (result.hash, result.name)
        ]


def test_best_model_and_candidates_lead_to_the_card_lineage(traced, capture):
    served = prediction_lineage(traced.home, STORAGE, REQUEST_ID, capture)["training"]
    best = asset_lineage(traced.home, STORAGE, "best_model")
    assert best["upstream"]["training"] == served
    assert best["upstream"]["registered_as"]["version"] == traced.model_version

    store = ArtifactStore(traced.home.artifacts)
    candidates = [asset for asset in store.assets() if asset.startswith("candidate_models/")]
    chains = [asset_lineage(traced.home, STORAGE, asset) for asset in candidates]
    assert len(chains) == 2
    assert sorted(chain["upstream"]["selected"] for chain in chains) == [False, True]
    for chain in chains:
        assert chain["upstream"]["training"] == served
        assert chain["upstream"]["best_model_version"] == best["artifact"]["version"]
        assert "of the same run" in render_lineage_text(chain)


def test_unknown_versions_and_assets_are_refused(traced):
    with pytest.raises(LineageError, match="no stored version matching 'deadbeef00'"):
        asset_lineage(traced.home, STORAGE, "reviews", "deadbeef00")
    with pytest.raises(LineageError, match="at least 8 hex characters"):
        asset_lineage(traced.home, STORAGE, "reviews", "abc")
    with pytest.raises(LineageError, match="'nothing_here' has no stored versions"):
        asset_lineage(traced.home, STORAGE, "nothing_here")


def test_versions_are_listed_oldest_first_with_their_runs(traced):
    listed = list_artifact_versions(ArtifactStore.from_settings(traced.home, STORAGE), "raw_reviews")
    assert [entry["partition"] for entry in listed] == [result.hash for result in traced.landed]
    assert [entry["created_at"] for entry in listed] == sorted(entry["created_at"] for entry in listed)
    for entry in listed:
        assert (
            entry["rows"] == 900 and entry["run_id"] and entry["size"] == Path(entry["path"]).stat().st_size
        )


def test_restore_gives_identical_bytes_and_refuses_a_tampered_file(traced, tmp_path):
    store = ArtifactStore(traced.home.artifacts)
    stored = store.latest("review_splits")
    restored = store.restore("review_splits", stored.version[:12], tmp_path)
    assert restored == tmp_path / stored.path.name
    assert restored.read_bytes() == stored.path.read_bytes()
    assert hashlib.sha256(restored.read_bytes()).hexdigest() == stored.version

    copy = ArtifactStore(tmp_path / "artifacts")
    shutil.copytree(traced.home.artifacts, copy.root)
    tampered = copy.root / stored.relative_path
    os.chmod(tampered, 0o644)
    tampered.write_bytes(tampered.read_bytes()[:-1] + b"\x00")
    with pytest.raises(IntegrityError, match="corrupt"):
        copy.restore("review_splits", stored.version, tmp_path / "out")
    assert not (tmp_path / "out").exists()
