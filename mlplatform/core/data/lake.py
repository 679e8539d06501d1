"""The data lake: landing, content hashing, accept/quarantine, governed checkout and the audit ledger.

Layout (all under `PlatformHome.lake`):

    landing/reviews/            drops arrive here (CSV, TSV or text in the contract's layout, or Parquet)
    landing/.manifest/<h>.json  one record per drop: every name it landed under, landing time, its file
    landing/.duplicates/<h>/    files found in landing whose bytes were already a drop (kept, not deleted)
    raw/<h>.<ext> + <h>.json    accepted drops, read-only, with a sidecar (names, times, and the
                                fingerprint of the dataset contract the drop was accepted under)
    quarantine/<h>.<ext>        rejected drops, original bytes, + <h>.reason.json
    quarantine/unsafe/          landing entries refused as unsafe (symlinks, directories) + reason file
    audit/ledger.jsonl          every read of a dataset version, allowed or denied (in PostgreSQL instead
                                when the home has a pg_url: mlplatform/core/platform/records.py)
    access_policy.toml          who may read which dataset

A drop's identity is the sha256 hex of its bytes: the same bytes landed twice, under any name, are one
drop. Nothing is ever deleted: bytes only move (atomic rename) between landing, raw and quarantine.
The lake's bytes are its own: a landing file whose inode it would share (a hard link to a file outside
the lake) or that another user owns is copied (hashed as copied), never moved in, so nothing outside
the lake can change a drop or its mode.
Mutations take one exclusive lock (`lake/.lock`) so the CLI, the sensor and runs can work side by side.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import stat
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.fsio import (
    copy_hashing,
    file_lock,
    fsync_directory,
    sha256_file,
    temp_path_for,
    write_json_atomic,
)
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import FileRecords, open_records
from mlplatform.core.platform.settings import Settings
from mlplatform.core.platform.storage import (
    StorageError,
    StorageLocation,
    is_home_directory,
    location_from_settings,
)

DEFAULT_SETTLE_SECONDS = 2.0
PIPELINE_READER = "pipeline"
LEDGER_RECORDS = "lake_ledger"  # the ledger's journal name in PostgreSQL
# Datasets the lake serves itself, with the drop state each one exposes.
LAKE_DATASETS = {"raw_reviews": "accepted", "quarantined_reviews": "quarantined"}
# A drop's format is what its name announces; "txt" is delimited text in the contract's format.
FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".txt": "txt",
    ".parquet": "parquet",
    ".pq": "parquet",
}
EXTENSION_BY_FORMAT = {
    "csv": ".csv",
    "tsv": ".tsv",
    "txt": ".txt",
    "parquet": ".parquet",
    "unknown": ".bin",
}
IN_PROGRESS_SUFFIXES = (".part", ".tmp")
_HASH_PATTERN = re.compile(r"^[0-9a-f]{64}$")
# Asset datasets may have several key parts ("candidate_models/logreg_c1").
_DATASET_PATTERN = re.compile(r"^(?=.{1,200}$)[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9][A-Za-z0-9_.\-]*)*$")

DEFAULT_ACCESS_POLICY = """\
# Access policy of the mlplatform data lake (written with permissive defaults on first use).
#
# Every read of a dataset version is checked against these rules and recorded in audit/ledger.jsonl,
# allowed or not. Rules are checked in order; the first rule whose `readers` and `datasets` both match
# decides. When no rule matches, the read is denied.
#   readers:  glob patterns of reader names: a person (`mlplatform lake checkout --as NAME`),
#             or "pipeline" for reads by pipeline runs
#   datasets: glob patterns of dataset names: raw_reviews, quarantined_reviews, reviews, review_splits, ...
#   allow:    true or false
#
# Example: only the pipeline and the data team may read quarantined bytes (rules above the catch-all).
#   [[rules]]
#   readers = ["pipeline", "data-*"]
#   datasets = ["quarantined_reviews"]
#   allow = true
#
#   [[rules]]
#   readers = ["*"]
#   datasets = ["quarantined_reviews"]
#   allow = false

[[rules]]
readers = ["*"]
datasets = ["*"]
allow = true
"""


class LakeError(UserError):
    """Something in the lake cannot be done; the message says what and where."""


class UnsafePathError(LakeError):
    """A name from outside would resolve to a path outside the lake."""


class AccessDenied(LakeError):
    """The access policy does not allow this reader to read this dataset."""


class UnknownDrop(LakeError):
    """No drop with this hash (or no drop at all) is in the lake."""


class UnknownDataset(LakeError):
    """The dataset is not served by the lake and no resolver was given for it."""


# ---------------------------------------------------------------------------------------------- hashing


def is_drop_hash(value: str) -> bool:
    """True when `value` has the shape of a drop identity (64 lowercase hex characters)."""
    return bool(_HASH_PATTERN.match(value))


def drop_format(name: str) -> str:
    """The format a drop's file name announces: "csv", "tsv", "txt", "parquet", or "unknown"."""
    return FORMATS_BY_SUFFIX.get(Path(name).suffix.lower(), "unknown")


