"""A real full disk under the real endpoint: the capture directory on a small tmpfs, filled, then freed.

Needs the right to mount (root, or CAP_SYS_ADMIN); skipped otherwise. The same behaviour is tested
everywhere with an injected ENOSPC (serving/test_capture.py, serving/test_health.py).
"""

from __future__ import annotations

import contextlib
import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlplatform.core.monitoring.alerts import FIRING, RESOLVED, AlertStore
from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.registry import ModelRegistry
from mlplatform_tests.integration.processes import endpoint_process, wait_until
from mlplatform_tests.serving.conftest import deploy, tiny_model_bytes

pytestmark = pytest.mark.integration

ROOM_BYTES = 256 * 1024  # the open segment's zero-filled room: records fit there until it is used up


@contextlib.contextmanager
def small_tmpfs(at: Path, size: str) -> Iterator[None]:
    at.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(at)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the filesystem has no space left; returns it."""
    filler = directory / "filler.bin"
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\xff" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_a_full_capture_disk_refuses_without_a_file_storm_alerts_and_recovers_when_freed(
    home: PlatformHome, tmp_path: Path
) -> None:
    deploy(ModelRegistry(home.registry), tiny_model_bytes(0))
    home.settings_file.write_text(
        f"[serving]\ncapture_retry_s = 0.2\ncapture_segment_preallocate_bytes = {ROOM_BYTES}\n"
    )
    review = {"reviews": [{"text": "the fabric is thin but the fit is lovely " * 400}]}  # ~16 KB a record
    acknowledged = []
    with (
        small_tmpfs(home.capture, "4m"),
        endpoint_process(home.root, tmp_path / "server.log", ready_path="/v2/health/ready") as (_, base_url),
        httpx.Client(base_url=base_url, timeout=30) as http,
    ):

        def ask(request_id: str) -> int:
            status = http.post("/predict", json=review, headers={"X-Request-ID": request_id}).status_code
            if status == 200:
                acknowledged.append(request_id)
            return status

        assert ask("before") == 200
        filler = fill(home.capture)
        statuses = [ask(f"full-{index}") for index in range(300)]
        assert 503 in statuses  # once the segment's room is used up
        first_refusal = statuses.index(503)
        assert set(statuses[first_refusal:]) == {503}
        ready = http.get("/v2/health/ready")
        assert (ready.status_code, ready.json()["state"]) == (503, "capture_failing")
        segments = [path for path in home.capture.iterdir() if path != filler]
        assert len(segments) <= 2, sorted(path.name for path in segments)  # no storm of empty files
        alerts = AlertStore(home.alerts)
        wait_until(lambda: any(alert.state == FIRING for alert in alerts.list()), 30, "the capture alert")

        filler.unlink()
        wait_until(lambda: http.get("/v2/health/ready").status_code == 200, 30, "readiness to return")
        assert ask("after") == 200
        wait_until(lambda: alerts.list()[-1].state == RESOLVED, 30, "the alert to be resolved")
        # Read while the tmpfs is mounted: every acknowledged request was recorded, the refused ones not.
        captured = set(read_capture(home.capture)["request_id"])
    assert captured == set(acknowledged)
