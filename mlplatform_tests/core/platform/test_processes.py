"""A PID is judged alive only while it names the process that was running: not gone, not a zombie,
not a newer process that reused the number."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from mlplatform.core.platform.processes import process_alive


def test_a_running_process_is_alive():
    assert process_alive(os.getpid(), time.time())


def test_an_exited_and_reaped_process_is_not():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not process_alive(child.pid, time.time())


def test_a_killed_but_unreaped_process_a_zombie_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = time.time()
        assert process_alive(child.pid, started)
        child.kill()
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # it has exited; nobody reaped it yet
        assert not process_alive(child.pid, started)
    finally:
        child.wait()


def test_a_process_that_started_after_the_run_was_running_is_another_one():
    # The PID exists, but the process holding it started well after the moment the run's worker was
    # known to be running: the worker died and the number was reused.
    worker_known_running_at = time.time() - 60
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert not process_alive(child.pid, worker_known_running_at)
        assert process_alive(child.pid, time.time())
    finally:
        child.kill()
        child.wait()


def test_without_proc_existence_is_what_counts(tmp_path: Path):
    missing = tmp_path / "no-proc"
    assert process_alive(os.getpid(), time.time(), proc=missing)
    assert not process_alive(2**22 + 12345, time.time(), proc=missing)
    assert not process_alive(0, time.time())
