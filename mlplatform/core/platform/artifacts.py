"""Content-addressed, immutable artifact store: every materialization of every asset, by version.

A value is encoded once into deterministic bytes (`encode`): the same value gives the same bytes, and
so the same sha256, in any process. The store keeps those bytes at

    <root>/<asset>/[<partition>/]<sha256>.<ext>                          the bytes, immutable
    <root>/<asset>/_versions/[<partition>/]<time>-<sha>-<rand>.json      one record per put

`<root>` is a storage location (mlplatform.core.platform.storage): a local directory by default, or object
storage. Both objects are written once and never changed; there is no append, lock or rename, so the
same format works on a local disk and on S3. The records of a partition, listed in name order, are its
history; the last one is the latest version. Every earlier version stays readable, and every read
verifies the hash.
"""

from __future__ import annotations

import io
import json
import math
import re
import tarfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.fsio import sha256_bytes, sha256_file, write_bytes_atomic
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import StorageRules
from mlplatform.core.platform.storage import (
    ImmutableConflict,
    LocalLocation,
    ObjectNotFound,
    StorageError,
    StorageLocation,
    location_from_settings,
    validate_key,
)

FORMAT_PARQUET = "parquet"
FORMAT_JSON = "json"
FORMAT_BINARY = "bin"
FORMAT_TAR = "tar"
FORMATS = (FORMAT_PARQUET, FORMAT_JSON, FORMAT_BINARY, FORMAT_TAR)

# Fixed so that the bytes, and therefore the version, depend on the data alone.
PARQUET_COMPRESSION = "zstd"
PARQUET_COMPRESSION_LEVEL = 3
TAR_MEMBER_MODE = 0o644

VERSIONS_DIR = "_versions"
RECORD_SUFFIX = ".json"
MIN_PREFIX_LENGTH = 8

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.=+-]{0,199}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_ARTIFACT_FILE = re.compile(r"^[0-9a-f]{64}\.[a-z]+$")
_RESERVED_NAMES = frozenset({VERSIONS_DIR})


class ArtifactError(UserError):
    """Base class of the artifact store's errors."""


class ArtifactNotFound(ArtifactError, LookupError):
    """No stored version matches the request."""


class AmbiguousVersion(ArtifactError, LookupError):
    """A version prefix matches more than one stored version."""


class IntegrityError(ArtifactError):
    """Stored bytes do not have the hash they are recorded under."""


class UnsafeName(ArtifactError, ValueError):
    """An asset key, partition key or bundle member name that could escape its directory."""


@dataclass(frozen=True)
class Bundle:
    """A multi-file artifact (e.g. candidate ONNX models with their metrics), stored as one tar."""

    files: Mapping[str, bytes]

    def __post_init__(self) -> None:
        for name, content in self.files.items():
            validate_member_name(name)
            if not isinstance(content, bytes):
                raise TypeError(f"bundle member {name!r} must be bytes, got {type(content).__name__}")
        object.__setattr__(self, "files", dict(sorted(self.files.items())))


@dataclass(frozen=True)
class EncodedValue:
    """A value encoded once: its bytes, format, content hash and (for tables) rows and schema."""

    payload: bytes = field(repr=False)
    fmt: str
    sha256: str
    rows: int | None = None
    schema: list[tuple[str, str]] | None = None

    @property
    def size(self) -> int:
        return len(self.payload)


