"""The versioned IO manager: every materialization stored immutably, by content hash.

An asset encodes its value once and hands Dagster the hash as its data version:

    @dg.asset(io_manager_key="io_manager")
    def reviews(raw_reviews: dict[str, pl.DataFrame]):
        frame = ...
        return versioned_output(frame, metadata={"share_missing": ...})

The IO manager writes those exact bytes to the artifact store (core/platform/artifacts.py), records path,
hash, size, rows and schema as output metadata, and gives downstream assets the decoded value.
Annotate such assets with `-> dg.Output` (or nothing): the output value is an encoded artifact,
not the plain frame, so `-> pl.DataFrame` would fail Dagster's type check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from mlplatform.core.data.lake import Lake
from mlplatform.core.platform.artifacts import (
    FORMAT_PARQUET,
    ArtifactNotFound,
    ArtifactStore,
    EncodedValue,
    StoredArtifact,
    encode,
)
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings

ROW_COUNT_KEY = "dagster/row_count"
COLUMN_SCHEMA_KEY = "dagster/column_schema"


@dataclass(frozen=True)
class VersionedValue:
    """What a versioned asset outputs: the encoded value plus lineage to record with its version."""

    encoded: EncodedValue
    extra: Mapping[str, Any] = field(default_factory=dict)


def versioned_output(
    value: Any,
    metadata: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    output_name: str = "result",
) -> dg.Output:
    """Encode `value` once and return it as a Dagster Output whose data version is its sha256.

    `metadata` is shown in the UI next to the storage metadata; `extra` (e.g. source drop hashes) is
    written into the artifact's version record. Use `output_name` for the outputs of a multi_asset.
    """
    encoded = value if isinstance(value, EncodedValue) else encode(value)
    return dg.Output(
        VersionedValue(encoded, dict(extra or {})),
        output_name=output_name,
        data_version=dg.DataVersion(encoded.sha256),
        metadata=dict(metadata or {}),
    )


def asset_path(asset_key: dg.AssetKey) -> str:
    """The store's name for an asset key: its parts joined by '/' (nested directories)."""
    return "/".join(asset_key.path)


def artifact_metadata(artifact: StoredArtifact) -> dict[str, Any]:
    """Output metadata for a stored version; tables get row count and column schema for the UI."""
    where = artifact.path
    metadata: dict[str, Any] = {
        "path": dg.MetadataValue.path(str(where)) if isinstance(where, Path) else dg.MetadataValue.url(where),
        "sha256": dg.MetadataValue.text(artifact.version),
        "size_bytes": dg.MetadataValue.int(artifact.size),
        "format": dg.MetadataValue.text(artifact.fmt),
    }
    if artifact.rows is not None:
        metadata[ROW_COUNT_KEY] = dg.MetadataValue.int(artifact.rows)
    if artifact.fmt == FORMAT_PARQUET and artifact.schema is not None:
        columns = [dg.TableColumn(name=name, type=dtype) for name, dtype in artifact.schema]
        metadata[COLUMN_SCHEMA_KEY] = dg.MetadataValue.table_schema(dg.TableSchema(columns=columns))
    return metadata


class VersionedIOManager(dg.ConfigurableIOManager):
    """Stores asset outputs in the content-addressed artifact store of `home`: its `artifacts`
    directory, or the `[storage] artifacts` location of the home's settings (e.g. s3://...)."""

    home: str

    def _store(self) -> ArtifactStore:
        home = PlatformHome(Path(self.home))
        return ArtifactStore.from_settings(home, Settings.load(home.settings_file).storage)

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        versioned = _as_versioned(obj, context)
        asset = asset_path(_require_asset_key(context))
        partition = _output_partition(context)
        artifact = self._store().put(asset, partition, versioned.encoded, _lineage(context, versioned))
        context.add_output_metadata(artifact_metadata(artifact))

    def load_input(self, context: dg.InputContext) -> Any:
        store = self._store()
        asset = asset_path(_require_asset_key(context))
        if not context.has_asset_partitions:
            artifact = store.latest(asset)
            self._record_reads(context, [artifact])
            return store.load(artifact)
        partition_keys = list(context.asset_partition_keys)
        if len(partition_keys) == 1 and _consumer_is_partitioned(context):
            artifact = store.latest(asset, partition_keys[0])
            self._record_reads(context, [artifact])
            return store.load(artifact)
        found = _latest_of_partitions(store, asset, partition_keys)
        self._record_reads(context, list(found.values()))
        return {key: store.load(artifact) for key, artifact in found.items()}

    def _record_reads(self, context: dg.InputContext, artifacts: list[StoredArtifact]) -> None:
        """Governed access: every version a run reads is appended to the lake's audit ledger."""
        run_id = context.step_context.run_id
        reader = context.op_def.name
        lake = Lake(PlatformHome.at(Path(self.home)))
        for artifact in artifacts:
            lake.record_read(
                artifact.asset,
                artifact.version,
                consumer=f"{run_id}:{reader}",
                purpose=f"input of {reader}",
            )


def _as_versioned(obj: Any, context: dg.OutputContext) -> VersionedValue:
    if isinstance(obj, VersionedValue):
        return obj
    if isinstance(obj, EncodedValue):
        return VersionedValue(obj)
    raise TypeError(
        f"output {context.name!r} of {context.step_key} is a {type(obj).__name__}: "
        "versioned assets must `return versioned_output(value, metadata=...)` "
        "(mlplatform.defs.io_manager) so the data version is the content hash"
    )


def _require_asset_key(context: dg.InputContext | dg.OutputContext) -> dg.AssetKey:
    if not context.has_asset_key:
        raise TypeError("VersionedIOManager stores asset outputs only; this input/output is not an asset")
    return context.asset_key


def _output_partition(context: dg.OutputContext) -> str | None:
    if not context.has_asset_partitions:
        return None
    keys = list(context.asset_partition_keys)
    if len(keys) != 1:
        raise ValueError(
            f"{asset_path(context.asset_key)}: one output covers {len(keys)} partitions; the versioned "
            "IO manager stores one partition per output (launch backfills as one run per partition)"
        )
    return keys[0]


def _lineage(context: dg.OutputContext, versioned: VersionedValue) -> dict[str, Any]:
    """What the version record keeps about where the version came from."""
    lineage: dict[str, Any] = {"run_id": context.run_id}
    code_version = context.asset_spec.code_version
    if code_version is not None:
        lineage["code_version"] = code_version
    lineage.update(versioned.extra)
    return lineage


def _consumer_is_partitioned(context: dg.InputContext) -> bool:
    """Whether the asset reading this input is itself partitioned (then one key means one value)."""
    assets_def = context.step_context.assets_def
    return assets_def is not None and assets_def.partitions_def is not None


def _latest_of_partitions(
    store: ArtifactStore, asset: str, partition_keys: list[str]
) -> dict[str, StoredArtifact]:
    """The stored version of every partition the input spans; all of them must be stored."""
    if not partition_keys:
        raise ArtifactNotFound(f"input {asset!r} spans no partitions: there is nothing to load")
    found: dict[str, StoredArtifact] = {}
    missing: list[str] = []
    for key in partition_keys:
        try:
            found[key] = store.latest(asset, key)
        except ArtifactNotFound:
            missing.append(key)
    if missing:
        raise ArtifactNotFound(
            f"input {asset!r} has no stored version for {len(missing)} of {len(partition_keys)} "
            f"partition(s): {', '.join(missing)}"
        )
    return found
