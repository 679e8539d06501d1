"""Alerts: one per standing condition, durable records, and a webhook a local receiver gets.

The store's behaviour is tested on both records backends (files, and a private PostgreSQL started by
mlplatform_tests/postgres.py); the file log's own format, torn lines and the one-time import of an
existing file log into PostgreSQL have tests of their own.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from mlplatform.cli import main
from mlplatform.core.monitoring.alerts import (
    ALERT_LOG,
    ALERT_RECORDS,
    FIRING,
    RESOLVED,
    Alert,
    AlertError,
    AlertStore,
    Delivery,
    WebhookNotifier,
)
from mlplatform.core.platform.home import PG_URL_ENV, PlatformHome
from mlplatform.core.platform.records import RECORDS_MARKER, PostgresRecords, RecordsError
from mlplatform.core.platform.settings import Settings
from mlplatform_tests.integration.processes import free_port
from mlplatform_tests.postgres import PostgresServer, database_name

KEY = "drift_report:v1:length_psi"


def raise_drift(store: AlertStore, message: str = "length_psi 0.41 > ERROR bound 0.25"):
    return store.raise_alert("check_failed", "ERROR", "drift_report", message, KEY)


@pytest.fixture(params=["files", pytest.param("postgres", marks=pytest.mark.postgres)])
def alert_home(request, tmp_path: Path) -> PlatformHome:
    pg_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return PlatformHome(tmp_path / "home", pg_url=pg_url).ensure()


@pytest.fixture
def store(alert_home: PlatformHome) -> AlertStore:
    opened = AlertStore.for_home(alert_home)
    # The PostgreSQL cases must really run on PostgreSQL, not quietly on the files.
    assert isinstance(opened.records, PostgresRecords) == (alert_home.pg_url is not None)
    return opened


def dead_webhook() -> WebhookNotifier:
    """A notifier whose receiver is not listening: every post fails at once with ConnectError."""
    return WebhookNotifier(f"http://127.0.0.1:{free_port()}/hook", timeout=2.0)


class Receiver:
    """A local HTTP receiver (127.0.0.1, random port) that records JSON bodies and answers `status`."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join(timeout=5)


# ------------------------------------------------------------------------------------ both backends


def test_one_alert_per_standing_condition_until_it_is_resolved(store: AlertStore) -> None:
    first = raise_drift(store)
    assert first is not None and first.state == FIRING
    assert raise_drift(store, "length_psi 0.52 > ERROR bound 0.25") is None
    assert [alert.id for alert in store.list()] == [first.id]
    assert store.firing(KEY) == first
    resolved = store.resolve(KEY)
    assert resolved is not None and resolved.state == RESOLVED
    assert store.resolve(KEY) is None and store.firing(KEY) is None
    again = raise_drift(store)
    assert again is not None and again.id != first.id
    assert [(alert.id, alert.state) for alert in store.list()] == [
        (first.id, RESOLVED),
        (again.id, FIRING),
    ]


def test_other_conditions_alert_independently_and_list_gives_the_cli_fields(store: AlertStore) -> None:
    raise_drift(store)
    store.raise_alert("run_failed", "ERROR", "run:abc", "step train failed: é ✓", "run_failed:training_job")
    listed = [alert.to_dict() for alert in store.list()]
    assert [entry["kind"] for entry in listed] == ["check_failed", "run_failed"]
    assert listed[1]["message"] == "step train failed: é ✓"
    for entry in listed:
        assert {"time", "kind", "severity", "source", "message", "state"} <= set(entry)
    json.dumps(listed)  # JSON-ready


def test_bad_alerts_are_refused_and_nothing_is_recorded(store: AlertStore) -> None:
    with pytest.raises(AlertError, match="severity"):
        store.raise_alert("check_failed", "INFO", "drift_report", "x", KEY)
    with pytest.raises(AlertError, match="needs a kind"):
        store.raise_alert("check_failed", "WARN", "drift_report", "x", "")
    assert store.alert_log().alerts == ()


