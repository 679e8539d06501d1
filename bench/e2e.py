"""End-to-end latency: from landing a file until the endpoint serves the model trained on it.

    .venv/bin/python bench/e2e.py [--data ../shared/data/womens_clothing_ecommerce_reviews.csv]

Starts `dagster-daemon` and the endpoint (`python -m mlplatform.serving.server`) on a temporary home,
lands the real data (all but a held-back slice), and measures the seconds until the endpoint reports
the first model version; then lands the held-back slice and measures until a new version serves. Also
records that a sensor tick with nothing new launched no run. Prints a Markdown table and writes
bench/results/e2e.json with the machine described.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import free_port, machine

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
RESULTS = ROOT / "bench" / "results" / "e2e.json"
HELD_BACK_ROWS = 2_000
TIMEOUT_S = 1_200


def served_version(port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/sentiment", timeout=5) as response:
            return json.loads(response.read()).get("version")
    except OSError:
        return None


def wait_for_version(port: int, not_in: set[str | None]) -> tuple[str, float]:
    started = time.monotonic()
    while time.monotonic() - started < TIMEOUT_S:
        version = served_version(port)
        if version not in not_in:
            return version, time.monotonic() - started
        time.sleep(0.5)
    raise SystemExit(f"no new version served within {TIMEOUT_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"real data not found at {args.data} (see ../shared/data/README.md)")

    from mlplatform.core.data.contract import load_contract
    from mlplatform.core.data.lake import Lake
    from mlplatform.core.data.schema import read_drop
    from mlplatform.core.data.synthetic import to_published_csv
    from mlplatform.core.platform.home import PlatformHome
    from mlplatform.instance import open_instance, prepare_instance, workspace_file

    work = Path(tempfile.mkdtemp(prefix="mlplatform-e2e-"))
    home = PlatformHome(work / "home").ensure()
    port = free_port()
    home.settings_file.write_text(f'[deployment]\nendpoint_url = "http://127.0.0.1:{port}"\n')
    prepare_instance(home)
    frame = read_drop(args.data.read_bytes(), "csv", load_contract())
    part_1, part_2 = work / "reviews-part-1.csv", work / "reviews-part-2.csv"
    part_1.write_bytes(to_published_csv(frame.head(frame.height - HELD_BACK_ROWS)))
    part_2.write_bytes(to_published_csv(frame.tail(HELD_BACK_ROWS)))

    env = {**os.environ, "MLPLATFORM_HOME": str(home.root), "DAGSTER_HOME": str(home.dagster)}
    log = (work / "processes.log").open("ab")
    bin_dir = Path(sys.executable).parent
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "mlplatform.serving.server", "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        subprocess.Popen(
            # In the work directory: Dagster reads .env where it runs, and the checkout's names its own home.
            [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace_file(home))],
            env=env,
            cwd=work,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
    ]
    try:
        time.sleep(20)  # daemon and endpoint start-up is not part of the measurement
        instance = open_instance(home)
        idle_runs = len(instance.get_runs())
        time.sleep(30)  # several sensor ticks with nothing landed
        runs_while_idle = len(instance.get_runs()) - idle_runs

        Lake(home).land([part_1])
        first, first_s = wait_for_version(port, {None})
        Lake(home).land([part_2])
        second, second_s = wait_for_version(port, {None, first})
    finally:
        for process in processes:
            with_group = process.pid
            try:
                os.killpg(with_group, signal.SIGTERM)
                process.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(with_group, signal.SIGKILL)

    result = {
        "machine": machine(),
        "data": {"first_drop_rows": frame.height - HELD_BACK_ROWS, "second_drop_rows": HELD_BACK_ROWS},
        "runs_launched_by_idle_ticks": runs_while_idle,
        "land_to_serving_s": {
            "first model": round(first_s, 1),
            "new model after a second drop": round(second_s, 1),
        },
        "versions": [first, second],
        "target_s": 120,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"Machine: {result['machine']['nproc']} cores, {result['machine']['cpu_model']}\n")
    print("| event | seconds from landing until the endpoint serves it |\n|---|---:|")
    print(f"| first drop ({frame.height - HELD_BACK_ROWS:,} reviews) -> {first} | {first_s:.1f} |")
    print(f"| second drop ({HELD_BACK_ROWS:,} reviews) -> {second} | {second_s:.1f} |")
    print(f"\nruns launched by 30 s of idle sensor ticks: {runs_while_idle}")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
