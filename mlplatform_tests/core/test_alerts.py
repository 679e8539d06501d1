"""Alerts: one per standing condition, durable JSON lines, and a webhook a local receiver gets."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from mlplatform.core.alerts import ALERT_LOG, AlertError, AlertRules, AlertStore, WebhookNotifier
from mlplatform.core.home import PlatformHome
from mlplatform.core.settings import Settings

KEY = "drift_report:v1:length_psi"


def raise_drift(store: AlertStore, message: str = "length_psi 0.41 > ERROR bound 0.25"):
    return store.raise_alert("check_failed", "ERROR", "drift_report", message, KEY)


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


def test_one_alert_per_standing_condition_until_it_is_resolved(home: PlatformHome) -> None:
    store = AlertStore(home.alerts)
    first = raise_drift(store)
    assert first is not None and first.state == "firing"
    assert raise_drift(store, "length_psi 0.52 > ERROR bound 0.25") is None
    assert [alert.id for alert in store.list()] == [first.id]
    resolved = store.resolve(KEY)
    assert resolved is not None and resolved.state == "resolved"
    assert store.resolve(KEY) is None
    again = raise_drift(store)
    assert again is not None and again.id != first.id
    assert [(alert.id, alert.state) for alert in store.list()] == [
        (first.id, "resolved"),
        (again.id, "firing"),
    ]


def test_other_conditions_alert_independently_and_list_gives_the_cli_fields(home: PlatformHome) -> None:
    store = AlertStore(home.alerts)
    raise_drift(store)
    store.raise_alert("run_failed", "ERROR", "run:abc", "step train failed", "run_failed:training_job")
    listed = [alert.to_dict() for alert in store.list()]
    assert [entry["kind"] for entry in listed] == ["check_failed", "run_failed"]
    for entry in listed:
        assert {"time", "kind", "severity", "source", "message", "state"} <= set(entry)
    json.dumps(listed)  # JSON-ready


def test_concurrent_raises_of_one_condition_make_one_alert(home: PlatformHome) -> None:
    store = AlertStore(home.alerts)
    threads = [threading.Thread(target=raise_drift, args=(store,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(store.list()) == 1


def test_a_torn_last_line_is_skipped_and_cut_before_the_next_append(home: PlatformHome) -> None:
    store = AlertStore(home.alerts)
    first = raise_drift(store)
    with (home.alerts / ALERT_LOG).open("ab") as handle:
        handle.write(b'{"event": "raised", "id": "torn", "ti')
    assert [alert.id for alert in store.list()] == [first.id]
    store.raise_alert("rollback", "WARN", "models", "rolled back v2 -> v1", "rollback:v2")
    lines = (home.alerts / ALERT_LOG).read_text().splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["raised", "raised"]


def test_bad_severity_and_a_corrupt_line_mid_log_are_refused(home: PlatformHome) -> None:
    store = AlertStore(home.alerts)
    with pytest.raises(AlertError, match="severity"):
        store.raise_alert("check_failed", "INFO", "drift_report", "x", KEY)
    (home.alerts / ALERT_LOG).write_text("not json\n")
    with pytest.raises(AlertError, match="line 1"):
        store.list()


def test_webhook_receives_a_slack_compatible_body_and_the_delivery_is_recorded(
    home: PlatformHome, receiver: Receiver, settings: Settings
) -> None:
    rules = AlertRules.from_settings(settings)
    store = AlertStore(home.alerts, WebhookNotifier(receiver.url, rules.webhook_timeout_s))
    alert = raise_drift(store)
    assert alert is not None and alert.deliveries[-1].ok
    assert len(receiver.bodies) == 1
    body = receiver.bodies[0]
    assert body["text"].startswith("[ERROR] check_failed from drift_report")
    assert body["attachments"][0]["text"] == "length_psi 0.41 > ERROR bound 0.25"
    assert raise_drift(store) is None and len(receiver.bodies) == 1  # deduplicated: not posted again
    store.resolve(KEY)
    assert receiver.bodies[1]["text"].startswith("[RESOLVED]")
    listed = store.list()[0].to_dict()
    assert listed["state"] == "resolved"
    assert listed["delivery"]["ok"] is True and listed["delivery"]["status_code"] == 200


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_failed_post_is_recorded_and_the_alert_kept(home: PlatformHome) -> None:
    notifier = WebhookNotifier(f"http://127.0.0.1:{unused_port()}/hook", timeout=2.0)
    alert = raise_drift(AlertStore(home.alerts, notifier))
    assert alert is not None
    delivery = alert.deliveries[-1]
    assert not delivery.ok and delivery.status_code is None and "ConnectError" in delivery.error
    listed = AlertStore(home.alerts).list()
    assert [entry.id for entry in listed] == [alert.id]
    assert listed[0].state == "firing" and listed[0].to_dict()["delivery"]["ok"] is False


def test_a_receiver_answering_an_error_status_is_a_failed_delivery(home: PlatformHome) -> None:
    server = Receiver(status=500)
    server.thread.start()
    try:
        alert = raise_drift(AlertStore(home.alerts, WebhookNotifier(server.url, timeout=2.0)))
    finally:
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=5)
    assert alert is not None and alert.deliveries[-1].status_code == 500 and not alert.deliveries[-1].ok
    assert len(server.bodies) == 1
