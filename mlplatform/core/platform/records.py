"""The platform's own mutable records: an append-only journal with an exclusive section, and pointers.

The model registry (status events + aliases) and the lake's audit ledger keep their records here,
through one interface with two implementations:

- `FileRecords` (the default, no server): a JSON-lines journal appended under an flock and fsynced,
  and a pointers file (one JSON object: names to JSON values) replaced by atomic rename. A torn last line from a crash is skipped when read.
- `PostgresRecords` (when the home has a `pg_url`): table `mlplatform_journal` (one row per entry,
  ordered by id) and table `mlplatform_pointers` (one JSON object of pointers per record set, with a
  revision that grows on every change). An exclusive section is one transaction holding
  `pg_advisory_xact_lock`, so pointer moves and the entry that explains them commit together or not at
  all. Tables are created idempotently on first use.

Once a directory's records moved to PostgreSQL, a `records.json` marker in it makes the file backend
refuse to run there (a process started without MLPLATFORM_PG_URL fails loudly instead of reading an
empty registry). File records found on the first PostgreSQL use are imported once, in one transaction.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.fsio import file_lock, write_json_atomic
from mlplatform.core.platform.redaction import redact, url_secrets

RECORDS_MARKER = "records.json"
POSTGRES_BACKEND = "postgresql"
# A dead server must fail an operation within seconds, not hang a run (a URL's own
# `connect_timeout=` parameter takes precedence).
CONNECT_TIMEOUT_SECONDS = 10
_SCHEMA_LOCK = "mlplatform:records-schema"
_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS mlplatform_journal (
        id bigserial PRIMARY KEY,
        journal text NOT NULL,
        entry jsonb NOT NULL,
        recorded_at timestamptz NOT NULL DEFAULT now())""",
    "CREATE INDEX IF NOT EXISTS mlplatform_journal_by_name ON mlplatform_journal (journal, id)",
    """CREATE TABLE IF NOT EXISTS mlplatform_pointers (
        name text PRIMARY KEY,
        pointers jsonb NOT NULL,
        revision bigint NOT NULL)""",
)

_SCHEMA_PRESENT = (
    "SELECT to_regclass('mlplatform_journal') IS NOT NULL, "
    "to_regclass('mlplatform_journal_by_name') IS NOT NULL, "
    "to_regclass('mlplatform_pointers') IS NOT NULL"
)


class RecordsError(UserError, RuntimeError):
    """Records could not be read or written (one-line message)."""


class RecordsUnavailable(RecordsError):
    """The PostgreSQL server holding the records could not be reached or dropped the connection."""


class RecordsLockTimeout(RecordsError):
    """An advisory lock was not taken within its timeout (another session held it all along)."""


@dataclass(frozen=True)
class JournalRead:
    """Every readable entry in order, and how many lines could not be read (a torn write)."""

    entries: tuple[dict[str, Any], ...]
    skipped: int


class RecordSection(Protocol):
    """What an exclusive section may do; nobody else changes these records until it ends."""

    def entries(self) -> list[dict[str, Any]]: ...

    def append(self, entry: Mapping[str, Any]) -> None: ...

    def pointers(self) -> dict[str, Any]: ...

    def set_pointers(self, pointers: Mapping[str, Any]) -> None: ...


class Records(Protocol):
    """One set of records: a journal and (optionally) its pointers."""

    def read(self) -> JournalRead: ...

    def append(self, entry: Mapping[str, Any]) -> None: ...

    def pointer_state(self) -> tuple[dict[str, Any], int]: ...

    def exclusive(self) -> AbstractContextManager[RecordSection]: ...


