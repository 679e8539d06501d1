"""Alerts: an append-only event log, one firing alert per standing condition, and a webhook.

The log is kept through the platform's records (mlplatform/core/platform/records.py), like the registry's
events and the lake's audit ledger: the JSON-lines file `alerts/alerts.jsonl` by default, or journal
`alerts` in PostgreSQL when the home has a pg_url (MLPLATFORM_PG_URL), so several machines share one
alert state. An existing `alerts.jsonl` is imported into PostgreSQL once, on its first use; the file
backend then refuses to run on that directory. Every event is one entry:

- `{"event": "raised", "id", "time", "kind", "severity", "source", "message", "state": "firing", "key"}`
- `{"event": "resolved", "id", "time", "key"}` — the condition cleared
- `{"event": "delivery", "id", "time", "ok", "status_code", "error", "action"}` — a webhook attempt

`AlertStore.list` folds them into one `Alert` per raised alert, its state and last delivery attempt
included. A `key` names the standing condition (e.g. "drift_report:v3:length_psi"): raising while an
alert with that key is firing is a no-op, so one condition is one alert until `resolve(key)`. The check
and the append run in ONE exclusive section of the records, so two processes never both raise a key.

Appends are durable when they return (fsync'ed lines, or a committed transaction). A crash mid-append
leaves at most a torn line, which is not corruption: it is skipped when read, the next append starts on
a fresh line, and `AlertStore.alert_log()` counts it (with any other entry that is not an alert event).
The webhook is posted after the record is durable and outside the exclusive section (a slow receiver
never blocks other writers); a failed post is itself recorded and never loses the alert.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import FileRecords, Records, open_records
from mlplatform.core.platform.redaction import redact_url
from mlplatform.core.platform.settings import AlertRules

WEBHOOK_ENV = "MLPLATFORM_ALERT_WEBHOOK"
ALERT_LOG = "alerts.jsonl"
ALERT_RECORDS = "alerts"  # the alert log's journal name in PostgreSQL
SEVERITIES: tuple[str, ...] = ("WARN", "ERROR")
FIRING = "firing"
RESOLVED = "resolved"
_SLACK_COLOURS = {"ERROR": "#d93f0b", "WARN": "#fbca04", RESOLVED: "#2eb886"}


class AlertError(UserError, ValueError):
    """An alert is malformed (severity, kind, source or key) or its webhook URL is not http(s)."""


@dataclass(frozen=True)
class Delivery:
    """One webhook attempt: whether the receiver accepted it, its HTTP status, or the error."""

    ok: bool
    status_code: int | None
    error: str | None
    time: str = ""
    action: str = FIRING

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status_code": self.status_code,
            "error": self.error,
            "time": self.time,
            "action": self.action,
        }


@dataclass(frozen=True)
class Alert:
    """One raised alert and its current state."""

    id: str
    time: str
    kind: str
    severity: str
    source: str
    message: str
    key: str
    state: str = FIRING
    resolved_at: str | None = None
    deliveries: tuple[Delivery, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what `mlplatform alerts --json` prints)."""
        last = self.deliveries[-1] if self.deliveries else None
        return {
            "id": self.id,
            "time": self.time,
            "kind": self.kind,
            "severity": self.severity,
            "source": self.source,
            "message": self.message,
            "state": self.state,
            "key": self.key,
            "resolved_at": self.resolved_at,
            "delivery": last.to_dict() if last is not None else None,
        }


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class WebhookNotifier:
    """Posts an alert as a Slack-compatible JSON body (`text` plus a coloured attachment); never raises."""

    def __init__(self, url: str, timeout: float, max_message_chars: int = 3000) -> None:
        if not url.startswith(("http://", "https://")):
            raise AlertError(f"alert webhook URL must be http(s), got {redact_url(url)!r}")
        self.url = url
        self.timeout = timeout
        self.max_message_chars = max_message_chars

    def body(self, alert: Alert, action: str) -> dict[str, Any]:
        """The Slack-compatible payload for raising (`firing`) or clearing (`resolved`) an alert."""
        message = alert.message
        if len(message) > self.max_message_chars:
            message = message[: self.max_message_chars] + " …(cut)"
        headline = (
            f"[{alert.severity}] {alert.kind} from {alert.source}"
            if action == FIRING
            else f"[RESOLVED] {alert.kind} from {alert.source}"
        )
        colour = _SLACK_COLOURS[RESOLVED if action == RESOLVED else alert.severity]
        fields = [
            {"title": "severity", "value": alert.severity, "short": True},
            {"title": "key", "value": alert.key, "short": True},
            {"title": "raised", "value": alert.time, "short": True},
        ]
        return {
            "text": f"{headline}: {message}",
            "attachments": [{"color": colour, "title": headline, "text": message, "fields": fields}],
        }

    def post(self, alert: Alert, action: str = FIRING) -> Delivery:
        """One POST attempt; the outcome (never an exception) says whether the receiver took it."""
        try:
            response = httpx.post(self.url, json=self.body(alert, action), timeout=self.timeout)
        except httpx.HTTPError as exc:
            return Delivery(False, None, f"{type(exc).__name__}: {exc}"[:500], action=action)
        if response.is_success:
            return Delivery(True, response.status_code, None, action=action)
        return Delivery(
            False, response.status_code, f"HTTP {response.status_code}: {response.text[:200]}", action=action
        )


