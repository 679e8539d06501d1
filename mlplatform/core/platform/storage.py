"""Storage locations: where the lake, artifacts, registry and capture keep their bytes.

A location is a local directory (the default, under MLPLATFORM_HOME) or an fsspec URL such as
`s3://bucket/prefix`, `gs://bucket/prefix`, `memory://name` (tests) or `file:///abs/path`. It offers what
the platform needs from a place to keep bytes, and nothing that object stores lack (no appends, no
locks, no renames):

    put_bytes / put_file   atomic: a reader sees the old object or the whole new one, never a part.
                           Local: temp file + fsync + rename. Object store: one PUT (or a multipart
                           upload, which is also invisible until complete).
    immutable=True         written once: an existing object must already hold these exact bytes.
    get_bytes, open_read, exists, sha256, list
    list_sizes             names with sizes from one listing (no request per object)

Keys are relative '/'-separated names (`reviews/<sha>.parquet`). Local directories keep the fast
local code (`mlplatform.core.platform.fsio`). Credentials and endpoints come from each driver's own
environment (for S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, ...), never from
the settings file. Should a URL carry them anyway (`ftp://user:password@host/path`), only fsspec sees
them: a location's `url`, `url_of` and its errors show the URL without them (core/platform/redaction.py).
"""

from __future__ import annotations

import shutil
import stat
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.fsio import (
    HASH_CHUNK_BYTES,
    sha256_bytes,
    sha256_file,
    sha256_stream,
    write_atomic,
    write_bytes_atomic,
)
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.redaction import redact, redact_url, url_secrets
from mlplatform.core.platform.settings import StorageRules

STORAGE_KINDS: tuple[str, ...] = tuple(StorageRules.model_fields)
_LOCAL_SCHEMES = frozenset({"file", "local"})


class StorageError(UserError):
    """A storage location could not do what was asked; the message names the object."""


class StorageConfigError(StorageError, ValueError):
    """A location URL is malformed, names an unknown scheme, or its driver is not installed."""


class ObjectNotFound(StorageError, LookupError):
    """No object under this key."""


class ImmutableConflict(StorageError):
    """An immutable object exists already with different bytes (it is never overwritten)."""


def validate_key(key: str) -> str:
    """A key: relative, '/'-separated, no '.', '..' or empty parts (so it cannot escape its location)."""
    if not isinstance(key, str) or not key:
        raise StorageError(f"storage key must be a non-empty string, got {key!r}")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise StorageError(f"storage key {key!r} must be a relative POSIX path")
    if any(part in ("", ".", "..") for part in key.split("/")):
        raise StorageError(f"storage key {key!r} must not contain '.', '..' or empty parts")
    return key