def _entry_line(entry: Mapping[str, Any]) -> str:
    try:
        return json.dumps(dict(entry), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RecordsError(f"record entry is not JSON-serialisable: {exc}") from exc


def _parse_lines(content: bytes) -> JournalRead:
    entries: list[dict[str, Any]] = []
    skipped = 0
    for line in content.split(b"\n"):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if isinstance(entry, dict):
            entries.append(entry)
        else:
            skipped += 1
    return JournalRead(tuple(entries), skipped)


def append_line(path: Path, line: str) -> None:
    """Append one line under an exclusive flock of the file, fsynced; a torn last line is closed off first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        size = os.fstat(fd).st_size
        # After a crash mid-write the file ends without a newline: start on a fresh line so the
        # torn fragment stays a line of its own (skipped when read) instead of corrupting this one.
        prefix = b"\n" if size and os.pread(fd, 1, size - 1) != b"\n" else b""
        os.write(fd, prefix + line.encode("utf-8") + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)  # closing releases the lock


def read_lines(path: Path) -> JournalRead:
    """The JSON-lines journal at `path`, read under a shared flock (empty when the file is absent)."""
    try:
        with open(path, "rb") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH)
            content = handle.read()  # closing releases the lock
    except FileNotFoundError:
        return JournalRead((), 0)
    return _parse_lines(content)


# ------------------------------------------------------------------------------------------ files


@dataclass(frozen=True)
class FileRecords:
    """Records as files: `journal_path` (JSON lines), `pointers_path` (one JSON object), `lock_path`."""

    journal_path: Path
    lock_path: Path
    pointers_path: Path | None = None

    @property
    def marker_path(self) -> Path:
        return self.journal_path.parent / RECORDS_MARKER

    def _refuse_if_moved(self) -> None:
        if self.marker_path.exists():
            raise RecordsError(
                f"the records of {self.journal_path.parent} live in PostgreSQL (see {self.marker_path}); "
                "set MLPLATFORM_PG_URL to use them"
            )

    def read(self) -> JournalRead:
        """Every entry in order; lines torn by a crash mid-append are skipped and counted."""
        self._refuse_if_moved()
        return read_lines(self.journal_path)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry durably."""
        self._refuse_if_moved()
        append_line(self.journal_path, _entry_line(entry))

    def pointers(self) -> dict[str, Any]:
        """Current pointers ({} before the first change)."""
        if self.pointers_path is None:
            return {}
        try:
            text = self.pointers_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        try:
            return dict(json.loads(text))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise RecordsError(f"cannot read {self.pointers_path}: {exc}") from exc

    def pointer_state(self) -> tuple[dict[str, Any], int]:
        """(pointers, mtime_ns of the pointers file; 0 before the first change)."""
        self._refuse_if_moved()
        if self.pointers_path is None:
            return {}, 0
        try:
            stamp = self.pointers_path.stat().st_mtime_ns  # before reading: a stale stamp only re-polls
        except FileNotFoundError:
            return {}, 0
        return self.pointers(), stamp

    def set_pointers(self, pointers: Mapping[str, Any]) -> None:
        if self.pointers_path is None:
            raise RecordsError(f"the records of {self.journal_path} have no pointers")
        write_json_atomic(self.pointers_path, dict(pointers))

    @contextmanager
    def exclusive(self) -> Iterator[RecordSection]:
        """Hold the inter-process lock; every write inside is durable as soon as it returns."""
        self._refuse_if_moved()
        with file_lock(self.lock_path):
            yield _FileSection(self)


@dataclass(frozen=True)
class _FileSection:
    records: FileRecords

    def entries(self) -> list[dict[str, Any]]:
        return list(read_lines(self.records.journal_path).entries)

    def append(self, entry: Mapping[str, Any]) -> None:
        append_line(self.records.journal_path, _entry_line(entry))

    def pointers(self) -> dict[str, Any]:
        return self.records.pointers()

    def set_pointers(self, pointers: Mapping[str, Any]) -> None:
        self.records.set_pointers(pointers)


# ------------------------------------------------------------------------------------- PostgreSQL


POSTGRES_MODULES = ("psycopg2", "dagster_postgres")


def require_postgres() -> None:
    """PostgreSQL support is the `postgres` extra: without it, one line saying how to install it."""
    import importlib.util

    missing = [name for name in POSTGRES_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise RecordsUnavailable(
            f"MLPLATFORM_PG_URL is set but PostgreSQL support is not installed (no {', '.join(missing)}): "
            "pip install 'mlplatform[postgres]'"
        )


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _redacted_first_line(exc: BaseException, pg_url: str) -> str:
    """The first line of a driver's message, without any part of the URL's credentials (the driver may
    quote the URL, or a fragment of it, when it cannot parse it)."""
    return redact(_first_line(exc), url_secrets(pg_url))


def postgres_location(pg_url: str) -> str:
    """'<db> on <host>:<port>' for messages: never the password. Raises RecordsError (redacted, with no
    chained driver exception) for a URL libpq cannot parse."""
    require_postgres()
    from psycopg2.extensions import parse_dsn

    try:
        params = parse_dsn(_libpq_url(pg_url))
    except Exception as exc:  # psycopg2.ProgrammingError for a malformed URL
        raise RecordsError(
            f"MLPLATFORM_PG_URL is not a valid PostgreSQL URL: {_redacted_first_line(exc, pg_url)}"
        ) from None
    return f"database {params.get('dbname', '?')} on {params.get('host', 'localhost')}:{params.get('port', 5432)}"


def _libpq_url(pg_url: str) -> str:
    """SQLAlchemy-style 'postgresql+psycopg2://' becomes the 'postgresql://' libpq understands."""
    scheme, sep, rest = pg_url.partition("://")
    if not sep or scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise RecordsError("MLPLATFORM_PG_URL must start with postgresql://")
    return f"postgresql://{rest}"


def sqlalchemy_url(pg_url: str) -> str:
    """The URL for SQLAlchemy (Dagster's storage) with the psycopg2 driver named, unless one is named.

    SQLAlchemy 2.1 maps a bare 'postgresql://' to psycopg 3; the platform ships psycopg2.
    """
    postgres_location(pg_url)  # refuses a malformed URL here, before Dagster (or its yaml) holds it
    scheme, _, rest = pg_url.partition("://")
    return pg_url if "+" in scheme else f"postgresql+psycopg2://{rest}"


@contextmanager
def postgres_transaction(
    pg_url: str, *, lock: str | None = None, lock_timeout_s: float | None = None
) -> Iterator[Any]:
    """A cursor in one transaction (committed when the block ends, rolled back on error).

    With `lock`, the transaction first takes that name's advisory lock, so such sections run one at a
    time across every process and machine; with `lock_timeout_s` too, it waits at most that long for
    it, then raises RecordsLockTimeout. Connection failures raise RecordsUnavailable; the driver's
    own message is in it (its first line), and the driver exception is not chained, so runs report
    this one line as the cause.
    """
    require_postgres()
    import psycopg2

    url = _libpq_url(pg_url)
    options = {} if "connect_timeout" in url else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    try:
        connection = psycopg2.connect(url, **options)
    except psycopg2.Error as exc:
        raise _translated(exc, pg_url) from None
    try:
        cursor = connection.cursor()
        if lock is not None:
            _take_advisory_lock(cursor, lock, lock_timeout_s, pg_url)
        yield cursor
        connection.commit()
    except psycopg2.Error as exc:
        raise _translated(exc, pg_url) from None
    finally:
        connection.close()  # an open transaction is rolled back by the server


def _take_advisory_lock(cursor: Any, lock: str, timeout_s: float | None, pg_url: str) -> None:
    """`lock`'s transaction-scoped advisory lock; a bounded wait uses the server's lock_timeout."""
    from psycopg2.errors import LockNotAvailable

    if timeout_s is None:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(lock),))
        return
    # SET LOCAL semantics (is_local = true): the bound ends with this transaction at the latest.
    cursor.execute(
        "SELECT set_config('lock_timeout', %s, true)", (f"{max(1, math.ceil(timeout_s * 1000))}ms",)
    )
    try:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(lock),))
    except LockNotAvailable:
        raise RecordsLockTimeout(
            f"advisory lock {lock!r} stayed held for more than {timeout_s:g} s ({postgres_location(pg_url)})"
        ) from None
    cursor.execute("RESET lock_timeout")  # the block's own statements wait as the session says