def _raised_record(alert: Alert) -> dict[str, Any]:
    fields = ("id", "time", "kind", "severity", "source", "message", "state", "key")
    return {name: getattr(alert, name) for name in fields}


def _apply(alerts: dict[str, Alert], event: Mapping[str, Any]) -> bool:
    """Fold one event into `alerts` (by id); False when it is not an alert event this log can place.

    Raises KeyError or TypeError for an event lacking a field or with an unhashable id.
    """
    kind = event.get("event")
    if kind == "raised":
        alert = Alert(
            id=event["id"],
            time=event["time"],
            kind=event["kind"],
            severity=event["severity"],
            source=event["source"],
            message=event["message"],
            key=event["key"],
        )
        alerts[alert.id] = alert
        return True
    alert = alerts.get(event["id"])
    if alert is None:
        return False
    if kind == "resolved":
        alerts[alert.id] = replace(alert, state=RESOLVED, resolved_at=event["time"])
        return True
    if kind == "delivery":
        delivery = Delivery(
            event["ok"], event["status_code"], event["error"], event["time"], event.get("action", FIRING)
        )
        alerts[alert.id] = replace(alert, deliveries=(*alert.deliveries, delivery))
        return True
    return False


@dataclass(frozen=True)
class AlertLog:
    """Every alert ever raised, oldest first, and how many entries could not be read as alert events
    (a line torn by a crash mid-append, or a damaged entry)."""

    alerts: tuple[Alert, ...]
    skipped_lines: int


def _fold_events(events: Iterable[Mapping[str, Any]], skipped: int = 0) -> AlertLog:
    """The alerts the events describe; `skipped` (lines the journal could not parse) is counted in."""
    alerts: dict[str, Alert] = {}
    for event in events:
        try:
            applied = _apply(alerts, event)
        except (KeyError, TypeError):
            applied = False
        skipped += not applied
    return AlertLog(tuple(alerts.values()), skipped)


def _firing(alerts: Iterable[Alert], key: str) -> Alert | None:
    return next((alert for alert in alerts if alert.key == key and alert.state == FIRING), None)


def alert_store_from_env(home: PlatformHome, environ: Mapping[str, str], rules: AlertRules) -> AlertStore:
    """The home's alert store, posting to the webhook named by MLPLATFORM_ALERT_WEBHOOK when set (with the
    `[alerts]` timeout and message length)."""
    url = environ.get(WEBHOOK_ENV, "").strip()
    notifier = None
    if url:
        notifier = WebhookNotifier(url, rules.webhook_timeout_s, rules.max_message_chars)
    return AlertStore.for_home(home, notifier)


