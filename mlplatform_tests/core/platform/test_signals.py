"""SIGTERM after a block that changed it (as Dagster's in-process runs do): back as it was, never ignored."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from mlplatform.core.platform.signals import sigterm_kept


def sigterm_in_a_new_process() -> str:
    """SIGTERM's disposition in a process started now, as that process sees it."""
    code = "import signal; print(signal.getsignal(signal.SIGTERM).name)"
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def sigterm_ignored_before():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGTERM, previous)


def test_an_ignored_sigterm_becomes_the_default_for_this_process_and_its_children(sigterm_ignored_before):
    with sigterm_kept():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what a run leaves when SIGINT is ignored
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert sigterm_in_a_new_process() == "SIG_DFL"


def test_a_handler_of_the_process_is_given_back():
    def handler(signum, frame):  # pragma: no cover - never called
        pass

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        with sigterm_kept():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_outside_the_main_thread_the_block_just_runs():
    ran = []

    def body():
        with sigterm_kept():  # signal.signal would raise here: only the main thread may set handlers
            ran.append(True)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert ran == [True]