# -------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Drop:
    """One drop: distinct bytes that arrived in landing, wherever they are now."""

    hash: str
    names: tuple[str, ...]
    state: str  # "landed" | "accepted" | "quarantined"
    path: Path
    size: int
    format: str  # "csv" | "tsv" | "txt" | "parquet" | "unknown"
    landed_at: str
    reason: str | None = None
    check: str | None = None
    decided_at: str | None = None
    contract: str | None = None  # accepted drops: the fingerprint of the contract they were read under

    @property
    def name(self) -> str:
        """The first name the drop landed under."""
        return self.names[0]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "names": list(self.names), "path": str(self.path), "name": self.name}


@dataclass(frozen=True)
class LandResult:
    """What `Lake.land` did with one source file."""

    name: str
    hash: str
    status: str  # "landed" | "duplicate"
    path: Path  # where the drop's bytes are now
    existing_state: str | None = None  # state of the known drop, for duplicates

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class RefusedEntry:
    """A landing entry that is not a drop (a symlink or directory), moved aside with its reason."""

    name: str
    reason: str
    moved_to: Path

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "moved_to": str(self.moved_to)}


@dataclass(frozen=True)
class LandingScan:
    """One look at landing: drops waiting, files absorbed as duplicates, entries refused."""

    pending: tuple[Drop, ...]
    absorbed: tuple[LandResult, ...]
    refused: tuple[RefusedEntry, ...]


@dataclass(frozen=True)
class AuditEntry:
    """One line of the ledger: a read of a dataset version, allowed or denied."""

    time: str
    consumer: str
    kind: str  # "person" | "pipeline"
    dataset: str
    version: str | None
    purpose: str
    allowed: bool
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuditLog:
    """The whole ledger; `skipped_lines` counts lines that could not be read (a torn write)."""

    entries: tuple[AuditEntry, ...]
    skipped_lines: int


@dataclass(frozen=True)
class Checkout:
    """A person's read: which version was served from where, and where it was copied (if asked)."""

    dataset: str
    version: str
    source_path: Path
    copied_to: Path | None
    entry: AuditEntry

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "version": self.version,
            "source_path": str(self.source_path),
            "copied_to": None if self.copied_to is None else str(self.copied_to),
            "entry": self.entry.to_dict(),
        }


Resolver = Callable[[str, str | None], tuple[str, Path]]


# --------------------------------------------------------------------------------------- access policy


@dataclass(frozen=True)
class AccessRule:
    readers: tuple[str, ...]
    datasets: tuple[str, ...]
    allow: bool

    def matches(self, reader: str, dataset: str) -> bool:
        return any(fnmatch.fnmatchcase(reader, p) for p in self.readers) and any(
            fnmatch.fnmatchcase(dataset, p) for p in self.datasets
        )


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    reason: str


@dataclass(frozen=True)
class AccessPolicy:
    """Ordered rules; the first rule matching reader and dataset decides; no match denies."""

    path: Path
    rules: tuple[AccessRule, ...]

    @classmethod
    def load(cls, path: Path) -> AccessPolicy:
        """Parse the policy file; any problem raises LakeError naming the file."""
        try:
            document = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise LakeError(f"cannot read access policy {path}: {exc}") from exc
        unknown = set(document) - {"rules"}
        if unknown:
            raise LakeError(f"access policy {path}: unknown key(s) {sorted(unknown)} (expected [[rules]])")
        raw_rules = document.get("rules", [])
        if not isinstance(raw_rules, list):
            raise LakeError(f"access policy {path}: 'rules' must be an array of tables ([[rules]])")
        return cls(path, tuple(_parse_rule(path, number, raw) for number, raw in enumerate(raw_rules, 1)))

    def decide(self, reader: str, dataset: str) -> AccessDecision:
        for number, rule in enumerate(self.rules, 1):
            if rule.matches(reader, dataset):
                verdict = "allows" if rule.allow else "denies"
                return AccessDecision(rule.allow, f"rule {number} of {self.path} {verdict} it")
        return AccessDecision(False, f"no rule in {self.path} allows it")


def _parse_rule(path: Path, number: int, raw: Any) -> AccessRule:
    where = f"access policy {path}, rule {number}"
    if not isinstance(raw, dict):
        raise LakeError(f"{where}: must be a table with readers, datasets and allow")
    unknown = set(raw) - {"readers", "datasets", "allow"}
    if unknown:
        raise LakeError(f"{where}: unknown key(s) {sorted(unknown)}")
    for key in ("readers", "datasets"):
        value = raw.get(key)
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise LakeError(f"{where}: '{key}' must be a non-empty list of glob patterns")
    if not isinstance(raw.get("allow"), bool):
        raise LakeError(f"{where}: 'allow' must be true or false")
    return AccessRule(tuple(raw["readers"]), tuple(raw["datasets"]), raw["allow"])


