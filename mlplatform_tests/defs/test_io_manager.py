"""The versioned IO manager, materialized in-process on a temporary home."""

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mlplatform.core.platform.artifacts import ArtifactStore, sha256_bytes
from mlplatform.core.platform.home import PlatformHome
from mlplatform.defs.io_manager import (
    COLUMN_SCHEMA_KEY,
    ROW_COUNT_KEY,
    VersionedIOManager,
    versioned_output,
)

DROPS = dg.DynamicPartitionsDefinition(name="test_drops")


def _resources(home: PlatformHome) -> dict[str, VersionedIOManager]:
    return {"io_manager": VersionedIOManager(home=str(home.root))}


def _chain(source_values: list[int]) -> list[dg.AssetsDefinition]:
    @dg.asset(code_version="v1")
    def numbers() -> dg.Output:
        return versioned_output(pl.DataFrame({"n": source_values, "label": ["a"] * len(source_values)}))

    @dg.asset
    def doubled(numbers: pl.DataFrame) -> dg.Output:
        return versioned_output(
            numbers.with_columns(pl.col("n") * 2), metadata={"total": int(numbers["n"].sum())}
        )

    return [numbers, doubled]


def _materialization(result: dg.ExecuteInProcessResult, asset: str) -> dg.AssetMaterialization:
    (event,) = [m for m in result.asset_materializations_for_node(asset)]
    return event


def _data_version(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> str:
    record = instance.get_latest_materialization_event(dg.AssetKey(asset))
    if partition is not None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1
        ).records
        record = records[0].event_log_entry
    assert record is not None
    return record.asset_materialization.tags["dagster/data_version"]


def test_chain_stores_content_addressed_versions_with_metadata(home: PlatformHome) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(_chain([1, 2, 3]), resources=_resources(home), instance=instance)
    assert result.success

    meta = _materialization(result, "doubled").metadata
    stored = Path(meta["path"].value)
    sha = meta["sha256"].value
    assert _data_version(instance, "doubled") == sha
    assert sha256_bytes(stored.read_bytes()) == sha
    assert stored.parent == home.artifacts / "doubled"
    assert meta["size_bytes"].value == stored.stat().st_size
    assert meta["format"].value == "parquet"
    assert meta[ROW_COUNT_KEY].value == 3
    schema = meta[COLUMN_SCHEMA_KEY].schema
    assert [(c.name, c.type) for c in schema.columns] == [("n", "Int64"), ("label", "String")]
    assert meta["total"].value == 6  # the asset's own metadata is kept alongside

    # downstream got the decoded frame, and the stored frame is what it computed
    loaded = pl.read_parquet(stored)
    assert loaded["n"].to_list() == [2, 4, 6]
    record = ArtifactStore(home.artifacts).latest("numbers")
    assert record.extra["code_version"] == "v1"
    assert record.extra["run_id"] == result.run_id


def test_rematerializing_changed_data_keeps_the_earlier_version(home: PlatformHome) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize(_chain([1, 2]), resources=_resources(home), instance=instance)
    second = dg.materialize(_chain([5, 7, 9]), resources=_resources(home), instance=instance)
    old_sha = _materialization(first, "doubled").metadata["sha256"].value
    new_sha = _materialization(second, "doubled").metadata["sha256"].value
    assert old_sha != new_sha
    assert _data_version(instance, "doubled") == new_sha

    store = ArtifactStore(home.artifacts)
    assert [a.version for a in store.versions("doubled")] == [old_sha, new_sha]
    assert store.latest("doubled").version == new_sha
    assert store.load(store.get("doubled", old_sha))["n"].to_list() == [2, 4]
    assert store.load(store.get("doubled", new_sha))["n"].to_list() == [10, 14, 18]


def test_same_data_gives_the_same_data_version(home: PlatformHome) -> None:
    instance = dg.DagsterInstance.ephemeral()
    first = dg.materialize(_chain([4, 2]), resources=_resources(home), instance=instance)
    second = dg.materialize(_chain([4, 2]), resources=_resources(home), instance=instance)
    shas = {_materialization(r, "numbers").metadata["sha256"].value for r in (first, second)}
    assert len(shas) == 1
    assert len(ArtifactStore(home.artifacts).versions("numbers")) == 1


def test_plain_return_value_is_refused_with_a_hint(home: PlatformHome) -> None:
    @dg.asset
    def unversioned() -> pl.DataFrame:
        return pl.DataFrame({"a": [1]})

    with pytest.raises(Exception, match=r"versioned_output"):
        dg.materialize([unversioned], resources=_resources(home), instance=dg.DagsterInstance.ephemeral())


