"""Starting and stopping the platform's real processes in integration tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def read_until_closed(connection: socket.socket) -> bytes:
    """Everything the peer sends until it closes the connection (a reset counts as closed); the socket's
    own timeout (TimeoutError) means the peer kept it open."""
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start(
    argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path | None = None
) -> subprocess.Popen:
    """Start a process in its own session (so the whole tree can be stopped), output to `log`.

    It runs in `cwd`, by default `log`'s directory: Dagster's commands read `.env` from where they run,
    and the checkout's `.env` names the checkout's home, not a test's.
    """
    handle = log.open("ab")
    return subprocess.Popen(
        list(argv),
        stdout=handle,
        stderr=subprocess.STDOUT,
        env=dict(env),
        cwd=log.parent if cwd is None else cwd,
        start_new_session=True,
    )


CHECKOUT = Path(__file__).resolve().parents[2]
PROJECT_FILES = ("pyproject.toml", ".env", "workspace.yaml", "mlplatform")


def project_root(directory: Path) -> Path:
    """A project root in `directory` (its files linked from the checkout): its default home is its own."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        (directory / name).symlink_to(CHECKOUT / name)
    return directory


def shell_env(root: Path) -> dict[str, str]:
    """The environment of a shell at `root`: no DAGSTER_HOME nor MLPLATFORM_HOME exported, PWD set."""
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "MLPLATFORM_HOME")}
    env["PWD"] = str(root)
    return env


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


@contextlib.contextmanager
def endpoint_process(
    home_root: Path,
    log_path: Path,
    *,
    ready_path: str = "/v2/health/live",
    env: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`python -m mlplatform.serving.server` on `home_root`; yields (process, base URL) once `ready_path`
    answers 200. The process is killed afterwards (tests that need a graceful stop do it themselves)."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlplatform.serving.server", "--port", str(port)],
            env={**(os.environ if env is None else env), "MLPLATFORM_HOME": str(home_root)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the endpoint exited early:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{base_url}{ready_path}", timeout=1) as response:
                return response.status == 200
        except urllib.error.HTTPError:
            return False

    try:
        wait_until(answers, timeout_s, f"the endpoint to answer {ready_path} ({log_path})", every_s=0.05)
        yield process, base_url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
