"""The monitoring stage and its alerts, end to end: real endpoint app in-process, `mlplatform run`, alerts."""

from __future__ import annotations

import json
import re
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import numpy as np
import onnx
import polars as pl
import pytest
from fastapi.testclient import TestClient

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import generate_reviews, write_demo_drops
from mlplatform.core.data.text import prepare_texts
from mlplatform.core.monitoring.alerts import FIRING, RESOLVED, WEBHOOK_ENV, AlertStore
from mlplatform.core.monitoring.drift import (
    BASELINE_CARD_KEY,
    ModelVocabulary,
    TrainingBaseline,
    drift_baseline,
    version_drift,
)
from mlplatform.core.monitoring.health import NO_ENDPOINT, health_outcomes, system_health_numbers
from mlplatform.core.monitoring.rules import DRIFT_METRICS
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.training.rebuild import recorded_splits
from mlplatform.definitions import build_definitions
from mlplatform.defs.alerting import build_alert_sensors, record_rollback_alerts
from mlplatform.defs.monitoring import monitoring_inputs
from mlplatform.instance import open_instance
from mlplatform.runner import run_pending
from mlplatform.serving.app import create_app

pytestmark = pytest.mark.filterwarnings("ignore")
LABELS = load_contract().classes
SETTINGS = """[lake]
settle_seconds = 0.0
[features]
min_facet_rows = 40
[monitoring]
min_rows = 150
min_labelled_rows = 60
"""
# Off-domain, but each holds a word the demo model reads (a text with none is refused with a 400).
GENERIC = [
    "it is ok",
    "It works, the end.",
    "The weather is nice today.",
    "Send it tomorrow please, the box is ready.",
    "My phone battery died, it is old.",
    "Traffic was slow on the road.",
    "Call me later, the meeting is over.",
    "Great game last night.",
]
SEEDED, FEW = "SEEDED-1", "FEW-1"
SEED, DROPS, ROWS_PER_DROP = 21, 2, 700
LANDED_ROWS = DROPS * ROWS_PER_DROP


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> PlatformHome:
    """One home trained on demo data and deployed without an endpoint (nothing captured yet)."""
    root = tmp_path_factory.mktemp("monitoring")
    home = PlatformHome(root / "home").ensure()
    home.settings_file.write_text(SETTINGS)
    Lake(home).land(write_demo_drops(root / "drops", n_drops=DROPS, rows_per_drop=ROWS_PER_DROP, seed=SEED))
    report = run_pending(home, say=lambda _: None)
    assert report.exit_code == 0, report.blocked
    return home


@pytest.fixture
def home(deployed: PlatformHome, tmp_path: Path) -> PlatformHome:
    shutil.copytree(deployed.root, tmp_path / "home")
    return PlatformHome(tmp_path / "home")


def _send(home: PlatformHome, reviews: list[dict], request_id: str | None = None) -> str:
    """POST the reviews to the real endpoint app in batches of 50; returns the served model version."""
    app = create_app(home, Settings.load(home.settings_file))
    with TestClient(app) as client:
        for start in range(0, len(reviews), 50):
            headers = {"X-Request-ID": request_id} if request_id else {}
            answer = client.post("/predict", json={"reviews": reviews[start : start + 50]}, headers=headers)
            assert answer.status_code == 200, answer.text
        return answer.json()["model_version"]


def _held_back(n_rows: int) -> pl.DataFrame:
    """A held-back slice of the same data: demo reviews generated after the rows that were landed."""
    frame = generate_reviews(LANDED_ROWS + n_rows, SEED).slice(LANDED_ROWS)
    return frame.select(
        prepare_texts([frame["title"], frame["review_text"]]),
        pl.col("clothing_id").cast(pl.String).alias("product_id"),
        pl.format("held-{}", pl.col("source_row")).alias("review_id"),
    ).filter(pl.col("text") != "")


def _monitor(home: PlatformHome) -> None:
    report = run_pending(home, say=lambda _: None, groups=["monitoring"])
    assert report.exit_code == 0, report.blocked
    assert "prediction_log" in report.materialized