def _translated(exc: Exception, pg_url: str) -> RecordsError:
    import psycopg2

    where, message = postgres_location(pg_url), _redacted_first_line(exc, pg_url)
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return RecordsUnavailable(f"PostgreSQL records unavailable ({where}): {message}")
    return RecordsError(f"PostgreSQL records error ({where}): {message}")


@contextmanager
def postgres_session_lock(pg_url: str, name: str) -> Iterator[None]:
    """Hold `name`'s advisory lock for the block (e.g. around Dagster's storage migrations)."""
    with postgres_transaction(pg_url, lock=name):
        yield


@dataclass
class PostgresRecords:
    """Records in PostgreSQL: journal `name` and pointer set `name`; `files` are the records it replaces.

    The first use creates the tables and imports the file records (if any) once.
    """

    pg_url: str
    name: str
    files: FileRecords
    _ready: bool = field(default=False, init=False, repr=False)

    def _ensure_ready(self) -> None:
        if self._ready:
            return
        with postgres_transaction(self.pg_url) as cursor:
            cursor.execute(_SCHEMA_PRESENT)
            present = all(cursor.fetchone())
        if not present:  # DDL only when needed: CREATE INDEX IF NOT EXISTS waits behind open writes
            with postgres_transaction(self.pg_url, lock=_SCHEMA_LOCK) as cursor:
                for statement in _SCHEMA:
                    cursor.execute(statement)
        if not self.files.marker_path.exists():
            adopted = False
            with postgres_transaction(self.pg_url, lock=self._lock_name) as cursor:
                # Checked again under the lock: another process may have imported (and appended) since.
                if not self.files.marker_path.exists():
                    self._adopt_file_records(_PostgresSection(cursor, self.name))
                    adopted = True
            if adopted:  # after the commit: the marker never claims an import that did not happen
                write_json_atomic(self.files.marker_path, {"backend": POSTGRES_BACKEND, "name": self.name})
        self._ready = True

    @property
    def _lock_name(self) -> str:
        return f"mlplatform:records:{self.name}"

    def _adopt_file_records(self, section: _PostgresSection) -> None:
        """Import the file journal and pointers once; an import already committed is recognised."""
        file_entries = list(read_lines(self.files.journal_path).entries)
        file_pointers = self.files.pointers()
        stored_entries, stored_pointers = section.entries(), section.pointers()
        if not file_entries and not file_pointers:
            return
        if (stored_entries, stored_pointers) == (file_entries, file_pointers):
            return  # imported before; only the marker was missing
        if stored_entries or stored_pointers:
            raise RecordsError(
                f"both {self.files.journal_path.parent} and PostgreSQL hold '{self.name}' records; "
                "refusing to merge them (one database per platform home)"
            )
        for entry in file_entries:
            section.append(entry)
        if file_pointers:
            section.set_pointers(file_pointers)

    def read(self) -> JournalRead:
        """Every entry in commit order (nothing is ever torn in a transaction)."""
        self._ensure_ready()
        with postgres_transaction(self.pg_url) as cursor:
            return JournalRead(tuple(_PostgresSection(cursor, self.name).entries()), 0)

    def append(self, entry: Mapping[str, Any]) -> None:
        """Append one entry; appends are serialised so ids follow commit order."""
        self._ensure_ready()
        with postgres_transaction(self.pg_url, lock=self._lock_name) as cursor:
            _PostgresSection(cursor, self.name).append(entry)

    def pointer_state(self) -> tuple[dict[str, Any], int]:
        """(pointers, revision: 0 before the first change, then +1 on every change)."""
        self._ensure_ready()
        with postgres_transaction(self.pg_url) as cursor:
            return _PostgresSection(cursor, self.name).pointer_state()

    @contextmanager
    def exclusive(self) -> Iterator[RecordSection]:
        """One transaction under the records' advisory lock: everything inside commits together or not at all."""
        self._ensure_ready()
        with postgres_transaction(self.pg_url, lock=self._lock_name) as cursor:
            yield _PostgresSection(cursor, self.name)


