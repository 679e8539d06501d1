"""A private PostgreSQL server for the tests: initdb in a temp dir, one fresh database per test.

The server listens on 127.0.0.1 (a free port) and on a unix socket in its own directory; it runs as
the `postgres` OS user when the tests run as root (PostgreSQL refuses root), and is stopped at the end
of the session. Tests that need it skip with the reason only when PostgreSQL is not installed
(scripts/test-setup.sh installs Debian's package) or the server cannot start.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mlplatform_tests.integration.processes import free_port

SERVER_USER = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 60
# Durability is not under test here; speed is (a crash of the test server loses nothing of value).
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=100")


def find_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout first, then PATH)."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def database_name(database_url: str) -> str:
    return database_url.rsplit("/", 1)[1]


@dataclass
class PostgresServer:
    """One private server: `url(db)` for clients, `stop()`/`start()` to simulate an outage."""

    bin_dir: Path
    base: Path
    port: int
    _names: Iterator[int] = field(default_factory=itertools.count)

    @property
    def data_dir(self) -> Path:
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        return self.base / "socket"

    @property
    def log_file(self) -> Path:
        return self.base / "server.log"

    def _as_server_user(self) -> list[str]:
        return ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        command = [*self._as_server_user(), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {(done.stderr or done.stdout).strip()[-500:]}")

    def init(self) -> None:
        self.data_dir.mkdir(parents=True)
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            account = pwd.getpwnam(SERVER_USER)
            for path in (self.base, self.data_dir, self.socket_dir):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )

    def start(self) -> None:
        options = " ".join(
            [f"-p {self.port}", f"-k {self.socket_dir}", "-c listen_addresses=127.0.0.1"]
            + [f"-c {setting}" for setting in FAST_SETTINGS]
        )
        self._run(
            str(self.bin_dir / "pg_ctl"),
            "start",
            "-D",
            str(self.data_dir),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-o",
            options,
        )

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a real outage."""
        self._run(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast", "-w")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        """Run one statement as the superuser (autocommit, so CREATE DATABASE works); return its rows."""
        import psycopg2

        connection = psycopg2.connect(self.url(database), connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall() if cursor.description else []
        finally:
            connection.close()

    def cut_connection_on_event(self, database_url: str, event: str) -> None:
        """Make the server drop any connection that journals `event`: an outage in the middle of a write.

        The records tables must exist (any read through the records creates them); `heal` undoes it.
        """
        database = database_name(database_url)
        self.execute(
            f"""CREATE FUNCTION cut_connection() RETURNS trigger AS $$
                BEGIN
                  IF NEW.entry->>'event' = '{event}' THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF;
                  RETURN NEW;
                END $$ LANGUAGE plpgsql""",
            database,
        )
        self.execute(
            "CREATE TRIGGER cut BEFORE INSERT ON mlplatform_journal FOR EACH ROW EXECUTE FUNCTION cut_connection()",
            database,
        )

    def heal(self, database_url: str) -> None:
        """Undo `cut_connection_on_event`."""
        self.execute("DROP TRIGGER cut ON mlplatform_journal", database_name(database_url))

    def create_database(self) -> str:
        """A new empty database (copied from template0, which is fast); its URL."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE template0")
        return self.url(name)


def _start_private_server() -> PostgresServer:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (no initdb): run scripts/test-setup.sh to install it")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            pytest.skip(f"running as root but there is no '{SERVER_USER}' OS user to run PostgreSQL as")
    # Under /tmp with a short name: the server user must reach it and socket paths are limited to ~100 bytes.
    server = PostgresServer(bin_dir, Path(tempfile.mkdtemp(prefix="mlp-pg-")), free_port())
    try:
        server.init()
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        log = server.log_file.read_text(errors="replace")[-500:] if server.log_file.exists() else ""
        shutil.rmtree(server.base, ignore_errors=True)
        pytest.skip(f"PostgreSQL could not start: {exc} {log}".strip())
    return server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's private PostgreSQL server (started on first use, stopped at session end)."""
    server = _start_private_server()
    try:
        yield server
    finally:
        # It may already be down: a test that simulated an outage failed before restarting it.
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            server.stop()
        shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database of its own for this test, on the private server."""
    return postgres_server.create_database()