def _check(home: PlatformHome, asset: str, name: str) -> dg.AssetCheckEvaluation:
    key = dg.AssetCheckKey(dg.AssetKey(asset), name)
    record = open_instance(home).event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    return record.event.dagster_event.event_specific_data


def _latest(home: PlatformHome, asset: str):
    store = ArtifactStore(home.artifacts)
    return store.load(store.latest(asset))


def test_prediction_log_keeps_reused_request_ids_apart_dedupes_a_replayed_segment_and_names_the_version(home):
    texts = [{"text": f"love this dress number {i}", "review_id": f"r{i}"} for i in range(3)]
    version = _send(home, texts, request_id="same-request")
    _send(home, texts, request_id="same-request")  # a client's retry: the same request id, a second request
    _send(home, texts[:1])
    first = sorted(home.capture.glob("*.jsonl"))[0]
    shutil.copy(first, first.with_name(first.name.replace(".jsonl", "9.jsonl")))  # a segment replayed
    _monitor(home)

    log = _latest(home, "prediction_log")
    assert log.height == 7 and log["request_id"].n_unique() == 2 and log["capture_id"].n_unique() == 3
    assert set(log["model_version"]) == {version}
    event = open_instance(home).get_latest_materialization_event(dg.AssetKey("prediction_log"))
    metadata = event.asset_materialization.metadata
    assert metadata["duplicates_removed"].value == 3 and metadata[f"rows/{version}"].value == 7

    again = run_pending(home, say=lambda _: None, groups=["monitoring"])
    assert "prediction_log" not in again.materialized  # nothing new captured: monitoring is not re-run


def _observed_capture(home: PlatformHome) -> str | None:
    record = open_instance(home).get_latest_data_version_record(dg.AssetKey("capture"), is_source=True)
    return None if record is None else record.asset_observation.tags["dagster/data_version"]


def test_the_capture_is_observed_between_the_endpoint_and_the_log_and_its_growth_makes_the_log_stale(home):
    graph = build_definitions(home).resolve_asset_graph()
    assert graph.get(dg.AssetKey("capture")).parent_keys == {dg.AssetKey("sentiment_endpoint")}
    assert graph.get(dg.AssetKey("prediction_log")).parent_keys == {dg.AssetKey("capture")}
    assert _observed_capture(home) is None

    _send(home, [{"text": "soft and warm"}])
    _monitor(home)
    inputs = monitoring_inputs(home, Settings.load(home.settings_file))
    first = inputs.capture_summary().fingerprint
    assert first is not None and _observed_capture(home) == first
    event = open_instance(home).get_latest_materialization_event(dg.AssetKey("prediction_log"))
    assert event.asset_materialization.tags["dagster/input_data_version/capture"] == first

    _send(home, [{"text": "itchy and thin"}])  # the capture grew: observed anew, the log follows
    _monitor(home)
    assert _observed_capture(home) == inputs.capture_summary().fingerprint != first