# ----------------------------------------------------------------------------------- file primitives


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _utc_from_timestamp(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds")


def _temp_name(directory: Path, final_name: str) -> Path:
    return temp_path_for(directory / final_name)


def _copy_to_temp(source: Path, directory: Path, final_name: str) -> tuple[Path, str, int]:
    """Copy `source` to a temp file in `directory`, fsynced; return (temp path, sha256, size)."""
    temp = _temp_name(directory, final_name)
    try:
        with open(source, "rb") as reader, open(temp, "xb") as writer:
            digest, size = copy_hashing(reader, writer)
            writer.flush()
            os.fsync(writer.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp, digest, size


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LakeError(f"cannot read lake record {path}: {exc}") from exc


def _unused_name(directory: Path, name: str, tag: str) -> str:
    """`name` if free in `directory`, else `<stem>-<tag>[-n]<suffix>`."""
    candidate, counter = name, 1
    stem, suffix = Path(name).stem, Path(name).suffix
    while (directory / candidate).exists() or (directory / candidate).is_symlink():
        candidate = f"{stem}-{tag}{suffix}" if counter == 1 else f"{stem}-{tag}-{counter}{suffix}"
        counter += 1
    return candidate


def _not_the_lakes_own(info: os.stat_result) -> bool:
    """Whether a landing file's inode is shared or foreign, so adopting it would let others change the lake.

    A hard link (link count above one) shares the inode with a name outside the lake: writing there
    would rewrite the drop, and making the drop read-only would change that file's mode. A file owned
    by another user can be made writable again by its owner. Such files are copied, never moved in.
    """
    return info.st_nlink > 1 or info.st_uid != os.geteuid()


def _make_read_only(path: Path) -> None:
    os.chmod(path, stat.S_IMODE(path.stat().st_mode) & ~0o222)


def _merge_names(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(name for group in groups for name in group))


# --------------------------------------------------------------------------------------------- the lake


class Lake:
    """The versioned data lake of one platform home."""

    def __init__(
        self,
        home: PlatformHome,
        *,
        settle_seconds: float = DEFAULT_SETTLE_SECONDS,
        location: StorageLocation | None = None,
    ) -> None:
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be >= 0, got {settle_seconds}")
        self.home = home
        self.settle_seconds = settle_seconds
        # `[storage] lake` when it is elsewhere (object storage): decided drops are published there.
        self.publish_to = None if location is None or is_home_directory(location, home.lake) else location
        self._ledger = open_records(
            FileRecords(self.ledger_file, home.audit / ".lock"), LEDGER_RECORDS, home.pg_url
        )

    @classmethod
    def from_settings(cls, home: PlatformHome, settings: Settings) -> Lake:
        """The lake with the deployment's `[lake]` settings and `[storage] lake` location."""
        return cls(
            home.ensure(),
            settle_seconds=settings.lake.settle_seconds,
            location=location_from_settings(home, settings.storage, "lake"),
        )

    # ------------------------------------------------------------------------------------- layout

    @property
    def root(self) -> Path:
        return self.home.lake

    @property
    def landing(self) -> Path:
        return self.home.landing

    @property
    def manifest_dir(self) -> Path:
        return self.home.landing.parent / ".manifest"

    @property
    def duplicates_dir(self) -> Path:
        return self.home.landing.parent / ".duplicates"

    @property
    def unsafe_dir(self) -> Path:
        return self.home.quarantine / "unsafe"

    @property
    def policy_file(self) -> Path:
        return self.root / "access_policy.toml"

    @property
    def ledger_file(self) -> Path:
        return self.home.audit / "ledger.jsonl"

    def _ensure_layout(self) -> None:
        for directory in (
            self.landing,
            self.manifest_dir,
            self.home.raw,
            self.home.quarantine,
            self.home.audit,
        ):
            directory.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialise lake mutations across processes (not re-entrant: public methods only)."""
        self._ensure_layout()
        with file_lock(self.root / ".lock"):
            yield

    def resolve(self, relative: str | Path, under: Path | None = None) -> Path:
        """Resolve a name from outside against `under` (default: the lake root); refuse escapes.

        Absolute names and `..` components are refused outright; the resolved path (symlinks
        followed) must stay under `under`, which itself must be inside the lake.
        """
        lake_root = self.root.resolve()
        base = (under if under is not None else self.root).resolve()
        if not base.is_relative_to(lake_root):
            raise UnsafePathError(f"{base} is not inside the lake {lake_root}")
        text = str(relative)
        if not text or "\x00" in text:
            raise UnsafePathError(f"refused path {text!r}: empty or contains a NUL byte")
        candidate = Path(text)
        if candidate.is_absolute():
            raise UnsafePathError(f"refused absolute path {text!r}: lake paths are relative to {base}")
        if ".." in candidate.parts:
            raise UnsafePathError(f"refused path {text!r}: '..' may not appear in lake paths")
        resolved = (base / candidate).resolve()
        if not resolved.is_relative_to(base):
            raise UnsafePathError(f"refused path {text!r}: it resolves to {resolved}, outside {base}")
        return resolved

    # -------------------------------------------------------------------------------------- landing

    def land(self, sources: Iterable[Path | str]) -> list[LandResult]:
        """Copy each source file into landing atomically (temp file, fsync, rename), hashing it.

        Bytes already known to the lake (landed, accepted or quarantined) are not copied again: the
        result says "duplicate" and the extra name is recorded on the existing drop. A different file
        whose name is taken in landing lands under `<stem>-<short hash><suffix>`.
        """
        paths = [Path(source) for source in sources]
        for path in paths:
            if not path.is_file():
                raise LakeError(f"cannot land {path}: not a readable file")
        self._ensure_layout()
        return [self._land_one(path) for path in paths]

    def _land_one(self, source: Path) -> LandResult:
        name = source.name.lstrip(".") or "drop"  # a dot-prefixed name would hide the drop in landing
        # Copy outside the lock (big files), decide and rename under it.
        temp, digest, size = _copy_to_temp(source, self.landing, name)
        try:
            with self._exclusive():
                known = self._known_drop(digest)
                if known is not None:
                    self._record_names(known, [source.name])
                    return LandResult(source.name, digest, "duplicate", known.path, known.state)
                final_name = _unused_name(self.landing, name, digest[:12])
                final = self.resolve(final_name, under=self.landing)
                # Bytes first: after a crash here the file is simply found by the next scan.
                os.replace(temp, final)
                fsync_directory(self.landing)
                self._write_manifest(
                    digest,
                    names=[source.name],
                    landed_at=_utc_now(),
                    landing_file=final_name,
                    size=size,
                    format=drop_format(name),
                )
                return LandResult(source.name, digest, "landed", final)
        finally:
            temp.unlink(missing_ok=True)  # our own temp copy; gone already when renamed into place

    def scan_landing(self) -> LandingScan:
        """Look at landing once: record new files, absorb duplicates, move unsafe entries aside.

        Ignored (left alone): dotfiles, `*.part`/`*.tmp`, and files modified less than
        `settle_seconds` ago unless `land()` put them there (its manifest says they are complete).
        A file whose bytes are already a drop is moved to `landing/.duplicates/<hash>/` (kept, never
        deleted) and its name recorded on the drop. Symlinks and directories are not drops: they move
        to `quarantine/unsafe/` with a reason file.
        """
        if not self.landing.is_dir():
            return LandingScan((), (), ())
        absorbed: list[LandResult] = []
        refused: list[RefusedEntry] = []
        with self._exclusive():
            recorded = {m["landing_file"] for m in self._waiting_manifests()}
            for entry in sorted(self.landing.iterdir(), key=lambda p: p.name):
                if self._ignored(entry.name):
                    continue
                problem = self._unsafe_entry_problem(entry)
                if problem is not None:
                    refused.append(self._move_unsafe(entry, problem))
                elif entry.name not in recorded:  # not landed through land() nor seen by an earlier scan
                    result = self._register_external(entry)
                    if result is not None and result.status == "duplicate":
                        absorbed.append(result)
            pending = [
                self._load_drop(m["hash"])
                for m in self._waiting_manifests()
                if (self.landing / m["landing_file"]).is_file()
            ]
        pending.sort(key=lambda drop: (drop.landed_at, drop.hash))
        return LandingScan(tuple(pending), tuple(absorbed), tuple(refused))

    def pending(self) -> list[Drop]:
        """Drops waiting in landing, one per distinct hash, oldest landing first (see scan_landing)."""
        return list(self.scan_landing().pending)

    @staticmethod
    def _ignored(name: str) -> bool:
        return name.startswith(".") or name.lower().endswith(IN_PROGRESS_SUFFIXES)

    def _unsafe_entry_problem(self, entry: Path) -> str | None:
        if entry.is_symlink():
            try:
                self.resolve(entry.name, under=self.landing)
            except UnsafePathError:
                return f"symlink pointing outside the lake ({os.readlink(entry)}); drops must be files"
            return f"symlink ({os.readlink(entry)}); drops must be regular files, land them with `lake land`"
        if not entry.is_file():
            return "not a regular file (a directory or device); drops must be single files"
        return None

    def _move_unsafe(self, entry: Path, reason: str) -> RefusedEntry:
        self.unsafe_dir.mkdir(parents=True, exist_ok=True)
        target_name = _unused_name(self.unsafe_dir, entry.name, uuid.uuid4().hex[:8])
        target = self.unsafe_dir / target_name
        os.replace(entry, target)  # moves the link or directory itself, never what it points to
        record = {"name": entry.name, "reason": reason, "check": "path_safety", "refused_at": _utc_now()}
        write_json_atomic(self.unsafe_dir / f"{target_name}.reason.json", record)
        return RefusedEntry(entry.name, reason, target)

    def _register_external(self, entry: Path) -> LandResult | None:
        """Hash a settled file copied into landing by other means; record it or absorb it.

        A file whose inode is not the lake's alone (`_not_the_lakes_own`) is never adopted: the lake
        copies it, hashing the bytes it copies, and puts its copy in place of the landing name.
        """
        before = entry.stat()
        if time.time() - before.st_mtime < self.settle_seconds:
            return None  # possibly still being written
        own_copy = None
        if _not_the_lakes_own(before):
            own_copy, digest, _ = _copy_to_temp(entry, self.landing, entry.name)
            os.utime(own_copy, ns=(before.st_atime_ns, before.st_mtime_ns))
        else:
            digest = sha256_file(entry)
        after = entry.stat()
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            if own_copy is not None:
                own_copy.unlink()
            return None  # changed while hashing: still being written
        if own_copy is not None:
            # The landing name now holds the lake's copy; the file outside keeps its inode, untouched.
            os.replace(own_copy, entry)
            fsync_directory(self.landing)
        known = self._known_drop(digest)
        if known is None:
            self._write_manifest(
                digest,
                names=[entry.name],
                landed_at=_utc_from_timestamp(before.st_mtime),
                landing_file=entry.name,
                size=before.st_size,
                format=drop_format(entry.name),
            )
            return LandResult(entry.name, digest, "landed", entry)
        kept_dir = self.duplicates_dir / digest
        kept_dir.mkdir(parents=True, exist_ok=True)
        os.replace(entry, kept_dir / _unused_name(kept_dir, entry.name, uuid.uuid4().hex[:8]))
        self._record_names(known, [entry.name])
        return LandResult(entry.name, digest, "duplicate", known.path, known.state)

    # ------------------------------------------------------------------------------------ manifests

    def _manifest_path(self, digest: str) -> Path:
        return self.manifest_dir / f"{digest}.json"

    def _manifests(self) -> list[dict[str, Any]]:
        if not self.manifest_dir.is_dir():
            return []
        return [_read_json(path) for path in sorted(self.manifest_dir.glob("*.json"))]

    def _waiting_manifests(self) -> list[dict[str, Any]]:
        """Manifests of drops whose bytes sit in landing, undecided."""
        return [m for m in self._manifests() if m.get("landing_file") and self._drop_state(m["hash"]) is None]

    def _write_manifest(self, digest: str, **fields: Any) -> None:
        write_json_atomic(self._manifest_path(digest), {"hash": digest, **fields})

    def _update_manifest(self, drop: Drop, **changes: Any) -> None:
        """Change fields of a drop's manifest (rebuilt from the drop if an outsider removed it)."""
        path = self._manifest_path(drop.hash)
        if path.is_file():
            manifest = _read_json(path)
        else:
            manifest = {"names": list(drop.names), "landed_at": drop.landed_at, "size": drop.size}
            manifest |= {"format": drop.format, "landing_file": None}
        if any(manifest.get(key) != value for key, value in changes.items()):
            self._write_manifest(drop.hash, **{**manifest, **changes})

    def _record_names(self, drop: Drop, names: list[str]) -> None:
        self._update_manifest(drop, names=list(_merge_names(drop.names, names)))

    # ---------------------------------------------------------------------------------------- drops

    def _raw_sidecar(self, digest: str) -> Path:
        return self.home.raw / f"{digest}.json"

    def _reason_file(self, digest: str) -> Path:
        return self.home.quarantine / f"{digest}.reason.json"

    def _drop_state(self, digest: str) -> str | None:
        """ "quarantined" / "accepted" when decided, else None (landed or unknown)."""
        if self._reason_file(digest).is_file():
            return "quarantined"
        if self._raw_sidecar(digest).is_file():
            return "accepted"
        return None

    def _known_drop(self, digest: str) -> Drop | None:
        if not self._manifest_path(digest).is_file() and self._drop_state(digest) is None:
            return None
        return self._load_drop(digest)

    def _bytes_location(self, manifest: dict[str, Any], state: str | None) -> Path:
        digest, extension = manifest["hash"], EXTENSION_BY_FORMAT[manifest["format"]]
        decided = {"accepted": self.home.raw, "quarantined": self.home.quarantine}
        candidates = [decided[state] / f"{digest}{extension}"] if state else []
        if manifest.get("landing_file"):
            candidates.append(self.landing / manifest["landing_file"])
        # A crash between moving the bytes and writing the decision leaves them here:
        candidates += [self.home.raw / f"{digest}{extension}", self.home.quarantine / f"{digest}{extension}"]
        for candidate in candidates:
            if candidate.is_file() and not candidate.is_symlink():
                return candidate
        raise LakeError(
            f"drop {digest}: its bytes are missing from landing, raw and quarantine "
            f"(the lake was changed outside mlplatform)"
        )

    def _load_drop(self, digest: str) -> Drop:
        state = self._drop_state(digest)
        decision = {}
        if state == "accepted":
            decision = _read_json(self._raw_sidecar(digest))
        elif state == "quarantined":
            decision = _read_json(self._reason_file(digest))
        manifest_path = self._manifest_path(digest)
        manifest = _read_json(manifest_path) if manifest_path.is_file() else {**decision, "hash": digest}
        if not manifest.get("names"):
            raise UnknownDrop(f"no drop {digest} in the lake {self.root}")
        return Drop(
            hash=digest,
            names=_merge_names(manifest["names"], decision.get("names", [])),
            state=state or "landed",
            path=self._bytes_location(manifest, state),
            size=manifest["size"],
            format=manifest["format"],
            landed_at=manifest["landed_at"],
            reason=decision.get("reason"),
            check=decision.get("check"),
            decided_at=decision.get("accepted_at") or decision.get("quarantined_at"),
            contract=decision.get("contract"),
        )

    def _checked_hash(self, digest: str) -> str:
        if not is_drop_hash(digest):
            raise UnknownDrop(f"{digest!r} is not a drop hash (64 lowercase hex characters)")
        return digest

    def drop(self, digest: str) -> Drop:
        """The drop with this hash, in whatever state; raises UnknownDrop."""
        known = self._known_drop(self._checked_hash(digest))
        if known is None:
            raise UnknownDrop(f"no drop {digest} in the lake {self.root}")
        return known

    def drops(self) -> list[Drop]:
        """Every drop the lake knows (landed, accepted, quarantined), oldest landing first."""
        hashes: set[str] = set()
        for directory, pattern in (
            (self.manifest_dir, "*.json"),
            (self.home.raw, "*.json"),
            (self.home.quarantine, "*.reason.json"),
        ):
            if directory.is_dir():
                hashes.update(path.name.split(".")[0] for path in directory.glob(pattern))
        found = [self._load_drop(digest) for digest in sorted(hashes) if is_drop_hash(digest)]
        return sorted(found, key=lambda drop: (drop.landed_at, drop.hash))

    def open_drop(self, digest: str) -> Path:
        """Path of the drop's bytes wherever they are now; raises UnknownDrop."""
        return self.drop(digest).path

    # ------------------------------------------------------------------------------------ decisions

    def accept(self, digest: str, contract: str | None = None) -> Drop:
        """Move the drop's bytes to `raw/<hash>.<ext>` (read-only) with a sidecar. Idempotent.

        `contract` is the fingerprint of the dataset contract the drop was validated under; the sidecar
        keeps it for good (an accepted drop stays what it was when the contract changes).
        The bytes are hashed before the move: bytes changed since landing are refused (LakeError).
        A quarantined drop cannot be accepted.
        """
        with self._exclusive():
            drop = self.drop(digest)
            if drop.state == "accepted":
                return drop
            if drop.state == "quarantined":
                raise LakeError(
                    f"drop {digest} is quarantined ({drop.check}: {drop.reason}); it cannot be accepted"
                )
            actual = sha256_file(drop.path)
            if actual != digest:
                raise LakeError(f"drop {digest}: bytes at {drop.path} changed since landing (now {actual})")
            decision = {"accepted_at": _utc_now()} | ({"contract": contract} if contract else {})
            record = self._decision_record(drop, **decision)
            self._publish(drop, self.home.raw, self._raw_sidecar(digest), record)
            self._move_bytes(drop, self.home.raw)
            write_json_atomic(self._raw_sidecar(digest), record, read_only=True)
            self._update_manifest(drop, landing_file=None)
            return self._load_drop(digest)

    def quarantine(self, digest: str, check: str, reason: str) -> Drop:
        """Move the drop's original bytes to `quarantine/<hash>.<ext>` with a reason file. Idempotent.

        Quarantining an already quarantined drop returns it unchanged (the first reason stands).
        An accepted drop cannot be quarantined: raw is immutable.
        """
        if not check or not reason:
            raise LakeError("quarantine needs the failed check's name and a reason")
        with self._exclusive():
            drop = self.drop(digest)
            if drop.state == "quarantined":
                return drop
            if drop.state == "accepted":
                raise LakeError(f"drop {digest} is already accepted into raw; raw drops are immutable")
            record = self._decision_record(drop, check=check, reason=reason, quarantined_at=_utc_now())
            self._publish(drop, self.home.quarantine, self._reason_file(digest), record)
            self._move_bytes(drop, self.home.quarantine)
            write_json_atomic(self._reason_file(digest), record)
            self._update_manifest(drop, landing_file=None)
            return self._load_drop(digest)

    def _move_bytes(self, drop: Drop, directory: Path) -> Path:
        """Move the drop's bytes to `directory`; an inode that is not the lake's alone is copied instead."""
        target = directory / f"{drop.hash}{EXTENSION_BY_FORMAT[drop.format]}"
        if drop.path != target:
            if _not_the_lakes_own(drop.path.stat()):
                # Linked from outside (or given away) since landing: keep a verified copy, never the inode.
                copy, digest, _ = _copy_to_temp(drop.path, directory, target.name)
                if digest != drop.hash:
                    copy.unlink()
                    raise LakeError(
                        f"drop {drop.hash}: bytes at {drop.path} changed since landing (now {digest})"
                    )
                os.replace(copy, target)
                drop.path.unlink()  # the landing name only: its inode lives on under its other name
            else:
                os.replace(drop.path, target)
            fsync_directory(directory)
            fsync_directory(drop.path.parent)
        _make_read_only(target)
        return target

    def _publish(self, drop: Drop, directory: Path, record_file: Path, record: dict[str, Any]) -> None:
        """Copy a decided drop's bytes (verified by hash) and its decision record to the lake location.

        Runs before the local move: if the object store fails, the drop is still waiting in landing
        and the next run decides it again (publishing the same bytes twice is harmless).
        """
        if self.publish_to is None:
            return
        folder = directory.relative_to(self.root).as_posix()
        bytes_key = f"{folder}/{drop.hash}{EXTENSION_BY_FORMAT[drop.format]}"
        try:
            if self.publish_to.put_file(bytes_key, drop.path, immutable=True) != drop.hash:
                raise LakeError(f"drop {drop.hash}: bytes at {drop.path} changed since landing")
            payload = json.dumps(record, indent=2, sort_keys=True).encode("utf-8")
            self.publish_to.put_bytes(f"{folder}/{record_file.name}", payload)
        except (StorageError, OSError) as exc:
            raise LakeError(f"drop {drop.hash}: cannot publish to {self.publish_to.url}: {exc}") from exc

    @staticmethod
    def _decision_record(drop: Drop, **decision: str) -> dict[str, Any]:
        return {
            "hash": drop.hash,
            "names": list(drop.names),
            "landed_at": drop.landed_at,
            "size": drop.size,
            "format": drop.format,
            **decision,
        }

    # ------------------------------------------------------------------------------ governed access

    def access_policy(self) -> AccessPolicy:
        """The access policy, written with permissive defaults on first use."""
        if not self.policy_file.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            temp = _temp_name(self.root, self.policy_file.name)
            temp.write_text(DEFAULT_ACCESS_POLICY, encoding="utf-8")
            try:
                os.link(temp, self.policy_file)  # never overwrites a policy written meanwhile
            except FileExistsError:
                pass
            finally:
                temp.unlink()
        return AccessPolicy.load(self.policy_file)

    def checkout(
        self,
        dataset: str,
        *,
        reader: str,
        purpose: str,
        version: str | None = None,
        dest: Path | str | None = None,
        resolver: Resolver | None = None,
    ) -> Checkout:
        """A person's read of a dataset version, checked against the policy and recorded either way.

        The lake serves "raw_reviews" (accepted drops) and "quarantined_reviews" (quarantined drops)
        itself; version is a drop hash and defaults to the most recently decided drop of that kind.
        Other datasets are resolved by `resolver(dataset, version) -> (version, path)`. With `dest`
        (a directory, anywhere) the bytes are copied there atomically and verified by hash.
        """
        _require_text(reader, "reader")
        if reader == PIPELINE_READER:
            raise LakeError(f"reader name '{PIPELINE_READER}' is reserved for pipeline runs")
        self._authorize(dataset, version, reader, "person", purpose)
        resolved_version, source, expected_hash = self._resolve_dataset(dataset, version, resolver)
        entry = self._append(reader, "person", dataset, resolved_version, purpose, AccessDecision(True, ""))
        copied_to = None
        if dest is not None:
            copied_to = copy_verified(source, Path(dest), expected_hash)
        return Checkout(dataset, resolved_version, source, copied_to, entry)

    def record_read(self, dataset: str, version: str, consumer: str, purpose: str) -> AuditEntry:
        """Record a pipeline run's read (consumer = "<run_id>:<asset key>"); reader "pipeline" in policy.

        Raises AccessDenied (after recording the denial) when the policy forbids pipeline reads of it.
        """
        _require_text(consumer, "consumer")
        _require_text(version, "version")
        self._authorize(dataset, version, consumer, "pipeline", purpose)
        return self._append(consumer, "pipeline", dataset, version, purpose, AccessDecision(True, ""))

    def _authorize(self, dataset: str, version: str | None, consumer: str, kind: str, purpose: str) -> None:
        if not _DATASET_PATTERN.match(dataset):
            raise LakeError(
                f"invalid dataset name {dataset!r} (letters, digits, '_', '-', '.', '/' between parts)"
            )
        _require_text(purpose, "purpose")
        reader = PIPELINE_READER if kind == "pipeline" else consumer
        decision = self.access_policy().decide(reader, dataset)
        if not decision.allowed:
            self._append(consumer, kind, dataset, version, purpose, decision)
            raise AccessDenied(
                f"access denied: {reader!r} may not read dataset {dataset!r} ({decision.reason})"
            )

    def _resolve_dataset(
        self, dataset: str, version: str | None, resolver: Resolver | None
    ) -> tuple[str, Path, str | None]:
        """(version, path, expected sha256 of the bytes or None) for a dataset read."""
        state = LAKE_DATASETS.get(dataset)
        if state is not None:
            drop = self.drop(version) if version is not None else self._latest_decided(state, dataset)
            if drop.state != state:
                raise UnknownDrop(f"drop {drop.hash} is {drop.state}, not part of dataset {dataset!r}")
            return drop.hash, drop.path, drop.hash
        if resolver is None:
            raise UnknownDataset(f"dataset {dataset!r} is not served by the lake and no resolver was given")
        resolved_version, path = resolver(dataset, version)
        if not Path(path).exists():
            raise LakeError(f"dataset {dataset!r} version {resolved_version!r}: {path} does not exist")
        return resolved_version, Path(path), None

    def _latest_decided(self, state: str, dataset: str) -> Drop:
        decided = [drop for drop in self.drops() if drop.state == state]
        if not decided:
            raise UnknownDrop(f"dataset {dataset!r} has no versions yet: no {state} drop in {self.root}")
        return max(decided, key=lambda drop: (drop.decided_at or "", drop.hash))

    # ---------------------------------------------------------------------------------------- ledger

    def _append(
        self,
        consumer: str,
        kind: str,
        dataset: str,
        version: str | None,
        purpose: str,
        decision: AccessDecision,
    ) -> AuditEntry:
        entry = AuditEntry(
            time=_utc_now(),
            consumer=consumer,
            kind=kind,
            dataset=dataset,
            version=version,
            purpose=purpose,
            allowed=decision.allowed,
            reason=None if decision.allowed else decision.reason,
        )
        self._ledger.append(entry.to_dict())
        return entry

    def audit_log(self) -> AuditLog:
        """Every ledger entry in order, and how many unreadable (torn) lines were skipped."""
        journal = self._ledger.read()
        entries: list[AuditEntry] = []
        skipped = journal.skipped
        for raw in journal.entries:
            try:
                entries.append(AuditEntry(**raw))
            except TypeError:  # valid JSON, but not a ledger entry
                skipped += 1
        return AuditLog(tuple(entries), skipped)

    def audit(self) -> list[AuditEntry]:
        """Every ledger entry in order (use `audit_log()` to also learn how many torn lines were skipped)."""
        return list(self.audit_log().entries)


def _require_text(value: str | None, what: str) -> None:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise LakeError(f"{what} must be a non-empty single line, got {value!r}")


# --------------------------------------------------------------------------------------- checkout copy


def tree_digest(path: Path) -> str:
    """sha256 of a file, or of a directory's sorted (relative path, file sha256) pairs."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def copy_verified(source: Path, dest_dir: Path, expected_hash: str | None = None) -> Path:
    """Copy a file or directory into `dest_dir` atomically (temp + rename), verifying the hash.

    Returns the copy's path. An existing copy with the same content is reused; one with different
    content is never overwritten (LakeError).
    """
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / source.name
    source_hash = tree_digest(source)
    if expected_hash is not None and source_hash != expected_hash:
        raise LakeError(f"{source}: content hash {source_hash} does not match the expected {expected_hash}")
    if target.exists():
        if tree_digest(target) == source_hash:
            return target
        raise LakeError(f"cannot copy to {target}: it exists with different content (not overwritten)")
    temp = _temp_name(dest_dir, source.name)
    try:
        if source.is_dir():
            shutil.copytree(source, temp)
        else:
            temp, _, _ = _copy_to_temp(source, dest_dir, source.name)
        if tree_digest(temp) != source_hash:
            raise LakeError(f"copy of {source} to {dest_dir} does not match its source hash")
        os.replace(temp, target)
        fsync_directory(dest_dir)
    finally:
        if temp.is_dir():
            shutil.rmtree(temp)
        else:
            temp.unlink(missing_ok=True)
    return target
