"""The capture writer: append-only JSON-lines segments under `capture/`, durable by group commit.

The record format, the segment names and the reader are core's (`mlplatform.core.monitoring.capture`:
monitoring reads what this writes without importing the endpoint); this module writes them.

Durability: `CaptureWriter.append` hands the request's lines to one writer thread and waits until they
are written and fsync'ed. The thread writes whatever is pending in one `write` + one `fsync` (group
commit), so under load many requests share an fsync, and a request waits at most for the fsync in
progress plus its own (plus `fsync_max_delay_s` if configured to gather bigger groups). `submit`
queues lines nobody waits on (a rollout's shadow rows, serving/rollout.py): they join the next group.

Segments: `<utc stamp>-<pid>-<seq>.jsonl.open` while written, sealed by an atomic rename to
`<...>.jsonl` when the segment reaches its size or age limit and when the writer closes. A crash
mid-append leaves at most a torn last line in the `.open` segment; `read_capture` skips it, and the
next writer seals a dead process's segment after cutting the torn tail. After a failed write the
segment is cut back to its last durable record and sealed, so a bad line never sits mid-file.

Preallocation (`capture_segment_preallocate_bytes`): an open segment is zero-filled ahead of its
records, and records overwrite the zeros. Appending to a file grows it, so every fsync must also
commit the new size through the filesystem's journal; over blocks that are already written, a
`fdatasync` flushes the data alone (the WAL technique of databases), with no journal commit to wait
for. So an open segment ends in zeros: readers take its bytes up
to the first NUL (JSON lines never contain one: orjson escapes control characters) and then up to
the last newline; sealing cuts the zeros off. A crash can leave any mix of zeros and partial bytes
after the last durable record, never before it, so the same rule recovers it.

A disk that cannot be written (full, failing): the first failed write cuts its segment back and seals
it (an empty one is removed, never sealed), and the writer turns FAILING: every append is refused at
once (the request is answered 503, nothing acknowledged goes unrecorded) instead of each one opening
a new segment to fail in, which would litter the directory with empty files. The writer thread probes
the disk every `[serving] capture_retry_s` by opening the next segment and zero-filling room in it
(at least `PROBE_BYTES`, synced); a probe that fails removes its file, one that succeeds keeps the
segment and turns the writer WRITING again. `on_state` hears of both changes (the endpoint's readiness
and its alert follow them; serving/health.py).

Capture location (`[storage] capture`): the open segment is always a local file (appends and fsync are
what make a request durable before it is answered). When the capture location is elsewhere (object
storage), a publisher thread uploads each sealed segment there under its own name, reads it back to
verify its sha256, and only then removes the local copy. A failed upload leaves the segment local; it
is published by the next attempt (the next seal, or the next start). `read_capture` reads the
published segments plus the local ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from mlplatform.core.monitoring.capture import (
    OPEN_SUFFIX,
    SEALED_SUFFIX,
    CaptureError,
    complete_lines,
    remote_location,
    sealed_name,
)
from mlplatform.core.platform.fsio import fsync_directory
from mlplatform.core.platform.settings import ServingRules
from mlplatform.core.platform.storage import StorageError, StorageLocation

log = logging.getLogger(__name__)

PROBE_BYTES = 1 << 16  # a failing disk is tried again by zero-filling at least this much of a new segment


class CaptureState(StrEnum):
    WRITING = "writing"
    FAILING = "failing"  # the last write failed: appends are refused until a probe of the disk succeeds


@dataclass(frozen=True)
class CaptureStatus:
    """The writer now: its state, since when (wall time), the error that made it fail, its thread."""

    state: CaptureState
    since: float
    error: str | None
    alive: bool  # the writer thread runs (False before start, after close, or after a bug stopped it)


@dataclass(frozen=True)
class CaptureConfig:
    """Group-commit and rotation limits (keys `capture_*` of the `[serving]` settings)."""

    fsync_max_delay_s: float
    batch_max_records: int
    segment_max_bytes: int
    segment_max_age_s: float
    preallocate_bytes: int = 0
    inline_sync_max_s: float = 0.0
    inline_warmup_syncs: int = 0
    inline_stall_s: float = 0.0
    inline_cooldown_s: float = 0.0
    retry_s: float = 1.0

    @classmethod
    def from_settings(cls, serving: ServingRules) -> CaptureConfig:
        """The writer's own names and units (seconds) for the `capture_*` keys of `[serving]`."""
        return cls(
            fsync_max_delay_s=serving.capture_fsync_max_delay_ms / 1000.0,
            batch_max_records=serving.capture_batch_max_records,
            segment_max_bytes=serving.capture_segment_max_bytes,
            segment_max_age_s=serving.capture_segment_max_age_s,
            preallocate_bytes=serving.capture_segment_preallocate_bytes,
            inline_sync_max_s=serving.capture_inline_sync_max_ms / 1000.0,
            inline_warmup_syncs=serving.capture_inline_warmup_syncs,
            inline_stall_s=serving.capture_inline_stall_ms / 1000.0,
            inline_cooldown_s=serving.capture_inline_cooldown_s,
            retry_s=serving.capture_retry_s,
        )