class StorageLocation(ABC):
    """A place to keep immutable objects and small records; see the module docstring."""

    @property
    @abstractmethod
    def url(self) -> str:
        """The location as a URL (a plain absolute path for local directories)."""

    @abstractmethod
    def url_of(self, key: str) -> str:
        """Where the object `key` lives, for messages and metadata (a local path or a URL)."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, *, immutable: bool = False) -> None:
        """Store `data` under `key` atomically (see `immutable` in the module docstring)."""

    @abstractmethod
    def _upload(self, key: str, source: Path, *, read_only: bool) -> None:
        """Copy the local file `source` to `key` atomically (streamed, not read into memory)."""

    @abstractmethod
    def _open(self, key: str) -> BinaryIO:
        """The object opened for reading (FileNotFoundError when missing)."""

    @abstractmethod
    def _read(self, key: str) -> bytes:
        """The object's bytes (FileNotFoundError when missing)."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""

    @contextmanager
    def _not_found_is_an_error(self, key: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError:
            raise ObjectNotFound(f"no object {self.url_of(key)}") from None

    @contextmanager
    def open_read(self, key: str) -> Iterator[BinaryIO]:
        """A binary file object to stream the object's bytes; raises ObjectNotFound."""
        with self._not_found_is_an_error(key):
            handle = self._open(key)
        with handle:
            yield handle

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; raises ObjectNotFound."""
        with self._not_found_is_an_error(key):
            return self._read(key)

    @abstractmethod
    def list_sizes(self, prefix: str = "", *, recursive: bool = True) -> dict[str, int]:
        """{key: size in bytes} of the objects under the directory `prefix`, sorted by key (empty when
        there is none), from one listing: on object storage one LIST (per 1000 keys), no request per object.

        `recursive=False` gives only the objects directly in `prefix`, not those in its subdirectories.
        """

    def list(self, prefix: str = "", *, recursive: bool = True) -> list[str]:
        """Keys of the objects under the directory `prefix`, sorted (see `list_sizes`)."""
        return [*self.list_sizes(prefix, recursive=recursive)]

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        """The bytes of several objects (remote locations fetch them concurrently)."""
        return {key: self.get_bytes(key) for key in keys}

    def sha256(self, key: str) -> str:
        """The sha256 hex digest of the stored object, streamed."""
        with self.open_read(key) as handle:
            return sha256_stream(handle)

    def put_file(self, key: str, source: Path, *, immutable: bool = False) -> str:
        """Upload the local file `source` to `key`, then read it back and check its sha256.

        Returns that sha256. With `immutable`, an object already there must hold the same bytes
        (it is left alone); anything else raises ImmutableConflict. Raises StorageError when the
        stored copy does not match the source, so a caller may delete the source only on success.
        """
        expected = sha256_file(source)
        if immutable and self.exists(key):
            self._require_same(key, expected)
            return expected
        self._upload(key, source, read_only=immutable)
        found = self.sha256(key)
        if found != expected:
            raise StorageError(
                f"upload of {source} to {self.url_of(key)} is corrupt: sha256 {found}, expected {expected}"
            )
        return expected

    def _require_same(self, key: str, expected_sha256: str) -> None:
        found = self.sha256(key)
        if found != expected_sha256:
            raise ImmutableConflict(
                f"{self.url_of(key)} exists but holds sha256 {found}, not {expected_sha256}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _identity(self) -> str:
        """What makes two locations the same place (`url` is only what messages show)."""
        return self.url

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StorageLocation) and other._identity() == self._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


class LocalLocation(StorageLocation):
    """A directory on local disk; writes are temp file + fsync + rename (mlplatform.core.platform.fsio)."""

    def __init__(self, root: Path) -> None:
        root = Path(root).expanduser()
        if not root.is_absolute():
            raise StorageConfigError(f"a local storage location must be an absolute path, got {str(root)!r}")
        self.root = root

    @property
    def url(self) -> str:
        return str(self.root)

    def path_of(self, key: str) -> Path:
        """The local file of `key`."""
        return self.root.joinpath(*validate_key(key).split("/"))

    def url_of(self, key: str) -> str:
        return str(self.path_of(key))

    def put_bytes(self, key: str, data: bytes, *, immutable: bool = False) -> None:
        target = self.path_of(key)
        if immutable and target.exists():
            self._require_same(key, sha256_bytes(data))
            return
        write_bytes_atomic(target, data, read_only=immutable)

    def _upload(self, key: str, source: Path, *, read_only: bool) -> None:
        def copy(writer: BinaryIO) -> None:
            with open(source, "rb") as reader:
                shutil.copyfileobj(reader, writer, HASH_CHUNK_BYTES)

        write_atomic(self.path_of(key), copy, read_only=read_only)

    def _open(self, key: str) -> BinaryIO:
        return open(self.path_of(key), "rb")  # open_read closes it

    def _read(self, key: str) -> bytes:
        return self.path_of(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path_of(key).is_file()

    def list_sizes(self, prefix: str = "", *, recursive: bool = True) -> dict[str, int]:
        base = self.path_of(prefix) if prefix else self.root
        if not base.is_dir():
            return {}
        candidates = base.rglob("*") if recursive else base.iterdir()
        sizes = {}
        for path in candidates:
            relative = path.relative_to(self.root)
            # dot-names are temp files of writes in progress (fsio.temp_path_for)
            if any(part.startswith(".") for part in relative.parts):
                continue
            try:
                info = path.stat()
            except FileNotFoundError:  # removed since the directory was read: no longer there
                continue
            if stat.S_ISREG(info.st_mode):
                sizes[relative.as_posix()] = info.st_size
        return dict(sorted(sizes.items()))


class FsspecLocation(StorageLocation):
    """A location on an fsspec filesystem (object stores: s3, gs, az, ...; memory for tests)."""

    def __init__(self, url: str, fs: Any, root: str) -> None:
        self._url = url.rstrip("/")  # as configured, credentials included: only fsspec sees it
        self._shown = redact_url(self._url)
        self.fs = fs
        self.root = root.rstrip("/")

    @property
    def url(self) -> str:
        """The URL as messages, metadata and listings show it: without credentials (core/platform/redaction.py)."""
        return self._shown

    def _identity(self) -> str:
        return self._url

    def _path(self, key: str) -> str:
        return f"{self.root}/{validate_key(key)}"

    def url_of(self, key: str) -> str:
        return f"{self._shown}/{validate_key(key)}"

    def _fresh(self, path: str) -> str:
        """Forget cached listings of `path` (other processes write too); returns it."""
        self.fs.invalidate_cache(path)
        return path

    def put_bytes(self, key: str, data: bytes, *, immutable: bool = False) -> None:
        if immutable and self.exists(key):
            self._require_same(key, sha256_bytes(data))
            return
        self.fs.pipe_file(self._path(key), data)  # one PUT: atomic on object stores

    def _upload(self, key: str, source: Path, *, read_only: bool) -> None:
        self.fs.put_file(str(source), self._path(key))  # multipart uploads become visible when complete

    def _open(self, key: str) -> BinaryIO:
        return self.fs.open(self._fresh(self._path(key)), "rb")

    def _read(self, key: str) -> bytes:
        return self.fs.cat_file(self._path(key))

    def get_many(self, keys: list[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        paths = {self._path(key): key for key in keys}
        try:
            found = self.fs.cat(list(paths), on_error="raise")
        except FileNotFoundError as exc:
            raise ObjectNotFound(
                f"no object among {len(keys)} under {self.url}: {redact(str(exc), url_secrets(self._url))}"
            ) from None
        return {paths[_strip_protocol(self.fs, path)]: data for path, data in found.items()}

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._fresh(self._path(key))))

    def list_sizes(self, prefix: str = "", *, recursive: bool = True) -> dict[str, int]:
        base = self._fresh(self._path(prefix) if prefix else self.root)
        try:
            if recursive:
                infos = list(self.fs.find(base, detail=True).values())
            else:
                infos = self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return {}
        start = len(self.root) + 1 if self.root else 0
        sizes = {
            _strip_protocol(self.fs, info["name"])[start:]: int(info["size"])
            for info in infos
            if info["type"] == "file"
        }
        return dict(sorted(sizes.items()))


def _strip_protocol(fs: Any, path: str) -> str:
    return fs._strip_protocol(path).rstrip("/")


# --- opening a location from configuration --------------------------------------------------------


def open_location(spec: str | Path) -> StorageLocation:
    """The location a setting names: an absolute path, `file:///abs/path`, or an fsspec URL.

    Raises StorageConfigError (one line) for a relative path, an unknown scheme, or a scheme whose
    driver package is not installed.
    """
    if isinstance(spec, Path):
        return LocalLocation(spec)
    text = spec.strip()
    if "://" not in text:
        return LocalLocation(Path(text))
    scheme = text.split("://", 1)[0].lower()
    if scheme in _LOCAL_SCHEMES:
        return LocalLocation(Path(unquote(urlsplit(text).path)))
    return _fsspec_location(text, scheme)


def _fsspec_location(url: str, scheme: str) -> FsspecLocation:
    import fsspec  # imported here: only remote locations need it (and its driver imports)
    from fsspec.registry import known_implementations, registry

    shown, secrets = redact_url(url), url_secrets(url)  # messages never show the URL's credentials
    if scheme not in known_implementations and scheme not in registry:
        raise StorageConfigError(
            f"storage URL {shown!r}: unknown scheme {scheme!r} (fsspec has no driver for it)"
        )
    try:
        fsspec.get_filesystem_class(scheme)
    except ImportError as exc:
        hint = known_implementations.get(scheme, {}).get("err") or str(exc)
        raise StorageConfigError(
            f"storage URL {shown!r}: the {scheme!r} driver is not installed ({hint})"
        ) from None
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ValueError, TypeError, OSError) as exc:
        raise StorageConfigError(
            f"storage URL {shown!r} cannot be opened: {redact(str(exc), secrets)}"
        ) from None
    if not str(root).strip("/"):
        raise StorageConfigError(f"storage URL {shown!r} names no bucket or directory")
    return FsspecLocation(url, fs, str(root))


def location_from_settings(home: PlatformHome, storage: StorageRules, kind: str) -> StorageLocation:
    """The location of `kind` (lake, artifacts, registry, capture): `[storage] <kind>`, or the home's
    own directory when that is empty. Raises StorageConfigError (one line) for a bad setting."""
    if kind not in STORAGE_KINDS:
        raise StorageConfigError(f"unknown storage kind {kind!r} (known: {', '.join(STORAGE_KINDS)})")
    spec: str = getattr(storage, kind)
    if not spec.strip():
        return LocalLocation(getattr(home, kind))
    try:
        return open_location(spec)
    except StorageConfigError as exc:
        raise StorageConfigError(f"[storage] {kind}: {exc}") from None


def is_home_directory(location: StorageLocation, directory: Path) -> bool:
    """Whether `location` is the local `directory` itself (then nothing needs publishing)."""
    return isinstance(location, LocalLocation) and location.root.resolve() == Path(directory).resolve()


__all__ = [
    "STORAGE_KINDS",
    "FsspecLocation",
    "ImmutableConflict",
    "LocalLocation",
    "ObjectNotFound",
    "StorageConfigError",
    "StorageError",
    "StorageLocation",
    "is_home_directory",
    "location_from_settings",
    "open_location",
    "validate_key",
]