def test_held_back_reviews_do_not_drift_labels_that_disagree_degrade_and_a_seeded_product_is_flagged(home):
    reviews = _held_back(600)
    traffic = reviews.select("text", "product_id", "review_id").to_dicts()
    _send(home, traffic)
    _monitor(home)
    for metric in DRIFT_METRICS:
        evaluation = _check(home, "drift_report", metric)
        assert evaluation.passed, evaluation.description
    assert not _check(home, "live_model_quality", "live_quality").passed  # no labels yet: a WARN
    assert _check(home, "live_model_quality", "live_quality").severity == dg.AssetCheckSeverity.WARN

    # Ground truth arrives: for every review a label other than the one it was given.
    log = _latest(home, "prediction_log").filter(pl.col("review_id").is_not_null())
    truth = log.select(
        "review_id",
        pl.col("label").replace_strict(
            {label: LABELS[(i + 1) % len(LABELS)] for i, label in enumerate(LABELS)}
        ),
    )
    home.labels.mkdir(parents=True)
    truth.write_csv(home.labels / "feedback.csv")
    # Complaints about one product, and a handful about another, arrive with the labels.
    negative = "Sadly returning. Way too expensive for what you get. I wanted to love it but I returned it."
    _send(home, [{"text": negative, "product_id": SEEDED}] * 25 + [{"text": negative, "product_id": FEW}] * 3)
    _monitor(home)
    quality = _check(home, "live_model_quality", "live_quality")
    assert not quality.passed and quality.severity == dg.AssetCheckSeverity.ERROR
    assert "drop" in quality.description

    seeded = _latest(home, "prediction_log").filter(pl.col("product_id") == SEEDED)
    assert seeded.height == 25 and set(seeded["label"]) == {"negative"}  # the seeding took
    bundle = _latest(home, "product_quality_report").files
    csv = pl.read_csv(bundle["product_quality_report.csv"], schema_overrides={"product_id": pl.String})
    assert SEEDED in csv["product_id"].to_list() and FEW not in csv["product_id"].to_list()
    assert SEEDED in bundle["product_quality_report.md"].decode()
    # why: the n-grams of the complaint that the serving model's own weights push towards negative
    pushing = csv.filter(pl.col("product_id") == SEEDED)["pushing_ngrams"].item()
    words = set(re.findall(r"[a-z]+", negative.lower()))
    assert pushing and all(set(item.split(" (")[0].split()) <= words for item in pushing.split(", "))


def test_bias_drift_holds_for_held_back_reviews_and_fires_when_one_department_is_treated_differently(home):
    held_back = _held_back(600)
    _send(home, held_back.select("text", "product_id", "review_id").to_dicts())
    _monitor(home)
    evaluation = _check(home, "bias_drift", "bias_drift")
    assert evaluation.passed, evaluation.description
    report = _latest(home, "bias_drift")
    sources = {facet["facet"]: facet["source"] for facet in report["facets"]}
    assert sources == {"age_band": None, "division_name": None, "department_name": "catalogue"}
    judged = [value for facet in report["facets"] for value in facet["values"] if value["shift"] is not None]
    assert {value["value"] for value in judged} >= {"Dresses", "Tops"}
    assert report["by_day"] and set(report["by_day"][0]) == {"day", "facet", "value", "label", "rows", "rate"}

    # Dresses draw a stream of complaints: their negative rate leaves everyone else's behind.
    reviews = _latest(home, "reviews")
    dresses = reviews.filter(pl.col("department_name") == "Dresses")["clothing_id"].unique().sort().head(20)
    negative = "Sadly returning. Way too expensive for what you get. I wanted to love it but I returned it."
    _send(home, [{"text": negative, "product_id": str(dresses[i % dresses.len()])} for i in range(300)])
    _monitor(home)
    evaluation = _check(home, "bias_drift", "bias_drift")
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "department_name=Dresses" in evaluation.description
    alert = AlertStore(home.alerts).firing("bias_drift:bias_drift")
    assert alert is not None and "Dresses" in alert.message


