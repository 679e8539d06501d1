"""SIGTERM stays able to stop the platform's processes and the children they start.

A run executed in a process (Dagster's in-process execution, or the orchestration of `execute_job`)
ends with Dagster giving SIGTERM the handler SIGINT has (`dagster._utils.interrupts`: "map SIGTERM to
SIGINT, for k8s"). A background job started by a shell without job control ignores SIGINT, so from
then on the process ignored SIGTERM as well, and so did every child it started later, because an
ignored signal stays ignored across fork and exec: Dask workers, multiprocessing pools, servers, and
the `tail -F` processes Dagster starts to mirror each step's compute log. Those survived
`terminate()`: every Dask step waited 30 s in cleanup and then left its tails orphaned, and a pool
whose workers ignored SIGTERM hung its `terminate()` forever.

So every run the platform executes in its own process goes through `sigterm_kept()`: afterwards
SIGTERM has the handler it had before, or the default action where that was "ignored". Children
started afterwards get SIGTERM at its default. SIGINT is left as inherited: a shell ignores it in a
background job on purpose (Ctrl-C belongs to the foreground job), and nothing stops a child with it.

Pure standard library (no Dagster import), so the test harness applies the same rule around every test.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def sigterm_kept() -> Iterator[None]:
    """Run the block, then give SIGTERM back its handler from before it, never "ignored".

    Only the main thread can set handlers (and Dagster changes them only there); in any other thread
    the block simply runs.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        # SIG_IGN: inherited ignored; None: a handler installed outside Python. Both become the default.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if before in (signal.SIG_IGN, None) else before)
