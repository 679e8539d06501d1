"""The landing sensor over every cursor state, and the platform's automation condition."""

from __future__ import annotations

import json
import os
import time

import dagster as dg
import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import generate_reviews, to_published_csv, write_demo_drops
from mlplatform.definitions import INGEST_JOB, build_definitions
from mlplatform.defs.automation import build_landing_sensor
from mlplatform.defs.ingest import DROPS
from mlplatform.defs.resources import PlatformResource
from mlplatform.instance import open_instance

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def sensor():
    return build_landing_sensor(INGEST_JOB, interval_seconds=5)


def _tick(sensor, home, instance, cursor):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"platform": PlatformResource(home=str(home.root))}
    )
    return sensor(context)


def _csv(tmp_path, name: str, seed: int):
    path = tmp_path / name
    path.write_bytes(to_published_csv(generate_reviews(30, seed=seed)))
    return path


def test_every_cursor_state(sensor, home, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    lake = Lake(home)

    empty = _tick(sensor, home, instance, None)
    assert empty.run_requests == [] and json.loads(empty.cursor) == []

    first = lake.land([_csv(tmp_path, "a.csv", 1), _csv(tmp_path, "b.csv", 2)])
    hashes = sorted(result.hash for result in first)
    tick = _tick(sensor, home, instance, empty.cursor)
    assert sorted(r.run_key for r in tick.run_requests) == hashes
    assert all(r.partition_key == r.run_key for r in tick.run_requests)
    (add,) = tick.dynamic_partitions_requests
    assert add.partitions_def_name == DROPS.name and sorted(add.partition_keys) == hashes
    assert sorted(json.loads(tick.cursor)) == hashes

    # the same tick again: nothing new
    again = _tick(sensor, home, instance, tick.cursor)
    assert again.run_requests == [] and again.cursor == tick.cursor

    # cursor lost (sensor or daemon restarted mid-tick): the same run keys come back, so Dagster
    # launches nothing twice
    lost = _tick(sensor, home, instance, None)
    assert sorted(r.run_key for r in lost.run_requests) == hashes

    # the same bytes landed twice under another name: still one drop
    duplicate = tmp_path / "a-copy.csv"
    duplicate.write_bytes((tmp_path / "a.csv").read_bytes())
    lake.land([duplicate])
    assert _tick(sensor, home, instance, tick.cursor).run_requests == []

    # a drop accepted out of landing leaves the cursor
    lake.accept(hashes[0])
    after = _tick(sensor, home, instance, tick.cursor)
    assert json.loads(after.cursor) == [hashes[1]] and after.run_requests == []


def test_a_file_still_being_written_is_not_picked_up(sensor, home, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    growing = home.landing / "growing.csv"
    growing.write_bytes(to_published_csv(generate_reviews(30, seed=3))[:500])
    assert _tick(sensor, home, instance, None).run_requests == []
    settled = time.time() - 60
    os.utime(growing, (settled, settled))
    (request,) = _tick(sensor, home, instance, None).run_requests
    assert len(request.run_key) == 64


def test_fifty_files_at_once_are_fifty_runs(sensor, home, tmp_path):
    instance = dg.DagsterInstance.ephemeral()
    files = [_csv(tmp_path, f"drop-{index:02d}.csv", index) for index in range(50)]
    Lake(home).land(files)
    tick = _tick(sensor, home, instance, None)
    assert len({r.run_key for r in tick.run_requests}) == 50


FEATURES = dg.AssetSelection.groups("features")
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _requested(defs, instance, cursor=None):
    """One automation tick over the features group: (requested asset keys, next cursor)."""
    result = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=FEATURES, cursor=cursor
    )
    keys = {
        key for key in defs.resolve_asset_graph().get_all_asset_keys() if result.get_requested_partitions(key)
    }
    return keys, result.cursor


def test_downstream_runs_on_new_data_not_on_unchanged_data_and_on_code_change(home, tmp_path):
    files = write_demo_drops(tmp_path / "drops", n_drops=1, rows_per_drop=300, seed=4)
    (landed,) = Lake(home).land(files)
    instance = open_instance(home)
    defs = build_definitions(home)
    ingest, pipeline = defs.resolve_job_def(INGEST_JOB), defs.resolve_job_def("pipeline_job")
    instance.add_dynamic_partitions(DROPS.name, [landed.hash])
    chain = {dg.AssetKey("reviews"), dg.AssetKey("review_splits")}

    requested, cursor = _requested(defs, instance)
    assert requested == set()  # the input partition is missing: wait

    assert ingest.execute_in_process(instance=instance, partition_key=landed.hash, run_config=QUIET).success
    requested, cursor = _requested(defs, instance, cursor)
    assert requested == chain  # the whole chain in one request, as the daemon would launch it
    assert pipeline.execute_in_process(
        instance=instance, asset_selection=list(chain), run_config=QUIET
    ).success
    requested, cursor = _requested(defs, instance, cursor)
    assert requested == set()

    # the drop is validated again with identical content: same data version, nothing downstream moves
    assert ingest.execute_in_process(instance=instance, partition_key=landed.hash, run_config=QUIET).success
    requested, cursor = _requested(defs, instance, cursor)
    assert requested == set()

    # a change of the settings that decide `reviews` changes its code version: it is due again
    home.settings_file.write_text("[features]\nmin_facet_rows = 50\n")
    changed = build_definitions(home)
    requested, _ = _requested(changed, instance, cursor)
    assert dg.AssetKey("reviews") in requested
