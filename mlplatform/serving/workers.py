"""Where an inference request's work runs: on the event loop when its body is small, else in a worker thread.

The event loop answers every connection, health probes included, so nothing may hold it for long. A
request's cost grows with its bytes, not its review count (one 1 MiB review costs more to decode,
clean, score, render and encode for capture than 200 short ones), so the rule is by body size: a body
of at most `[serving] inline_max_body_bytes` is handled right on the loop (a thread hop would cost
more than the work), a larger one does all of it -- JSON decoding, validation, text cleaning,
scoring, the response and its capture record -- in a worker thread, and its capture record goes
through the capture writer thread (never the inline sync; serving/capture.py).

At most `[serving] worker_threads` requests work at once; more wait for a thread, holding their
concurrency slot. The limit is what keeps the loop responsive: worker threads share the interpreter
lock with the loop, and every thread that wants it lengthens the loop's wait for it. The limit of
what a thread can do for the loop: one long C call that holds the lock (a regular expression over a
1 MiB text, say) still holds the loop for its whole length; `max_body_bytes` bounds that.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


class WorkerThreads:
    """Runs request work off the event loop, at most `count` at a time (only the loop's thread calls it)."""

    def __init__(self, count: int) -> None:
        if count < 1:
            raise ValueError(f"[serving] worker_threads must be at least 1, got {count}")
        self._count = count
        self._limiter: anyio.CapacityLimiter | None = None  # made in the loop that first needs it

    async def run(self, work: Callable[[], T]) -> T:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._count)
        return await anyio.to_thread.run_sync(work, limiter=self._limiter)