def test_generic_sentences_drift_and_alert_once_per_condition_with_webhook(home, monkeypatch, receiver):
    monkeypatch.setenv(WEBHOOK_ENV, receiver.url)
    trained_with = {alert.key for alert in AlertStore(home.alerts).list()}  # raised before the webhook
    generic = [{"text": GENERIC[i % len(GENERIC)]} for i in range(200)]
    _send(home, generic)
    _monitor(home)
    failed = {m: _check(home, "drift_report", m) for m in DRIFT_METRICS}
    assert not all(evaluation.passed for evaluation in failed.values())
    assert not failed["length_psi"].passed
    assert failed["length_psi"].severity == dg.AssetCheckSeverity.ERROR

    health = _check(home, "system_health", "error_rate")
    assert not health.passed and health.severity == dg.AssetCheckSeverity.WARN
    assert health.description == NO_ENDPOINT

    store = AlertStore(home.alerts)
    first = {alert.key for alert in store.list()}
    assert "drift_report:length_psi" in first and "system_health:latency" in first
    _send(home, generic[:60])  # the capture grew, the conditions stand
    _monitor(home)
    keys = [alert.key for alert in store.list()]
    assert len(keys) == len(set(keys)) and set(keys) == first
    bodies = [body["text"] for body in receiver.bodies]
    assert any("drift_report" in text and "length_psi" in text for text in bodies)
    assert len(bodies) == len(first - trained_with)  # one post per alert, none for the standing conditions

    (home.labels).mkdir(parents=True)
    (home.labels / "broken.csv").write_text("review_id,stars\nx,5\n")
    _send(home, generic[:10])
    report = run_pending(home, say=lambda _: None, groups=["monitoring"])
    assert report.exit_code == 1
    (failure,) = [alert for alert in store.list() if alert.kind == "run_failure"]
    assert failure.key == f"step:{failure.source}" and "label" in failure.message  # keyed by the step
    (home.labels / "broken.csv").unlink()
    _send(home, generic[:10])
    assert run_pending(home, say=lambda _: None, groups=["monitoring"]).exit_code == 0
    states = {alert.key: alert.state for alert in store.list()}
    assert states[failure.key] == RESOLVED and states["drift_report:length_psi"] == FIRING


def _drift_metadata(home: PlatformHome) -> dict:
    event = open_instance(home).get_latest_materialization_event(dg.AssetKey("drift_report"))
    return {key: entry.value for key, entry in event.asset_materialization.metadata.items()}


def _baseline_of(splits: pl.DataFrame, card: dict, vocabulary: ModelVocabulary) -> TrainingBaseline:
    return TrainingBaseline.from_splits(splits, card["metrics"]["test"]["confusion_matrix"], vocabulary)


def test_a_version_is_judged_against_its_own_training_texts_after_the_splits_moved_on(home, tmp_path):
    registry = ModelRegistry.for_home(home, Settings.load(home.settings_file).storage)
    production = registry.production()
    version, card = production.version, production.card
    vocabulary = ModelVocabulary.from_onnx(onnx.load(str(registry.verify(version))))
    _, trained_on = recorded_splits(
        ArtifactStore.from_settings(home, Settings.load(home.settings_file).storage), card
    )
    assert TrainingBaseline.from_dict(card[BASELINE_CARD_KEY]) == _baseline_of(trained_on, card, vocabulary)

    # New data lands and review_splits moves on; the version stays in production.
    more = write_demo_drops(tmp_path / "more", n_drops=DROPS + 1, rows_per_drop=ROWS_PER_DROP, seed=SEED)
    Lake(home).land(more[-1:])
    moved = run_pending(home, say=lambda _: None, groups=["features"])  # one run: reviews, then its splits
    assert moved.exit_code == 0, moved.blocked
    assert "review_splits" in moved.materialized and "best_model" not in moved.materialized
    assert registry.production().version == version
    now = _baseline_of(_latest(home, "review_splits"), card, vocabulary)
    then = TrainingBaseline.from_dict(card[BASELINE_CARD_KEY])
    assert now.rows > then.rows

    _send(home, _held_back(300).select("text").to_dicts())
    _monitor(home)
    metadata = _drift_metadata(home)
    assert metadata[f"{version}/baseline_rows"] == then.rows
    assert metadata[f"{version}/baseline_oov_rate"] == then.oov_rate != now.oov_rate
    assert metadata[f"{version}/baseline_median_length"] == float(np.median(then.lengths()))
    for metric in DRIFT_METRICS:
        assert _check(home, "drift_report", metric).passed  # held-back reviews: no drift against A