@dataclass(frozen=True)
class StoredArtifact:
    """One stored version of an asset (or of one partition of it)."""

    asset: str
    partition: str | None
    version: str
    path: Path | str  # the local file, or the object's URL when the store is remote
    relative_path: str  # the key under the store's root
    size: int
    fmt: str
    rows: int | None
    schema: list[tuple[str, str]] | None
    created_at: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        """The JSON-serialisable version record (as written under `_versions/`)."""
        return {
            "asset": self.asset,
            "partition": self.partition,
            "version": self.version,
            "path": self.relative_path,
            "size": self.size,
            "format": self.fmt,
            "rows": self.rows,
            "schema": [list(column) for column in self.schema] if self.schema is not None else None,
            "created_at": self.created_at,
            "extra": dict(self.extra),
        }

    @property
    def file_name(self) -> str:
        """The stored object's own name: `<sha256>.<ext>`."""
        return self.relative_path.rsplit("/", 1)[-1]

    @classmethod
    def from_record(cls, record: Mapping[str, Any], path: Path | str) -> StoredArtifact:
        """A version record read back; `path` is where its bytes are (see ArtifactStore)."""
        schema = record.get("schema")
        return cls(
            asset=record["asset"],
            partition=record["partition"],
            version=record["version"],
            path=path,
            relative_path=record["path"],
            size=record["size"],
            fmt=record["format"],
            rows=record.get("rows"),
            schema=[(name, dtype) for name, dtype in schema] if schema is not None else None,
            created_at=record["created_at"],
            extra=record.get("extra") or {},
        )


# --- encoding ---------------------------------------------------------------------------------


def encode(value: Any) -> EncodedValue:
    """Encode a value into deterministic bytes: DataFrame -> Parquet, dict/list -> canonical JSON,
    bytes -> bin, Bundle -> tar. Raises TypeError for any other type."""
    if isinstance(value, pl.DataFrame):
        payload = _parquet_bytes(value)
        schema = [(name, str(dtype)) for name, dtype in value.schema.items()]
        return EncodedValue(payload, FORMAT_PARQUET, sha256_bytes(payload), value.height, schema)
    if isinstance(value, dict | list):
        payload = _canonical_json_bytes(value)
        rows = len(value) if isinstance(value, list) else None
        return EncodedValue(payload, FORMAT_JSON, sha256_bytes(payload), rows)
    if isinstance(value, bytes | bytearray | memoryview):
        payload = bytes(value)
        return EncodedValue(payload, FORMAT_BINARY, sha256_bytes(payload))
    if isinstance(value, Bundle):
        payload = _tar_bytes(value)
        return EncodedValue(payload, FORMAT_TAR, sha256_bytes(payload))
    raise TypeError(
        f"cannot store a value of type {type(value).__module__}.{type(value).__qualname__}: "
        "supported are polars.DataFrame, dict, list, bytes and artifacts.Bundle"
    )


def decode(payload_or_path: bytes | Path, fmt: str) -> Any:
    """The inverse of `encode`: bytes (or the file at a path) in format `fmt` back to a value."""
    payload = payload_or_path.read_bytes() if isinstance(payload_or_path, Path) else payload_or_path
    if fmt == FORMAT_PARQUET:
        return pl.read_parquet(io.BytesIO(payload))
    if fmt == FORMAT_JSON:
        return json.loads(payload.decode("utf-8"))
    if fmt == FORMAT_BINARY:
        return bytes(payload)
    if fmt == FORMAT_TAR:
        return _bundle_from_tar(payload)
    raise ValueError(f"unknown artifact format {fmt!r} (known: {', '.join(FORMATS)})")


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(
        buffer, compression=PARQUET_COMPRESSION, compression_level=PARQUET_COMPRESSION_LEVEL, statistics=True
    )
    return buffer.getvalue()


def _canonical_json_bytes(value: dict | list) -> bytes:
    _check_json_value(value, "$")
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8")