@dataclass(frozen=True)
class _PostgresSection:
    cursor: Any
    name: str

    def entries(self) -> list[dict[str, Any]]:
        self.cursor.execute(
            "SELECT entry FROM mlplatform_journal WHERE journal = %s ORDER BY id", (self.name,)
        )
        return [row[0] for row in self.cursor.fetchall()]

    def append(self, entry: Mapping[str, Any]) -> None:
        self.cursor.execute(
            "INSERT INTO mlplatform_journal (journal, entry) VALUES (%s, %s::jsonb)",
            (self.name, _entry_line(entry)),
        )

    def pointer_state(self) -> tuple[dict[str, Any], int]:
        self.cursor.execute(
            "SELECT pointers, revision FROM mlplatform_pointers WHERE name = %s", (self.name,)
        )
        row = self.cursor.fetchone()
        return ({}, 0) if row is None else (dict(row[0]), int(row[1]))

    def pointers(self) -> dict[str, Any]:
        return self.pointer_state()[0]

    def set_pointers(self, pointers: Mapping[str, Any]) -> None:
        self.cursor.execute(
            """INSERT INTO mlplatform_pointers (name, pointers, revision) VALUES (%s, %s::jsonb, 1)
               ON CONFLICT (name) DO UPDATE
               SET pointers = EXCLUDED.pointers, revision = mlplatform_pointers.revision + 1""",
            (self.name, json.dumps(dict(pointers), sort_keys=True)),
        )


def open_records(files: FileRecords, name: str, pg_url: str | None) -> Records:
    """The records backend of a home: PostgreSQL under `name` when `pg_url` is set, else `files`."""
    if pg_url is None:
        return files
    return PostgresRecords(pg_url, name, files)
