"""The endpoint during a rollout, in-process: the shadow scores a copy off the answer's path (failing, slow
or dropped, never delaying or failing an answer, always captured), the canary answers its share by key,
a failing canary candidate is replaced by production, and a candidate failing its hash check is refused
with its rollout aborted and an alert."""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mlplatform.core.monitoring.alerts import AlertStore
from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import (
    ROLLOUT_POINTER,
    Rollout,
    RolloutStrategy,
    advance_rollout,
    current_rollout,
    start_rollout,
)
from mlplatform.core.scoring.model import load_model
from mlplatform.serving.app import create_app
from mlplatform_tests.serving.conftest import damage_model_file, deploy, register, tiny_model_bytes
from mlplatform_tests.serving.test_health import wait_until

CANDIDATE = "v2"


@pytest.fixture
def model_variants() -> tuple[int, int]:
    """The tiny models' variants of production (v1) and the candidate (v2)."""
    return (0, 1)


@pytest.fixture
def versions(registry: ModelRegistry, tiny_models: dict[int, bytes], model_variants) -> None:
    production, candidate = model_variants
    deploy(registry, tiny_models[production] if production in tiny_models else tiny_model_bytes(production))
    register(registry, tiny_models[candidate] if candidate in tiny_models else tiny_model_bytes(candidate))


def start(registry: ModelRegistry, strategy: str, **options) -> Rollout:
    return start_rollout(registry, RolloutStrategy(strategy), CANDIDATE, by="test", **options)


class Misbehaving:
    """The candidate's model as the endpoint holds it (a canary's), failing texts that say "explode"."""

    def __init__(self, model: Any) -> None:
        self._model = model
        self.classes = model.classes

    def predict(self, texts, explain_top_k: int = 0):
        if any("explode" in text for text in texts):
            raise RuntimeError("the candidate exploded")
        return self._model.predict(texts, explain_top_k)


def loader_for(registry: ModelRegistry):
    """The real loader; the candidate's model misbehaves (see Misbehaving)."""
    candidate_sha = registry.get(CANDIDATE).sha256
    real = functools.partial(load_model, rules=Settings.packaged().scoring)

    def load(path: Path, sha256: str) -> Any:
        model = real(path, sha256)
        return Misbehaving(model) if sha256 == candidate_sha else model

    return load


@pytest.fixture
def serving(home: PlatformHome, fast_settings: Settings, registry: ModelRegistry, versions) -> Iterator[Any]:
    """Start the app of `home` (a function of its loader and settings); each app is closed afterwards."""
    clients: list[TestClient] = []

    def open_app(loader=None, settings: Settings = fast_settings) -> TestClient:
        client = TestClient(create_app(home, settings, loader=loader)).__enter__()
        clients.append(client)
        return client

    yield open_app
    for client in clients:
        client.__exit__(None, None, None)


def holder(client: TestClient):
    return client.app.state.serving.holder


def close(client: TestClient) -> None:
    """Stop the app: the shadow's queue is drained and the capture sealed."""
    client.__exit__(None, None, None)


def captured(home: PlatformHome) -> pl.DataFrame:
    return read_capture(home.capture)