def _partitioned_pair() -> list[dg.AssetsDefinition]:
    @dg.asset(partitions_def=DROPS)
    def drops(context: dg.AssetExecutionContext) -> dg.Output:
        key = context.partition_key
        return versioned_output(pl.DataFrame({"drop": [key], "rows": [len(key)]}), extra={"drop": key})

    @dg.asset
    def all_drops(drops: dict[str, pl.DataFrame]) -> dg.Output:
        assert isinstance(drops, dict)
        combined = pl.concat([drops[key] for key in sorted(drops)])
        return versioned_output(combined)

    return [drops, all_drops]


def _materialize_drops(home: PlatformHome, instance: dg.DagsterInstance, keys: list[str]) -> None:
    drops, _ = _partitioned_pair()
    for key in keys:
        result = dg.materialize([drops], partition_key=key, resources=_resources(home), instance=instance)
        meta = _materialization(result, "drops").metadata
        assert _data_version(instance, "drops", key) == meta["sha256"].value
        assert Path(meta["path"].value).parent == home.artifacts / "drops" / key


def test_unpartitioned_downstream_receives_every_partition(home: PlatformHome) -> None:
    instance = dg.DagsterInstance.ephemeral()
    drop_hash = "ab" * 32  # drops are keyed by their content hash
    keys = [drop_hash, "second"]
    instance.add_dynamic_partitions(DROPS.name, keys)
    _materialize_drops(home, instance, keys)

    drops, all_drops = _partitioned_pair()
    result = dg.materialize(
        [drops.to_source_asset(), all_drops], resources=_resources(home), instance=instance
    )
    assert result.success
    combined = pl.read_parquet(_materialization(result, "all_drops").metadata["path"].value)
    assert sorted(combined["drop"].to_list()) == sorted(keys)
    store = ArtifactStore(home.artifacts)
    assert store.partitions("drops") == sorted(keys)
    assert store.latest("drops", drop_hash).extra["drop"] == drop_hash


def test_a_single_partition_still_arrives_as_a_dict(home: PlatformHome) -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DROPS.name, ["only"])
    _materialize_drops(home, instance, ["only"])
    drops, all_drops = _partitioned_pair()
    result = dg.materialize(
        [drops.to_source_asset(), all_drops], resources=_resources(home), instance=instance
    )
    assert result.success  # all_drops asserts it received a dict


def test_missing_partition_is_named_in_the_error(home: PlatformHome) -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DROPS.name, ["stored", "never-stored"])
    _materialize_drops(home, instance, ["stored"])
    drops, all_drops = _partitioned_pair()
    with pytest.raises(Exception) as raised:
        dg.materialize([drops.to_source_asset(), all_drops], resources=_resources(home), instance=instance)
    messages = []
    error: BaseException | None = raised.value
    while error is not None:
        messages.append(str(error))
        error = error.__cause__
    assert any("no stored version for 1 of 2 partition(s): never-stored" in m for m in messages), messages


def test_partitioned_downstream_reads_its_own_partition(home: PlatformHome) -> None:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(DROPS.name, ["p1", "p2"])
    _materialize_drops(home, instance, ["p1", "p2"])
    drops, _ = _partitioned_pair()

    @dg.asset(partitions_def=DROPS)
    def per_drop(drops: pl.DataFrame) -> dg.Output:
        return versioned_output(drops.with_columns(pl.lit(True).alias("seen")))

    dg.materialize(
        [drops.to_source_asset(), per_drop], partition_key="p2", resources=_resources(home), instance=instance
    )
    stored = ArtifactStore(home.artifacts)
    frame = stored.load(stored.latest("per_drop", "p2"))
    assert frame["drop"].to_list() == ["p2"]


def test_an_output_spanning_several_partitions_is_refused(home: PlatformHome) -> None:
    instance = dg.DagsterInstance.ephemeral()
    days = dg.StaticPartitionsDefinition(["a", "b"])

    @dg.asset(partitions_def=days, backfill_policy=dg.BackfillPolicy.single_run())
    def ranged() -> dg.Output:
        return versioned_output(b"both partitions at once")

    with pytest.raises(Exception, match="one output covers 2 partitions"):
        dg.materialize(
            [ranged],
            resources=_resources(home),
            instance=instance,
            tags={"dagster/asset_partition_range_start": "a", "dagster/asset_partition_range_end": "b"},
        )
    assert not (home.artifacts / "ranged").exists()
