"""The data stage materialized in-process through `mlplatform run` (runner.run_pending)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import generate_reviews, to_published_csv, write_demo_drops
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.runner import run_pending

pytestmark = pytest.mark.filterwarnings("ignore")
DATA_STAGE = ("ingest", "features")


def _land_demo(home, tmp_path: Path, n_drops: int = 2, rows: int = 400, seed: int = 3) -> list[str]:
    files = write_demo_drops(tmp_path / "drops", n_drops=n_drops, rows_per_drop=rows, seed=seed)
    return [result.hash for result in Lake(home).land(files)]


def test_good_drops_flow_through_the_data_stage(home, tmp_path):
    hashes = _land_demo(home, tmp_path)
    report = run_pending(home, say=lambda _: None, groups=DATA_STAGE)

    assert report.exit_code == 0, report.blocked
    assert sorted(report.accepted) == sorted(hashes)
    assert {"reviews", "review_splits"} <= set(report.materialized)
    lake = Lake(home)
    assert {drop.hash: drop.state for drop in lake.drops()} == dict.fromkeys(hashes, "accepted")
    store = ArtifactStore(home.artifacts)
    splits = store.load(store.latest("review_splits"))
    assert set(splits["split"].unique()) == {"train", "validation", "test"}
    assert splits["review_id"].n_unique() == splits.height
    # every pipeline read of a dataset version is in the audit ledger, attributed to a run and an asset
    ledger = lake.audit()
    assert all(entry.kind == "pipeline" and entry.allowed for entry in ledger)
    drop_reads = {e.version for e in ledger if e.consumer.endswith(":raw_reviews")}
    assert drop_reads == set(hashes)
    raw_versions = {a.version for a in store.versions("raw_reviews", "*")}
    assert {e.version for e in ledger if e.consumer.endswith(":reviews")} == raw_versions
    assert {e.dataset for e in ledger if e.consumer.endswith(":review_splits")} == {"reviews"}


def test_nothing_new_means_nothing_runs(home, tmp_path):
    _land_demo(home, tmp_path)
    assert run_pending(home, say=lambda _: None, groups=DATA_STAGE).exit_code == 0
    again = run_pending(home, say=lambda _: None, groups=DATA_STAGE)
    assert again.exit_code == 0
    assert again.materialized == [] and again.accepted == []


def test_bad_drop_is_quarantined_and_downstream_unchanged(home, tmp_path):
    _land_demo(home, tmp_path)
    assert run_pending(home, say=lambda _: None, groups=DATA_STAGE).exit_code == 0
    store = ArtifactStore(home.artifacts)
    reviews_before = store.latest("reviews").version

    frame = generate_reviews(200, seed=99)
    bad = tmp_path / "bad.csv"
    bad.write_bytes(to_published_csv(frame).replace(b"Review Text", b"Review Txt", 1))
    (bad_result,) = Lake(home).land([bad])

    report = run_pending(home, say=lambda _: None, groups=DATA_STAGE)
    assert report.exit_code == 1
    assert report.quarantined == [bad_result.hash]
    (blocked,) = report.blocked
    assert blocked.asset.startswith("raw_reviews") and "schema" in blocked.reason
    drop = Lake(home).drop(bad_result.hash)
    assert drop.state == "quarantined" and drop.check == "schema"
    assert drop.path.read_bytes() == bad.read_bytes()
    assert store.latest("reviews").version == reviews_before
    assert report.materialized == []


@pytest.mark.realdata
def test_the_real_file_is_accepted(home, real_data_path):
    (landed,) = Lake(home).land([real_data_path])
    report = run_pending(home, say=lambda _: None, groups=DATA_STAGE)
    assert report.exit_code == 0, report.blocked
    assert report.accepted == [landed.hash]
    store = ArtifactStore(home.artifacts)
    reviews = store.load(store.latest("reviews"))
    assert 19_000 < reviews.height <= 19_986


def _bad_drops(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, the check that must reject it)."""
    good = to_published_csv(generate_reviews(120, seed=11))
    header, _, body = good.partition(b"\n")
    lines = body.splitlines(keepends=True)
    all_null_text = generate_reviews(120, seed=12).with_columns(review_text=None)
    import polars as pl

    all_null_text = all_null_text.with_columns(pl.col("review_text").cast(pl.String))
    return {
        "missing_column.csv": (
            good.replace(b',"Class Name"', b"", 1).replace(b",Class Name", b"", 1),
            "schema",
        ),
        "renamed_column.csv": (good.replace(b"Rating", b"Stars", 1), "schema"),
        "wrong_type.csv": (
            header + b"\n" + lines[0].replace(b",5,", b",five,", 1) + b"".join(lines[1:]),
            "schema",
        ),
        "empty.csv": (b"", "schema"),
        "header_only.csv": (header + b"\n", "non_empty"),
        "truncated.csv": (good[: len(good) - 40], "schema"),
        "unbalanced_quotes.csv": (
            header + b'\n0,1,30,"Lovely,"fits well,5,1,0,General,Tops,Knits\n',
            "schema",
        ),
        "latin1.csv": (good.replace(b"e", b"\xe9", 3), "schema"),
        "all_null_text.csv": (to_published_csv(all_null_text), "completeness"),
    }


def test_each_bad_drop_is_quarantined_with_its_reason_and_nothing_is_lost(home, tmp_path):
    bad = _bad_drops(tmp_path)
    sources = tmp_path / "bad"
    sources.mkdir()
    for name, (payload, _) in bad.items():
        (sources / name).write_bytes(payload)
    lake = Lake(home)
    landed = {result.name: result.hash for result in lake.land(sorted(sources.iterdir()))}

    report = run_pending(home, say=lambda _: None, groups=DATA_STAGE)

    assert report.exit_code == 1
    assert sorted(report.quarantined) == sorted(set(landed.values()))
    for name, (payload, check) in bad.items():
        drop = Lake(home).drop(landed[name])
        assert drop.state == "quarantined", name
        assert drop.check == check, (name, drop.reason)
        assert drop.reason and "\n" not in drop.reason
        assert drop.path.read_bytes() == payload, name
    assert report.materialized == []