def metric(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def predict(client: TestClient, text: str, product_id: str | None = None):
    review = {"text": text} if product_id is None else {"text": text, "product_id": product_id}
    return client.post("/predict", json={"reviews": [review]})


# --- shadow ------------------------------------------------------------------------------------------


def test_a_shadow_is_captured_beside_every_answer_under_its_own_version(home, registry, serving):
    start(registry, "shadow")
    client = serving()
    wait_until(lambda: holder(client).candidate is not None)
    answers = [predict(client, "lovely dress, great fit", product_id=str(index)) for index in range(20)]
    assert {(answer.status_code, answer.json()["model_version"]) for answer in answers} == {(200, "v1")}
    close(client)

    frame = captured(home)
    answered, shadow = (frame.filter(pl.col("role") == role) for role in ("answered", "shadow"))
    assert answered.height == shadow.height == 20
    assert set(answered["model_version"]) == {"v1"} and set(shadow["model_version"]) == {CANDIDATE}
    assert sorted(shadow["capture_id"]) == sorted(answer.headers["x-capture-id"] for answer in answers)
    assert shadow["error"].null_count() == 20 and shadow["label"].null_count() == 0


@pytest.mark.parametrize("model_variants", [(10, 11)])  # "10" is a word of v1's, not of v2's
def test_a_failing_shadow_never_fails_the_request_and_its_failure_is_counted(home, registry, serving):
    start(registry, "shadow")
    client = serving()
    wait_until(lambda: holder(client).candidate is not None)
    answer = predict(client, "10")
    assert (answer.status_code, answer.json()["model_version"]) == (200, "v1")
    wait_until(lambda: metric(client, "mlplatform_serving_shadow_predictions_total", outcome="failed") == 1)
    close(client)

    (row,) = captured(home).filter(pl.col("role") == "shadow").iter_rows(named=True)
    assert row["error"] == "shadow candidate failed: review 0 has no word the candidate reads"
    assert row["label"] is None and row["model_version"] == CANDIDATE


def test_a_stuck_shadow_delays_no_answer_and_what_it_cannot_hold_is_recorded_as_dropped(
    home, registry, serving, fast_settings
):
    start(registry, "shadow")
    settings = fast_settings.with_overrides({"rollout": {"shadow_queue_max": 2}})
    client = serving(settings=settings)
    wait_until(lambda: holder(client).candidate is not None)
    assert predict(client, "lovely dress").status_code == 200
    wait_until(
        lambda: metric(client, "mlplatform_serving_shadow_predictions_total", outcome="scored") == 1, 60
    )
    worker = client.app.state.serving.shadow.worker_pid
    os.kill(worker, signal.SIGSTOP)  # the shadow worker stands still, as a hopelessly slow one would
    try:
        answers = [predict(client, "lovely dress") for _ in range(6)]  # all answered meanwhile
        assert {answer.status_code for answer in answers} == {200}
        assert metric(client, "mlplatform_serving_shadow_predictions_total", outcome="dropped") == 4
    finally:
        os.kill(worker, signal.SIGCONT)
    close(client)

    shadow = captured(home).filter(pl.col("role") == "shadow")
    assert shadow.height == 7  # every answered request has its shadow rows
    assert sum(error.startswith("dropped: ") for error in shadow["error"].drop_nulls()) == 4


def test_a_shadow_worker_that_dies_is_counted_and_every_answer_still_gets_its_shadow_rows(
    home, registry, serving
):
    start(registry, "shadow")
    client = serving()
    wait_until(lambda: holder(client).candidate is not None)
    assert predict(client, "lovely dress").status_code == 200
    wait_until(
        lambda: metric(client, "mlplatform_serving_shadow_predictions_total", outcome="scored") == 1, 60
    )
    shadow = client.app.state.serving.shadow
    os.kill(shadow.worker_pid, signal.SIGKILL)  # a candidate that crashes its scorer
    wait_until(lambda: not shadow.worker_alive, 30)
    answers = [predict(client, "lovely dress") for _ in range(3)]
    assert {answer.status_code for answer in answers} == {200}
    close(client)

    frame = captured(home)
    assert (
        frame.filter(pl.col("role") == "shadow").height == frame.filter(pl.col("role") == "answered").height
    )
    assert any("shadow worker stopped: exit code" in error for error in frame["error"].drop_nulls())


# --- canary ------------------------------------------------------------------------------------------


def test_a_canary_answers_its_share_and_every_answer_and_record_names_the_version_that_answered(
    home, registry, serving
):
    rollout = start(registry, "canary", percent=30, steps=[30, 100])
    with registry.exclusive() as section:  # a fixed draw (rollout id and request ids): no failure by chance
        section.set_pointer(ROLLOUT_POINTER, {**rollout.to_dict(), "id": "fixed-draw"})
    client = serving()
    wait_until(lambda: holder(client).candidate is not None)
    body = {"reviews": [{"text": "lovely dress"}]}
    answers = [client.post("/predict", json=body, headers={"X-Request-ID": f"req-{i}"}) for i in range(2000)]
    close(client)

    versions = [answer.json()["model_version"] for answer in answers]
    assert {answer.status_code for answer in answers} == {200} and set(versions) == {"v1", CANDIDATE}
    assert abs(versions.count(CANDIDATE) / len(versions) - 0.30) <= 0.03
    by_capture = dict(captured(home).select("capture_id", "model_version").iter_rows())
    assert [by_capture[answer.headers["x-capture-id"]] for answer in answers] == versions


def test_one_product_sees_one_version(registry, serving):
    start(registry, "canary", percent=50, steps=[50, 100])
    client = serving()
    wait_until(lambda: holder(client).candidate is not None)
    for product in ("1078", "862", "1094", "9"):
        seen = {predict(client, "lovely dress", product_id=product).json()["model_version"] for _ in range(5)}
        assert len(seen) == 1


def test_a_canary_explains_with_the_version_that_answered(home, registry, serving):
    start(registry, "canary", percent=50, steps=[50, 100])
    client = serving()
    wait_until(lambda: holder(client).candidate is not None)
    body = {"reviews": [{"text": "lovely dress, awful zipper"}], "explain": True}
    answers = [
        client.post("/predict", json=body, headers={"X-Request-ID": f"r-{i}"}).json() for i in range(40)
    ]
    close(client)

    by_version: dict[str, list] = {}
    for answer in answers:
        by_version.setdefault(answer["model_version"], []).append(answer["predictions"][0]["explanation"])
    assert set(by_version) == {"v1", CANDIDATE}  # both versions answered some
    models = {
        version: load_model(
            registry.get(version).onnx_path, registry.get(version).sha256, rules=Settings.packaged().scoring
        )
        for version in by_version
    }
    for version, explanations in by_version.items():
        expected = models[version].predict(["lovely dress, awful zipper"], explain_top_k=5).explanations[0]
        assert all(
            [(item["ngram"], round(item["weight"], 5)) for item in explanation]
            == [(item.ngram, round(item.weight, 5)) for item in expected]
            for explanation in explanations
        )
    frame = captured(home).filter(pl.col("role") == "answered")
    assert frame["explanation"].null_count() == 0 and frame.height == 40


def test_a_failing_canary_candidate_is_answered_for_by_production(home, registry, serving):
    start(registry, "canary", percent=99, steps=[99, 100])
    client = serving(loader=loader_for(registry))
    wait_until(lambda: holder(client).candidate is not None)
    answers = [predict(client, "explode, lovely dress", product_id=str(index)) for index in range(10)]
    assert {(answer.status_code, answer.json()["model_version"]) for answer in answers} == {(200, "v1")}
    assert metric(client, "mlplatform_serving_canary_fallbacks_total") >= 9
    close(client)

    frame = captured(home)
    failed = frame.filter(pl.col("error").is_not_null())
    assert set(failed["model_version"]) == {CANDIDATE} and set(failed["role"]) == {"shadow"}
    assert failed["error"][0].startswith(
        "canary candidate failed, production answered: the candidate exploded"
    )
    assert frame.filter(pl.col("role") == "answered").height == 10


def test_a_step_change_reaches_the_endpoint_without_reloading_the_candidate(registry, serving):
    rollout = start(registry, "canary", percent=5, steps=[5, 60])
    client = serving()
    wait_until(lambda: holder(client).candidate is not None)
    first = holder(client).candidate
    advance_rollout(registry, rollout.id, by="test", reason="step fit")
    wait_until(lambda: holder(client).candidate.percent == 60)
    assert holder(client).candidate.served is first.served
    assert metric(client, "mlplatform_serving_rollout_percent", version=CANDIDATE, strategy="canary") == 60


def test_a_candidate_failing_its_hash_check_is_refused_and_its_rollout_aborted_with_an_alert(
    home, registry, serving
):
    rollout = start(registry, "canary", percent=50, steps=[50, 100])
    damage_model_file(registry, CANDIDATE, "corrupt")
    client = serving()
    wait_until(lambda: current_rollout(registry) is None)

    assert holder(client).candidate is None and holder(client).status().candidate_refusals == 1
    aborted = registry.events()[-1]
    assert (aborted["event"], aborted["automatic"]) == ("rollout_aborted", True)
    assert aborted["by"].startswith("endpoint ") and "candidate v2 refused" in aborted["reason"]
    alert = AlertStore(home.alerts).firing(f"rollout:{rollout.id}:aborted")
    assert alert is not None and "sha256" in alert.message
    answers = [predict(client, "lovely dress", product_id=str(index)) for index in range(10)]
    assert {answer.json()["model_version"] for answer in answers} == {"v1"}


def test_the_dashboard_names_what_this_endpoint_serves_during_a_rollout(registry, serving):
    start(registry, "canary", percent=25, steps=[25, 100])
    client = serving()
    wait_until(lambda: holder(client).candidate is not None)
    data = client.get("/dashboard/data")
    assert data.status_code == 200
    served = data.json()["production"]["served"]
    assert (served["version"], served["candidate"]) == (
        "v1",
        {"version": CANDIDATE, "strategy": "canary", "percent": 25},
    )
    assert data.json()["rollout"]["running"]["shares"][1] == {
        "version": CANDIDATE,
        "role": "canary",
        "share": 25,
    }
