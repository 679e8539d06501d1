"""Serving benchmark: the mlplatform endpoint vs a plain scikit-learn + FastAPI server, same model.

    .venv/bin/python bench/serving.py [--duration 10] [--rounds 3] [--data ../shared/data/...csv]

Trains a TF-IDF (word 1-2 grams) + LogisticRegression sentiment model on the real reviews when the data
set is present (else on synthetic reviews, and says so), registers its ONNX export as production in a
temporary MLPLATFORM_HOME per server variant, and starts the servers on loopback one after another:

- mlplatform: `python -m mlplatform.serving.server` (validation, metrics, and capture of every request
  made durable before the answer; every review scored by ONNX Runtime on the platform's sparse text
  graph), with its defaults (capture segments zero-filled ahead, a lone request syncing its own
  record), with `[serving] capture_segment_preallocate_bytes = 0` (capture appended to a growing
  file), with `[serving] capture_inline_stall_ms = 2` and `capture_inline_cooldown_s = 30` (the
  inline-sync gate of earlier versions: one sync over 2 ms sends every record through the writer
  thread for 30 s), and with `[serving] capture_sample_rate = 0` (no capture: what durability costs);
- baseline: the same scikit-learn pipeline behind FastAPI with pydantic request models and
  `predict_proba`, the server most users write by hand (`async def`, access log off, like ours).

All are driven with single-review `POST /v2/models/sentiment/infer` requests at concurrency 1 and 16
for a fixed duration, with `wrk` when installed, else an asyncio + httpx load generator. The whole
sequence runs `--rounds` times, and each ratio to the baseline is taken within one round, so a run
shows how steady the ratios are, not one draw. For our servers each run also records, from their
/metrics, how many capture syncs the lone requests did themselves, how many the writer thread did,
and how many took over 2 ms. Also measures the disk's own latency to sync one record both ways, and
the load average before and after (a busy machine shows in every figure). Issue 13's targets for the
defaults, counted per round in `targets`: p99 at most 1 ms at concurrency 1, at least 3x the
baseline's requests/s at concurrency 1 and 16. Prints a Markdown table and writes
bench/results/serving.json (with the machine and the commit measured).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
from _common import free_port, machine
from pydantic import BaseModel

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.text import TOKEN_PATTERN, lowercase_for_tokens
from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.training.export import to_onnx

CONTRACT = load_contract()  # the packaged clothing contract: what these benches read
LABELS = CONTRACT.classes
RATING_CLASSES = CONTRACT.labels.rating_classes()
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
RESULTS = ROOT / "bench" / "results" / "serving.json"
INFER_PATH = "/v2/models/sentiment/infer"
CONCURRENCIES = (1, 16)
OURS = "mlplatform (defaults: ONNX Runtime; capture synced)"
OURS_APPENDED = "mlplatform ([serving] capture_segment_preallocate_bytes = 0: capture appended + synced)"
OURS_STRICT_GATE = (
    "mlplatform ([serving] capture_inline_stall_ms = 2, capture_inline_cooldown_s = 30: the inline-sync "
    "gate of earlier versions)"
)
OURS_NO_CAPTURE = "mlplatform ([serving] capture_sample_rate = 0: no capture)"
BASELINE = "baseline (scikit-learn + FastAPI)"
# Our server's variants: the platform.toml of each one's home.
OUR_VARIANTS = {
    OURS: "",
    OURS_APPENDED: "[serving]\ncapture_segment_preallocate_bytes = 0\n",
    OURS_STRICT_GATE: "[serving]\ncapture_inline_stall_ms = 2.0\ncapture_inline_cooldown_s = 30.0\n",
    OURS_NO_CAPTURE: "[serving]\ncapture_sample_rate = 0.0\n",
}
VARIANT_KEYS = {
    "appended_capture": OURS_APPENDED,
    "strict_inline_gate": OURS_STRICT_GATE,
    "without_capture": OURS_NO_CAPTURE,
}
SYNTHETIC_ROWS = 20_000


# --- the model ----------------------------------------------------------------------------------------


def training_data(data_path: Path) -> tuple[list[str], list[str], str]:
    """(texts, labels, source) from the real CSV when present, else synthetic reviews."""
    from mlplatform.core.data.text import prepare_text

    if data_path.exists():
        frame = pl.read_csv(data_path, columns=["Title", "Review Text", "Rating"], infer_schema_length=0)
        frame = frame.with_columns(pl.col("Rating").cast(pl.Int64))
        source = f"real data ({data_path.name}, {frame.height} reviews)"
        titles, texts, ratings = frame["Title"], frame["Review Text"], frame["Rating"]
    else:
        from mlplatform.core.data.synthetic import generate_reviews

        frame = generate_reviews(SYNTHETIC_ROWS, seed=7)
        source = f"synthetic reviews ({SYNTHETIC_ROWS}; real data not found at {data_path})"
        titles, texts, ratings = frame["title"], frame["review_text"], frame["rating"]
    model_texts, labels = [], []
    for title, text, rating in zip(titles, texts, ratings, strict=True):
        cleaned = prepare_text(title, text)
        if cleaned and rating is not None:
            model_texts.append(cleaned)
            labels.append(RATING_CLASSES[float(rating)])
    return model_texts, labels, source


def train(texts: list[str], labels: list[str]) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline(
        [
            (
                "tfidf",
                TfidfVectorizer(
                    token_pattern=TOKEN_PATTERN,
                    lowercase=False,
                    preprocessor=lowercase_for_tokens,
                    ngram_range=(1, 2),
                    min_df=2,
                    max_features=50_000,
                ),
            ),
            ("classifier", LogisticRegression(max_iter=1000)),
        ]
    )
    return pipeline.fit(texts, labels)


def deploy_to_home(home_root: Path, onnx_bytes: bytes) -> str:
    from mlplatform.core.platform.home import PlatformHome
    from mlplatform.core.platform.settings import Settings
    from mlplatform.core.release.registry import ModelRegistry

    home = PlatformHome.at(home_root).ensure()
    registry = ModelRegistry.for_home(home, Settings.load(home.settings_file).storage)
    version = registry.register(onnx_bytes, card={"model": "bench"}, metrics={"macro_f1": 0.0}).version
    registry.approve(version, by="bench")
    registry.promote(version, by="bench")
    return version


# --- the baseline server ------------------------------------------------------------------------------


class InferInput(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[str]


class InferRequest(BaseModel):
    inputs: list[InferInput]


def serve_sklearn(model_path: Path, port: int) -> None:
    """The hand-written server: FastAPI + pydantic + scikit-learn `predict_proba`."""
    import uvicorn
    from fastapi import FastAPI

    with model_path.open("rb") as handle:
        pipeline = pickle.load(handle)
    classes = list(pipeline.classes_)

    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post(INFER_PATH)
    async def infer(request: InferRequest) -> dict[str, Any]:
        texts = next(tensor.data for tensor in request.inputs if tensor.name == "text")
        probabilities = pipeline.predict_proba(texts)
        labels = [classes[index] for index in probabilities.argmax(axis=1)]
        return {
            "model_name": "sentiment",
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [len(texts)], "data": labels},
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [len(texts), len(classes)],
                    "data": probabilities.ravel().tolist(),
                },
            ],
        }

    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


# --- load ---------------------------------------------------------------------------------------------


def start_server(command: list[str], env: dict[str, str], base_url: str, log_path: Path) -> subprocess.Popen:
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{base_url}/v2/health/ready", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"server {command} did not become ready; log:\n{log_path.read_text()}")


_WRK_DURATION = re.compile(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def run_wrk(url: str, body: str, connections: int, duration_s: float, work_dir: Path) -> dict[str, float]:
    script = work_dir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body)}\n"
    )
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(duration_s)}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    percentiles = {
        match[0]: float(match[1]) * _WRK_UNITS_MS[match[2]] for match in _WRK_DURATION.findall(output)
    }
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:.*", output)
    return {
        "p50_ms": percentiles["50"],
        "p99_ms": percentiles["99"],
        "requests_per_s": rps,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def run_httpx_load(url: str, body: str, connections: int, duration_s: float) -> dict[str, float]:
    """Fallback load generator: `connections` keep-alive workers for `duration_s`."""

    async def drive() -> tuple[list[float], int]:
        latencies: list[float] = []
        failures = 0
        deadline = time.perf_counter() + duration_s
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=10) as http:

            async def worker() -> None:
                nonlocal failures
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    response = await http.post(
                        url, content=body, headers={"Content-Type": "application/json"}
                    )
                    latencies.append((time.perf_counter() - started) * 1000.0)
                    failures += response.status_code != 200

            await asyncio.gather(*(worker() for _ in range(connections)))
        return latencies, failures

    latencies, failures = asyncio.run(drive())
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p99_ms": float(np.percentile(latencies, 99)),
        "requests_per_s": len(latencies) / duration_s,
        "non_2xx": failures,
        "socket_errors": "",
    }


def sync_latency_ms(directory: Path, *, preallocated: bool, records: int = 3000) -> dict[str, float]:
    """The disk's own latency to make one 640-byte record durable where capture is written.

    `preallocated`: overwrite zero-filled room and `fdatasync` (capture's default); else append and
    `fsync` (a growing file, the layout with `capture_segment_preallocate_bytes = 0`).
    """
    path = directory / "sync-probe"
    record = b"x" * 639 + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (0 if preallocated else os.O_APPEND), 0o644)
    timings = []
    try:
        if preallocated:
            os.write(fd, bytes(records * len(record)))
            os.fsync(fd)
        for index in range(records):
            if preallocated:
                os.pwrite(fd, record, index * len(record))
            else:
                os.write(fd, record)
            started = time.perf_counter()
            (os.fdatasync if preallocated else os.fsync)(fd)
            timings.append((time.perf_counter() - started) * 1000.0)
    finally:
        os.close(fd)
        path.unlink()
    return {
        "records": records,
        "p50_ms": float(np.percentile(timings, 50)),
        "p99_ms": float(np.percentile(timings, 99)),
        "max_ms": float(max(timings)),
        # What the inline-sync gate counts as slow (its default capture_inline_sync_max_ms).
        "over_2ms": int(sum(timing > 2.0 for timing in timings)),
    }


def capture_syncs(base_url: str) -> dict[str, int]:
    """The server's capture syncs so far (its /metrics): by the lone request itself, by the writer
    thread, and how many took over 2 ms (the default `capture_inline_sync_max_ms`)."""
    from prometheus_client.parser import text_string_to_metric_families

    counts = {"by_request": 0, "by_writer": 0, "over_2ms": 0}
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlplatform_serving_capture_sync_seconds_count":
                counts[f"by_{sample.labels['by']}"] += int(sample.value)
                counts["over_2ms"] += int(sample.value)
            elif (
                sample.name == "mlplatform_serving_capture_sync_seconds_bucket"
                and sample.labels["le"] == "0.002"
            ):
                counts["over_2ms"] -= int(sample.value)
    return counts


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| round | server | concurrency | p50 ms | p99 ms | req/s | non-2xx |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['round']} | {row['server']} | {row['concurrency']} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['requests_per_s']:,.0f} | {row['non_2xx']} |"
        )
    return "\n".join(lines)


def speedups(rows: list[dict[str, Any]], server: str, rounds: int) -> dict[str, list[float]]:
    """Per concurrency, `server`'s requests/s over the baseline's, one ratio per round (same round)."""
    rate = {(row["round"], row["server"], row["concurrency"]): row["requests_per_s"] for row in rows}
    return {
        str(c): [round(rate[(r, server, c)] / rate[(r, BASELINE, c)], 2) for r in range(1, rounds + 1)]
        for c in CONCURRENCIES
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (default 10)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--rounds", type=int, default=3, help="every server is measured this many times, in turn (default 3)"
    )
    parser.add_argument("--serve-sklearn", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sklearn is not None:
        serve_sklearn(args.serve_sklearn, args.port)
        return

    load_before = os.getloadavg()
    texts, labels, source = training_data(args.data)
    print(f"training on {source} ...", flush=True)
    pipeline = train(texts, labels)
    request_text = sorted(texts, key=len)[len(texts) // 2]  # a review of median length
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [request_text]}]}
    )
    load_tool = "wrk" if shutil.which("wrk") else "httpx (asyncio)"

    with tempfile.TemporaryDirectory(prefix="mlplatform-bench-") as temp:
        work = Path(temp)
        onnx_bytes = to_onnx(pipeline, LABELS)
        with (work / "model.pkl").open("wb") as handle:
            pickle.dump(pipeline, handle)
        env = {key: value for key, value in os.environ.items() if key != "MLPLATFORM_API_KEYS"}
        ours = [sys.executable, "-m", "mlplatform.serving.server"]
        servers: dict[str, tuple[list[str], Path]] = {}
        for index, (name, settings) in enumerate(OUR_VARIANTS.items()):
            home = work / f"home-{index}"  # the same model in a home of its own per variant
            version = deploy_to_home(home, onnx_bytes)
            (home / "platform.toml").write_text(settings)
            servers[name] = (ours, home)
        servers[BASELINE] = (
            [sys.executable, str(Path(__file__).resolve()), "--serve-sklearn", str(work / "model.pkl")],
            work / "home-0",
        )
        rows = []
        for round_number in range(1, args.rounds + 1):
            for name, (command, home) in servers.items():
                port = free_port()
                base_url = f"http://127.0.0.1:{port}"
                process = start_server(
                    [*command, "--port", str(port)],
                    {**env, "MLPLATFORM_HOME": str(home)},
                    base_url,
                    work / f"{port}.log",
                )
                try:
                    url = base_url + INFER_PATH
                    for concurrency in CONCURRENCIES:
                        print(
                            f"round {round_number}/{args.rounds}, {name}: concurrency {concurrency} "
                            f"for {args.duration:.0f} s ...",
                            flush=True,
                        )
                        warm = min(2.0, args.duration)
                        if load_tool == "wrk":
                            run_wrk(url, body, concurrency, warm, work)
                        else:
                            run_httpx_load(url, body, concurrency, warm)
                        syncs_before = capture_syncs(base_url) if name != BASELINE else None
                        if load_tool == "wrk":
                            result = run_wrk(url, body, concurrency, args.duration, work)
                        else:
                            result = run_httpx_load(url, body, concurrency, args.duration)
                        if syncs_before is not None:
                            after = capture_syncs(base_url)
                            result["capture_syncs"] = {key: after[key] - syncs_before[key] for key in after}
                        rows.append(
                            {"round": round_number, "server": name, "concurrency": concurrency, **result}
                        )
                finally:
                    process.terminate()
                    process.wait(timeout=30)
        captured = read_capture(work / "home-0" / "capture").height
        sync_ms = {
            "append_fsync": sync_latency_ms(work, preallocated=False),
            "preallocated_fdatasync": sync_latency_ms(work, preallocated=True),
        }

    ours_ratio = speedups(rows, OURS, args.rounds)
    ours_p99_at_1 = [row["p99_ms"] for row in rows if row["server"] == OURS and row["concurrency"] == 1]
    table = markdown(rows)
    report = {
        "machine": machine(),
        "model": {
            "source": source,
            "train_rows": len(texts),
            "version": version,
            "request_text_chars": len(request_text),
        },
        "load_tool": load_tool,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "results": rows,
        "throughput_speedup_vs_baseline": ours_ratio,
        **{
            f"throughput_speedup_vs_baseline_{key}": speedups(rows, name, args.rounds)
            for key, name in VARIANT_KEYS.items()
        },
        # Issue 13's targets for the defaults: p99 at most 1 ms at concurrency 1 (capture on), and at
        # least 3x the baseline's throughput at concurrency 1 and 16, in every round.
        "targets": {
            "p99_ms_at_concurrency_1_at_most_1": {
                "rounds_met": sum(p99 <= 1.0 for p99 in ours_p99_at_1),
                "rounds": args.rounds,
            },
            **{
                f"throughput_at_least_3x_baseline_at_concurrency_{c}": {
                    "rounds_met": sum(ratio >= 3.0 for ratio in ours_ratio[str(c)]),
                    "rounds": args.rounds,
                }
                for c in CONCURRENCIES
            },
        },
        "capture_records_written_by_the_default_server": captured,
        "disk_sync_ms": sync_ms,
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(
        f"Machine: {report['machine']['nproc']} cores, {report['machine']['cpu_model']}; model trained on {source}; load: {load_tool}, {args.duration:.0f} s per run, loopback."
    )
    print()
    print(table)
    print()
    for kind, timing in sync_ms.items():
        print(
            f"disk sync of one 640 B record ({kind}) where capture is written: "
            f"p50 {timing['p50_ms']:.2f} ms, p99 {timing['p99_ms']:.2f} ms"
        )
    print(f"throughput vs baseline, per round: {ours_ratio}; targets met: {report['targets']}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
