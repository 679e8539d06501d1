"""The Dagster UI and daemon on a home, serving the platform's asset graph under its one location name:
started by `mlplatform ui` (any home) or by Dagster's own `dg dev` at the project root (its home)."""

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

from mlplatform.core.platform.home import PlatformHome
from mlplatform.instance import CODE_LOCATION, prepare_instance
from mlplatform_tests.integration.processes import free_port, project_root, shell_env

pytestmark = pytest.mark.integration
LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _mlplatform_ui(tmp_path: Path, port: int) -> tuple[list[str], dict, Path, Path]:
    cli = Path(sys.executable).with_name("mlplatform")
    env = {k: v for k, v in os.environ.items() if k not in ("MLPLATFORM_HOME", "DAGSTER_HOME")}
    home = tmp_path / "home"
    return [str(cli), "--home", str(home), "ui", "--port", str(port)], env, Path.cwd(), home


def _dg_dev(tmp_path: Path, port: int) -> tuple[list[str], dict, Path, Path]:
    root = project_root(tmp_path / "project")
    home = root / ".mlplatform"
    prepare_instance(PlatformHome(home))  # DAGSTER_HOME must exist: a home is made by mlplatform
    dg = Path(sys.executable).with_name("dg")
    return [str(dg), "dev", "--port", str(port)], shell_env(root), root, home


@pytest.mark.parametrize("launcher", [_mlplatform_ui, _dg_dev], ids=["mlplatform-ui", "dg-dev"])
def test_the_ui_serves_the_asset_graph_of_the_home(tmp_path, launcher):
    port = free_port()
    argv, env, cwd, home = launcher(tmp_path, port)
    process = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
        cwd=cwd,
    )
    try:
        deadline = time.monotonic() + 150
        keys = None
        while time.monotonic() < deadline and keys is None:
            if process.poll() is not None:
                pytest.fail(f"{argv[0]} exited early with {process.returncode}")
            try:
                nodes = _graphql(port, "{ assetNodes { assetKey { path } } }")["data"]["assetNodes"]
                keys = {"/".join(node["assetKey"]["path"]) for node in nodes}
            except (OSError, KeyError, TypeError, ValueError):
                time.sleep(1)
        assert keys is not None, "the UI did not answer within 150 s"
        assert {"raw_reviews", "reviews", "review_splits"} <= keys
        entries = _graphql(port, LOCATIONS)["data"]["workspaceOrError"]["locationEntries"]
        assert [entry["name"] for entry in entries] == [CODE_LOCATION]
        assert (home / "dagster" / "dagster.yaml").exists()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
