"""Executor benchmark: the candidates stage of `pipeline_job` under each `[execution] executor`.

    .venv/bin/python bench/executors.py [--data ../shared/data/...csv] [--executors in_process,multiprocess]

Prepares one home (lands the real data when present, else generated demo drops; runs ingest and the
features group once), then materializes the candidate models of the search with each executor in
turn, on the same instance and the same splits, and times each run from launch to finish (process
start-up and imports included: that is what a user waits for). Writes bench/results/executors.json
with the machine and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from _common import machine

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.platform.home import PlatformHome
from mlplatform.definitions import PIPELINE_JOB, build_definitions
from mlplatform.defs.execution import execute
from mlplatform.instance import open_instance
from mlplatform.runner import QUIET_CONSOLE, run_pending

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
RESULTS = ROOT / "bench" / "results" / "executors.json"
DEMO_DROPS, DEMO_ROWS = 2, 900


def prepare(home: PlatformHome, data: Path, work: Path) -> str:
    """Land the data and bring the features group up to date; return what the data is."""
    if data.exists():
        files, source = [data], f"real data ({data.name})"
    else:
        files = write_demo_drops(work / "drops", n_drops=DEMO_DROPS, rows_per_drop=DEMO_ROWS, seed=21)
        source = f"demo data ({DEMO_DROPS} x {DEMO_ROWS} rows; real data not found at {data})"
    Lake(home).land(files)
    report = run_pending(home, say=lambda _: None, groups=["features"])
    if report.blocked:
        raise SystemExit(f"preparing the features failed: {report.blocked}")
    return source


def time_candidates(home: PlatformHome, executor: str) -> dict[str, Any]:
    """Materialize every candidate with `executor`; wall time and the candidates' own fit seconds."""
    home.settings_file.write_text(f'[execution]\nexecutor = "{executor}"\n')
    job = build_definitions(home).resolve_job_def(PIPELINE_JOB)
    keys = [key for key in job.asset_layer.executable_asset_keys if key.path[0] == "candidate_models"]
    with open_instance(home) as instance:
        started = time.perf_counter()
        result = execute(job, str(home.root), instance, run_config=QUIET_CONSOLE, asset_selection=keys)
        wall = time.perf_counter() - started
    if not result.success:
        raise SystemExit(f"the {executor} run failed")
    materializations = [
        event.event_specific_data.materialization
        for event in result.all_events
        if event.event_type_value == "ASSET_MATERIALIZATION"
    ]
    fit = sum(float(m.metadata["fit_seconds"].value) for m in materializations)
    return {
        "executor": executor,
        "candidates": len(materializations),
        "wall_s": round(wall, 1),
        "fit_s_sum": round(fit, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--executors", default="in_process,multiprocess")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Dagster's beta/preview notices
    report: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="mlplatform-executors-") as temp:
        work = Path(temp)
        home = PlatformHome(work / "home").ensure()
        print("preparing features ...", flush=True)
        report["data"] = prepare(home, args.data, work)
        report["results"] = []
        for executor in args.executors.split(","):
            print(f"{executor}: training the candidates ...", flush=True)
            report["results"].append(time_candidates(home, executor))
            print(f"  {report['results'][-1]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\nMachine: {report['machine']['nproc']} cores, {report['machine']['cpu_model']}; {report['data']}\n"
    )
    print("| executor | candidates | wall s | sum of fit s |\n|---|---:|---:|---:|")
    for row in report["results"]:
        print(f"| {row['executor']} | {row['candidates']} | {row['wall_s']} | {row['fit_s_sum']} |")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
