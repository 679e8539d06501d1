"""End to end with the real daemon: land files, and the platform ingests, trains, gates, deploys and traces.

Starts `dagster-daemon` and the endpoint on a temporary home, then: lands most of the real data and
waits until the endpoint serves a model; lands a bad drop (quarantined, production unchanged, an alert
recorded); lands the held-back rest (a new version goes live); traces a prediction of the new version
back to that drop.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path

import pytest

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.lake import Lake
from mlplatform.core.data.schema import read_drop
from mlplatform.core.data.synthetic import to_published_csv
from mlplatform.core.monitoring.alerts import AlertStore
from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.monitoring.lineage import prediction_lineage
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.instance import prepare_instance, workspace_file
from mlplatform_tests.integration.processes import free_port, start, stop, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.realdata]
HELD_BACK_ROWS = 2_000


def _served_version(port: int) -> str | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/sentiment", timeout=5) as response:
        return json.loads(response.read()).get("version")


def _live(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/live", timeout=5) as response:
        return response.status == 200


def _predict(port: int, request_id: str, text: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict",
        data=json.dumps({"reviews": [{"text": text, "product_id": "1078"}]}).encode(),
        headers={"Content-Type": "application/json", "X-Request-ID": request_id},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture
def running_platform(tmp_path: Path):
    home = PlatformHome(tmp_path / "home").ensure()
    port = free_port()
    home.settings_file.write_text(
        f'[deployment]\nendpoint_url = "http://127.0.0.1:{port}"\n'
        "[lake]\nsettle_seconds = 0.5\n"
        "[automation]\nlanding_sensor_interval_s = 2\nautomation_interval_s = 5\n"
    )
    prepare_instance(home)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("MLPLATFORM_HOME", "DAGSTER_HOME")},
        "MLPLATFORM_HOME": str(home.root),
        "DAGSTER_HOME": str(home.dagster),
    }
    bin_dir = Path(sys.executable).parent
    endpoint = start(
        [sys.executable, "-m", "mlplatform.serving.server", "--port", str(port)],
        env,
        tmp_path / "endpoint.log",
    )
    daemon = start(
        [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace_file(home))],
        env,
        tmp_path / "daemon.log",
    )
    try:
        wait_until(lambda: _live(port), 60, "the endpoint to answer")
        yield home, port
    finally:
        stop(daemon)
        stop(endpoint)


def test_land_train_deploy_quarantine_redeploy_and_trace(running_platform, real_data_path, tmp_path):
    home, port = running_platform
    lake = Lake(home)
    frame = read_drop(real_data_path.read_bytes(), "csv", load_contract())
    first, held_back = frame.head(frame.height - HELD_BACK_ROWS), frame.tail(HELD_BACK_ROWS)
    drops = tmp_path / "drops"
    drops.mkdir()
    (drops / "reviews-part-1.csv").write_bytes(to_published_csv(first))
    (drops / "reviews-part-2.csv").write_bytes(to_published_csv(held_back))
    (drops / "broken.csv").write_bytes(b"\xff\xfe this is not a reviews export\n")

    lake.land([drops / "reviews-part-1.csv"])
    assert wait_until(lambda: _served_version(port), 900, "the first model to serve") == "v1"

    (bad,) = lake.land([drops / "broken.csv"])
    wait_until(lambda: Lake(home).drop(bad.hash).state == "quarantined", 180, "the bad drop's quarantine")
    assert ModelRegistry(home.registry).production().version == "v1"
    assert _served_version(port) == "v1"
    wait_until(
        lambda: any(
            "raw_reviews" in alert.source or "raw_reviews" in alert.message
            for alert in AlertStore(home.alerts).list()
        ),
        120,
        "an alert for the quarantined drop",
    )

    (second,) = lake.land([drops / "reviews-part-2.csv"])
    new_version = wait_until(
        lambda: (version := _served_version(port)) not in (None, "v1") and version,
        900,
        "a new version to serve",
    )

    answer = _predict(port, "e2e-trace-1", "The zipper broke the first time I wore it. Returning it.")
    assert answer["model_version"] == new_version
    chain = wait_until(
        lambda: prediction_lineage(
            home, Settings.load(home.settings_file).storage, "e2e-trace-1", read_capture(home.capture)
        ),
        30,
        "the captured request",
    )
    assert chain["model_version"]["version"] == new_version
    assert second.hash in {drop["hash"] for drop in chain["training"]["drops"]}
    assert "reviews-part-2.csv" in {name for drop in chain["training"]["drops"] for name in drop["names"]}