def test_a_version_without_a_recorded_baseline_uses_its_split_version_or_says_it_has_none(home, settings):
    registry = ModelRegistry.for_home(home, Settings.load(home.settings_file).storage)
    version = registry.production().version
    recorded = TrainingBaseline.from_dict(registry.get(version).card[BASELINE_CARD_KEY])
    card_file = home.registry / "versions" / version / "card.json"
    legacy = {
        key: value for key, value in json.loads(card_file.read_text()).items() if key != BASELINE_CARD_KEY
    }
    card_file.write_text(json.dumps(legacy))  # as a version registered before baselines were recorded
    rows = pl.DataFrame(
        {"model_version": [version] * 200, "text": ["fits well"] * 200, "label": ["positive"] * 200}
    )
    rules = Settings.load(home.settings_file).monitoring
    store = ArtifactStore(home.artifacts)

    assert drift_baseline(store, registry, version).training == recorded  # from its recorded split version
    assert version_drift(store, registry, rows, version, rules).metrics["baseline_rows"] == recorded.rows

    Path(store.get("review_splits", legacy["lineage"]["split_versions"]["review_splits"]).path).unlink()
    report = version_drift(store, registry, rows, version, rules)
    assert report.metrics == {} and report.rows == 200
    for outcome in report.outcomes:
        assert not outcome.passed and outcome.severity == "WARN"
        assert f"not enough data: no training baseline recorded for {version}" in outcome.description


def test_system_health_reads_the_endpoint_metrics(home):
    _send(home, [{"text": "lovely soft sweater"}] * 20)
    with TestClient(create_app(home, Settings.load(home.settings_file))) as client:
        client.post("/predict", json={"reviews": [{"text": "nice"}]})
        text = client.get("/metrics").text
    numbers = system_health_numbers(text, now=1e12)
    assert numbers["requests"] >= 1 and numbers["error_rate"] == 0.0
    assert 0 < numbers["p50_latency_ms"] <= numbers["p99_latency_ms"]
    rules = Settings.load(home.settings_file).monitoring
    outcomes = {o.name: o for o in health_outcomes(numbers, rules)}
    assert outcomes["error_rate"].passed
    slow = health_outcomes({**numbers, "p99_latency_ms": 10_000.0}, rules.replace(max_p99_latency_ms=500.0))
    assert not slow[1].passed and slow[1].severity == "ERROR"


def test_a_rollback_becomes_one_alert(home):
    registry = ModelRegistry(home.registry)
    production = registry.production().version
    registry.restore_aliases(production, None, by="sentiment_endpoint", reason="smoke_test: wrong labels")
    store = AlertStore(home.alerts)
    (alert,) = record_rollback_alerts(registry, store)
    assert alert.kind == "rollback" and "automatically" in alert.message and "wrong labels" in alert.message
    assert record_rollback_alerts(registry, store) == []  # the same event is not alerted twice


def test_the_run_failure_sensor_alerts_on_a_failed_run(tmp_path):
    home = PlatformHome(tmp_path / "home").ensure()

    @dg.op
    def explode() -> None:
        raise RuntimeError("disk on fire")

    @dg.job
    def fragile():
        explode()

    instance = open_instance(home)
    result = fragile.execute_in_process(instance=instance, raise_on_error=False)
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    context = dg.build_run_status_sensor_context(
        sensor_name="alerts_on_run_failure",
        dagster_event=failure,
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
    ).for_run_failure()
    sensors = {sensor.name: sensor for sensor in build_alert_sensors(home, Settings.load(home.settings_file))}
    assert sensors["alerts_on_run_failure"].default_status == dg.DefaultSensorStatus.RUNNING
    sensors["alerts_on_run_failure"](context)
    (alert,) = AlertStore(home.alerts).list()
    assert (alert.kind, alert.key, alert.state) == ("run_failure", "step:explode", FIRING)
    assert "disk on fire" in alert.message


class _Receiver:
    def __init__(self, server: ThreadingHTTPServer, bodies: list[dict]) -> None:
        self.url = f"http://127.0.0.1:{server.server_port}/hook"
        self.bodies = bodies


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    """A webhook receiver on 127.0.0.1 that keeps every JSON body posted to it."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield _Receiver(server, bodies)
    server.shutdown()
    server.server_close()