class AlertStore:
    """The alert log of `root` (`PlatformHome.alerts`); optionally posts each change to a webhook.

    `records` is where the log lives: by default the file records under `root`; `for_home` picks
    PostgreSQL when the home has a pg_url, as the registry does.
    """

    def __init__(
        self,
        root: Path,
        notifier: WebhookNotifier | None = None,
        clock: Callable[[], datetime] = _utc_now,
        *,
        records: Records | None = None,
    ) -> None:
        self.root = Path(root)
        self.notifier = notifier
        self._clock = clock
        self._records = records if records is not None else self.file_records(self.root)

    @classmethod
    def for_home(cls, home: PlatformHome, notifier: WebhookNotifier | None = None) -> AlertStore:
        """The home's alert log: in PostgreSQL when the home has a pg_url, else `alerts/alerts.jsonl`."""
        root = home.alerts
        return cls(root, notifier, records=open_records(cls.file_records(root), ALERT_RECORDS, home.pg_url))

    @property
    def records(self) -> Records:
        """Where the log lives: the file records or PostgreSQL."""
        return self._records

    @staticmethod
    def file_records(root: Path) -> FileRecords:
        """The file backend: `alerts.jsonl` under `root`, locked through `root/.lock`."""
        return FileRecords(Path(root) / ALERT_LOG, Path(root) / ".lock")

    def alert_log(self) -> AlertLog:
        """Every alert ever raised, oldest first, and how many unreadable entries were skipped."""
        journal = self._records.read()
        return _fold_events(journal.entries, journal.skipped)

    def list(self) -> list[Alert]:
        """Every alert ever raised, oldest first, with its current state and delivery attempts."""
        return list(self.alert_log().alerts)

    def firing(self, key: str) -> Alert | None:
        """The firing alert of a standing condition, if any."""
        return _firing(self.list(), key)

    def raise_alert(self, kind: str, severity: str, source: str, message: str, key: str) -> Alert | None:
        """Record an alert unless one with `key` is already firing (then None); post it to the webhook."""
        if severity not in SEVERITIES:
            raise AlertError(f"alert severity must be one of {SEVERITIES}, got {severity!r}")
        if not kind or not key or not source:
            raise AlertError("an alert needs a kind, a source and a key")
        with self._records.exclusive() as section:
            if _firing(_fold_events(section.entries()).alerts, key) is not None:
                return None
            alert = Alert(uuid.uuid4().hex, _iso(self._clock()), kind, severity, source, message, key)
            section.append({"event": "raised", **_raised_record(alert)})
        return self._notify(alert, FIRING)

    def resolve(self, key: str) -> Alert | None:
        """Clear the standing condition `key`: its firing alert becomes resolved (None when none fired)."""
        with self._records.exclusive() as section:
            alert = _firing(_fold_events(section.entries()).alerts, key)
            if alert is None:
                return None
            now = _iso(self._clock())
            section.append({"event": "resolved", "id": alert.id, "time": now, "key": key})
            alert = replace(alert, state=RESOLVED, resolved_at=now)
        return self._notify(alert, RESOLVED)

    def _notify(self, alert: Alert, action: str) -> Alert:
        """Post outside the exclusive section (the change is durable by now), then record the attempt."""
        if self.notifier is None:
            return alert
        delivery = replace(self.notifier.post(alert, action), time=_iso(self._clock()))
        self._records.append({"event": "delivery", "id": alert.id, **delivery.to_dict()})
        return replace(alert, deliveries=(*alert.deliveries, delivery))


ROLLOUT_ABORT_KIND = "rollout_aborted"


def rollout_abort_key(rollout_id: str) -> str:
    """The key of the one alert an aborted rollout raises (an event: never resolved)."""
    return f"rollout:{rollout_id}:aborted"


def raise_rollout_abort(store: AlertStore, event: Mapping[str, Any]) -> Alert | None:
    """The alert of a `rollout_aborted` registry event (core/release/rollout.py), raised once whoever
    notices it first (the judging run, the endpoint that refused the candidate, a later run)."""
    message = (
        f"{event.get('strategy')} of {event.get('version')} aborted by {event.get('by')}: "
        f"{event.get('reason') or 'no reason given'}; all traffic back to production {event.get('production')}"
    )
    return store.raise_alert(
        ROLLOUT_ABORT_KIND, "ERROR", "rollout", message, rollout_abort_key(str(event.get("rollout")))
    )