class _SyncHealth:
    """Whether fsyncs have been fast enough, for long enough, to let a lone request sync inline.

    The inline path blocks the event loop for one fsync: fine for a fraction of a millisecond, not for
    a stalling disk. So it opens only after `warmup` consecutive fsyncs within `max_s`. A slower fsync
    restarts the warm-up (virtual disks have an occasional slow one; a disk that is slow as a rule
    never completes a warm-up). One over `stall_s`, or a failed one, also closes the path for
    `cooldown_s`: a disk that starts stalling holds the loop for at most one fsync before every record
    goes through the writer thread again.
    """

    def __init__(self, config: CaptureConfig, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._max_s = config.inline_sync_max_s
        self._warmup = config.inline_warmup_syncs
        self._stall_s = config.inline_stall_s
        self._cooldown_s = config.inline_cooldown_s
        self._monotonic = monotonic
        self._fast_in_a_row = 0
        self._closed_until = 0.0

    def observe(self, seconds: float) -> None:
        if seconds <= self._max_s:
            self._fast_in_a_row += 1
            return
        self._fast_in_a_row = 0
        if seconds > self._stall_s:
            self._closed_until = self._monotonic() + self._cooldown_s

    def inline_allowed(self) -> bool:
        return (
            self._max_s > 0
            and self._fast_in_a_row >= self._warmup
            and self._monotonic() >= self._closed_until
        )


# --- writing ------------------------------------------------------------------------------------------

_STOP = object()
_TOP_UP = object()  # a lone request used up the preallocated room: zero-fill more off its path
_PendingItem = tuple[bytes, asyncio.AbstractEventLoop | None, asyncio.Future | None]


def _settle(futures: list[asyncio.Future], error_message: str | None) -> None:
    """Runs on the requests' event loop: wake every request of a committed group."""
    for future in futures:
        if future.done():  # its request already gave up (timeout) or was cancelled
            continue
        if error_message is None:
            future.set_result(None)
        else:
            future.set_exception(CaptureError(error_message))


def _wake(items: list[_PendingItem], error_message: str | None) -> None:
    """Settle the items' futures, one callback per event loop (one wake-up of each loop per group)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future]] = {}
    for _, loop, future in items:
        if loop is not None and future is not None:  # a submitted record has nobody waiting on it
            by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle, futures, error_message)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _segment_pid(open_path: Path) -> int | None:
    parts = open_path.name.split("-")
    return int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None


def _write_all_at(fd: int, data: bytes | memoryview, offset: int) -> int:
    """pwrite all of `data` at `offset` (a short write continues where it stopped); returns its length."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
    return len(data)


def seal_abandoned_segments(root: Path) -> list[Path]:
    """Seal `.open` segments left by dead processes, cut to their complete records. Returns the sealed paths."""
    sealed = []
    for open_path in sorted(root.glob(f"*{SEALED_SUFFIX}{OPEN_SUFFIX}")):
        pid = _segment_pid(open_path)
        if pid is None or _pid_alive(pid):
            continue
        data = open_path.read_bytes()
        with open_path.open("r+b") as handle:
            handle.truncate(len(complete_lines(data)))
            handle.flush()
            os.fsync(handle.fileno())
        target = sealed_name(open_path)
        os.rename(open_path, target)
        sealed.append(target)
    if sealed:
        fsync_directory(root)
        log.info("sealed %d capture segment(s) left by dead processes", len(sealed))
    return sealed


def _local_sealed_segments(root: Path) -> list[Path]:
    return sorted(root.glob(f"*{SEALED_SUFFIX}")) if root.is_dir() else []


def publish_sealed_segments(root: Path, location: StorageLocation) -> list[str]:
    """Upload every sealed local segment to `location`, verify it, then delete the local copy.

    Returns the names published. Raises CaptureError on the first segment that cannot be published
    (it stays local, nothing is lost). A segment another process publishes meanwhile is skipped.
    """
    published = []
    for path in _local_sealed_segments(root):
        try:
            location.put_file(path.name, path, immutable=True)
        except FileNotFoundError:
            continue  # published and removed by another process's publisher meanwhile
        except (StorageError, OSError) as exc:
            raise CaptureError(
                f"capture segment {path} could not be published to {location.url}: {exc}"
            ) from exc
        path.unlink(missing_ok=True)
        published.append(path.name)
    if published:
        fsync_directory(root)
    return published


class _SegmentPublisher:
    """A thread that publishes sealed segments off the writer thread (uploads must not delay fsyncs)."""

    def __init__(self, root: Path, location: StorageLocation) -> None:
        self._root, self._location = root, location
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="capture-publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._wake.set()  # segments sealed before this start (earlier runs, dead processes)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Publish what is sealed one last time, then stop."""
        self._stopping = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            # Read before publishing: a stop() during this pass comes with a last seal this pass may
            # have listed too early, so it earns one more pass.
            stopping = self._stopping
            try:
                publish_sealed_segments(self._root, self._location)
            except Exception as exc:  # kept locally; retried at the next seal or start
                log.error("%s", exc)
            if stopping:
                return


class CaptureWriter:
    """One writer thread appending capture records to rotating segments, fsync'ed in groups.

    `on_sync(seconds, inline)` hears of every record sync (for metrics; `inline`: synced by the
    request itself); `on_state(status)` of every change between WRITING and FAILING (called with the
    segment lock held, from the writer thread or a request's: keep it short). `sync_file` makes written bytes durable: `fdatasync` by default, which is enough because the
    segment's size changes only when it is zero-filled ahead or sealed (injectable so tests can
    simulate a failing disk); `clock` gives wall time for segment names and age. With `publish_to` (the `[storage] capture`
    location) other than `root` itself, sealed segments are moved there by a publisher thread.
    """

    def __init__(
        self,
        root: Path,
        config: CaptureConfig,
        *,
        sync_file: Callable[[int], None] | None = None,
        clock: Callable[[], float] = time.time,
        publish_to: StorageLocation | None = None,
        on_sync: Callable[[float, bool], None] | None = None,
        on_state: Callable[[CaptureStatus], None] | None = None,
    ) -> None:
        self._root = Path(root)
        self._on_sync = on_sync
        self._on_state = on_state
        self._config = config
        self._sync_file = os.fdatasync if sync_file is None else sync_file
        self._clock = clock
        remote = remote_location(publish_to, self._root)
        self._publisher = _SegmentPublisher(self._root, remote) if remote is not None else None
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # Held while the open segment is written, synced, rotated or sealed: by the writer thread, or
        # by a lone request syncing inline (see `append`).
        self._segment_lock = threading.Lock()
        self._sync_health = _SyncHealth(config)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stopped_because = "capture writer is not running"
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0  # bytes of records written (and synced, between commits)
        self._allocated = 0  # bytes of the open segment zero-filled and synced (0 without preallocation)
        self._top_up_requested = False
        self._opened_at = 0.0
        self._sequence = 0
        self._failure: str | None = None  # why the disk cannot be written (FAILING), else None
        self._state_since = clock()
        self._next_probe = 0.0  # time.monotonic() of the next probe while FAILING
        self._top_up_failed = False

    # -- the requests' side --

    def status(self) -> CaptureStatus:
        failure = self._failure
        return CaptureStatus(
            state=CaptureState.WRITING if failure is None else CaptureState.FAILING,
            since=self._state_since,
            error=failure,
            alive=self._thread is not None and self._thread.is_alive(),
        )

    def _refusal(self, failure: str) -> str:
        since = datetime.fromtimestamp(self._state_since, UTC).isoformat(timespec="seconds")
        return f"capture cannot write since {since} (retried every {self._config.retry_s:g} s): {failure}"

    def start(self) -> None:
        """Create the directory, seal dead writers' segments, start the writer thread."""
        if self._thread is not None:
            raise CaptureError("capture writer already started")
        self._root.mkdir(parents=True, exist_ok=True)
        seal_abandoned_segments(self._root)
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()
        if self._publisher is not None:
            self._publisher.start()

    async def append(self, payload: bytes, *, alone: bool = False) -> None:
        """Append complete JSON lines; return once they are durable. Raises CaptureError otherwise.

        `alone`: the caller is the only request in flight. Then, while fsyncs are fast (`_SyncHealth`)
        and the writer thread is idle, the lines are written and synced right here: nobody waits
        behind the event loop, and the two thread hand-offs cost about as much as the fsync itself.
        Otherwise the writer thread commits them with whatever else is pending, in one fsync.
        """
        if self._closed or self._thread is None:
            raise CaptureError(self._stopped_because)
        failure = self._failure
        if failure is not None:  # refused at once: a failing disk is probed by the writer thread alone
            raise CaptureError(self._refusal(failure))
        if (
            alone
            and self._sync_health.inline_allowed()
            and self._queue.empty()
            and self._segment_lock.acquire(blocking=False)
        ):
            try:
                # Re-checked under the lock: close() seals the last segment under it, after the flag.
                error_message = (
                    self._stopped_because if self._closed else self._commit_data(payload, inline=True)
                )
                top_up = error_message is None and self._room_is_low() and not self._top_up_requested
                self._top_up_requested |= top_up
            finally:
                self._segment_lock.release()
            if error_message is not None:
                raise CaptureError(error_message)
            if top_up:
                self._queue.put(_TOP_UP)
            return
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((payload, loop, future))
        await future

    def submit(self, payload: bytes) -> bool:
        """Queue complete JSON lines that nobody waits on (a rollout's shadow rows: no answer depends on
        them); they are written and synced with the next group. False when appends are refused now
        (closed, or the disk failing): the caller counts what it lost."""
        if self._closed or self._thread is None or self._failure is not None:
            return False
        self._queue.put((payload, None, None))
        return True

    def close(self) -> None:
        """Write everything pending, seal the open segment, stop the thread (and publish what is sealed)."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            if self._publisher is not None:
                self._publisher.stop()

    # -- the writer thread --

    def _run(self) -> None:
        try:
            self._serve_queue()
        except Exception as exc:  # a bug must not leave requests waiting on a thread that is gone
            log.exception("capture writer stopped")
            self._stopped_because = f"capture writer stopped: {exc}"
            self._closed = True
        finally:
            self._fail_leftovers()
            with self._segment_lock:
                self._seal_current_safely()

    def _serve_queue(self) -> None:
        idle_tick = min(1.0, max(self._config.segment_max_age_s, 0.01))
        stopping = False
        while not stopping:
            if self._failure is not None:
                with self._segment_lock:
                    self._probe_if_due()
            tick = idle_tick if self._failure is None else min(idle_tick, max(self._config.retry_s, 0.01))
            try:
                first = self._queue.get(timeout=tick)
            except queue.Empty:
                if self._failure is None:
                    with self._segment_lock:
                        self._rotate_if_due_safely()
                        self._top_up_safely()
                continue
            if first is _STOP:
                break
            if first is _TOP_UP:
                with self._segment_lock:
                    self._top_up_safely()
                continue
            batch, stopping = self._gather([first])
            self._commit(batch)

    def _gather(self, batch: list[_PendingItem]) -> tuple[list[_PendingItem], bool]:
        """Take what is pending (waiting up to fsync_max_delay_s for more); True when a stop was seen."""
        deadline = time.monotonic() + self._config.fsync_max_delay_s
        while len(batch) < self._config.batch_max_records:
            remaining = deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                return batch, True
            if item is not _TOP_UP:  # the commit below tops up anyway
                batch.append(item)
        return batch, False

    def _commit(self, batch: list[_PendingItem]) -> None:
        with self._segment_lock:
            failure = self._failure  # records queued before the disk failed are not tried on it
            if failure is not None:
                error_message: str | None = self._refusal(failure)
            else:
                error_message = self._commit_data(b"".join(item[0] for item in batch), inline=False)
        _wake(batch, error_message)
        # After the wake: the requests are not kept waiting for zeros. Only when room is low (checked
        # again under the lock): a lock taken for nothing could make a lone request's inline sync,
        # which never waits for the lock, hand its record to this thread instead.
        if error_message is None and self._room_is_low():
            with self._segment_lock:
                self._top_up_safely()

    def _commit_data(self, data: bytes, *, inline: bool) -> str | None:
        """Write and sync `data` (segment lock held): None once durable, else why not."""
        try:
            self._write_durably(data, inline)
        except OSError as exc:
            error_message = f"capture write failed ({self._path}): {exc}"
            self._sync_health.observe(float("inf"))  # a failing disk gets no inline writes either
            self._abandon_segment()
            self._enter_failing(error_message)
            return error_message
        return None

    def _enter_failing(self, error_message: str) -> None:
        """After a failed write (segment lock held): refuse appends, probe every retry_s, tell on_state."""
        self._next_probe = time.monotonic() + self._config.retry_s
        if self._failure is not None:
            self._failure = error_message
            return
        self._failure, self._state_since = error_message, self._clock()
        log.error("%s; capture refused until the disk takes writes again", error_message)
        if self._on_state is not None:
            self._on_state(self.status())

    def _probe_if_due(self) -> None:
        """While FAILING (segment lock held): open the next segment and zero-fill room in it, synced."""
        if time.monotonic() < self._next_probe:
            return
        self._next_probe = time.monotonic() + self._config.retry_s
        try:
            self._open_segment()
            if self._allocated < PROBE_BYTES:
                self._preallocate(PROBE_BYTES, step=PROBE_BYTES)
        except OSError as exc:
            self._discard_open_segment()
            self._failure = f"capture disk probe failed ({self._root}): {exc}"
            log.debug(self._failure)
            return
        failed_for = self._clock() - self._state_since
        self._failure, self._state_since = None, self._clock()
        log.warning("capture writes again (after %.1f s of failures)", failed_for)
        if self._on_state is not None:
            self._on_state(self.status())

    def _write_durably(self, data: bytes, inline: bool) -> None:
        self._rotate_if_due()
        if self._fd is None:
            self._open_segment()
        if self._size + len(data) > self._allocated:
            self._preallocate(self._size + len(data))
        _write_all_at(self._fd, data, self._size)
        started = time.monotonic()
        self._sync_file(self._fd)
        seconds = time.monotonic() - started
        self._sync_health.observe(seconds)
        self._size += len(data)
        if self._on_sync is not None:
            self._on_sync(seconds, inline)

    def _room_is_low(self) -> bool:
        """The open segment's zero-filled room is under half the preallocation step."""
        step = self._config.preallocate_bytes
        return step > 0 and self._fd is not None and self._allocated - self._size < step // 2

    def _preallocate(self, at_least: int, step: int | None = None) -> None:
        """Zero-fill the open segment from its allocated end to a `step` boundary past `at_least`, durably.

        Without preallocation the records simply extend the file (then `allocated` is left at 0 and
        this only runs when records are written: a no-op), unless a disk probe asks for a `step`.
        """
        step = self._config.preallocate_bytes if step is None else step
        if step <= 0:
            return
        target = -(-max(at_least, self._allocated + step) // step) * step
        zeros = memoryview(bytes(min(step, 1 << 20)))  # written in pieces of at most 1 MiB
        offset = self._allocated
        while offset < target:
            offset += _write_all_at(self._fd, zeros[: target - offset], offset)
        self._sync_file(self._fd)
        self._allocated = target

    def _top_up_safely(self) -> None:
        """Keep at least half a step of zero-filled room ahead (writer thread, segment lock held)."""
        self._top_up_requested = False
        if not self._room_is_low():
            return
        try:
            self._preallocate(self._allocated + 1)
        except OSError as exc:  # the next record extends the file itself, or fails and is refused
            if not self._top_up_failed:  # said once, not at every idle tick of a full disk
                log.error("capture segment %s could not be preallocated: %s", self._path, exc)
            self._top_up_failed = True
        else:
            self._top_up_failed = False

    def _rotate_if_due(self) -> None:
        if self._fd is None:
            return
        too_big = self._size >= self._config.segment_max_bytes
        too_old = self._clock() - self._opened_at >= self._config.segment_max_age_s
        if too_big or too_old:
            self._seal_current()

    def _rotate_if_due_safely(self) -> None:
        try:
            self._rotate_if_due()
        except OSError as exc:
            log.error("capture segment rotation failed (%s): %s", self._path, exc)
            self._abandon_segment()

    def _open_segment(self) -> None:
        now = self._clock()
        stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%S%fZ")
        self._sequence += 1
        path = self._root / f"{stamp}-{os.getpid()}-{self._sequence:06d}{SEALED_SUFFIX}{OPEN_SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._path, self._size, self._allocated, self._opened_at = path, 0, 0, now
        self._preallocate(1)
        fsync_directory(self._root)  # the new name itself must survive a crash

    def _seal_current(self) -> None:
        if self._fd is None or self._path is None:
            return
        fd, path, size, preallocated = self._fd, self._path, self._size, self._allocated > 0
        self._fd, self._path = None, None
        try:
            if preallocated:  # a sealed segment holds its records only
                os.ftruncate(fd, size)
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(path, sealed_name(path))
        fsync_directory(self._root)
        if self._publisher is not None:
            self._publisher.wake()

    def _seal_current_safely(self) -> None:
        try:
            self._seal_current()
        except OSError as exc:
            log.error("capture segment could not be sealed: %s", exc)

    def _abandon_segment(self) -> None:
        """After a failed write: cut the segment back to its last durable record, seal it, move on (a
        segment with no record is removed: a failing disk must not fill the directory with empty files)."""
        if self._fd is None:
            return
        if self._size == 0:
            self._discard_open_segment()
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as exc:
            log.error("capture segment %s could not be cut back: %s", self._path, exc)
        try:
            self._seal_current()
        except OSError as exc:
            log.error("capture segment %s could not be sealed: %s", self._path, exc)
            self._fd, self._path = None, None

    def _discard_open_segment(self) -> None:
        """Close and remove the open segment, which holds no record (best effort: the disk is failing)."""
        fd, path = self._fd, self._path
        self._fd, self._path = None, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
                fsync_directory(self._root)

    def _fail_leftovers(self) -> None:
        leftovers = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP and item is not _TOP_UP:
                leftovers.append(item)
        _wake(leftovers, "capture writer closed")
