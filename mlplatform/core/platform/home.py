"""The platform home: every path a deployment owns, derived from one root."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mlplatform.core.platform.errors import UserError

HOME_ENV = "MLPLATFORM_HOME"
PG_URL_ENV = "MLPLATFORM_PG_URL"
API_KEYS_ENV = "MLPLATFORM_API_KEYS"
DEFAULT_HOME = ".mlplatform"


class ApiKeysError(UserError, ValueError):
    """MLPLATFORM_API_KEYS is set but names no key."""


def api_keys_from_env(environ: Mapping[str, str]) -> tuple[str, ...]:
    """The endpoint's API keys from MLPLATFORM_API_KEYS (comma-separated, spaces around a key ignored).

    Unset: no keys (no authentication). Set but naming no key ("", " , "): ApiKeysError, never "no
    authentication" -- an empty substitution in a deployment file must not quietly open the endpoint.
    """
    raw = environ.get(API_KEYS_ENV)
    if raw is None:
        return ()
    keys = tuple(dict.fromkeys(key.strip() for key in raw.split(",") if key.strip()))
    if not keys:
        raise ApiKeysError(
            f"{API_KEYS_ENV} is set but names no key: list keys separated by commas, or unset it to serve "
            "without authentication"
        )
    return keys


@dataclass(frozen=True)
class PlatformHome:
    """Layout of `MLPLATFORM_HOME` (see DESIGN.md, "Home and storage")."""

    root: Path
    # PostgreSQL for Dagster's storage and the registry/ledger records (None: SQLite and files).
    # Out of repr: the URL may carry a password.
    pg_url: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> PlatformHome:
        environ = os.environ if environ is None else environ
        base = Path(cwd) if cwd is not None else Path.cwd()
        raw = environ.get(HOME_ENV) or DEFAULT_HOME
        root = Path(raw).expanduser()
        if not root.is_absolute():
            root = base / root
        return cls.at(root.resolve(), environ)

    @classmethod
    def at(cls, root: Path, environ: Mapping[str, str] | None = None) -> PlatformHome:
        """The home at `root` with the environment's storage settings (MLPLATFORM_PG_URL)."""
        environ = os.environ if environ is None else environ
        return cls(Path(root), pg_url=environ.get(PG_URL_ENV) or None)

    @property
    def lake(self) -> Path:
        return self.root / "lake"

    @property
    def landing(self) -> Path:
        return self.lake / "landing" / "reviews"

    @property
    def labels(self) -> Path:
        """Where ground truth lands: CSV files keyed by `review_id` with a `label` or a `rating` column."""
        return self.lake / "landing" / "labels"

    @property
    def raw(self) -> Path:
        return self.lake / "raw"

    @property
    def quarantine(self) -> Path:
        return self.lake / "quarantine"

    @property
    def batch(self) -> Path:
        return self.lake / "batch"

    @property
    def audit(self) -> Path:
        return self.lake / "audit"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def capture(self) -> Path:
        return self.root / "capture"

    @property
    def alerts(self) -> Path:
        return self.root / "alerts"

    @property
    def dagster(self) -> Path:
        return self.root / "dagster"

    @property
    def settings_file(self) -> Path:
        """Deployment overrides of the packaged defaults (same keys as config/platform.toml)."""
        return self.root / "platform.toml"

    @property
    def dataset_file(self) -> Path:
        """The home's dataset contract (core/data/contract.py; the packaged default when absent)."""
        return self.root / "dataset.toml"

    @property
    def training_file(self) -> Path:
        """A deployment's own model search (replaces the packaged config/training.toml when present)."""
        return self.root / "training.toml"

    def _layout(self) -> tuple[Path, ...]:
        """The directories `ensure()` creates."""
        return (
            self.landing,
            self.raw,
            self.quarantine,
            self.batch,
            self.audit,
            self.artifacts,
            self.registry,
            self.capture,
            self.alerts,
            self.dagster,
        )

    def exists(self) -> bool:
        """Whether `root` holds a platform home: a directory of its layout, or its configuration written
        ahead (platform.toml, training.toml, or dataset.toml: a new user writes the dataset contract first,
        then checks files against it before landing any).

        Commands that only read or change what a home holds refuse a path that holds none, rather than
        lay out an empty home there (see cli.HomeUse).
        """
        if not self.root.is_dir():
            return False
        tops = {path.relative_to(self.root).parts[0] for path in self._layout()}
        return any((self.root / top).is_dir() for top in tops) or any(
            path.is_file() for path in (self.settings_file, self.training_file, self.dataset_file)
        )

    def ensure(self) -> PlatformHome:
        for path in self._layout():
            path.mkdir(parents=True, exist_ok=True)
        return self
