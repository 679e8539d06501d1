"""The endpoint as a real uvicorn process: nothing acknowledged is lost to `kill -9`; SIGTERM drains."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.registry import ModelRegistry
from mlplatform_tests.integration.processes import endpoint_process
from mlplatform_tests.serving.conftest import deploy

pytestmark = pytest.mark.integration


@pytest.fixture
def server(
    home: PlatformHome, registry: ModelRegistry, tiny_models: dict[int, bytes], tmp_path: Path
) -> Iterator[tuple[subprocess.Popen, str]]:
    deploy(registry, tiny_models[0])
    with endpoint_process(home.root, tmp_path / "server.log", ready_path="/v2/health/ready") as started:
        yield started


def load(base_url: str, workers: int, stop: threading.Event) -> tuple[list[str], list[threading.Thread]]:
    """Threads posting single reviews, each with its own request id, until `stop` or a dead server."""
    acknowledged: list[str] = []

    def worker(index: int) -> None:
        with httpx.Client(base_url=base_url, timeout=5) as http:
            sent = 0
            while not stop.is_set():
                request_id = f"w{index}-{sent}"
                sent += 1
                try:
                    response = http.post(
                        "/v2/models/sentiment/infer",
                        json={
                            "inputs": [
                                {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["nice dress"]}
                            ]
                        },
                        headers={"X-Request-ID": request_id},
                    )
                except httpx.TransportError:
                    return
                if response.status_code == 200:
                    acknowledged.append(request_id)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(workers)]
    for thread in threads:
        thread.start()
    return acknowledged, threads


def wait_for_count(items: list[str], count: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len(items) < count:
        assert time.monotonic() < deadline, f"only {len(items)} requests acknowledged"
        time.sleep(0.01)


def test_kill_9_mid_load_loses_no_acknowledged_request(
    server: tuple[subprocess.Popen, str], home: PlatformHome
) -> None:
    process, base_url = server
    stop = threading.Event()
    acknowledged, threads = load(base_url, workers=8, stop=stop)
    wait_for_count(acknowledged, 300)
    process.send_signal(signal.SIGKILL)
    process.wait()
    stop.set()
    for thread in threads:
        thread.join()
    captured = set(read_capture(home.capture)["request_id"])
    missing = set(acknowledged) - captured
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged requests are not in the capture"
    assert list(home.capture.glob("*.open")), (
        "the killed server's segment should still be open (torn tail allowed)"
    )


def test_sigterm_drains_and_seals(server: tuple[subprocess.Popen, str], home: PlatformHome) -> None:
    process, base_url = server
    stop = threading.Event()
    acknowledged, threads = load(base_url, workers=4, stop=stop)
    wait_for_count(acknowledged, 50)
    process.send_signal(signal.SIGTERM)
    # uvicorn drains, shuts the app down, then re-raises the signal with its default action.
    assert process.wait(timeout=20) in (0, -signal.SIGTERM)
    stop.set()
    for thread in threads:
        thread.join()
    assert set(acknowledged) <= set(read_capture(home.capture)["request_id"])
    assert not list(home.capture.glob("*.open")), "a clean shutdown seals its segment"