def _check_json_value(value: Any, where: str) -> None:
    """Refuse what JSON would change or lose: NaN/infinity, non-string keys, non-JSON types."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"JSON artifact key {key!r} at {where} is {type(key).__name__}, not str")
            _check_json_value(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_json_value(item, f"{where}[{index}]")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"JSON artifact holds a non-finite number ({value}) at {where}")
    elif value is not None and not isinstance(value, str | int | bool):
        raise TypeError(f"JSON artifact holds a {type(value).__name__} at {where}; use str, int, float, bool")


def _tar_bytes(bundle: Bundle) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name in sorted(bundle.files):
            content = bundle.files[name]
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = TAR_MEMBER_MODE
            info.type = tarfile.REGTYPE
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def _bundle_from_tar(payload: bytes) -> Bundle:
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:") as archive:
        for member in archive.getmembers():
            if not member.isreg():
                raise IntegrityError(f"bundle member {member.name!r} is not a regular file")
            extracted = archive.extractfile(member)
            if extracted is None:
                raise IntegrityError(f"bundle member {member.name!r} cannot be read")
            files[member.name] = extracted.read()
    return Bundle(files)


# --- names ------------------------------------------------------------------------------------


def validate_member_name(name: str) -> str:
    """A bundle member name: relative, '/'-separated, no '..', '.', or empty parts (a storage key)."""
    try:
        return validate_key(name)
    except StorageError as exc:
        raise UnsafeName(f"bundle member name: {exc}") from None


def _validate_segment(segment: str, what: str) -> str:
    if not isinstance(segment, str) or not _SAFE_NAME.match(segment) or segment in _RESERVED_NAMES:
        raise UnsafeName(
            f"{what} {segment!r} is not a safe file name "
            "(letters, digits, '_', '.', '=', '+', '-'; not starting with '.'; at most 200 characters)"
        )
    if _ARTIFACT_FILE.match(segment):
        raise UnsafeName(f"{what} {segment!r} looks like a stored artifact file name")
    return segment


def validate_asset_key(asset: str) -> str:
    """An asset key: one or more safe names joined by '/' (a multi-part key maps to nested dirs)."""
    if not isinstance(asset, str) or not asset:
        raise UnsafeName(f"asset key must be a non-empty string, got {asset!r}")
    for part in asset.split("/"):
        _validate_segment(part, f"asset key part of {asset!r}:")
    return asset


def validate_partition_key(partition: str) -> str:
    """A partition key: one safe file name (a 64-hex drop hash qualifies)."""
    return _validate_segment(partition, "partition key")


# --- the store --------------------------------------------------------------------------------


class ArtifactStore:
    """Immutable, content-addressed storage of asset versions at a storage location.

    `root` is a local directory (PlatformHome.artifacts) or any StorageLocation, e.g. one opened from
    an `s3://bucket/prefix` URL (`ArtifactStore.from_settings` reads `[storage] artifacts`).
    """

    def __init__(self, root: Path | StorageLocation) -> None:
        self.location = root if isinstance(root, StorageLocation) else LocalLocation(Path(root))
        # A Path for local stores (callers join it with relative paths), the URL otherwise.
        self.root: Path | str = (
            self.location.root if isinstance(self.location, LocalLocation) else self.location.url
        )

    @classmethod
    def from_settings(cls, home: PlatformHome, storage: StorageRules) -> ArtifactStore:
        """The deployment's store: `[storage] artifacts`, or `home.artifacts` when that is empty."""
        return cls(location_from_settings(home, storage, "artifacts"))

    # keys

    def _asset_prefix(self, asset: str) -> str:
        return validate_asset_key(asset)

    def _blob_key(self, asset: str, partition: str | None, encoded: EncodedValue) -> str:
        name = f"{encoded.sha256}.{encoded.fmt}"
        if partition is None:
            return f"{self._asset_prefix(asset)}/{name}"
        return f"{self._asset_prefix(asset)}/{validate_partition_key(partition)}/{name}"

    def _records_prefix(self, asset: str, partition: str | None) -> str:
        prefix = f"{self._asset_prefix(asset)}/{VERSIONS_DIR}"
        return prefix if partition is None else f"{prefix}/{validate_partition_key(partition)}"

    def _path_of(self, key: str) -> Path | str:
        if isinstance(self.location, LocalLocation):
            return self.location.path_of(key)
        return self.location.url_of(key)

    # writing

    def put(
        self,
        asset: str,
        partition: str | None,
        encoded: EncodedValue,
        extra: Mapping[str, Any] | None = None,
    ) -> StoredArtifact:
        """Store `encoded` as a version of `asset` (and `partition`) and make it the latest.

        Never overwrites: an existing object of the same name must already hold these bytes. Putting
        the version that is already the latest is a no-op that returns the stored record. No lock
        and no append: the bytes are one immutable object and the version record another.
        """
        if sha256_bytes(encoded.payload) != encoded.sha256:
            raise IntegrityError(
                f"encoded value for {asset!r} does not match its own sha256 {encoded.sha256}"
            )
        if encoded.fmt not in FORMATS:
            raise ValueError(f"unknown artifact format {encoded.fmt!r} (known: {', '.join(FORMATS)})")
        blob_key = self._blob_key(asset, partition, encoded)
        current = self._latest_or_none(asset, partition)
        if current is not None and current.version == encoded.sha256:
            return current
        try:
            self.location.put_bytes(blob_key, encoded.payload, immutable=True)
        except ImmutableConflict as exc:
            raise IntegrityError(str(exc)) from None
        created = _record_time(current)
        artifact = StoredArtifact(
            asset=asset,
            partition=partition,
            version=encoded.sha256,
            path=self._path_of(blob_key),
            relative_path=blob_key,
            size=encoded.size,
            fmt=encoded.fmt,
            rows=encoded.rows,
            schema=encoded.schema,
            created_at=created.isoformat(timespec="microseconds"),
            extra=dict(extra or {}),
        )
        record_key = f"{self._records_prefix(asset, partition)}/{_record_name(created, encoded.sha256)}"
        payload = json.dumps(artifact.to_record(), sort_keys=True, allow_nan=False).encode("utf-8")
        self.location.put_bytes(record_key, payload, immutable=True)
        return artifact

    # reading the records

    def _load_records(self, keys: list[str]) -> list[StoredArtifact]:
        payloads = self.location.get_many(keys)
        return [self._from_record(json.loads(payloads[key])) for key in keys]

    def _from_record(self, record: Mapping[str, Any]) -> StoredArtifact:
        return StoredArtifact.from_record(record, self._path_of(record["path"]))

    def _record_keys(self, asset: str, partition: str | None) -> list[str]:
        """Record keys of one partition (None: unpartitioned), oldest first (names sort by time)."""
        prefix = self._records_prefix(asset, partition)
        return [key for key in self.location.list(prefix, recursive=False) if key.endswith(RECORD_SUFFIX)]

    def _latest_or_none(self, asset: str, partition: str | None) -> StoredArtifact | None:
        keys = self._record_keys(asset, partition)
        return self._load_records(keys[-1:])[0] if keys else None

    def _records(self, asset: str) -> list[StoredArtifact]:
        """Every record of `asset`, all partitions, oldest first."""
        prefix = f"{self._asset_prefix(asset)}/{VERSIONS_DIR}"
        keys = [key for key in self.location.list(prefix) if key.endswith(RECORD_SUFFIX)]
        if not keys:
            raise ArtifactNotFound(f"asset {asset!r} has no stored versions under {self.location.url}")
        keys.sort(key=lambda key: key.rsplit("/", 1)[-1])
        return self._load_records(keys)

    def latest(self, asset: str, partition: str | None = None) -> StoredArtifact:
        """The latest stored version of `asset` (of `partition` if given)."""
        artifact = self._latest_or_none(asset, partition)
        if artifact is None:
            where = f"asset {asset!r}" + (f" partition {partition!r}" if partition is not None else "")
            raise ArtifactNotFound(f"{where} has no stored version under {self.location.url}")
        return artifact

    def versions(self, asset: str, partition: str | None = None) -> list[StoredArtifact]:
        """Every put of `asset`, oldest first: unpartitioned (None), one partition, or all ("*").

        A version put again after another one became the latest appears again (it became latest again).
        """
        if partition is not None and partition != "*":
            validate_partition_key(partition)
        records = self._records(asset)
        if partition == "*":
            return records
        return [record for record in records if record.partition == partition]

    def get(self, asset: str, version: str, partition: str | None = "*") -> StoredArtifact:
        """The stored version whose sha256 is `version` or starts with it (at least 8 hex characters).

        `partition` narrows the search: None = unpartitioned only, "*" (default) = any partition.
        """
        version = version.lower()
        if len(version) < MIN_PREFIX_LENGTH or not re.fullmatch(r"[0-9a-f]+", version):
            raise ValueError(f"version {version!r} must be at least {MIN_PREFIX_LENGTH} hex characters")
        matches = {r.version: r for r in self.versions(asset, partition) if r.version.startswith(version)}
        if not matches:
            raise ArtifactNotFound(f"asset {asset!r} has no stored version matching {version!r}")
        if len(matches) > 1:
            raise AmbiguousVersion(
                f"version {version!r} of asset {asset!r} is ambiguous: {', '.join(sorted(matches))}"
            )
        return next(iter(matches.values()))

    def assets(self) -> list[str]:
        """Every asset key with at least one stored version, sorted."""
        marker = f"/{VERSIONS_DIR}/"
        return sorted(
            {
                key.split(marker, 1)[0]
                for key in self.location.list()
                if marker in key and key.endswith(RECORD_SUFFIX)
            }
        )

    def partitions(self, asset: str) -> list[str]:
        """The partition keys of `asset` that have a stored version, sorted."""
        return sorted({r.partition for r in self._records(asset) if r.partition is not None})

    # reading the bytes

    def read_verified(self, artifact: StoredArtifact) -> bytes:
        """The artifact's bytes, after checking they still have its sha256."""
        try:
            payload = self.location.get_bytes(artifact.relative_path)
        except ObjectNotFound:
            raise ArtifactNotFound(f"stored file {artifact.path} of {artifact.asset!r} is missing") from None
        found = sha256_bytes(payload)
        if found != artifact.version:
            raise IntegrityError(
                f"{artifact.path} of {artifact.asset!r} is corrupt: sha256 {found}, expected {artifact.version}"
            )
        return payload

    def load(self, artifact: StoredArtifact) -> Any:
        """The decoded value of a stored version (hash verified first)."""
        return decode(self.read_verified(artifact), artifact.fmt)

    def restore(self, asset: str, version: str, dest: Path) -> Path:
        """Copy a stored version (full hash or unique prefix, any partition) to `dest`, byte for byte.

        `dest` is an existing directory (the file keeps its stored name) or a file path. An existing
        file at the destination is left alone when identical and refused otherwise.
        """
        artifact = self.get(asset, version)
        payload = self.read_verified(artifact)
        dest = Path(dest)
        target = dest / artifact.file_name if dest.is_dir() else dest
        if target.exists():
            if sha256_file(target) == artifact.version:
                return target
            raise FileExistsError(f"{target} exists with different content; restore will not overwrite it")
        write_bytes_atomic(target, payload)
        if sha256_file(target) != artifact.version:
            raise IntegrityError(f"restored copy {target} does not have sha256 {artifact.version}")
        return target


def _record_time(previous: StoredArtifact | None) -> datetime:
    """Now, but always after the previous record of the same partition, so that record names sort in
    put order even when clocks of different machines disagree."""
    now = datetime.now(UTC)
    if previous is None:
        return now
    return max(now, datetime.fromisoformat(previous.created_at) + timedelta(microseconds=1))


def _record_name(created: datetime, sha256: str) -> str:
    """`<UTC time>-<sha prefix>-<random>.json`: sorts by time; unique even for simultaneous puts."""
    return f"{created.strftime('%Y%m%dT%H%M%S.%fZ')}-{sha256[:16]}-{uuid.uuid4().hex[:8]}{RECORD_SUFFIX}"


__all__ = [
    "AmbiguousVersion",
    "ArtifactError",
    "ArtifactNotFound",
    "ArtifactStore",
    "Bundle",
    "EncodedValue",
    "IntegrityError",
    "StoredArtifact",
    "UnsafeName",
    "decode",
    "encode",
    "sha256_bytes",
]
