"""Shared by the execution tests: a home with small demo drops, and what a run's event log says."""

from __future__ import annotations

import json
import signal
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.platform.home import PlatformHome
from mlplatform.runner import RunReport, run_pending

CANDIDATES_PREFIX = "candidate_models"


def land_demo_data(home: PlatformHome, tmp_path: Path, groups: Sequence[str]) -> RunReport:
    """Land two small demo drops and run the pipeline for `groups` (() = validate the drops only)."""
    files = write_demo_drops(tmp_path / "drops", n_drops=2, rows_per_drop=400, seed=5)
    Lake(home).land(files)
    return run_pending(home, say=lambda _: None, groups=groups)


@contextmanager
def sigint_ignored() -> Iterator[None]:
    """SIGINT as a background job started by a shell without job control has it: ignored."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def write_execution_settings(home: PlatformHome, **values: object) -> None:
    """The home's platform.toml with just these [execution] keys (strings quoted, numbers as they are)."""
    lines = ["[execution]", *(f"{key} = {json.dumps(value)}" for key, value in values.items())]
    home.settings_file.write_text("\n".join(lines) + "\n")


def step_events(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict[str, list]]:
    """step key -> event type -> [(timestamp, pid)], in order."""
    events: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for record in instance.all_logs(run_id):
        if record.dagster_event is not None and record.step_key:
            event = record.dagster_event
            events[record.step_key][event.event_type_value].append((record.timestamp, event.pid))
    return events


def materialized(result) -> set[str]:
    return {
        event.asset_key.to_user_string()
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
    }


def candidate_keys(job: dg.JobDefinition) -> list[dg.AssetKey]:
    return sorted(key for key in job.asset_layer.executable_asset_keys if key.path[0] == CANDIDATES_PREFIX)
