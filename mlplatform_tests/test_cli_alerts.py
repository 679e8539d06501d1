"""`mlplatform alerts`: firing alerts by default, resolved ones with --all, JSON with the documented shape."""

from __future__ import annotations

import json

from mlplatform.cli import main
from mlplatform.core.monitoring.alerts import AlertStore

REQUIRED = {"time", "kind", "severity", "source", "message", "state"}


def _seed(home) -> None:
    store = AlertStore(home.ensure().alerts)
    store.raise_alert(
        "check", "WARN", "drift_report", "length_psi 0.3 > WARN bound", "drift_report:length_psi"
    )
    store.raise_alert("run_failure", "ERROR", "monitoring_job", "run failed: boom", "run:monitoring_job")
    store.resolve("run:monitoring_job")


def test_alerts_json_lists_the_firing_alerts_with_the_documented_fields(home, capsys):
    _seed(home)
    assert main(["--home", str(home.root), "alerts", "--json"]) == 0
    alerts = json.loads(capsys.readouterr().out)
    assert isinstance(alerts, list) and len(alerts) == 1
    (alert,) = alerts
    assert set(alert) >= REQUIRED
    assert (alert["kind"], alert["severity"], alert["source"], alert["state"]) == (
        "check",
        "WARN",
        "drift_report",
        "firing",
    )


def test_alerts_all_includes_resolved_ones_and_the_table_names_them(home, capsys):
    _seed(home)
    assert main(["--home", str(home.root), "alerts", "--all", "--json"]) == 0
    states = {alert["kind"]: alert["state"] for alert in json.loads(capsys.readouterr().out)}
    assert states == {"check": "firing", "run_failure": "resolved"}
    assert main(["--home", str(home.root), "alerts", "--all"]) == 0
    table = capsys.readouterr().out
    assert "SEVERITY" in table and "monitoring_job" in table and "drift_report" in table


def test_alerts_on_a_home_without_any(home, capsys):
    assert main(["--home", str(home.root), "alerts", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["--home", str(home.root), "alerts"]) == 0
    assert "no firing alerts" in capsys.readouterr().out
