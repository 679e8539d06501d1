"""Hostile-client benchmark of the endpoint: health probes under large-text load, inference beside slow clients.

    .venv/bin/python bench/serving_hostile.py [--duration 10] [--code DIR] [--out FILE]

Trains the serving benchmark's model (bench/serving.py: real reviews when present, else synthetic),
registers it as production in a temporary home and starts `python -m mlplatform.serving.server` on
loopback. `--code DIR` runs the server from another checkout (`git archive <commit> | tar -x -C DIR`)
to compare; settings that checkout does not know are left out.

- **large texts**: a prober GETs `/v2/health/ready` every 20 ms on its own keep-alive connection, first
  with the endpoint idle (`readiness_idle`), then while `--clients` (16) clients, in a separate process, POST one review of
  about 1 MiB each (the default `max_body_bytes`) to `/predict`, back to back. Records the probe's
  latency (p50, p99, max, how many over 50 ms) and the inference answers.
- **small reviews**: the same with 64 clients (the default `max_concurrency`) posting one review of 200
  characters each: the most inline work the loop can be given at once.
- **slow clients**: `--slow` (80, over the default `max_concurrency` of 64) connections send their
  headers and the first bytes of a body, then stall; another `--slow` send half their headers and
  stall. Meanwhile one client POSTs single reviews back to back and the prober reads readiness. Records
  the inference and readiness statuses, and when each stalled connection was answered (408) or closed.

Prints a summary and writes bench/results/serving_hostile.json (with the machine and the commit).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import free_port, machine
from serving import DEFAULT_DATA, LABELS, deploy_to_home, start_server, train, training_data

from mlplatform.core.training.export import to_onnx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "serving_hostile.json"
PROBE_EVERY_S = 0.02
SLOW_PROBE_MS = 50.0
LARGE_TEXT_CHARS = 1_000_000  # the body stays under the default max_body_bytes (1 MiB)
SMALL_CLIENTS = 64  # the default max_concurrency
SMALL_TEXT_CHARS = 200
SCENARIOS = ("readiness_idle", "large_texts", "small_reviews", "slow_clients")
STALL_TIMEOUTS_S = 5.0  # header_timeout_s and body_timeout_s of the server, where it knows them


def probe(base_url: str, stop: threading.Event, into: list[tuple[float, int]]) -> None:
    """GET readiness every PROBE_EVERY_S until `stop`: (latency ms, status) per probe."""
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = http.get("/v2/health/ready").status_code
            except httpx.TransportError:
                status = 0
            into.append(((time.perf_counter() - started) * 1000.0, status))
            time.sleep(PROBE_EVERY_S)


def probe_figures(probes: list[tuple[float, int]]) -> dict[str, Any]:
    latencies = np.array([latency for latency, _ in probes])
    return {
        "probes": len(probes),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p99_ms": round(float(np.percentile(latencies, 99)), 2),
        "max_ms": round(float(latencies.max()), 2),
        f"over_{SLOW_PROBE_MS:g}_ms": int((latencies > SLOW_PROBE_MS).sum()),
        "statuses": dict(Counter(str(status) for _, status in probes)),
    }


def review_text(chars: int) -> str:
    words = [
        "lovely",
        "dress",
        "fits",
        "well",
        "but",
        "the",
        "fabric",
        "is",
        "thin",
        "and",
        "the",
        "colour",
        "faded",
        "after",
        "one",
        "wash",
    ]
    rng = np.random.default_rng(7)
    return " ".join(rng.choice(words, size=chars // 4 + 1))[:chars]


def inference_load(base_url: str, clients: int, text_chars: int, duration_s: float, results: Any) -> None:
    """In a process of its own (its work must not delay the prober): `clients` threads posting one review
    of `text_chars` characters each, back to back."""
    body = json.dumps({"reviews": [{"text": review_text(text_chars)}]}).encode()
    deadline = time.monotonic() + duration_s
    statuses: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=base_url, timeout=60) as http:
            while time.monotonic() < deadline:
                try:
                    status = http.post("/predict", content=body, headers={"Content-Type": "application/json"})
                    code = str(status.status_code)
                except httpx.TransportError as exc:
                    code = type(exc).__name__
                with lock:
                    statuses[code] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put({"body_bytes": len(body), "statuses": dict(statuses)})


def idle_readiness(base_url: str, duration_s: float) -> dict[str, Any]:
    idle: list[tuple[float, int]] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(base_url, stop, idle))
    prober.start()
    time.sleep(duration_s)
    stop.set()
    prober.join()
    return probe_figures(idle)


def readiness_under_load(base_url: str, clients: int, text_chars: int, duration_s: float) -> dict[str, Any]:
    loaded: list[tuple[float, int]] = []
    results: Any = multiprocessing.get_context("spawn").Queue()
    load = multiprocessing.get_context("spawn").Process(
        target=inference_load, args=(base_url, clients, text_chars, duration_s, results)
    )
    load.start()
    time.sleep(1.0)  # the clients are sending
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(base_url, stop, loaded))
    prober.start()
    inference = results.get(timeout=duration_s + 300)
    stop.set()
    prober.join()
    load.join()
    return {
        "clients": clients,
        "review_chars": text_chars,
        "duration_s": duration_s,
        "inference": inference,
        "readiness_under_load": probe_figures(loaded),
    }


def stall(port: int, payload: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=60)
    connection.sendall(payload)
    return connection


def watch_stalled(connection: socket.socket, started: float, into: list[dict[str, Any]]) -> None:
    """How the server ends a stalled connection: its status line (or none) and when."""
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except OSError:
        pass
    status = received.split(b" ", 2)[1].decode() if received.startswith(b"HTTP/") else "closed"
    into.append({"status": status, "after_s": round(time.monotonic() - started, 2)})


def slow_clients(base_url: str, port: int, slow: int, duration_s: float) -> dict[str, Any]:
    body_head = b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    stalled = [stall(port, body_head + b'{"reviews"') for _ in range(slow)]
    stalled += [stall(port, b"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Ty") for _ in range(slow)]
    started = time.monotonic()
    ended: list[dict[str, Any]] = []
    watchers = [
        threading.Thread(target=watch_stalled, args=(c, started, ended), daemon=True) for c in stalled
    ]
    for watcher in watchers:
        watcher.start()
    readiness: list[tuple[float, int]] = []
    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(base_url, stop, readiness))
    prober.start()
    statuses: Counter[str] = Counter()
    latencies = []
    review = {"reviews": [{"text": "Runs small and the fabric is cheap."}]}
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while time.monotonic() - started < duration_s:
            request_started = time.perf_counter()
            statuses[str(http.post("/predict", json=review).status_code)] += 1
            latencies.append((time.perf_counter() - request_started) * 1000.0)
    stop.set()
    prober.join()
    ended = list(ended)  # before the bench closes what is still open
    for connection in stalled:
        connection.close()
    answered = Counter(entry["status"] for entry in ended)
    return {
        "stalled_mid_body": slow,
        "stalled_mid_headers": slow,
        "duration_s": duration_s,
        "inference_statuses": dict(statuses),
        "inference_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "readiness": probe_figures(readiness),
        "stalled_connections_ended": dict(answered),
        "stalled_connections_still_open": len(stalled) - len(ended),
        "stalled_ended_after_s": {
            "min": min((entry["after_s"] for entry in ended), default=None),
            "max": max((entry["after_s"] for entry in ended), default=None),
        },
    }


def server_settings(code: Path, worker_threads: int | None) -> str:
    """The platform.toml of the run: the stall timeouts (and worker threads), where the code has them."""
    known = (code / "mlplatform" / "config" / "platform.toml").read_text()
    wanted = {"header_timeout_s": STALL_TIMEOUTS_S, "body_timeout_s": STALL_TIMEOUTS_S}
    if worker_threads is not None:
        wanted["worker_threads"] = worker_threads
    lines = ["[serving]"] + [f"{key} = {value}" for key, value in wanted.items() if f"\n{key} =" in known]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per loaded phase (default 10)")
    parser.add_argument("--clients", type=int, default=16, help="clients posting ~1 MiB reviews (default 16)")
    parser.add_argument("--slow", type=int, default=80, help="stalled connections of each kind (default 80)")
    parser.add_argument(
        "--code", type=Path, default=ROOT, help="the checkout whose server runs (default: this)"
    )
    parser.add_argument(
        "--code-label", help="what --code is (e.g. the commit it was archived from), recorded"
    )
    parser.add_argument("--worker-threads", type=int, help="[serving] worker_threads (default: the code's)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    texts, labels, source = training_data(args.data)
    print(f"training on {source} ...", flush=True)
    onnx_bytes = to_onnx(train(texts, labels), LABELS)
    code = args.code.resolve()
    env = {key: value for key, value in os.environ.items() if key != "MLPLATFORM_API_KEYS"}
    env["PYTHONPATH"] = str(code)
    report: dict[str, Any] = {"machine": machine(), "code": str(code), "model_source": source}
    if code != ROOT:
        report["code_note"] = "server run from --code (another checkout); machine.git_commit is this script's"
        report["code_label"] = args.code_label
    with tempfile.TemporaryDirectory(prefix="mlplatform-hostile-") as temp:
        home = Path(temp) / "home"
        deploy_to_home(home, onnx_bytes)
        settings = server_settings(code, args.worker_threads)
        (home / "platform.toml").write_text(settings)
        report["settings"] = settings
        port = free_port()
        base_url = f"http://127.0.0.1:{port}"
        process = start_server(
            [sys.executable, "-P", "-m", "mlplatform.serving.server", "--port", str(port)],
            {**env, "MLPLATFORM_HOME": str(home)},
            base_url,
            Path(temp) / "server.log",
        )
        try:
            print("readiness, idle ...", flush=True)
            report["readiness_idle"] = idle_readiness(base_url, min(5.0, args.duration))
            print(f"large texts: {args.clients} clients x ~1 MiB for {args.duration:g} s ...", flush=True)
            report["large_texts"] = readiness_under_load(
                base_url, args.clients, LARGE_TEXT_CHARS, args.duration
            )
            print(f"small reviews: {SMALL_CLIENTS} clients for {args.duration:g} s ...", flush=True)
            report["small_reviews"] = readiness_under_load(
                base_url, SMALL_CLIENTS, SMALL_TEXT_CHARS, args.duration
            )
            print(
                f"slow clients: 2 x {args.slow} stalled connections for {args.duration:g} s ...", flush=True
            )
            report["slow_clients"] = slow_clients(base_url, port, args.slow, args.duration)
        finally:
            process.terminate()
            process.wait(timeout=60)
    report["load_average_1m_after"] = round(os.getloadavg()[0], 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({key: report[key] for key in SCENARIOS}, indent=2))


if __name__ == "__main__":
    main()
