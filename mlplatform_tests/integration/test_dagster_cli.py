"""Dagster's own commands work from the project root on the home's instance, the one `mlplatform` uses.

The project root is reproduced in a temporary directory (pyproject.toml, .env, workspace.yaml and the
package, linked from the checkout), so its default home `.mlplatform` is the test's own. Commands run as
a shell runs them there: DAGSTER_HOME and MLPLATFORM_HOME unset, PWD the root. What makes it work is
Dagster's own configuration: `[tool.dg]` in pyproject.toml (dg, and `dagster dev`/`definitions
validate` without -m) and `.env` (DAGSTER_HOME, which dagster and dg read from the directory they run
in). Without `.env` they would run on a temporary instance that knows none of the home's drops.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.platform.home import PlatformHome
from mlplatform.instance import CODE_LOCATION, open_instance
from mlplatform.runner import run_pending
from mlplatform_tests.integration.processes import project_root, shell_env

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, PlatformHome, list[str]]:
    """A project root whose home has two accepted drops; returns (root, home, drop hashes)."""
    root = project_root(tmp_path_factory.mktemp("project"))
    home = PlatformHome(root / ".mlplatform")
    drops = write_demo_drops(root.parent / f"{root.name}-drops", n_drops=2, rows_per_drop=400, seed=5)
    Lake(home).land(drops[:1])
    report = run_pending(home, say=lambda _: None, groups=[])  # `mlplatform run`: validates the drop
    assert report.exit_code == 0 and len(report.accepted) == 1
    (landed,) = Lake(home).land(drops[1:])
    return root, home, [*report.accepted, landed.hash]


def _run(root: Path, *argv: str) -> subprocess.CompletedProcess:
    """`argv` as a shell at `root` runs it: no DAGSTER_HOME nor MLPLATFORM_HOME, PWD set."""
    command = [str(BIN / argv[0]), *argv[1:]]
    done = subprocess.run(command, cwd=root, env=shell_env(root), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _latest_run(home: PlatformHome, asset: str) -> str | None:
    with open_instance(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(asset))
        return None if event is None else event.run_id


def test_dg_checks_and_lists_the_definitions(project):
    root, _, _ = project
    assert "All definitions loaded successfully" in _run(root, "dg", "check", "defs").stdout
    listing = json.loads(_run(root, "dg", "list", "defs", "--json").stdout)
    keys = {asset["asset_key"] for asset in listing["assets"]}
    assert {"raw_reviews", "reviews", "review_splits", "best_model", "sentiment_endpoint"} <= keys
    assert {job["name"] for job in listing["jobs"]} >= {"ingest_job", "pipeline_job"}


def test_dagster_validates_the_code_location_under_its_one_name_without_m(project):
    root, _, _ = project
    done = _run(root, "dagster", "definitions", "validate")
    assert f"Validation successful for code location {CODE_LOCATION}." in done.stdout + done.stderr


def test_dg_launch_materializes_on_the_homes_instance(project):
    root, home, _ = project
    _run(root, "dg", "launch", "--assets", "reviews")
    run_id = _latest_run(home, "reviews")  # `mlplatform status` reads this instance
    assert run_id is not None
    with open_instance(home) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.SUCCESS


def test_the_plain_dagster_commands_work_without_dagster_home(project):
    root, home, (_, pending) = project
    listed = _run(root, "dagster", "asset", "list", "-m", "mlplatform.definitions").stdout.split()
    assert {"raw_reviews", "reviews", "review_splits"} <= set(listed)

    _run(root, "dagster", "asset", "materialize", "-m", "mlplatform.definitions", "--select", "review_splits")
    assert _latest_run(home, "review_splits") is not None

    with open_instance(home) as instance:
        instance.add_dynamic_partitions("drops", [pending])  # as `mlplatform run` registers a drop
    _run(
        root,
        "dagster",
        "job",
        "execute",
        "-m",
        "mlplatform.definitions",
        "-j",
        "ingest_job",
        "--tags",
        json.dumps({"dagster/partition": pending}),
    )
    assert Lake(home).drop(pending).state == "accepted"
    with open_instance(home) as instance:
        assert pending in instance.get_materialized_partitions(dg.AssetKey("raw_reviews"))
