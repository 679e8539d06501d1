"""Model registry: immutable ONNX model versions, approval status and the production/previous aliases.

Layout under the registry root (PlatformHome.registry)::

    versions/<v>/model.onnx   the exact bytes that are scored (read-only), named by version v1, v2, ...
    versions/<v>/meta.json    version, sha256, size, created time, metrics (written once)
    versions/<v>/card.json    the model card; card.md next to it when the card has a Markdown form
    events.jsonl              append-only log: registered, approved, rejected, promoted, rolled_back
    aliases.json              {"production": "v3", "previous": "v2"}, replaced by atomic rename
    .lock                     fcntl lock serialising every change

A version's status is derived from the events log, so the log is the single record of who changed
what and when; the version directory itself never changes after registration.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlplatform.core.fsio import file_lock, fsync_directory, write_json_atomic
from mlplatform.core.settings import Settings, SettingsError

PENDING = "PendingManualApproval"
APPROVED = "Approved"
REJECTED = "Rejected"
PRODUCTION = "production"
PREVIOUS = "previous"
APPROVAL_POLICIES = ("auto", "manual")

_VERSION_NAME = re.compile(r"^v([1-9][0-9]*)$")
_HASH_CHUNK = 1 << 20


class RegistryError(RuntimeError):
    """A registry operation was refused or the registry is unreadable (one-line message)."""


class IntegrityError(RegistryError):
    """A model file does not match the SHA-256 recorded when it was registered."""


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_HASH_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, expected_sha256: str, label: str) -> Path:
    """Return `path` when its SHA-256 equals `expected_sha256`; raise IntegrityError otherwise."""
    try:
        actual = file_sha256(path)
    except OSError as exc:
        raise IntegrityError(f"{label}: cannot read {path}: {exc.strerror or exc}") from exc
    if actual != expected_sha256:
        raise IntegrityError(f"{label}: sha256 of {path} is {actual}, expected {expected_sha256}")
    return path


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class RegistryRules:
    """Registry policy from settings `[registry]`: who approves a model that passed every blocking gate."""

    approval: str

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryRules:
        approval = settings.section("registry")["approval"]
        if approval not in APPROVAL_POLICIES:
            raise SettingsError(f"[registry] approval must be one of {APPROVAL_POLICIES}, got {approval!r}")
        return cls(approval=approval)

    @property
    def auto_approve(self) -> bool:
        return self.approval == "auto"


@dataclass(frozen=True)
class ModelVersion:
    """One registered model version as seen now (status and aliases are current)."""

    version: str
    status: str
    aliases: tuple[str, ...]
    metrics: dict[str, Any]
    onnx_path: Path
    sha256: str
    size_bytes: int
    created_at: str
    card: dict[str, Any]
    status_history: tuple[dict[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `mlplatform models list --json` prints)."""
        return {
            "version": self.version,
            "status": self.status,
            "aliases": list(self.aliases),
            "metrics": self.metrics,
            "onnx_path": str(self.onnx_path),
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "created_at": self.created_at,
            "status_history": [dict(entry) for entry in self.status_history],
        }


def _version_number(name: str) -> int:
    match = _VERSION_NAME.match(name)
    if match is None:
        raise RegistryError(f"not a model version name: {name!r} (expected v1, v2, ...)")
    return int(match.group(1))


