"""`mlplatform ui` starts the Dagster UI and daemon on the home, serving the platform's asset graph."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlplatform_tests.integration.processes import free_port

pytestmark = pytest.mark.integration


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_ui_serves_the_asset_graph_of_the_home(tmp_path):
    port = free_port()
    cli = Path(sys.executable).with_name("mlplatform")
    process = subprocess.Popen(
        [str(cli), "--home", str(tmp_path / "home"), "ui", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={k: v for k, v in os.environ.items() if k not in ("MLPLATFORM_HOME", "DAGSTER_HOME")},
    )
    try:
        deadline = time.monotonic() + 150
        keys = None
        while time.monotonic() < deadline and keys is None:
            if process.poll() is not None:
                pytest.fail(f"mlplatform ui exited early with {process.returncode}")
            try:
                nodes = _graphql(port, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
                keys = {"/".join(node["assetKey"]["path"]) for node in nodes}
            except (OSError, KeyError, TypeError, ValueError):
                time.sleep(1)
        assert keys is not None, "the UI did not answer within 150 s"
        assert {"raw_reviews", "reviews", "review_splits"} <= keys
        assert (tmp_path / "home" / "dagster" / "dagster.yaml").exists()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
