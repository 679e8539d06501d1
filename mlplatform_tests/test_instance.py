"""The home's Dagster instance is created once, even when several processes start at the same time."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from mlplatform.core.home import PlatformHome
from mlplatform.instance import open_instance, prepare_instance


def _open_and_count_runs(root: str) -> int:
    with open_instance(PlatformHome(Path(root))) as instance:
        return len(instance.get_runs())


def test_concurrent_first_opens_share_one_healthy_instance(tmp_path):
    root = str(tmp_path / "home")
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert pool.map(_open_and_count_runs, [root] * 4) == [0, 0, 0, 0]
    # and it is still usable afterwards (no "more than one head", no half-created tables)
    assert _open_and_count_runs(root) == 0


def test_dagster_yaml_is_written_under_the_home(home):
    dagster_home = prepare_instance(home)
    text = (dagster_home / "dagster.yaml").read_text()
    assert str(home.dagster / "storage") in text and "telemetry" in text
    assert dagster_home == home.dagster
