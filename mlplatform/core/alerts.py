"""Alerts: an append-only JSON-lines log under `alerts/`, one firing alert per standing condition, and a webhook.

Every event is one line of `alerts.jsonl`:

- `{"event": "raised", "id", "time", "kind", "severity", "source", "message", "state": "firing", "key"}`
- `{"event": "resolved", "id", "time", "key"}` — the condition cleared
- `{"event": "delivery", "id", "time", "ok", "status_code", "error", "action"}` — a webhook attempt

`AlertStore.list` folds them into one `Alert` per raised alert, its state and last delivery attempt
included. A `key` names the standing condition (e.g. "drift_report:v3:length_psi"): raising while an
alert with that key is firing is a no-op, so one condition is one alert until `resolve(key)`.

Appends happen under an exclusive flock and are fsync'ed. A crash mid-append leaves at most a torn last
line; readers skip it and the next writer cuts it off before appending. The webhook is posted after the
record is durable and outside the lock; a failed post is itself recorded and never loses the alert.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from mlplatform.core.fsio import file_lock
from mlplatform.core.settings import Settings, SettingsError

WEBHOOK_ENV = "MLPLATFORM_ALERT_WEBHOOK"
ALERT_LOG = "alerts.jsonl"
SEVERITIES: tuple[str, ...] = ("WARN", "ERROR")
FIRING = "firing"
RESOLVED = "resolved"
_SLACK_COLOURS = {"ERROR": "#d93f0b", "WARN": "#fbca04", RESOLVED: "#2eb886"}


class AlertError(ValueError):
    """An alert is malformed or the alert log is unreadable."""


@dataclass(frozen=True)
class AlertRules:
    """The `[alerts]` settings."""

    webhook_timeout_s: float
    max_message_chars: int

    @classmethod
    def from_settings(cls, settings: Settings) -> AlertRules:
        section = settings.section("alerts")
        try:
            rules = cls(float(section["webhook_timeout_s"]), int(section["max_message_chars"]))
        except KeyError as exc:
            raise SettingsError(f"settings section [alerts] lacks key {exc.args[0]!r}") from None
        if rules.webhook_timeout_s <= 0 or rules.max_message_chars < 1:
            raise SettingsError(f"[alerts] values must be positive, got {rules}")
        return rules


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
            raise AlertError(f"alert webhook URL must be http(s), got {url!r}")
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


class AlertStore:
    """The alert log under `root` (`PlatformHome.alerts`); optionally posts each change to a webhook."""

    def __init__(
        self,
        root: Path,
        notifier: WebhookNotifier | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.root = Path(root)
        self.notifier = notifier
        self._clock = clock

    @property
    def path(self) -> Path:
        return self.root / ALERT_LOG

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with file_lock(self.root / ".lock"):
            yield

    def _read_events(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]  # a torn last line (crash mid-append) is not an event
        events = []
        for number, line in enumerate(complete.splitlines(), start=1):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise AlertError(f"alert log {self.path} line {number} is not JSON: {exc}") from None
        return events

    def _append(self, *events: Mapping[str, Any]) -> None:
        """Append complete lines durably (caller holds the lock), first cutting a torn tail."""
        payload = b"".join(json.dumps(event, ensure_ascii=False).encode("utf-8") + b"\n" for event in events)
        with open(self.path, "ab+") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            if size:
                handle.seek(max(0, size - 1))
                if handle.read(1) != b"\n":
                    handle.seek(0)
                    existing = handle.read()
                    handle.truncate(existing.rfind(b"\n") + 1)
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def _fold(events: list[dict[str, Any]]) -> dict[str, Alert]:
        alerts: dict[str, Alert] = {}
        for event in events:
            kind = event.get("event")
            if kind == "raised":
                alerts[event["id"]] = Alert(
                    id=event["id"],
                    time=event["time"],
                    kind=event["kind"],
                    severity=event["severity"],
                    source=event["source"],
                    message=event["message"],
                    key=event["key"],
                )
            elif kind == "resolved" and event["id"] in alerts:
                alerts[event["id"]] = replace(alerts[event["id"]], state=RESOLVED, resolved_at=event["time"])
            elif kind == "delivery" and event["id"] in alerts:
                delivery = Delivery(
                    event["ok"],
                    event["status_code"],
                    event["error"],
                    event["time"],
                    event.get("action", FIRING),
                )
                alert = alerts[event["id"]]
                alerts[event["id"]] = replace(alert, deliveries=(*alert.deliveries, delivery))
        return alerts

    def list(self) -> list[Alert]:
        """Every alert ever raised, oldest first, with its current state and delivery attempts."""
        return list(self._fold(self._read_events()).values())

    def firing(self, key: str) -> Alert | None:
        """The firing alert of a standing condition, if any."""
        return next((alert for alert in self.list() if alert.key == key and alert.state == FIRING), None)

    def raise_alert(self, kind: str, severity: str, source: str, message: str, key: str) -> Alert | None:
        """Record an alert unless one with `key` is already firing (then None); post it to the webhook."""
        if severity not in SEVERITIES:
            raise AlertError(f"alert severity must be one of {SEVERITIES}, got {severity!r}")
        if not kind or not key or not source:
            raise AlertError("an alert needs a kind, a source and a key")
        with self._locked():
            if any(a.key == key and a.state == FIRING for a in self._fold(self._read_events()).values()):
                return None
            alert = Alert(uuid.uuid4().hex, _iso(self._clock()), kind, severity, source, message, key)
            self._append({"event": "raised", **_raised_record(alert)})
        return self._notify(alert, FIRING)

    def resolve(self, key: str) -> Alert | None:
        """Clear the standing condition `key`: its firing alert becomes resolved (None when none fired)."""
        with self._locked():
            alert = next(
                (a for a in self._fold(self._read_events()).values() if a.key == key and a.state == FIRING),
                None,
            )
            if alert is None:
                return None
            now = _iso(self._clock())
            self._append({"event": "resolved", "id": alert.id, "time": now, "key": key})
            alert = replace(alert, state=RESOLVED, resolved_at=now)
        return self._notify(alert, RESOLVED)

    def _notify(self, alert: Alert, action: str) -> Alert:
        if self.notifier is None:
            return alert
        delivery = replace(self.notifier.post(alert, action), time=_iso(self._clock()))
        with self._locked():
            self._append({"event": "delivery", "id": alert.id, **delivery.to_dict()})
        return replace(alert, deliveries=(*alert.deliveries, delivery))
