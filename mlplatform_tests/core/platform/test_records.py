"""Records backends: the journal, the exclusive section and pointers, on files and on a real PostgreSQL.

Also: the registry and the lake's audit ledger on PostgreSQL under concurrent writers from several
processes, alias moves that commit with their event or not at all, an outage, and the one-time import
of file records.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from mlplatform.core.data.lake import LEDGER_RECORDS, AccessDenied, Lake
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import (
    RECORDS_MARKER,
    FileRecords,
    PostgresRecords,
    Records,
    RecordsError,
    RecordsUnavailable,
    open_records,
)
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import APPROVED, PRODUCTION, ModelRegistry, RegistryError
from mlplatform_tests.postgres import PostgresServer, database_name

METRICS = {"macro_f1": 0.7}
BACKENDS = ["files", pytest.param("postgres", marks=pytest.mark.postgres)]


def file_records(directory: Path) -> FileRecords:
    return FileRecords(directory / "journal.jsonl", directory / ".lock", directory / "pointers.json")


@pytest.fixture(params=BACKENDS)
def pg_url(request) -> str | None:
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


@pytest.fixture
def records(tmp_path: Path, pg_url: str | None) -> Records:
    opened = open_records(file_records(tmp_path / "records"), "test", pg_url)
    # The PostgreSQL cases must really run on PostgreSQL, not quietly on the files.
    assert isinstance(opened, PostgresRecords) == (pg_url is not None)
    return opened


# ------------------------------------------------------------------------------------ both backends


def test_journal_keeps_entries_in_order_with_their_values(records: Records) -> None:
    entries = [{"n": n, "text": 'é\n"quoted"', "nested": {"f": 0.1 + 0.2, "none": None}} for n in range(5)]
    for entry in entries:
        records.append(entry)
    read = records.read()
    assert list(read.entries) == entries
    assert read.skipped == 0


def test_pointers_change_only_inside_a_section_and_the_stamp_moves(records: Records) -> None:
    assert records.pointer_state() == ({}, 0)
    with records.exclusive() as section:
        section.set_pointers({"production": "v1"})
        section.append({"event": "promoted", "to": "v1"})
    first = records.pointer_state()
    with records.exclusive() as section:
        assert section.pointers() == {"production": "v1"}
        assert section.entries() == [{"event": "promoted", "to": "v1"}]
        section.set_pointers({"production": "v2", "previous": "v1"})

    pointers, stamp = records.pointer_state()
    assert first[0] == {"production": "v1"} and first[1] > 0
    assert pointers == {"production": "v2", "previous": "v1"} and stamp >= first[1]


def test_an_entry_that_is_not_json_is_refused(records: Records) -> None:
    with pytest.raises(RecordsError, match="not JSON-serialisable"):
        records.append({"when": object()})
    assert records.read().entries == ()


def _append_many(directory: str, pg_url: str | None, worker: int, count: int) -> None:
    records = open_records(file_records(Path(directory)), "test", pg_url)
    for index in range(count):
        records.append({"worker": worker, "index": index, "pad": "x" * 300})


def test_appends_from_several_processes_are_all_kept_in_order(tmp_path: Path, pg_url: str | None) -> None:
    workers, per_worker = 4, 40
    directory = tmp_path / "records"
    _run_processes(_append_many, [(str(directory), pg_url, worker, per_worker) for worker in range(workers)])

    entries = open_records(file_records(directory), "test", pg_url).read().entries
    assert pg_url is None or not list(tmp_path.rglob("*.jsonl")), "PostgreSQL appends went to files"
    assert len(entries) == workers * per_worker
    for worker in range(workers):
        assert [e["index"] for e in entries if e["worker"] == worker] == list(range(per_worker))


def _run_processes(target, arguments: list[tuple]) -> None:
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=target, args=args) for args in arguments]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=90)
        assert process.exitcode == 0


# -------------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_a_failed_section_leaves_nothing_behind(tmp_path: Path, postgres_url: str) -> None:
    records = open_records(file_records(tmp_path), "test", postgres_url)
    with records.exclusive() as section:
        section.set_pointers({"production": "v1"})

    with pytest.raises(RuntimeError, match="boom"), records.exclusive() as section:
        section.set_pointers({"production": "v2"})
        section.append({"event": "promoted", "to": "v2"})
        raise RuntimeError("boom")

    assert records.pointer_state() == ({"production": "v1"}, 1)
    assert records.read().entries == ()


def approved(registry: ModelRegistry, tag: str) -> str:
    version = registry.register(f"model-{tag}".encode(), {"name": tag}, METRICS).version
    registry.approve(version, by="tester")
    return version


@pytest.mark.postgres
def test_a_promotion_cut_off_mid_transaction_moves_no_alias(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    registry = ModelRegistry.for_home(
        PlatformHome(tmp_path / "home", pg_url=postgres_url), Settings.packaged().storage
    )
    first, second = approved(registry, "a"), approved(registry, "b")
    registry.promote(first, by="tester")
    postgres_server.cut_connection_on_event(postgres_url, "promoted")

    with pytest.raises(RecordsUnavailable, match="PostgreSQL records unavailable"):
        registry.promote(second, by="tester")

    assert registry.aliases() == {PRODUCTION: first}
    assert [e["event"] for e in registry.events()].count("promoted") == 1
    postgres_server.heal(postgres_url)
    assert registry.promote(second, by="tester") == (first, second)
    assert registry.events()[-1]["to"] == second


@pytest.mark.postgres
def test_a_registration_whose_event_was_lost_gets_it_on_retry(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    registry = ModelRegistry.for_home(
        PlatformHome(tmp_path / "home", pg_url=postgres_url), Settings.packaged().storage
    )
    registry.events()  # creates the tables
    postgres_server.cut_connection_on_event(postgres_url, "registered")

    with pytest.raises(RecordsUnavailable):
        registry.register(b"model-a", {"name": "a"}, METRICS)
    (orphan,) = registry.list()  # the immutable files made it; their record did not
    assert registry.events() == []
    with pytest.raises(RegistryError, match="only Approved can be promoted"):
        registry.promote(orphan.version, by="tester")

    postgres_server.heal(postgres_url)
    again = registry.register(b"model-a", {"name": "a"}, METRICS)
    assert again.version == orphan.version
    assert [(e["event"], e["version"]) for e in registry.events()] == [("registered", orphan.version)]


@pytest.mark.postgres
def test_an_unreachable_server_fails_fast_with_a_clear_message(tmp_path: Path, postgres_server) -> None:
    url = f"postgresql://someone:secret@127.0.0.1:{postgres_server.port + 1}/nowhere?connect_timeout=2"
    registry = ModelRegistry.for_home(
        PlatformHome(tmp_path / "home", pg_url=url), Settings.packaged().storage
    )

    with pytest.raises(RecordsUnavailable) as caught:
        registry.list()
    message = str(caught.value)
    assert "database nowhere on 127.0.0.1" in message and "secret" not in message
    assert "\n" not in message


@pytest.mark.postgres
def test_a_stopped_server_fails_operations_and_a_restart_heals(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    registry = ModelRegistry.for_home(
        PlatformHome(tmp_path / "home", pg_url=postgres_url), Settings.packaged().storage
    )
    version = registry.register(b"model-a", {"name": "a"}, METRICS).version
    postgres_server.stop()
    try:
        with pytest.raises(RecordsUnavailable, match="PostgreSQL records unavailable"):
            registry.approve(version, by="tester")
    finally:
        postgres_server.start()
    assert registry.approve(version, by="tester").status == APPROVED


@pytest.mark.postgres
def test_file_records_are_imported_once_and_the_files_then_refuse(tmp_path: Path, postgres_url: str) -> None:
    root = tmp_path / "home"
    on_files = ModelRegistry.for_home(PlatformHome(root), Settings.packaged().storage)
    first, second = approved(on_files, "a"), approved(on_files, "b")
    on_files.promote(first, by="tester")
    on_files.promote(second, by="tester")
    before = (on_files.events(), on_files.aliases())

    on_postgres = ModelRegistry.for_home(PlatformHome(root, pg_url=postgres_url), Settings.packaged().storage)
    assert (on_postgres.events(), on_postgres.aliases()) == before
    assert on_postgres.rollback(by="oncall", reason="bad") == (second, first)
    assert (
        ModelRegistry.for_home(PlatformHome(root, pg_url=postgres_url), Settings.packaged().storage).events()
        == on_postgres.events()
    )
    assert (root / "registry" / RECORDS_MARKER).exists()
    with pytest.raises(RecordsError, match="live in PostgreSQL"):
        ModelRegistry.for_home(PlatformHome(root), Settings.packaged().storage).aliases()


@pytest.mark.postgres
def test_records_in_both_places_are_not_merged(tmp_path: Path, postgres_url: str) -> None:
    elsewhere = PostgresRecords(postgres_url, "test", file_records(tmp_path / "other"))
    elsewhere.append({"from": "another home"})
    files = file_records(tmp_path / "mine")
    files.append({"from": "this home"})

    with pytest.raises(RecordsError, match="refusing to merge"):
        PostgresRecords(postgres_url, "test", files).read()


def _approve_and_promote(root: str, pg_url: str, tag: str, barrier) -> None:
    registry = ModelRegistry.for_home(PlatformHome(Path(root), pg_url=pg_url), Settings.packaged().storage)
    barrier.wait()
    for round_ in range(3):
        version = approved(registry, f"{tag}-{round_}")
        registry.promote(version, by=tag)


@pytest.mark.postgres
def test_concurrent_writers_on_postgres_lose_nothing_and_number_versions_in_order(
    tmp_path: Path, postgres_url: str
) -> None:
    root, workers = tmp_path / "home", 4
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(workers)
    _run_processes(
        _approve_and_promote, [(str(root), postgres_url, f"w{n}", barrier) for n in range(workers)]
    )

    registry = ModelRegistry.for_home(PlatformHome(root, pg_url=postgres_url), Settings.packaged().storage)
    versions = registry.list()
    assert sorted(v.version for v in versions) == sorted(f"v{n}" for n in range(1, 3 * workers + 1))
    assert all(v.status == APPROVED for v in versions)
    events = registry.events()
    for kind in ("registered", "approved", "promoted"):
        assert sorted(e["version"] for e in events if e["event"] == kind) == sorted(
            v.version for v in versions
        )
    # Serialised: every promotion moved production from exactly where the previous one left it.
    promotions = [e for e in events if e["event"] == "promoted"]
    assert [e["from"] for e in promotions] == [None, *[e["to"] for e in promotions[:-1]]]
    assert registry.aliases() == {"production": promotions[-1]["to"], "previous": promotions[-2]["to"]}
    assert not (root / "registry" / "events.jsonl").exists(), "events went to files, not PostgreSQL"


# ---------------------------------------------------------------------------------- the audit ledger


@pytest.fixture
def lake_home(tmp_path: Path, pg_url: str | None) -> PlatformHome:
    return PlatformHome(tmp_path / "home", pg_url=pg_url).ensure()


def test_ledger_records_allowed_and_denied_reads_in_order(lake_home: PlatformHome) -> None:
    lake = Lake(lake_home)
    lake.record_read("reviews", "v1", "run-1:reviews", "train")
    lake.policy_file.write_text('[[rules]]\nreaders = ["ana"]\ndatasets = ["*"]\nallow = true\n')
    with pytest.raises(AccessDenied):
        lake.record_read("reviews", "v2", "run-2:reviews", "train")

    log = Lake(lake_home).audit_log()
    assert [(e.consumer, e.version, e.allowed) for e in log.entries] == [
        ("run-1:reviews", "v1", True),
        ("run-2:reviews", "v2", False),
    ]
    assert log.skipped_lines == 0
    assert lake.ledger_file.exists() == (lake_home.pg_url is None)


@pytest.mark.postgres
def test_ledger_lives_in_postgres_under_its_own_name(tmp_path: Path, postgres_server, postgres_url) -> None:
    home = PlatformHome(tmp_path / "home", pg_url=postgres_url).ensure()
    Lake(home).record_read("reviews", "v1", "run-1:reviews", "train")
    rows = postgres_server.execute(
        "SELECT journal, entry->>'consumer' FROM mlplatform_journal", database_name(postgres_url)
    )
    assert rows == [(LEDGER_RECORDS, "run-1:reviews")]


def _read_many(root: str, pg_url: str | None, worker: int, count: int) -> None:
    lake = Lake(PlatformHome(Path(root), pg_url=pg_url))
    for index in range(count):
        lake.record_read("reviews", f"v{index}", f"run-{worker}:reviews", "load")


def test_ledger_keeps_every_read_of_concurrent_runs(lake_home: PlatformHome) -> None:
    workers, per_worker = 4, 30
    Lake(lake_home).access_policy()  # one writer of the default policy, as the CLI would on first use
    _run_processes(
        _read_many, [(str(lake_home.root), lake_home.pg_url, worker, per_worker) for worker in range(workers)]
    )
    entries = Lake(lake_home).audit()
    assert lake_home.pg_url is None or not list(lake_home.root.rglob("*.jsonl")), "ledger went to files"
    assert {(e.consumer, e.version) for e in entries} == {
        (f"run-{w}:reviews", f"v{i}") for w in range(workers) for i in range(per_worker)
    }
    assert len(entries) == workers * per_worker


def test_the_home_takes_its_database_from_the_environment_and_never_shows_it(tmp_path: Path) -> None:
    url = "postgresql://ml:secret@db:5432/mlplatform"
    environ = {"MLPLATFORM_HOME": str(tmp_path / "h"), "MLPLATFORM_PG_URL": url}

    assert PlatformHome.from_env(environ).pg_url == url
    assert PlatformHome.at(tmp_path / "h", environ) == PlatformHome.from_env(environ)
    assert PlatformHome.from_env({"MLPLATFORM_HOME": str(tmp_path / "h")}).pg_url is None
    assert "secret" not in repr(PlatformHome.from_env(environ))