def test_concurrent_raises_of_one_condition_make_one_alert(store: AlertStore) -> None:
    threads = [threading.Thread(target=raise_drift, args=(store,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(store.list()) == 1


def _raise_and_resolve_from_a_process(root: str, pg_url: str | None, barrier, rounds: int) -> None:
    store = AlertStore.for_home(PlatformHome(Path(root), pg_url=pg_url))
    barrier.wait()
    for _ in range(rounds):
        raise_drift(store)
        store.resolve(KEY)
    barrier.wait()
    for _ in range(3):
        raise_drift(store)


def test_concurrent_raises_from_several_processes_make_one_firing_alert(alert_home: PlatformHome) -> None:
    workers, rounds = 4, 10
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(workers)
    arguments = (str(alert_home.root), alert_home.pg_url, barrier, rounds)
    processes = [
        context.Process(target=_raise_and_resolve_from_a_process, args=arguments) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    store = AlertStore.for_home(alert_home)
    # In journal order, raising and resolving the key alternate: never two firing alerts at once.
    firing: str | None = None
    for entry in store.records.read().entries:
        if entry["event"] == "raised":
            assert firing is None, f"{entry['id']} raised while {firing} was firing"
            firing = entry["id"]
        elif entry["event"] == "resolved":
            assert entry["id"] == firing
            firing = None
    log = store.alert_log()
    assert [alert.id for alert in log.alerts if alert.state == FIRING] == [firing]
    assert len(log.alerts) > rounds and log.skipped_lines == 0
    assert (alert_home.alerts / ALERT_LOG).exists() == (alert_home.pg_url is None)


def test_webhook_receives_a_slack_compatible_body_and_the_delivery_is_recorded(
    alert_home: PlatformHome, receiver: Receiver, settings: Settings
) -> None:
    rules = settings.alerts
    store = AlertStore.for_home(alert_home, WebhookNotifier(receiver.url, rules.webhook_timeout_s))
    alert = raise_drift(store)
    assert alert is not None and alert.deliveries[-1].ok
    assert len(receiver.bodies) == 1
    body = receiver.bodies[0]
    assert body["text"].startswith("[ERROR] check_failed from drift_report")
    assert body["attachments"][0]["text"] == "length_psi 0.41 > ERROR bound 0.25"
    assert raise_drift(store) is None and len(receiver.bodies) == 1  # deduplicated: not posted again
    store.resolve(KEY)
    assert receiver.bodies[1]["text"].startswith("[RESOLVED]")
    (listed,) = AlertStore.for_home(alert_home).list()
    assert listed.state == RESOLVED
    assert [(d.action, d.ok, d.status_code) for d in listed.deliveries] == [
        (FIRING, True, 200),
        (RESOLVED, True, 200),
    ]
    assert listed.to_dict()["delivery"]["status_code"] == 200


def test_a_failed_post_is_recorded_and_the_alert_kept(alert_home: PlatformHome) -> None:
    alert = raise_drift(AlertStore.for_home(alert_home, dead_webhook()))
    assert alert is not None
    delivery = alert.deliveries[-1]
    assert not delivery.ok and delivery.status_code is None and "ConnectError" in delivery.error
    listed = AlertStore.for_home(alert_home).list()
    assert [entry.id for entry in listed] == [alert.id]
    assert listed[0].state == FIRING and listed[0].to_dict()["delivery"]["ok"] is False


def test_a_receiver_answering_an_error_status_is_a_failed_delivery(alert_home: PlatformHome) -> None:
    server = Receiver(status=500)
    server.thread.start()
    try:
        alert = raise_drift(AlertStore.for_home(alert_home, WebhookNotifier(server.url, timeout=2.0)))
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=5)
    assert alert is not None and alert.deliveries[-1].status_code == 500 and not alert.deliveries[-1].ok
    assert len(server.bodies) == 1
    assert AlertStore.for_home(alert_home).list()[0].deliveries[-1].status_code == 500


class SectionProbe(WebhookNotifier):
    """Instead of posting, checks from another thread that the log's exclusive section is free (another
    store resolves an unrelated key, which takes the section) and that the change is already recorded.

    Only that thread touches the log: were the section held by our caller, it would wait until we
    return, and the probe reports "not free" after its timeout instead of deadlocking.
    """

    def __init__(self, home: PlatformHome) -> None:
        super().__init__(f"http://127.0.0.1:{free_port()}/never-posted", timeout=1.0)
        self.home = home
        self.seen: list[tuple[str, list[tuple[str, str]] | None]] = []

    def post(self, alert: Alert, action: str = FIRING) -> Delivery:
        recorded: list[tuple[str, str]] = []
        took_section = threading.Event()

        def take_section_then_read() -> None:
            other = AlertStore.for_home(self.home)
            other.resolve("probe:unrelated-key")
            recorded.extend((a.id, a.state) for a in other.list())
            took_section.set()

        threading.Thread(target=take_section_then_read, daemon=True).start()
        self.seen.append((action, recorded if took_section.wait(timeout=10) else None))
        return Delivery(True, 200, None, action=action)


def test_the_webhook_is_posted_after_the_record_is_durable_and_outside_the_section(
    alert_home: PlatformHome,
) -> None:
    probe = SectionProbe(alert_home)
    store = AlertStore.for_home(alert_home, probe)
    alert = raise_drift(store)
    assert alert is not None
    store.resolve(KEY)
    assert probe.seen == [(FIRING, [(alert.id, FIRING)]), (RESOLVED, [(alert.id, RESOLVED)])]
    (listed,) = store.list()
    assert [d.action for d in listed.deliveries] == [FIRING, RESOLVED]


# ------------------------------------------------------------------------------------- the file log


def test_alerts_go_to_the_file_log_without_a_database(home: PlatformHome) -> None:
    alert = raise_drift(AlertStore.for_home(home))
    lines = (home.alerts / ALERT_LOG).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "event": "raised",
            "id": alert.id,
            "time": alert.time,
            "kind": "check_failed",
            "severity": "ERROR",
            "source": "drift_report",
            "message": "length_psi 0.41 > ERROR bound 0.25",
            "state": FIRING,
            "key": KEY,
        }
    ]
    assert [a.id for a in AlertStore(home.alerts).list()] == [alert.id]  # the plain constructor: same log


def test_a_log_written_before_the_records_layer_stays_readable(home: PlatformHome) -> None:
    raised = {
        "event": "raised",
        "id": "a1",
        "time": "2024-05-01T10:00:00.000000Z",
        "kind": "check_failed",
        "severity": "WARN",
        "source": "drift_report",
        "message": "länge driftet",
        "state": FIRING,
        "key": KEY,
    }
    delivery = {
        "event": "delivery",
        "id": "a1",
        "time": raised["time"],
        "ok": False,
        "status_code": 502,
        "error": "HTTP 502: bad gateway",
        "action": FIRING,
    }
    # Exactly as the earlier AlertStore wrote its lines (ensure_ascii=False, its own key order).
    (home.alerts / ALERT_LOG).write_text(
        "".join(json.dumps(event, ensure_ascii=False) + "\n" for event in (raised, delivery)),
        encoding="utf-8",
    )
    store = AlertStore.for_home(home)
    (alert,) = store.list()
    assert (alert.id, alert.message, alert.state, alert.deliveries[0].status_code) == (
        "a1",
        "länge driftet",
        FIRING,
        502,
    )
    assert raise_drift(store) is None
    assert store.resolve(KEY).id == "a1"


def test_a_torn_last_line_is_skipped_counted_and_the_next_append_starts_a_fresh_line(
    home: PlatformHome,
) -> None:
    store = AlertStore.for_home(home)
    first = raise_drift(store)
    with (home.alerts / ALERT_LOG).open("ab") as handle:
        handle.write(b'{"event": "raised", "id": "torn", "ti')  # a crash mid-append
    assert [alert.id for alert in store.list()] == [first.id]
    second = store.raise_alert("rollback", "WARN", "models", "rolled back v2 -> v1", "rollback:v2")

    log = store.alert_log()
    assert [alert.id for alert in log.alerts] == [first.id, second.id]
    assert log.skipped_lines == 1
    lines = (home.alerts / ALERT_LOG).read_bytes().splitlines()
    assert lines[1] == b'{"event": "raised", "id": "torn", "ti'  # kept as a line of its own
    assert json.loads(lines[2])["id"] == second.id


def test_damaged_entries_are_counted_not_folded(home: PlatformHome) -> None:
    store = AlertStore.for_home(home)
    first = raise_drift(store)
    with (home.alerts / ALERT_LOG).open("a", encoding="utf-8") as handle:
        handle.write("not json\n")
        handle.write('{"event": "raised", "id": "no-key"}\n')  # a field missing
        handle.write('{"event": "resolved", "id": "unknown", "time": "t"}\n')  # no such alert
        handle.write('{"event": "resolved", "id": ["unhashable"], "time": "t"}\n')
    log = store.alert_log()
    assert [(alert.id, alert.state) for alert in log.alerts] == [(first.id, FIRING)]
    assert log.skipped_lines == 4


# -------------------------------------------------------------------------------------- PostgreSQL


@pytest.mark.postgres
def test_alerts_live_in_postgres_under_their_own_journal(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    home = PlatformHome(tmp_path / "home", pg_url=postgres_url).ensure()
    alert = raise_drift(AlertStore.for_home(home))
    rows = postgres_server.execute(
        "SELECT journal, entry->>'event', entry->>'id' FROM mlplatform_journal ORDER BY id",
        database_name(postgres_url),
    )
    assert rows == [(ALERT_RECORDS, "raised", alert.id)]
    assert not (home.alerts / ALERT_LOG).exists()


@pytest.mark.postgres
def test_an_existing_file_log_is_imported_once_and_the_files_then_refuse(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str
) -> None:
    root = tmp_path / "home"
    on_files = AlertStore.for_home(PlatformHome(root).ensure(), dead_webhook())
    first = raise_drift(on_files)
    on_files.resolve(KEY)
    second = raise_drift(on_files)
    before = on_files.list()
    file_events = len((root / "alerts" / ALERT_LOG).read_text().splitlines())
    assert [(a.id, a.state, len(a.deliveries)) for a in before] == [
        (first.id, RESOLVED, 2),
        (second.id, FIRING, 1),
    ]

    on_postgres = AlertStore.for_home(PlatformHome(root, pg_url=postgres_url))
    assert on_postgres.list() == before
    assert raise_drift(on_postgres) is None  # the imported firing alert still stands for its key
    assert on_postgres.resolve(KEY).id == second.id
    # A second process on the same home does not import again.
    assert [a.id for a in AlertStore.for_home(PlatformHome(root, pg_url=postgres_url)).list()] == [
        first.id,
        second.id,
    ]
    (count,) = postgres_server.execute(
        f"SELECT count(*) FROM mlplatform_journal WHERE journal = '{ALERT_RECORDS}'",
        database_name(postgres_url),
    )
    assert count == (file_events + 1,)

    assert (root / "alerts" / RECORDS_MARKER).exists()
    for attempt in (
        AlertStore.for_home(PlatformHome(root)).list,
        lambda: raise_drift(AlertStore(root / "alerts")),
    ):
        with pytest.raises(RecordsError, match="live in PostgreSQL") as caught:
            attempt()
        assert "\n" not in str(caught.value)
    assert len((root / "alerts" / ALERT_LOG).read_text().splitlines()) == file_events  # untouched


@pytest.mark.postgres
def test_the_cli_lists_the_alerts_of_postgres_when_the_environment_names_it(
    tmp_path: Path, postgres_url: str, monkeypatch, capsys
) -> None:
    root = tmp_path / "home"
    alert = raise_drift(AlertStore.for_home(PlatformHome(root, pg_url=postgres_url)))
    monkeypatch.setenv(PG_URL_ENV, postgres_url)
    assert main(["--home", str(root), "alerts", "--json"]) == 0
    assert [entry["id"] for entry in json.loads(capsys.readouterr().out)] == [alert.id]


def test_a_webhook_url_that_is_not_http_is_refused_without_its_credentials() -> None:
    with pytest.raises(AlertError, match=r"must be http\(s\), got 'ftp://\*\*\*@hooks.example/x'") as caught:
        WebhookNotifier("ftp://bot:hook-s3cret@hooks.example/x", timeout=1.0)
    assert "hook-s3cret" not in str(caught.value)