class ModelRegistry:
    """Model versions, their approval status and the production/previous aliases under one root."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- paths ------------------------------------------------------------------------------------

    @property
    def versions_dir(self) -> Path:
        return self.root / "versions"

    @property
    def events_path(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def aliases_path(self) -> Path:
        return self.root / "aliases.json"

    def _version_dir(self, version: str) -> Path:
        _version_number(version)
        return self.versions_dir / version

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive inter-process lock around every change (version numbers, aliases, events)."""
        with file_lock(self.root / ".lock"):
            yield

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
        to card.md; card.json holds the rest of the card.
        """
        if not onnx_bytes:
            raise RegistryError("refusing to register an empty model file")
        if "macro_f1" not in metrics:
            raise RegistryError("model metrics must include 'macro_f1'")
        card_json = {key: value for key, value in card.items() if key != "markdown"}
        markdown = card_markdown if card_markdown is not None else card.get("markdown")
        card_text = self._json_text(card_json, "model card")
        metrics_dict = json.loads(self._json_text(dict(metrics), "model metrics"))
        sha256 = hashlib.sha256(onnx_bytes).hexdigest()
        with self._locked():
            existing = self._find_by_sha256(sha256)
            if existing is not None:
                return self.get(existing)
            version = f"v{self._highest_version_number() + 1}"
            created_at = _utc_now()
            meta = {
                "version": version,
                "sha256": sha256,
                "size_bytes": len(onnx_bytes),
                "created_at": created_at,
                "metrics": metrics_dict,
            }
            self._write_version_dir(version, onnx_bytes, meta, card_text, markdown)
            self._append_event({"event": "registered", "version": version, "by": by, "time": created_at})
        return self.get(version)

    @staticmethod
    def _json_text(payload: Mapping[str, Any], what: str) -> str:
        try:
            return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"{what} is not JSON-serialisable: {exc}") from exc

    def _write_version_dir(
        self, version: str, onnx_bytes: bytes, meta: dict[str, Any], card_text: str, markdown: str | None
    ) -> None:
        """Build the version in a temp dir, then rename it into place so it appears whole or not at all."""
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        staging = self.versions_dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            files = {
                "model.onnx": onnx_bytes,
                "meta.json": json.dumps(meta, indent=2, sort_keys=True).encode(),
            }
            files["card.json"] = card_text.encode()
            if markdown is not None:
                files["card.md"] = str(markdown).encode()
            for name, content in files.items():
                path = staging / name
                with path.open("wb") as handle:
                    handle.write(content)
                    handle.flush()
                    os.fsync(handle.fileno())
                path.chmod(0o444)
            os.rename(staging, self.versions_dir / version)
            fsync_directory(self.versions_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def _version_names(self) -> list[str]:
        if not self.versions_dir.is_dir():
            return []
        names = [path.name for path in self.versions_dir.iterdir() if _VERSION_NAME.match(path.name)]
        return sorted(names, key=_version_number)

    def _highest_version_number(self) -> int:
        names = self._version_names()
        return _version_number(names[-1]) if names else 0

    def _find_by_sha256(self, sha256: str) -> str | None:
        for name in self._version_names():
            if self._read_meta(name)["sha256"] == sha256:
                return name
        return None

    def _read_meta(self, version: str) -> dict[str, Any]:
        path = self._version_dir(version) / "meta.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(f"model version {version} is not registered") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"cannot read {path}: {exc}") from exc

    # -- events -----------------------------------------------------------------------------------

    def _append_event(self, event: dict[str, Any]) -> None:
        """Append one JSON line durably; a torn tail from a crash is closed off with a newline first."""
        line = json.dumps(event, sort_keys=True) + "\n"
        with self.events_path.open("ab+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    handle.write(b"\n")
            handle.write(line.encode())
            handle.flush()
            os.fsync(handle.fileno())

    def events(self) -> list[dict[str, Any]]:
        """Every event in order; a line torn by a crash mid-append is skipped."""
        if not self.events_path.exists():
            return []
        events = []
        for raw in self.events_path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(raw))
        return events

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
        """Every version, newest first."""
        events, aliases = self.events(), self.aliases()
        return [self._build(name, events, aliases) for name in reversed(self._version_names())]

    def _build(self, version: str, events: list[dict[str, Any]], aliases: Mapping[str, str]) -> ModelVersion:
        meta = self._read_meta(version)
        directory = self._version_dir(version)
        history = self._status_history(version, meta["created_at"], events)
        card_path = directory / "card.json"
        try:
            card = json.loads(card_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise RegistryError(f"cannot read {card_path}: {exc}") from exc
        return ModelVersion(
            version=version,
            status=history[-1]["status"],
            aliases=tuple(sorted(name for name, target in aliases.items() if target == version)),
            metrics=meta["metrics"],
            onnx_path=directory / "model.onnx",
            sha256=meta["sha256"],
            size_bytes=meta["size_bytes"],
            created_at=meta["created_at"],
            card=card,
            status_history=history,
        )

    def aliases(self) -> dict[str, str]:
        """Current aliases, e.g. {"production": "v3", "previous": "v2"}."""
        try:
            text = self.aliases_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            return dict(json.loads(text))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise RegistryError(f"cannot read {self.aliases_path}: {exc}") from exc

    def production(self) -> ModelVersion | None:
        """The version the production alias points to, or None when nothing is in production."""
        version = self.aliases().get(PRODUCTION)
        return None if version is None else self.get(version)

    def production_pointer(self) -> tuple[str | None, int]:
        """(production version, mtime_ns of aliases.json): a cheap poll for servers to notice a move."""
        try:
            mtime_ns = self.aliases_path.stat().st_mtime_ns
        except FileNotFoundError:
            return None, 0
        return self.aliases().get(PRODUCTION), mtime_ns

    def verify(self, version: str) -> Path:
        """Recompute the SHA-256 of the version's model.onnx; return its path or raise IntegrityError."""
        meta = self._read_meta(version)
        return verify_file(self._version_dir(version) / "model.onnx", meta["sha256"], f"model {version}")

    # -- status -----------------------------------------------------------------------------------

    def approve(self, version: str, by: str, note: str | None = None) -> ModelVersion:
        """PendingManualApproval -> Approved."""
        with self._locked():
            current = self.get(version)
            if current.status != PENDING:
                raise RegistryError(
                    f"cannot approve {version}: it is {current.status}, only {PENDING} can be approved"
                )
            self._append_event(
                {"event": "approved", "version": version, "by": by, "reason": note, "time": _utc_now()}
            )
        return self.get(version)

    def reject(self, version: str, reason: str, by: str) -> ModelVersion:
        """PendingManualApproval or Approved -> Rejected; refused while the version serves production."""
        if not reason or not reason.strip():
            raise RegistryError(f"rejecting {version} needs a reason")
        with self._locked():
            current = self.get(version)
            if current.status == REJECTED:
                raise RegistryError(f"cannot reject {version}: it is already {REJECTED}")
            if PRODUCTION in current.aliases:
                raise RegistryError(
                    f"cannot reject {version}: it serves production; roll back or promote another version first"
                )
            self._append_event(
                {"event": "rejected", "version": version, "by": by, "reason": reason, "time": _utc_now()}
            )
            if PREVIOUS in current.aliases:
                # A rejected model must never be a rollback target.
                aliases = self.aliases()
                del aliases[PREVIOUS]
                write_json_atomic(self.aliases_path, aliases)
        return self.get(version)

    # -- aliases ----------------------------------------------------------------------------------

    def promote(self, version: str, by: str) -> tuple[str | None, str]:
        """Point production at an Approved version; the old production becomes previous.

        Returns (old production or None, new production). Promoting the version already in production
        changes nothing and returns (version, version).
        """
        with self._locked():
            target = self.get(version)
            if target.status != APPROVED:
                raise RegistryError(
                    f"cannot promote {version}: it is {target.status}, only {APPROVED} can be promoted"
                )
            aliases = self.aliases()
            old = aliases.get(PRODUCTION)
            if old == version:
                return version, version
            aliases[PRODUCTION] = version
            if old is not None:
                aliases[PREVIOUS] = old
            write_json_atomic(self.aliases_path, aliases)
            self._append_event(
                {
                    "event": "promoted",
                    "version": version,
                    "from": old,
                    "to": version,
                    "by": by,
                    "time": _utc_now(),
                }
            )
        return old, version

    def rollback(self, by: str, reason: str) -> tuple[str, str]:
        """Move production back to previous (Approved, file verified); previous becomes the one before it.

        Returns (rolled back from, rolled back to).
        """
        with self._locked():
            aliases = self.aliases()
            current, target = aliases.get(PRODUCTION), aliases.get(PREVIOUS)
            if current is None or target is None:
                raise RegistryError("nothing to roll back to: no production and previous versions")
            status = self.get(target).status
            if status != APPROVED:
                raise RegistryError(f"cannot roll back to {target}: it is {status}")
            self.verify(target)
            events = self.events()
            before = self._promoted_before(target, exclude={current, target}, events=events)
            aliases[PRODUCTION] = target
            if before is None:
                aliases.pop(PREVIOUS, None)
            else:
                aliases[PREVIOUS] = before
            write_json_atomic(self.aliases_path, aliases)
            self._append_event(
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
            if candidate not in exclude and self._build(candidate, events, {}).status == APPROVED:
                return candidate
        return None

    def restore_aliases(self, production: str | None, previous: str | None, by: str, reason: str) -> None:
        """Set both aliases to exactly these versions (None removes one): the deploy asset's automatic rollback."""
        with self._locked():
            for version in (production, previous):
                if version is not None:
                    self._read_meta(version)
            aliases = self.aliases()
            current = aliases.get(PRODUCTION)
            for name, version in ((PRODUCTION, production), (PREVIOUS, previous)):
                if version is None:
                    aliases.pop(name, None)
                else:
                    aliases[name] = version
            write_json_atomic(self.aliases_path, aliases)
            self._append_event(
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
