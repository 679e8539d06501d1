"""Starting and stopping the platform's real processes in integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(argv: Sequence[str], env: Mapping[str, str], log: Path) -> subprocess.Popen:
    """Start a process in its own session (so the whole tree can be stopped), output to `log`."""
    handle = log.open("ab")
    return subprocess.Popen(
        list(argv), stdout=handle, stderr=subprocess.STDOUT, env=dict(env), start_new_session=True
    )


def stop(process: subprocess.Popen, timeout_s: float = 30.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left after `timeout_s`."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def wait_until(probe: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 1.0) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            value = probe()
        except OSError:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)
