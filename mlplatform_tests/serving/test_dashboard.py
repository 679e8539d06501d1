"""The dashboard's data and routes: a fresh home, a promoted model, monitoring artifacts, API keys."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import polars as pl
import pytest
from fastapi.testclient import TestClient

from mlplatform.core.monitoring.alerts import AlertStore
from mlplatform.core.monitoring.bias_drift import bias_drift
from mlplatform.core.monitoring.product_report import to_safe_csv
from mlplatform.core.monitoring.rollout_judgement import RolloutJudgement, RolloutRound
from mlplatform.core.monitoring.rules import MonitorOutcome
from mlplatform.core.platform.artifacts import ArtifactStore, Bundle, encode
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.records import RECORDS_MARKER
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import (
    Rollout,
    RolloutAction,
    RolloutOutcome,
    RolloutStrategy,
    abort_rollout,
    start_rollout,
)
from mlplatform.serving.app import create_app
from mlplatform.serving.dashboard import dashboard_data
from mlplatform_tests.serving.conftest import deploy, register

SECTIONS = (
    "production",
    "models",
    "registry_events",
    "materializations",
    "drift",
    "live_quality",
    "flagged_products",
    "system_health",
    "rollout",
    "bias_drift",
    "alerts",
)
CARD = {
    "metrics": {
        "test": {
            "macro_f1": 0.71,
            "accuracy": 0.8,
            "per_class": {
                "negative": {"recall": 0.6},
                "neutral": {"recall": 0.5},
                "positive": {"recall": 0.9},
            },
        }
    },
    "gates": [
        {"name": "quality_bar", "passed": True, "severity": "ERROR", "description": "ok", "metadata": {}},
        {"name": "fairness_gap", "passed": False, "severity": "WARN", "description": "gap", "metadata": {}},
    ],
    "lineage": {"run_id": "run-123"},
}
DRIFT_REPORT = {
    "model_version": "v1",
    "rows": 500,
    "metrics": {"length_psi": 0.3},
    "outcomes": [
        {
            "name": "length_psi",
            "passed": False,
            "severity": "ERROR",
            "description": "length_psi 0.3000 > ERROR bound 0.25",
            "metadata": {"value": 0.3, "warn_bound": 0.1, "error_bound": 0.25, "rows": 500},
        }
    ],
}


@pytest.fixture
def client(home: PlatformHome, fast_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(home, fast_settings)) as test_client:
        yield test_client


def test_fresh_home_shows_every_section_as_empty(home: PlatformHome, settings: Settings) -> None:
    data = dashboard_data(home, settings)

    assert {name: data[name]["state"] for name in SECTIONS} == dict.fromkeys(SECTIONS, "empty")
    assert data["refresh_s"] == settings.serving.dashboard_refresh_s


def test_page_and_data_routes_on_a_fresh_home(client: TestClient) -> None:
    page = client.get("/dashboard")
    data = client.get("/dashboard/data")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "http://" not in page.text.replace(
        "http://www.w3.org/2000/svg", ""
    )  # nothing loads from elsewhere
    assert data.status_code == 200
    assert data.json()["production"]["state"] == "empty"


def test_promoted_model_shows_version_since_metrics_and_gates(
    home: PlatformHome, settings: Settings, tiny_models: dict[int, bytes]
) -> None:
    registry = ModelRegistry(home.registry)
    first = deploy(registry, tiny_models[0])
    second = registry.register(tiny_models[1], card=CARD, metrics={"macro_f1": 0.7}).version
    registry.approve(second, by="test")
    registry.promote(second, by="test")

    data = dashboard_data(home, settings, served={"version": second, "ready": True})

    production = data["production"]
    assert (production["state"], production["version"], production["previous"]) == ("ok", second, first)
    assert production["since"] == registry.in_production_since()
    assert production["macro_f1"] == 0.71  # the card's test metrics win over the registration metrics
    assert production["served"] == {"version": second, "ready": True}
    versions = data["models"]["versions"]
    assert [model["version"] for model in versions] == [first, second]  # oldest first, the chart's x axis
    assert versions[0]["macro_f1"] == 0.5 and versions[0]["gates"] == []
    assert versions[1]["per_class_recall"] == {"negative": 0.6, "neutral": 0.5, "positive": 0.9}
    assert [(gate["name"], gate["passed"]) for gate in versions[1]["gates"]] == [
        ("quality_bar", True),
        ("fairness_gap", False),
    ]
    assert versions[1]["run_id"] == "run-123"
    assert data["registry_events"]["events"][0]["event"] == "promoted"


def test_versions_of_other_classes_chart_their_own_classes(
    home: PlatformHome, settings: Settings, tiny_models: dict[int, bytes]
) -> None:
    registry = ModelRegistry(home.registry)
    registry.register(tiny_models[0], card=CARD, metrics={"macro_f1": 0.7})
    two = {
        "metrics": {
            "test": {"macro_f1": 0.9, "per_class": {"bad": {"recall": 0.8}, "good": {"recall": 0.95}}}
        }
    }
    registry.register(tiny_models[1], card=two, metrics={"macro_f1": 0.9})
    versions = dashboard_data(home, settings)["models"]["versions"]
    assert [model["per_class_recall"] for model in versions] == [
        {"negative": 0.6, "neutral": 0.5, "positive": 0.9},
        {"bad": 0.8, "good": 0.95},
    ]


def test_monitoring_artifacts_and_alerts_are_shown(home: PlatformHome, settings: Settings) -> None:
    store = ArtifactStore(home.artifacts)
    store.put(
        "drift_report",
        None,
        encode({"judged_version": "v1", "by_version": {"v1": DRIFT_REPORT}}),  # as the asset stores it
        extra={"run_id": "run-drift"},
    )
    store.put(
        "live_model_quality",
        None,
        encode(
            {
                "by_day": [
                    {
                        "model_version": "v1",
                        "day": "2026-11-02",
                        "rows": 40,
                        "accuracy": 0.8,
                        "macro_f1": 0.62,
                    },
                    {
                        "model_version": "v1",
                        "day": "2026-11-01",
                        "rows": 50,
                        "accuracy": 0.9,
                        "macro_f1": 0.7,
                    },
                ],
                "by_version": {
                    "v1": {
                        "model_version": "v1",
                        "macro_f1": 0.66,
                        "test_macro_f1": 0.71,
                        "rows_joined": 90,
                        "outcome": {"passed": False, "severity": "ERROR", "description": "drop"},
                    }
                },
            }
        ),
    )
    products = pl.DataFrame({"product_id": ["1078", "=cmd"], "negative_share": [0.6, 0.5]})
    report = Bundle(
        {"product_quality_report.csv": to_safe_csv(products), "product_quality_report.md": b"# x"}
    )
    store.put("product_quality_report", None, encode(report))
    store.put(
        "system_health",
        None,
        encode(
            {"endpoint_url": "http://x", "error_rate": 0.01, "p99_latency_ms": 12.5}
        ),  # as the asset stores it
    )
    AlertStore(home.alerts).raise_alert("drift", "ERROR", "drift_report", "length drifted", key="k1")

    data = dashboard_data(home, settings)

    drift = data["drift"]["reports"][0]
    assert (drift["model_version"], drift["run_id"]) == ("v1", "run-drift")
    assert drift["bars"] == [
        {
            "name": "length_psi",
            "value": 0.3,
            "warn_bound": 0.1,
            "error_bound": 0.25,
            "passed": False,
            "severity": "ERROR",
            "description": "length_psi 0.3000 > ERROR bound 0.25",
        }
    ]
    quality = data["live_quality"]
    assert [point["day"] for point in quality["points"]] == ["2026-11-01", "2026-11-02"]
    assert quality["by_version"][0]["severity"] == "ERROR"
    assert data["flagged_products"]["rows"] == [
        {"product_id": "1078", "negative_share": 0.6},
        {"product_id": "'=cmd", "negative_share": 0.5},
    ]
    assert data["system_health"]["values"] == {
        "endpoint_url": "http://x",
        "error_rate": 0.01,
        "p99_latency_ms": 12.5,
    }
    assert data["alerts"]["firing_count"] == 1
    assert data["alerts"]["firing"][0]["message"] == "length drifted"
    latest = {entry["asset"]: entry for entry in data["materializations"]["assets"]}
    assert set(latest) == {"drift_report", "live_model_quality", "product_quality_report", "system_health"}
    assert latest["drift_report"]["run_id"] == "run-drift"


def test_an_artifact_of_unknown_shape_is_an_error_not_no_data(home: PlatformHome, settings: Settings) -> None:
    ArtifactStore(home.artifacts).put("drift_report", None, encode(b"not a report"))

    drift = dashboard_data(home, settings)["drift"]

    assert drift["state"] == "error"
    assert "bytes" in drift["error"]


def test_api_keys_gate_the_dashboard_data_not_its_page(home: PlatformHome, fast_settings: Settings) -> None:
    with TestClient(create_app(home, fast_settings, api_keys=("secret",))) as client:
        page = client.get("/dashboard")  # what a browser loads by URL: no header can carry a key there
        assert page.status_code == 200 and b'id="key-form"' in page.content
        assert client.get("/dashboard/data").status_code == 401
        assert client.get("/dashboard/data", headers={"X-API-Key": "secret"}).status_code == 200
        assert client.get("/dashboard/data", headers={"Authorization": "Bearer secret"}).status_code == 200


def test_records_that_cannot_be_read_are_an_error_of_their_section(
    home: PlatformHome, settings: Settings
) -> None:
    # The alerts moved to PostgreSQL, but this process has no MLPLATFORM_PG_URL: the file backend refuses.
    home.alerts.mkdir(parents=True, exist_ok=True)
    (home.alerts / RECORDS_MARKER).write_text('{"backend": "postgresql", "name": "alerts"}')

    data = dashboard_data(home, settings)

    assert data["alerts"]["state"] == "error"
    assert "live in PostgreSQL" in data["alerts"]["error"]
    assert data["drift"]["state"] != "error"  # the rest of the page still loads


def _round(rollout: Rollout) -> dict:
    """A judgement round as the `rollout` asset stores it."""
    numbers = {
        "candidate_rows": 120,
        "production_rows": 360,
        "candidate_p99_latency_ms": 4.5,
        "production_p99_latency_ms": 4.0,
        "candidate_share/negative": 0.3,
        "production_share/negative": 0.25,
        "agreement": 0.95,
    }
    outcomes = (
        MonitorOutcome("agreement", True, None, "1 - TVD 0.95 >= 0.8", {"evaluated": 1}),
        MonitorOutcome("error_rate", False, "ERROR", "3 of 120 failed", {"evaluated": 1}),
    )
    judgement = RolloutJudgement(
        rollout, "2026-11-02T10:00:00+00:00", numbers, outcomes, RolloutAction.WAIT, "120 of 200"
    )
    return RolloutRound(judgement, RolloutOutcome(RolloutAction.WAIT, "120 of 200", rollout)).record()


def test_a_running_canary_shows_who_answers_what_its_judgement_and_both_versions_side_by_side(
    home: PlatformHome, settings: Settings, tiny_models: dict[int, bytes]
) -> None:
    registry = ModelRegistry(home.registry)
    deploy(registry, tiny_models[0])
    candidate = register(registry, tiny_models[1])
    rollout = start_rollout(
        registry, RolloutStrategy.CANARY, candidate, by="alice", percent=25, steps=[25, 50]
    )
    store = ArtifactStore(home.artifacts)
    store.put("rollout", None, encode(_round(rollout)))
    store.put("rollout", None, encode({"rollout": None, "action": None, "reason": "no rollout is running"}))

    section = dashboard_data(home, settings)["rollout"]

    running = section["running"]
    assert (running["strategy"], running["candidate"], running["production"]) == ("canary", candidate, "v1")
    assert [(share["version"], share["share"]) for share in running["shares"]] == [
        ("v1", 75),
        (candidate, 25),
    ]
    judgement = running["judgement"]
    assert (judgement["action"], judgement["reason"]) == ("wait", "120 of 200")  # the round of this rollout
    assert [(check["name"], check["passed"]) for check in judgement["checks"]] == [
        ("agreement", True),
        ("error_rate", False),
    ]
    compared = {row["metric"]: (row["candidate"], row["production"]) for row in judgement["comparison"]}
    assert compared["predictions in this step"] == (120, 360)
    assert compared["p99 latency (ms)"] == (4.5, 4.0)
    assert compared["predicted share: negative"] == (0.3, 0.25)
    assert section["events"][0]["event"] == "rollout_started" and section["events"][0]["by"] == "alice"


def test_after_a_rollout_the_section_says_none_runs_and_keeps_its_events(
    home: PlatformHome, settings: Settings, tiny_models: dict[int, bytes]
) -> None:
    registry = ModelRegistry(home.registry)
    deploy(registry, tiny_models[0])
    start_rollout(registry, RolloutStrategy.SHADOW, register(registry, tiny_models[1]), by="alice")
    abort_rollout(registry, None, by="bob", reason="enough", automatic=False)

    section = dashboard_data(home, settings)["rollout"]

    assert section["running"] is None
    assert [event["event"] for event in section["events"]] == ["rollout_aborted", "rollout_started"]


def test_bias_drift_shows_each_facet_its_source_and_the_rates_of_the_class_that_moved_most(
    home: PlatformHome, settings: Settings
) -> None:
    log = pl.DataFrame(
        {
            "model_version": "v1",
            "time": [datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)] * 60,
            "label": ["negative", "positive"] * 60,
            "product_id": "7",
            "department_name": ["Dresses", "Tops"] * 60,
        }
    )
    rates = {"negative": 0.5, "neutral": 0.0, "positive": 0.5}
    card = {
        "department_name": {
            "values": {v: {"rows": 200, "predicted_rate": rates} for v in ("Dresses", "Tops")}
        }
    }
    rules = settings.monitoring.bias_drift.replace(min_rows=30)
    report = bias_drift(
        log,
        None,
        version="v1",
        card_facets=card,
        facets=("department_name", "age_band"),
        product_column=None,
        classes=("negative", "neutral", "positive"),
        rules=rules,
    )
    ArtifactStore(home.artifacts).put("bias_drift", None, encode(report.to_dict()))

    section = dashboard_data(home, settings)["bias_drift"]

    department, age = section["facets"]
    assert (department["source"], department["charted_class"]) == ("request", "negative")
    assert {(p["day"], p["value"], p["rate"]) for p in department["points"]} == {
        ("2026-11-01", "Dresses", 1.0),
        ("2026-11-02", "Tops", 0.0),
    }
    assert {value["value"]: value["severity"] for value in department["values"]} == {
        "Dresses": "ERROR",
        "Tops": "ERROR",
    }
    assert age["source"] is None and age["reason"] == "no catalogue to join the product with"
    assert section["check"]["passed"] is False and section["judged_version"] == "v1"


def test_the_endpoint_shows_its_own_health_without_configuration(
    home: PlatformHome, fast_settings: Settings, tiny_models: dict[int, bytes]
) -> None:
    deploy(ModelRegistry(home.registry), tiny_models[0])
    with TestClient(create_app(home, fast_settings)) as client:
        for _ in range(3):
            assert client.post("/predict", json={"reviews": [{"text": "lovely dress"}]}).status_code == 200
        health = client.get("/dashboard/data").json()["system_health"]

    assert health["state"] == "ok" and health["source"] == "this endpoint, live"
    assert health["values"]["requests"] >= 3 and health["values"]["error_rate"] == 0.0
    assert {check["name"]: check["passed"] for check in health["checks"]} == {
        "error_rate": True,
        "latency": True,
    }
