"""The data stage materialized in-process through `mlplatform run` (runner.run_pending)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlplatform.core.data.contract import ContractError, load_contract
from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import generate_reviews, to_published_csv, write_demo_drops
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.settings import packaged_config_text
from mlplatform.definitions import INGEST_JOB, build_definitions
from mlplatform.instance import open_instance
from mlplatform.runner import run_pending
from mlplatform_tests.core.data.contract_fixtures import sentences_toml

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
    all_null_text = generate_reviews(120, seed=12).with_columns(review_text=None, title=None)
    all_null_text = all_null_text.with_columns(pl.col("review_text", "title").cast(pl.String))
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


# --- a home with its own contract ------------------------------------------------------------------


def _sentences(count: int, start: int = 0) -> bytes:
    return "".join(
        f'Sentence {n} says "{("bad", "good")[n % 2]}" things.\t{n % 2}\n'
        for n in range(start, start + count)
    ).encode()


def test_drops_breaking_a_homes_own_contract_are_quarantined_with_column_value_and_row(home, tmp_path):
    home.dataset_file.write_text(sentences_toml(max_length=200))
    good = _sentences(40)
    bad = {
        "label_not_allowed.txt": (
            good + b"Fine food.\t2\n",
            "label isin(['0', '1']): '2' at row 41 (source_row 40)",
        ),
        "no_sentence.txt": (
            _sentences(7) + b"\t1\n" + _sentences(32, start=8),
            "sentence not_nullable: None at row 8 (source_row 7)",
        ),
        "too_long.txt": (
            good + b"x" * 201 + b"\t0\n",
            "sentence str_length(None, 200): '" + "x" * 201 + "' at row 41",
        ),
        "ragged.txt": (good + b"no label\n", "truncated last line: line 41 has 1 of 2 fields"),
        "named_as_csv.csv": (_sentences(40, start=100), "a .csv file, but the contract reads TSV drops"),
    }
    sources = tmp_path / "sentences"
    sources.mkdir()
    (sources / "good.txt").write_bytes(good)
    for name, (payload, _) in bad.items():
        (sources / name).write_bytes(payload)
    landed = {result.name: result.hash for result in Lake(home).land(sorted(sources.iterdir()))}

    report = run_pending(home, say=lambda _: None, groups=("ingest",))

    assert report.exit_code == 1
    assert report.accepted == [landed["good.txt"]]
    lake = Lake(home)
    accepted = lake.drop(landed["good.txt"])
    assert accepted.contract == load_contract(home.dataset_file).fingerprint
    store = ArtifactStore(home.artifacts)
    frame = store.load(store.latest("raw_reviews", accepted.hash))
    assert frame.columns == ["source_row", "sentence", "label"] and frame.height == 40
    for name, (payload, fragment) in bad.items():
        drop = lake.drop(landed[name])
        assert (drop.state, drop.check) == ("quarantined", "schema"), (name, drop.reason)
        assert fragment in drop.reason, (name, drop.reason)
        assert "\n" not in drop.reason
        assert drop.path.read_bytes() == payload


def test_a_contract_change_never_mixes_layouts_in_reviews(home, tmp_path):
    hashes = _land_demo(home, tmp_path, n_drops=2, rows=300)
    assert run_pending(home, say=lambda _: None, groups=DATA_STAGE).exit_code == 0
    default = load_contract()
    assert {Lake(home).drop(digest).contract for digest in hashes} == {default.fingerprint}
    store = ArtifactStore(home.artifacts)
    reviews_before = store.latest("reviews").version

    # A change that keeps the normalised columns (a wider age bound) mixes nothing: reviews re-runs.
    home.dataset_file.write_text(packaged_config_text("dataset.toml").replace("max = 110", "max = 120"))
    report = run_pending(home, say=lambda _: None, groups=DATA_STAGE)
    assert report.exit_code == 0, report.blocked
    assert "reviews" in report.materialized

    # A change of the normalised columns: the drops accepted under the old contract are named.
    changed = packaged_config_text("dataset.toml").replace(
        '[columns."Positive Feedback Count"]\nrole = "extra"\ntype = "int"',
        '[columns."Positive Feedback Count"]\nrole = "extra"\ntype = "float"',
    )
    home.dataset_file.write_text(changed)
    report = run_pending(home, say=lambda _: None, groups=DATA_STAGE)
    assert report.exit_code == 1
    (blocked,) = report.blocked
    assert blocked.asset == "reviews" and "\n" not in blocked.reason
    assert f"2 drop(s) accepted under contract {default.fingerprint}" in blocked.reason
    assert all(digest[:12] in blocked.reason for digest in hashes)
    assert "restore the contract they were accepted under" in blocked.reason
    assert store.latest("reviews").version == reviews_before  # nothing mixed was stored

    # Re-validating the old drops under the new contract (their raw_reviews partitions) resolves it.
    with open_instance(home) as instance:
        job = build_definitions(home).resolve_job_def(INGEST_JOB)
        for digest in hashes:
            assert job.execute_in_process(instance=instance, partition_key=digest).success
    assert {Lake(home).drop(digest).contract for digest in hashes} == {default.fingerprint}  # sidecars stay
    frame = store.load(store.latest("raw_reviews", hashes[0]))
    assert frame.schema["positive_feedback_count"] == pl.Float64
    report = run_pending(home, say=lambda _: None, groups=DATA_STAGE)
    assert report.exit_code == 0, report.blocked
    assert "reviews" in report.materialized


def test_a_malformed_contract_stops_the_run_before_anything_runs(home, tmp_path):
    _land_demo(home, tmp_path, n_drops=1, rows=50)
    home.dataset_file.write_text(
        packaged_config_text("dataset.toml").replace('role = "rating"', 'role = "stars"')
    )
    with pytest.raises(ContractError, match=r'\[columns."Rating"\] role must be one of'):
        run_pending(home, say=lambda _: None, groups=DATA_STAGE)
    assert [drop.state for drop in Lake(home).drops()] == ["landed"]


def test_the_contract_is_part_of_the_code_versions_of_what_reads_drops(home):
    def versions() -> dict[str, str | None]:
        graph = build_definitions(home).resolve_asset_graph()
        keys = ("raw_reviews", "reviews", "batch_predictions")
        return {key: graph.get(dg.AssetKey(key)).code_version for key in keys}

    before = versions()
    home.settings_file.write_text("[ingest]\nchunk_rows = 7\n")  # how a drop is cut decides nothing
    assert versions() == before
    home.dataset_file.write_text(packaged_config_text("dataset.toml").replace("max = 110", "max = 120"))
    changed = versions()
    assert all(changed[key] != before[key] for key in before), changed
    home.dataset_file.write_text(packaged_config_text("dataset.toml") + "\n# only a comment\n")
    assert versions() == before  # the fingerprint follows what the contract says, not its spelling
