"""The deployment stage in-process: deploy with smoke test (in-process and live), rollback, batch scoring."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import httpx
import polars as pl
import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.fsio import sha256_file
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.deploy import SMOKE_CASES
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import current_rollout
from mlplatform.instance import open_instance
from mlplatform.runner import run_pending
from mlplatform_tests.integration.processes import endpoint_process

pytestmark = pytest.mark.filterwarnings("ignore")
QUIET = "[lake]\nsettle_seconds = 0.0\n"


def _check(home: PlatformHome, asset: str, name: str):
    key = dg.AssetCheckKey(dg.AssetKey(asset), name)
    record = open_instance(home).event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    return record.event.dagster_event.event_specific_data


def _record(home: PlatformHome) -> dict:
    store = ArtifactStore(home.artifacts)
    return store.load(store.latest("sentiment_endpoint"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> PlatformHome:
    """One home trained on demo data and deployed without an endpoint (v1 in production)."""
    root = tmp_path_factory.mktemp("deployment")
    home = PlatformHome(root / "home").ensure()
    home.settings_file.write_text(QUIET)
    Lake(home).land(write_demo_drops(root / "drops", n_drops=2, rows_per_drop=900, seed=21))
    report = run_pending(home, say=lambda _: None)
    assert report.exit_code == 0, report.blocked
    return home


@pytest.fixture
def home_copy(trained: PlatformHome, tmp_path: Path) -> PlatformHome:
    """A private copy of the trained home (its Dagster instance is re-pointed on open)."""
    shutil.copytree(trained.root, tmp_path / "home")
    return PlatformHome(tmp_path / "home")


def _configure_endpoint(home: PlatformHome, url: str) -> None:
    # A new endpoint changes sentiment_endpoint's code version, so the next run deploys again.
    home.settings_file.write_text(f'{QUIET}[deployment]\nendpoint_url = "{url}"\nwait_timeout_s = 20.0\n')


def test_the_first_model_is_smoke_tested_in_process_and_promoted(trained):
    registry = ModelRegistry(trained.registry)
    (version,) = registry.list()
    assert registry.aliases() == {"production": version.version}
    promoted = [event for event in registry.events() if event["event"] == "promoted"]
    assert [(event["to"], event["by"]) for event in promoted] == [(version.version, "sentiment_endpoint")]

    record = _record(trained)
    assert record["state"] == "deployed" and record["endpoint_url"] is None
    assert record["production"] == version.version and record["previous"] is None
    assert record["smoke_test"]["passed"] is True
    # the smoke cases its card records: per class, test reviews it labels right with most confidence
    cases = version.card["smoke_cases"]
    assert {case["expected"] for case in cases} == {"negative", "neutral", "positive"}
    assert record["smoke_test"]["labels"] == [case["expected"] for case in cases]
    assert _check(trained, "sentiment_endpoint", "smoke_test").passed
    assert _check(trained, "sentiment_endpoint", "approval").passed


@pytest.fixture
def live_server(home_copy: PlatformHome, tmp_path: Path, monkeypatch) -> Iterator[str]:
    """The real endpoint on the copied home, started with nothing in production, with an API key."""
    ModelRegistry(home_copy.registry).restore_aliases(None, None, by="test", reason="start from nothing")
    monkeypatch.setenv("MLPLATFORM_API_KEYS", "smoke-key,other-key")
    with endpoint_process(home_copy.root, tmp_path / "server.log") as (_, url):
        yield url


def test_a_live_endpoint_picks_up_the_new_version_and_passes_the_smoke_test(home_copy, live_server):
    _configure_endpoint(home_copy, live_server)
    report = run_pending(home_copy, say=lambda _: None)

    assert report.exit_code == 0, report.blocked
    assert "sentiment_endpoint" in report.materialized
    served = httpx.get(
        f"{live_server}/v2/models/sentiment", headers={"X-API-Key": "smoke-key"}, timeout=5
    ).json()
    assert served["version"] == "v1" and served["ready"] is True
    record = _record(home_copy)
    assert record["state"] == "deployed" and record["endpoint_url"] == live_server
    assert record["smoke_test"]["served_version"] == "v1" and record["smoke_test"]["passed"] is True
    assert _check(home_copy, "sentiment_endpoint", "smoke_test").passed


class _WrongAnswers(BaseHTTPRequestHandler):
    """An endpoint that follows the production alias but calls every review neutral."""

    registry: ModelRegistry

    def _send(self, body: dict) -> None:
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:
        self._send({"version": self.registry.aliases().get("production")})

    def do_POST(self) -> None:
        reviews = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["reviews"]
        version = self.registry.aliases().get("production")
        self._send({"model_version": version, "predictions": [{"label": "neutral"} for _ in reviews]})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def wrong_endpoint(home_copy: PlatformHome) -> Iterator[str]:
    handler = type("Handler", (_WrongAnswers,), {"registry": ModelRegistry(home_copy.registry)})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _losing_candidate_in_production(home: PlatformHome) -> ModelRegistry:
    """Another real model (a losing candidate) registered as v2 and promoted: best_model's v1 is then a
    version to deploy again (once sentiment_endpoint's code version changes)."""
    registry = ModelRegistry(home.registry)
    store = ArtifactStore(home.artifacts)
    chosen = registry.get("v1").sha256
    other = next(
        files["model.onnx"]
        for name in sorted(p.name for p in (home.artifacts / "candidate_models").iterdir())
        if (files := store.load(store.latest(f"candidate_models/{name}")).files)
        and hashlib.sha256(files["model.onnx"]).hexdigest() != chosen
    )
    v2 = registry.register(other, {"note": "losing candidate"}, {"macro_f1": 0.5})
    registry.approve(v2.version, by="test")
    registry.promote(v2.version, by="test")
    return registry


def test_with_a_shadow_strategy_the_new_version_is_shadowed_not_promoted(home_copy):
    registry = _losing_candidate_in_production(home_copy)
    home_copy.settings_file.write_text(QUIET + '[deployment]\nstrategy = "shadow"\n')
    lines: list[str] = []

    report = run_pending(home_copy, say=lines.append)

    assert report.exit_code == 0, report.blocked
    assert registry.aliases() == {"production": "v2", "previous": "v1"}
    rollout = current_rollout(registry)
    assert (rollout.strategy, rollout.candidate, rollout.production) == ("shadow", "v1", "v2")
    assert rollout.started_by == "sentiment_endpoint"
    record = _record(home_copy)
    assert record["state"] == "rollout_started" and record["rollout"]["id"] == rollout.id
    assert (
        record["smoke_test"]["passed"] is True
        and _check(home_copy, "sentiment_endpoint", "smoke_test").passed
    )
    # The same run judged the new rollout once: nothing captured yet, it waits.
    assert "rollout" in report.materialized
    assert "  rollout: wait: 0 of 200 candidate predictions in this step" in lines


def test_a_failed_smoke_test_restores_the_aliases_exactly(home_copy, wrong_endpoint):
    registry = _losing_candidate_in_production(home_copy)  # v1 previous: the state to come back to
    before = registry.aliases()
    assert before == {"production": "v2", "previous": "v1"}

    _configure_endpoint(home_copy, wrong_endpoint)
    report = run_pending(home_copy, say=lambda _: None)

    assert report.exit_code == 1
    assert [blocked.asset for blocked in report.blocked] == ["sentiment_endpoint:smoke_test"]
    assert "4 of 6 smoke reviews wrong" in report.blocked[0].reason
    assert registry.aliases() == before
    promoted, rolled_back = registry.events()[-2:]
    assert (promoted["event"], promoted["to"]) == ("promoted", "v1")
    assert rolled_back["event"] == "rolled_back" and rolled_back["automatic"] is True
    assert rolled_back["to"] == "v2" and rolled_back["reason"].startswith(
        "smoke_test: 4 of 6 smoke reviews wrong"
    )
    check = _check(home_copy, "sentiment_endpoint", "smoke_test")
    assert not check.passed and "labelled 'neutral'" in check.description
    record = _record(home_copy)
    assert record["state"] == "rolled_back" and record["production"] == "v2"


def test_a_rejected_best_model_is_not_deployed_and_the_asset_waits(home_copy):
    registry = ModelRegistry(home_copy.registry)
    registry.restore_aliases(None, None, by="test", reason="take v1 out of production")
    registry.reject("v1", reason="a person said no", by="test")
    home_copy.settings_file.write_text(QUIET + "[deployment]\nsmoke_max_latency_ms = 5000.0\n")

    report = run_pending(home_copy, say=lambda _: None)

    assert report.exit_code == 0, report.blocked
    assert "sentiment_endpoint" not in report.materialized
    assert registry.aliases() == {}
    approval = _check(home_copy, "sentiment_endpoint", "approval")
    assert not approval.passed and approval.description == "v1 is Rejected: it is never deployed"


def test_batch_files_are_scored_by_production_and_bad_ones_fail_in_place(home_copy):
    home_copy.batch.mkdir(parents=True, exist_ok=True)
    texts = [case.text for case in SMOKE_CASES] * 10
    good = home_copy.batch / "good.csv"
    pl.DataFrame({"id": [f"r{i}" for i in range(len(texts))], "text": texts}).write_csv(good)
    bad = home_copy.batch / "bad.csv"
    bad.write_text("colour,size\nred,small\n")

    report = run_pending(home_copy, say=lambda _: None)

    assert report.exit_code == 1
    assert [(b.asset, b.reason) for b in report.blocked] == [
        ("batch_predictions[bad.csv]", report.blocked[0].reason)
    ]
    assert "bad.csv" in report.blocked[0].reason and "has no text" in report.blocked[0].reason
    assert bad.read_text() == "colour,size\nred,small\n" and good.exists()
    assert "batch_predictions[good.csv]" in report.materialized

    store = ArtifactStore(home_copy.artifacts)
    predictions = store.load(store.latest("batch_predictions", sha256_file(good)))
    assert predictions.height == len(texts)
    assert predictions["row_id"].to_list() == [f"r{i}" for i in range(len(texts))]
    assert set(predictions["model_version"]) == {ModelRegistry(home_copy.registry).production().version}
    assert predictions["label"].to_list() == [case.expected for case in SMOKE_CASES] * 10

    again = run_pending(home_copy, say=lambda _: None)
    assert [b.asset for b in again.blocked] == ["batch_predictions[bad.csv]"]
    assert "batch_predictions[good.csv]" not in again.materialized
