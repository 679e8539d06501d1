"""Model registry: immutable ONNX model versions, approval status and the production/previous aliases.

Version files live on the registry's storage location (`[storage] registry`; by default the home's
registry directory, PlatformHome.registry)::

    versions/<v>/model.onnx   the exact bytes that are scored (read-only), named by version v1, v2, ...
    versions/<v>/card.json    the model card; card.md next to it when the card has a Markdown form
    versions/<v>/meta.json    version, sha256, size, created time, metrics: written LAST, so a version
                              exists exactly when its meta.json does

The records stay in the home's registry directory (or in PostgreSQL, `PlatformHome.pg_url`; see
mlplatform/core/platform/records.py)::

    events.jsonl              append-only log: registered, approved, rejected, promoted, rolled_back,
                              and a rollout's rollout_started, rollout_stepped, rollout_promoted,
                              rollout_aborted (core/release/rollout.py)
    aliases.json              the pointers, replaced by atomic rename: the aliases {"production": "v3",
                              "previous": "v2"} and, while one runs, the rollout ({"rollout": {...}})
    .lock                     fcntl lock serialising every change

`aliases()` is the aliases alone; other pointers (the rollout) are read with `pointer(name)` and changed
inside `exclusive()`, the one section that also moves aliases and appends events, so a rollout's
promotion (production moves, the rollout ends, both recorded) commits as one change or not at all.

Every object of a version is written once and never changed. On a local directory a version is built
in a staging directory and renamed into place (it appears whole or not at all). On object storage
each file is one immutable PUT, meta.json last; a registration that died before its meta.json leaves
files that are no version but still use up their number, so the number is never handed out twice.
Numbers are allocated under the records' exclusive section. A remote model is read through a local,
content-addressed cache (`<registry dir>/cache/<sha256>.onnx`), downloaded atomically and SHA-verified,
because ONNX Runtime loads files.

A version's status is derived from the events log, so the log is the single record of who changed
what and when; the version's files never change after registration. A "registered" event also
carries the model's sha256, so registering finds a duplicate and the next number from one listing of
`versions/` (with sizes) and the log, reading only the meta.json of a version that may hold the same
bytes: one whose event names this sha256, or one without such an event (registered before events had
it, or whose event was lost) whose model.onnx has the same size.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.fsio import (
    copy_hashing,
    fsync_directory,
    sha256_bytes,
    sha256_file,
    write_atomic,
)
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import FileRecords, Records, RecordSection, open_records
from mlplatform.core.platform.settings import StorageRules
from mlplatform.core.platform.storage import (
    ImmutableConflict,
    LocalLocation,
    ObjectNotFound,
    StorageLocation,
    location_from_settings,
)

PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
PRODUCTION = "production"
PREVIOUS = "previous"
ALIASES = (PRODUCTION, PREVIOUS)
"""The pointers that name a version; any other pointer (the rollout) holds a record of its own."""

RECORDS_NAME = "registry"
VERSIONS = "versions"
MODEL_FILE = "model.onnx"
CARD_FILE = "card.json"
CARD_MARKDOWN_FILE = "card.md"
META_FILE = "meta.json"
CACHE_DIR = "cache"
# Attempts at a version number when other writers keep taking the next one (only possible when
# several machines register without shared, PostgreSQL, records).
NUMBER_ATTEMPTS = 5
_VERSION_NAME = re.compile(r"^v([1-9][0-9]*)$")


class RegistryError(UserError, RuntimeError):
    """A registry operation was refused or the registry is unreadable (one-line message)."""


class IntegrityError(RegistryError):
    """A model file does not match the SHA-256 recorded when it was registered."""


def verify_file(path: Path, expected_sha256: str, label: str) -> Path:
    """Return `path` when its SHA-256 equals `expected_sha256`; raise IntegrityError otherwise."""
    try:
        actual = sha256_file(path)
    except OSError as exc:
        raise IntegrityError(f"{label}: cannot read {path}: {exc.strerror or exc}") from exc
    if actual != expected_sha256:
        raise IntegrityError(f"{label}: sha256 of {path} is {actual}, expected {expected_sha256}")
    return path


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version as seen now (status and aliases are current).

    `model_file` is where the model is on this machine: the registry's own file on a local registry,
    the cache file on a remote one (fetched on first use of `onnx_path`). `onnx_url` is where the
    registry keeps it ("" for a version built by hand: `model_file` itself).
    """

    version: str
    status: str
    aliases: tuple[str, ...]
    metrics: dict[str, Any]
    model_file: Path
    sha256: str
    size_bytes: int
    created_at: str
    card: dict[str, Any]
    status_history: tuple[dict[str, Any], ...] = field(default=())
    onnx_url: str = ""
    fetch: Callable[[], Path] | None = field(default=None, compare=False, repr=False)

    @property
    def onnx_path(self) -> Path:
        """The model file on this machine, SHA-verified into the local cache first when the registry is
        remote (IntegrityError when the stored model is missing or damaged)."""
        return self.fetch() if self.fetch is not None else self.model_file

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `mlplatform models list --json` prints); fetches nothing."""
        return {
            "version": self.version,
            "status": self.status,
            "aliases": list(self.aliases),
            "metrics": self.metrics,
            "onnx_path": self.onnx_url or str(self.model_file),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
            "status_history": [dict(entry) for entry in self.status_history],
        }


def _aliases_of(pointers: Mapping[str, Any]) -> dict[str, str]:
    return {name: target for name, target in pointers.items() if name in ALIASES}


def _has_event(events: list[dict[str, Any]], kind: str, version: str) -> bool:
    return any(event["event"] == kind and event.get("version") == version for event in events)


def _version_number(name: str) -> int:
    match = _VERSION_NAME.match(name)
    if match is None:
        raise RegistryError(f"not a model version name: {name!r} (expected v1, v2, ...)")
    return int(match.group(1))


def _version_key(version: str, name: str) -> str:
    _version_number(version)
    return f"{VERSIONS}/{version}/{name}"


def _complete_versions(stored: Mapping[str, Mapping[str, int]]) -> list[str]:
    """The registered versions of a listing (those with a meta.json), oldest first."""
    return sorted((name for name, files in stored.items() if META_FILE in files), key=_version_number)


def _highest_version_number(stored: Mapping[str, Mapping[str, int]]) -> int:
    """The highest number in a listing, counting versions whose registration died before meta.json."""
    return max(map(_version_number, stored), default=0)


def _registered_sha256s(events: list[dict[str, Any]]) -> dict[str, str]:
    """{version: sha256} from the "registered" events that carry one."""
    return {
        event["version"]: event["sha256"]
        for event in events
        if event["event"] == "registered" and "sha256" in event
    }


class ModelRegistry:
    """Model versions, their approval status and the production/previous aliases.

    `root` is the local registry directory: the file records live there, and the model cache when the
    version files are elsewhere. `location` is where the version files live (default: `root` itself).
    """

    def __init__(
        self, root: Path, records: Records | None = None, *, location: StorageLocation | None = None
    ) -> None:
        self.root = Path(root)
        self.location = location if location is not None else LocalLocation(self.root)
        self._records = records if records is not None else self.file_records(self.root)

    @classmethod
    def for_home(cls, home: PlatformHome, storage: StorageRules) -> ModelRegistry:
        """The home's registry: version files at `storage.registry`, events and aliases in PostgreSQL
        when the home has a pg_url (else files in the home's registry directory)."""
        root = home.registry
        location = location_from_settings(home, storage, "registry")
        return cls(root, open_records(cls.file_records(root), RECORDS_NAME, home.pg_url), location=location)

    @staticmethod
    def file_records(root: Path) -> FileRecords:
        return FileRecords(root / "events.jsonl", root / ".lock", root / "aliases.json")

    # -- paths ------------------------------------------------------------------------------------

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def aliases_path(self) -> Path:
        return self.root / "aliases.json"

    @property
    def cache_dir(self) -> Path:
        """Where models of a remote registry are kept for ONNX Runtime, by sha256."""
        return self.root / CACHE_DIR

    # -- registration -----------------------------------------------------------------------------

    def register(
        self,
        onnx_bytes: bytes,
        card: Mapping[str, Any],
        metrics: Mapping[str, Any],
        *,
        card_markdown: str | None = None,
        by: str = "pipeline",
    ) -> ModelVersion:
        """Store a new immutable version (status PendingManualApproval) or return the one with these bytes.

        The card's Markdown comes from `card_markdown` or the card's "markdown" entry and is written
        to card.md; card.json holds the rest of the card. A version whose "registered" event was lost
        (the records were unreachable right after its files were written) gets it now.
        """
        if not onnx_bytes:
            raise RegistryError("refusing to register an empty model file")
        if "macro_f1" not in metrics:
            raise RegistryError("model metrics must include 'macro_f1'")
        card_json = {key: value for key, value in card.items() if key != "markdown"}
        markdown = card_markdown if card_markdown is not None else card.get("markdown")
        files = {MODEL_FILE: onnx_bytes, CARD_FILE: self._json_text(card_json, "model card").encode()}
        if markdown is not None:
            files[CARD_MARKDOWN_FILE] = str(markdown).encode()
        metrics_dict = json.loads(self._json_text(dict(metrics), "model metrics"))
        sha256 = sha256_bytes(onnx_bytes)
        with self._records.exclusive() as section:
            registered_at, events = _utc_now(), section.entries()
            stored = self._version_files()
            version = self._find_by_sha256(sha256, len(onnx_bytes), stored, events)
            if version is None:
                meta = {"sha256": sha256, "size_bytes": len(onnx_bytes), "created_at": registered_at}
                version = self._store_new_version(files, {**meta, "metrics": metrics_dict}, stored, events)
            if not _has_event(events, "registered", version):
                section.append(
                    {
                        "event": "registered",
                        "version": version,
                        "sha256": sha256,
                        "by": by,
                        "time": registered_at,
                    }
                )
        return self.get(version)

    @staticmethod
    def _json_text(payload: Mapping[str, Any], what: str) -> str:
        try:
            return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"{what} is not JSON-serialisable: {exc}") from exc

    def _store_new_version(
        self,
        files: Mapping[str, bytes],
        meta: Mapping[str, Any],
        stored: Mapping[str, Mapping[str, int]],
        events: list[dict[str, Any]],
    ) -> str:
        """Write the version under the next number free in `stored` (the listing); returns it.

        A number another writer took between our listing and our write (ImmutableConflict) is skipped
        after listing again; if that writer stored these very bytes, its version is the answer.
        """
        for _ in range(NUMBER_ATTEMPTS):
            version = f"v{_highest_version_number(stored) + 1}"
            meta_bytes = json.dumps({**meta, "version": version}, indent=2, sort_keys=True).encode()
            try:
                self._write_version(version, {**files, META_FILE: meta_bytes})
            except ImmutableConflict:
                stored = self._version_files()
                taken = self._find_by_sha256(meta["sha256"], meta["size_bytes"], stored, events)
                if taken is not None:
                    return taken
                continue
            return version
        raise RegistryError(
            f"no free version number after {NUMBER_ATTEMPTS} attempts at {self.location.url}: other writers "
            "keep taking them (registries shared between machines need PostgreSQL records)"
        )

    def _write_version(self, version: str, files: Mapping[str, bytes]) -> None:
        """Store a version's files, meta.json last (it marks the version as complete)."""
        if isinstance(self.location, LocalLocation):
            self._write_local_version(self.location.path_of(VERSIONS), version, files)
            return
        for name, content in files.items():  # dicts keep insertion order: meta.json comes last
            self.location.put_bytes(_version_key(version, name), content, immutable=True)

    @staticmethod
    def _write_local_version(versions_dir: Path, version: str, files: Mapping[str, bytes]) -> None:
        """Build the version in a temp dir, then rename it into place so it appears whole or not at all."""
        versions_dir.mkdir(parents=True, exist_ok=True)
        staging = versions_dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            for name, content in files.items():
                path = staging / name
                with path.open("wb") as handle:
                    handle.write(content)
                    handle.flush()
                    os.fsync(handle.fileno())
                path.chmod(0o444)
            try:
                os.rename(staging, versions_dir / version)
            except OSError as exc:
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    raise ImmutableConflict(f"{versions_dir / version} exists already") from None
                raise
            fsync_directory(versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _version_files(self) -> dict[str, dict[str, int]]:
        """{version: {file name: size}} of everything under `versions/`, complete or not: one listing."""
        found: dict[str, dict[str, int]] = {}
        for key, size in self.location.list_sizes(VERSIONS).items():
            parts = key.split("/")
            if len(parts) == 3 and _VERSION_NAME.match(parts[1]):
                found.setdefault(parts[1], {})[parts[2]] = size
        return found

    def _find_by_sha256(
        self,
        sha256: str,
        size_bytes: int,
        stored: Mapping[str, Mapping[str, int]],
        events: list[dict[str, Any]],
    ) -> str | None:
        """The oldest registered version whose model has this sha256, or None.

        Only versions that may hold these bytes have their meta.json read (see the module docstring):
        not one the log records with another sha256, nor an unrecorded one whose model.onnx has another
        size (an unrecorded version without a model.onnx is read).
        """
        recorded = _registered_sha256s(events)

        def may_match(version: str) -> bool:
            if version in recorded:
                return recorded[version] == sha256
            return stored[version].get(MODEL_FILE, size_bytes) == size_bytes

        candidates = [version for version in _complete_versions(stored) if may_match(version)]
        metas = self._read_documents(candidates, (META_FILE,))
        return next((name for name, (meta,) in metas.items() if meta["sha256"] == sha256), None)

    def _read_documents(self, versions: list[str], names: tuple[str, ...]) -> dict[str, tuple[dict, ...]]:
        """The JSON files `names` of each version (fetched together), by version in the given order."""
        keys = [_version_key(version, name) for version in versions for name in names]
        try:
            payloads = self.location.get_many(keys)
        except ObjectNotFound:
            raise self._missing_document(keys) from None
        except OSError as exc:
            raise RegistryError(f"cannot read model versions under {self.location.url}: {exc}") from exc
        documents = {}
        for version in versions:
            parsed = []
            for name in names:
                key = _version_key(version, name)
                try:
                    parsed.append(json.loads(payloads[key]))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise RegistryError(f"cannot read {self.location.url_of(key)}: {exc}") from exc
            documents[version] = tuple(parsed)
        return documents

    def _missing_document(self, keys: list[str]) -> RegistryError:
        """The error naming the first of `keys` that is missing (a version without meta.json is none)."""
        missing = next((key for key in keys if not self.location.exists(key)), keys[0])
        version = missing.split("/")[1]
        if missing.endswith(f"/{META_FILE}"):
            return RegistryError(f"model version {version} is not registered")
        return RegistryError(
            f"model version {version} is incomplete: {self.location.url_of(missing)} is missing"
        )

    def _read_meta(self, version: str) -> dict[str, Any]:
        return self._read_documents([version], (META_FILE,))[version][0]

    # -- events -----------------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Every event in order; a line torn by a crash mid-append is skipped."""
        return list(self._records.read().entries)

    @staticmethod
    def _status_history(
        version: str, created_at: str, events: list[dict[str, Any]]
    ) -> tuple[dict[str, Any], ...]:
        history = [{"status": PENDING, "time": created_at, "by": None, "reason": None}]
        for event in events:
            if event.get("version") != version:
                continue
            if event["event"] == "registered":
                history[0] = {"status": PENDING, "time": event["time"], "by": event.get("by"), "reason": None}
            elif event["event"] in ("approved", "rejected"):
                status = APPROVED if event["event"] == "approved" else REJECTED
                history.append(
                    {
                        "status": status,
                        "time": event["time"],
                        "by": event.get("by"),
                        "reason": event.get("reason"),
                    }
                )
        return tuple(history)

    @classmethod
    def _status(cls, version: str, events: list[dict[str, Any]]) -> str:
        """The version's status: it follows from the events alone (no version file is read)."""
        return cls._status_history(version, "", events)[-1]["status"]

    def in_production_since(self) -> str | None:
        """Time the current production version last became production (promotion or rollback)."""
        current = self.aliases().get(PRODUCTION)
        since = None
        for event in self.events():
            if event["event"] in ("promoted", "rolled_back") and event.get("to") == current:
                since = event["time"]
        return since

    # -- reading ----------------------------------------------------------------------------------

    def get(self, version: str) -> ModelVersion:
        """The version with its current status and aliases; RegistryError when it is not registered."""
        return self._build(version, self.events(), self.aliases())

    def list(self) -> list[ModelVersion]:
        """Every version, newest first (their metas and cards are fetched together)."""
        events, aliases = self.events(), self.aliases()
        names = list(reversed(_complete_versions(self._version_files())))
        documents = self._read_documents(names, (META_FILE, CARD_FILE))
        return [self._assemble(name, *documents[name], events, aliases) for name in names]

    def _build(self, version: str, events: list[dict[str, Any]], aliases: Mapping[str, str]) -> ModelVersion:
        meta, card = self._read_documents([version], (META_FILE, CARD_FILE))[version]
        return self._assemble(version, meta, card, events, aliases)

    def _assemble(
        self,
        version: str,
        meta: dict[str, Any],
        card: dict[str, Any],
        events: list[dict[str, Any]],
        aliases: Mapping[str, str],
    ) -> ModelVersion:
        history = self._status_history(version, meta["created_at"], events)
        key = _version_key(version, MODEL_FILE)
        if isinstance(self.location, LocalLocation):
            model_file, fetch = self.location.path_of(key), None
        else:
            model_file = self._cache_path(meta["sha256"])
            fetch = partial(self._cached_model, version, meta["sha256"])
        return ModelVersion(
            version=version,
            status=history[-1]["status"],
            aliases=tuple(sorted(name for name, target in aliases.items() if target == version)),
            metrics=meta["metrics"],
            model_file=model_file,
            sha256=meta["sha256"],
            size_bytes=meta["size_bytes"],
            created_at=meta["created_at"],
            card=card,
            status_history=history,
            onnx_url=self.location.url_of(key),
            fetch=fetch,
        )

    def aliases(self) -> dict[str, str]:
        """Current aliases, e.g. {"production": "v3", "previous": "v2"}."""
        return _aliases_of(self._records.pointer_state()[0])

    def pointer(self, name: str) -> Any:
        """A pointer other than an alias (e.g. the rollout's record), None when unset."""
        return self._records.pointer_state()[0].get(name)

    def pointer_state(self) -> tuple[dict[str, Any], int]:
        """(every pointer, change stamp) in one read: what a server polls (see `production_pointer`)."""
        return self._records.pointer_state()

    def production(self) -> ModelVersion | None:
        """The version the production alias points to, or None when nothing is in production."""
        version = self.aliases().get(PRODUCTION)
        return None if version is None else self.get(version)

    def production_pointer(self) -> tuple[str | None, int]:
        """(production version, change stamp): a cheap poll for servers to notice a move.

        The stamp is aliases.json's mtime_ns on files, the aliases' revision in PostgreSQL; 0 before
        the first alias is set.
        """
        pointers, stamp = self._records.pointer_state()
        return pointers.get(PRODUCTION), stamp

    def verify(self, version: str) -> Path:
        """Recompute the SHA-256 of the version's model; return its local path or raise IntegrityError.

        On a remote registry the path is the cache file; a damaged cache file is fetched again.
        """
        sha256 = self._read_meta(version)["sha256"]
        if isinstance(self.location, LocalLocation):
            path = self.location.path_of(_version_key(version, MODEL_FILE))
            return verify_file(path, sha256, f"model {version}")
        return self._cached_model(version, sha256)

    # -- the local cache of a remote registry -----------------------------------------------------

    def _cache_path(self, sha256: str) -> Path:
        return self.cache_dir / f"{sha256}.onnx"

    def _cached_model(self, version: str, sha256: str) -> Path:
        """The model in the cache, SHA-verified; downloaded when absent or damaged."""
        path = self._cache_path(sha256)
        if path.is_file():
            try:
                return verify_file(path, sha256, f"cached model {version}")
            except IntegrityError:
                pass  # a damaged cache copy: fetch it again
        return self._download(version, sha256, path)

    def _download(self, version: str, sha256: str, target: Path) -> Path:
        """Stream the model into a temp file while hashing it; rename it into place only when it matches."""
        key = _version_key(version, MODEL_FILE)

        def fetch_verified(writer: BinaryIO) -> None:
            with self.location.open_read(key) as reader:
                actual, _ = copy_hashing(reader, writer)
            if actual != sha256:  # raised inside write_atomic: the temp file is removed, nothing renamed
                raise IntegrityError(
                    f"model {version}: sha256 of {self.location.url_of(key)} is {actual}, expected {sha256}"
                )

        try:
            write_atomic(target, fetch_verified, read_only=True)
        except ObjectNotFound:
            raise IntegrityError(f"model {version}: {self.location.url_of(key)} is missing") from None
        return target

    # -- status -----------------------------------------------------------------------------------

    def _current(self, section: RecordSection, version: str) -> ModelVersion:
        """The version as the exclusive section sees it (reads inside the section, never around it)."""
        return self._build(version, section.entries(), _aliases_of(section.pointers()))

    @contextmanager
    def exclusive(self) -> Iterator[RegistrySection]:
        """One exclusive section of the records: what it reads is current, what it changes commits
        together (PostgreSQL: one transaction; files: under the lock, each write durable at once)."""
        with self._records.exclusive() as section:
            yield RegistrySection(self, section)

    def approve(self, version: str, by: str, note: str | None = None) -> ModelVersion:
        """PendingManualApproval -> Approved."""
        with self._records.exclusive() as section:
            current = self._current(section, version)
            if current.status != PENDING:
                raise RegistryError(
                    f"cannot approve {version}: it is {current.status}, only {PENDING} can be approved"
                )
            section.append(
                {"event": "approved", "version": version, "by": by, "reason": note, "time": _utc_now()}
            )
        return self.get(version)

    def reject(self, version: str, reason: str, by: str) -> ModelVersion:
        """PendingManualApproval or Approved -> Rejected; refused while the version serves production."""
        if not reason or not reason.strip():
            raise RegistryError(f"rejecting {version} needs a reason")
        with self._records.exclusive() as section:
            current = self._current(section, version)
            if current.status == REJECTED:
                raise RegistryError(f"cannot reject {version}: it is already {REJECTED}")
            if PRODUCTION in current.aliases:
                raise RegistryError(
                    f"cannot reject {version}: it serves production; roll back or promote another version first"
                )
            section.append(
                {"event": "rejected", "version": version, "by": by, "reason": reason, "time": _utc_now()}
            )
            if PREVIOUS in current.aliases:
                # A rejected model must never be a rollback target.
                aliases = section.pointers()
                del aliases[PREVIOUS]
                section.set_pointers(aliases)
        return self.get(version)

    # -- aliases ----------------------------------------------------------------------------------

    def promote(self, version: str, by: str) -> tuple[str | None, str]:
        """Point production at an Approved version; the old production becomes previous.

        Returns (old production or None, new production). Promoting the version already in production
        changes nothing and returns (version, version).
        """
        with self.exclusive() as section:
            return section.promote(version, by)

    def rollback(self, by: str, reason: str) -> tuple[str, str]:
        """Move production back to previous (Approved, file verified); previous becomes the one before it.

        Returns (rolled back from, rolled back to).
        """
        with self._records.exclusive() as section:
            aliases, events = section.pointers(), section.entries()
            current, target = aliases.get(PRODUCTION), aliases.get(PREVIOUS)
            if current is None or target is None:
                raise RegistryError("nothing to roll back to: no production and previous versions")
            status = self._status(target, events)
            if status != APPROVED:
                raise RegistryError(f"cannot roll back to {target}: it is {status}")
            self.verify(target)  # also: the version's files exist
            before = self._promoted_before(target, exclude={current, target}, events=events)
            aliases[PRODUCTION] = target
            if before is None:
                aliases.pop(PREVIOUS, None)
            else:
                aliases[PREVIOUS] = before
            section.set_pointers(aliases)
            section.append(
                {
                    "event": "rolled_back",
                    "from": current,
                    "to": target,
                    "version": target,
                    "by": by,
                    "reason": reason,
                    "time": _utc_now(),
                }
            )
        return current, target

    def _promoted_before(self, version: str, exclude: set[str], events: list[dict[str, Any]]) -> str | None:
        """The latest Approved version promoted before `version` was last promoted."""
        promoted = [event["version"] for event in events if event["event"] == "promoted"]
        last = max((index for index, name in enumerate(promoted) if name == version), default=len(promoted))
        for candidate in reversed(promoted[:last]):
            if candidate not in exclude and self._status(candidate, events) == APPROVED:
                return candidate
        return None

    def restore_aliases(self, production: str | None, previous: str | None, by: str, reason: str) -> None:
        """Set both aliases to exactly these versions (None removes one): the deploy asset's automatic rollback."""
        with self._records.exclusive() as section:
            for version in (production, previous):
                if version is not None:
                    self._read_meta(version)
            aliases = section.pointers()
            current = aliases.get(PRODUCTION)
            for name, version in ((PRODUCTION, production), (PREVIOUS, previous)):
                if version is None:
                    aliases.pop(name, None)
                else:
                    aliases[name] = version
            section.set_pointers(aliases)
            section.append(
                {
                    "event": "rolled_back",
                    "from": current,
                    "to": production,
                    "version": production,
                    "previous": previous,
                    "by": by,
                    "reason": reason,
                    "automatic": True,
                    "time": _utc_now(),
                }
            )


class RegistrySection:
    """What one exclusive section of the registry may read and change (`ModelRegistry.exclusive()`).

    Everything read here is as of now and nobody else changes the records until the section ends.
    """

    def __init__(self, registry: ModelRegistry, section: RecordSection) -> None:
        self._registry = registry
        self._section = section

    def version(self, version: str) -> ModelVersion:
        """The version with its status and aliases as of now (RegistryError when not registered)."""
        return self._registry._current(self._section, version)

    def aliases(self) -> dict[str, str]:
        return _aliases_of(self._section.pointers())

    def pointer(self, name: str) -> Any:
        return self._section.pointers().get(name)

    def set_pointer(self, name: str, value: Any) -> None:
        """Set (or with None remove) a pointer that is not an alias; the aliases move by `promote`."""
        if name in ALIASES:
            raise RegistryError(f"{name} is an alias: it moves by promotion or rollback")
        pointers = self._section.pointers()
        if value is None:
            pointers.pop(name, None)
        else:
            pointers[name] = value
        self._section.set_pointers(pointers)

    def append(self, event: Mapping[str, Any]) -> None:
        """Record an event (stamped with the time now unless it has one)."""
        self._section.append({"time": _utc_now(), **event})

    def promote(self, version: str, by: str, **details: Any) -> tuple[str | None, str]:
        """`ModelRegistry.promote` inside this section; `details` are recorded on the event."""
        target = self.version(version)
        if target.status != APPROVED:
            raise RegistryError(
                f"cannot promote {version}: it is {target.status}, only {APPROVED} can be promoted"
            )
        pointers = self._section.pointers()
        old = pointers.get(PRODUCTION)
        if old == version:
            return version, version
        pointers[PRODUCTION] = version
        if old is not None:
            pointers[PREVIOUS] = old
        self._section.set_pointers(pointers)
        self._section.append(
            {
                "event": "promoted",
                "version": version,
                "from": old,
                "to": version,
                "by": by,
                "time": _utc_now(),
                **details,
            }
        )
        return old, version
