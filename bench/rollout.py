"""Safe rollout benchmark: what a shadow costs the endpoint, and the rollout's targets under load.

    .venv/bin/python bench/rollout.py [--duration 30] [--rounds 10] [--cost-seconds 10] [--data ...csv]

Trains the serving benchmark's model (bench/serving.py: TF-IDF word 1-2 grams + logistic regression on
the real reviews when present) as production v1 and, with another regularisation, a candidate v2; each
run gets a fresh temporary MLPLATFORM_HOME holding both, and a real endpoint (`python -m
mlplatform.serving.server`) on loopback. Measured:

1. p99 latency of single-review `POST /v2/models/sentiment/infer` at concurrency 1 (wrk when installed,
   else an asyncio + httpx load generator), without a rollout and during a shadow of v2, side by side:
   `--rounds` short runs of `--cost-seconds` each, in alternation, so that a shared machine's load
   changes hit both alike. Target: the median p99 of the shadow's runs at most 10% above the median p99
   of the runs without one (each round's ratio is recorded too; on a busy machine they scatter widely).
2. 16 concurrent clients for `--duration` s during a shadow (`POST /predict`, each client cycling over
   its own products): no non-2xx, every answer names one version, every acknowledged capture id is in
   the capture, and the shadow rows equal the answered requests (counted after a graceful stop).
3. The same through a canary step change (25% -> 75% at half time): no non-2xx, each answer's version
   is its capture record's, and the candidate's share of each half.
4. A canary at 25% over 2,000 requests keyed by 2,000 product ids: the candidate's share (target within
   3 points of 25).

Prints a summary and writes bench/results/rollout.json (with the machine and the commit measured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import free_port, machine
from serving import (
    DEFAULT_DATA,
    INFER_PATH,
    LABELS,
    run_httpx_load,
    run_wrk,
    start_server,
    train,
    training_data,
)
from sklearn.base import clone

from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import RolloutStrategy, advance_rollout, start_rollout
from mlplatform.core.training.export import to_onnx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "rollout.json"
CONCURRENCY = 16
CANARY_KEYS = 2000
MAX_P99_INCREASE = 0.10


def make_home(root: Path, production: bytes, candidate: bytes) -> ModelRegistry:
    """A home with v1 in production and v2 approved."""
    registry = ModelRegistry.for_home(PlatformHome.at(root).ensure(), Settings.packaged().storage)
    for onnx_bytes in (production, candidate):
        version = registry.register(onnx_bytes, card={"model": "bench"}, metrics={"macro_f1": 0.0}).version
        registry.approve(version, by="bench")
    registry.promote("v1", by="bench")
    return registry


class Endpoint:
    """The real endpoint on a home, started and stopped gracefully (SIGTERM: the shadow drains first)."""

    def __init__(self, home: Path, work: Path) -> None:
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = work / f"server-{port}.log"
        env = {key: value for key, value in os.environ.items() if key != "MLPLATFORM_API_KEYS"}
        command = [sys.executable, "-m", "mlplatform.serving.server", "--port", str(port)]
        self.process = start_server(command, {**env, "MLPLATFORM_HOME": str(home)}, self.url, self.log)

    def holds(self, strategy: str, percent: int, timeout_s: float = 30.0) -> None:
        """Wait until the endpoint holds the candidate at `percent` (its /metrics say so)."""
        wanted = f'mlplatform_serving_rollout_percent{{strategy="{strategy}",version="v2"}} {float(percent)}'
        deadline = time.monotonic() + timeout_s
        while wanted not in httpx.get(f"{self.url}/metrics", timeout=5).text:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the endpoint never held the {strategy} at {percent}%")
            time.sleep(0.05)

    def metric(self, name: str) -> dict[str, float]:
        values: dict[str, float] = {}
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith(name):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=120)


def recorded_load(url: str, seconds: float, on_half=None) -> list[dict[str, Any]]:
    """`CONCURRENCY` clients posting single reviews to /predict for `seconds`: each answer's status,
    version, capture id and which half of the run it came in; `on_half` runs once at half time."""

    async def run() -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        started = time.monotonic()
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        if on_half is not None:
            threading.Timer(seconds / 2, on_half).start()
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as http:

            async def client(number: int) -> None:
                sent = 0
                while (elapsed := time.monotonic() - started) < seconds:
                    review = {
                        "text": "Love this dress, it fits perfectly.",
                        "product_id": f"p{number}-{sent % 50}",
                    }
                    answer = await http.post("/predict", json={"reviews": [review]})
                    body = answer.json() if answer.status_code == 200 else {}
                    results.append(
                        {
                            "status": answer.status_code,
                            "version": body.get("model_version"),
                            "capture_id": answer.headers.get("x-capture-id"),
                            "second_half": elapsed >= seconds / 2,
                        }
                    )
                    sent += 1

            await asyncio.gather(*(client(number) for number in range(CONCURRENCY)))
        return results

    return asyncio.run(run())


def p99_at_concurrency_1(url: str, body: str, seconds: float, work: Path, tool: str) -> dict[str, float]:
    warm = min(2.0, seconds)
    if tool == "wrk":
        run_wrk(url, body, 1, warm, work)
        return run_wrk(url, body, 1, seconds, work)
    run_httpx_load(url, body, 1, warm)
    return run_httpx_load(url, body, 1, seconds)


def measure_shadow_cost(
    models: tuple[bytes, bytes], body: str, args: argparse.Namespace, work: Path, tool: str
) -> dict[str, Any]:
    rows = []
    for round_number in range(1, args.rounds + 1):
        for variant in ("no rollout", "shadow of v2"):
            home = work / f"cost-{round_number}-{variant.split()[0]}"
            registry = make_home(home, *models)
            if variant != "no rollout":
                start_rollout(registry, RolloutStrategy.SHADOW, "v2", by="bench")
            endpoint = Endpoint(home, work)
            try:
                if variant != "no rollout":
                    endpoint.holds("shadow", 0)
                print(
                    f"round {round_number}/{args.rounds}: {variant}, concurrency 1 for {args.cost_seconds:.0f} s",
                    flush=True,
                )
                result = p99_at_concurrency_1(endpoint.url + INFER_PATH, body, args.cost_seconds, work, tool)
                shadow = endpoint.metric("mlplatform_serving_shadow_predictions_total")
            finally:
                endpoint.stop()
            rows.append({"round": round_number, "variant": variant, **result, "shadow_outcomes": shadow})
    p99 = {(row["round"], row["variant"]): row["p99_ms"] for row in rows}
    increase = [
        round(p99[(r, "shadow of v2")] / p99[(r, "no rollout")] - 1.0, 4) for r in range(1, args.rounds + 1)
    ]
    median_p99 = {
        variant: float(np.median([row["p99_ms"] for row in rows if row["variant"] == variant]))
        for variant in ("no rollout", "shadow of v2")
    }
    return {
        "results": rows,
        "p99_increase_per_round": increase,
        "median_p99_increase": float(np.median(increase)),
        "median_p99_ms": median_p99,
        "p99_increase_of_medians": round(median_p99["shadow of v2"] / median_p99["no rollout"] - 1.0, 4),
    }


def measure_shadow_under_load(
    models: tuple[bytes, bytes], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    home = work / "shadow-load"
    registry = make_home(home, *models)
    start_rollout(registry, RolloutStrategy.SHADOW, "v2", by="bench")
    endpoint = Endpoint(home, work)
    endpoint.holds("shadow", 0)
    print(f"shadow: {CONCURRENCY} clients for {args.duration:.0f} s", flush=True)
    results = recorded_load(endpoint.url, args.duration)
    outcomes = endpoint.metric("mlplatform_serving_shadow_predictions_total")
    endpoint.stop()
    frame = read_capture(home / "capture")
    answered = frame.filter(frame["role"] == "answered")
    shadow = frame.filter(frame["role"] == "shadow")
    acknowledged = {row["capture_id"] for row in results if row["status"] == 200}
    return {
        "requests": len(results),
        "requests_per_s": len(results) / args.duration,
        "non_2xx": sum(row["status"] != 200 for row in results),
        "versions_answering": sorted({str(row["version"]) for row in results}),
        "acknowledged_missing_from_capture": len(acknowledged - set(answered["capture_id"])),
        "answered_rows": answered.height,
        "shadow_rows": shadow.height,
        "shadow_rows_failed": shadow.height - shadow["error"].null_count(),
        "shadow_outcomes": outcomes,
    }


def measure_canary_step(models: tuple[bytes, bytes], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    home = work / "canary-load"
    registry = make_home(home, *models)
    rollout = start_rollout(registry, RolloutStrategy.CANARY, "v2", by="bench", percent=25, steps=[25, 75])
    endpoint = Endpoint(home, work)
    endpoint.holds("canary", 25)
    print(f"canary 25% -> 75% at half time: {CONCURRENCY} clients for {args.duration:.0f} s", flush=True)
    results = recorded_load(
        endpoint.url,
        args.duration,
        on_half=lambda: advance_rollout(registry, rollout.id, by="bench", reason="bench"),
    )
    endpoint.stop()
    captured = dict(read_capture(home / "capture").select("capture_id", "model_version").iter_rows())

    def share(second_half: bool) -> float:
        half = [row for row in results if row["second_half"] is second_half and row["status"] == 200]
        return sum(row["version"] == "v2" for row in half) / max(len(half), 1)

    answered = [row for row in results if row["status"] == 200]
    return {
        "requests": len(results),
        "non_2xx": len(results) - len(answered),
        "versions_answering": sorted({str(row["version"]) for row in results}),
        "acknowledged_missing_from_capture": sum(row["capture_id"] not in captured for row in answered),
        "capture_names_another_version": sum(
            captured.get(row["capture_id"]) not in (None, row["version"]) for row in answered
        ),
        "candidate_share_first_half_at_25": share(False),
        "candidate_share_second_half_at_75": share(True),
    }


def measure_canary_share(models: tuple[bytes, bytes], work: Path) -> dict[str, Any]:
    home = work / "canary-share"
    registry = make_home(home, *models)
    start_rollout(registry, RolloutStrategy.CANARY, "v2", by="bench", percent=25, steps=[25, 100])
    endpoint = Endpoint(home, work)
    endpoint.holds("canary", 25)
    versions = []
    with httpx.Client(base_url=endpoint.url, timeout=30) as http:
        for key in range(CANARY_KEYS):
            review = {"text": "Love this dress, it fits perfectly.", "product_id": f"product-{key}"}
            versions.append(http.post("/predict", json={"reviews": [review]}).json()["model_version"])
    endpoint.stop()
    share = versions.count("v2") / len(versions)
    return {
        "requests": len(versions),
        "percent": 25,
        "candidate_share": share,
        "within_3_points": abs(share - 0.25) <= 0.03,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per run (default 30)")
    parser.add_argument(
        "--rounds", type=int, default=10, help="shadow off / on pairs at concurrency 1 (default 10)"
    )
    parser.add_argument(
        "--cost-seconds", type=float, default=10.0, help="seconds per concurrency-1 run (default 10)"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_before = os.getloadavg()
    texts, labels, source = training_data(args.data)
    print(f"training production and candidate on {source} ...", flush=True)
    pipeline = train(texts, labels)
    production = to_onnx(pipeline, LABELS)
    candidate = to_onnx(clone(pipeline).set_params(classifier__C=0.5).fit(texts, labels), LABELS)
    request_text = sorted(texts, key=len)[len(texts) // 2]
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [request_text]}]}
    )
    tool = "wrk" if shutil.which("wrk") else "httpx (asyncio)"
    models = (production, candidate)
    with tempfile.TemporaryDirectory(prefix="mlplatform-bench-rollout-") as temp:
        work = Path(temp)
        cost = measure_shadow_cost(models, body, args, work, tool)
        shadow = measure_shadow_under_load(models, args, work)
        canary = measure_canary_step(models, args, work)
        share = measure_canary_share(models, work)

    targets = {
        "shadow_adds_at_most_10pct_to_p99_at_concurrency_1": cost["p99_increase_of_medians"]
        <= MAX_P99_INCREASE,
        "shadow_adds_at_most_10pct_to_p99_at_concurrency_1_median_round": cost["median_p99_increase"]
        <= MAX_P99_INCREASE,
        "shadow_adds_at_most_10pct_to_p99_at_concurrency_1_every_round": all(
            increase <= MAX_P99_INCREASE for increase in cost["p99_increase_per_round"]
        ),
        "shadow_under_load_no_non_2xx": shadow["non_2xx"] == 0,
        "shadow_under_load_nothing_acknowledged_missing": shadow["acknowledged_missing_from_capture"] == 0,
        "shadow_rows_equal_answered_requests": shadow["shadow_rows"]
        == shadow["answered_rows"]
        == shadow["requests"],
        "canary_step_no_non_2xx": canary["non_2xx"] == 0,
        "canary_step_every_answer_names_its_capture_version": canary["capture_names_another_version"] == 0
        and canary["acknowledged_missing_from_capture"] == 0,
        "canary_share_within_3_points_over_2000": share["within_3_points"],
    }
    report = {
        "machine": machine(),
        "model": {"source": source, "train_rows": len(texts), "request_text_chars": len(request_text)},
        "load_tool_concurrency_1": tool,
        "load_tool_concurrency_16": "httpx (asyncio), every answer recorded",
        "duration_s": args.duration,
        "rounds": args.rounds,
        "cost_seconds": args.cost_seconds,
        "shadow_cost_at_concurrency_1": cost,
        "shadow_under_load": shadow,
        "canary_step_under_load": canary,
        "canary_share": share,
        "targets": targets,
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    for row in cost["results"]:
        print(
            f"round {row['round']} {row['variant']:>13}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, {row['requests_per_s']:,.0f} req/s"
        )
    print(f"p99 increase with a shadow, per round: {cost['p99_increase_per_round']}")
    print(f"median p99: {cost['median_p99_ms']}; increase of the medians: {cost['p99_increase_of_medians']}")
    print(f"shadow under load: {json.dumps(shadow)}")
    print(f"canary step under load: {json.dumps(canary)}")
    print(f"canary share: {json.dumps(share)}")
    print(f"targets: {json.dumps(targets, indent=2)}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
