"""The capture writer: group-committed appends, rotation, crash recovery, write failures (the reader's
own cases are in mlplatform_tests/core/monitoring/test_capture.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import threading
import time
from pathlib import Path

import polars as pl
import pytest

from mlplatform.core.monitoring.capture import (
    CAPTURE_COLUMNS,
    CaptureError,
    list_segments,
    read_capture,
)
from mlplatform.serving.capture import (
    CaptureConfig,
    CaptureState,
    CaptureStatus,
    CaptureWriter,
    seal_abandoned_segments,
)
from mlplatform_tests.core.monitoring.test_capture import rows

CONFIG = CaptureConfig(
    fsync_max_delay_s=0.0,
    batch_max_records=1000,
    segment_max_bytes=1 << 20,
    segment_max_age_s=3600.0,
    retry_s=0.02,
)
PREALLOCATED = dataclasses.replace(CONFIG, preallocate_bytes=4096)


@pytest.fixture(params=[CONFIG, PREALLOCATED], ids=["appended", "preallocated"])
def config(request: pytest.FixtureRequest) -> CaptureConfig:
    """Both ways of laying out an open segment: plain appends, and records over zero-filled room."""
    return request.param


async def append_all(writer: CaptureWriter, payloads: list[bytes]) -> None:
    await asyncio.gather(*(writer.append(payload) for payload in payloads))


def wait_writing(writer: CaptureWriter, timeout_s: float = 10.0) -> None:
    """Until the writer's probe found the disk writable again (it refuses appends until then)."""
    deadline = time.monotonic() + timeout_s
    while writer.status().state is not CaptureState.WRITING:
        assert time.monotonic() < deadline, f"capture still failing: {writer.status()}"
        time.sleep(0.01)


def test_appended_rows_are_readable_with_polars(tmp_path: Path, config: CaptureConfig) -> None:
    writer = CaptureWriter(tmp_path, config)
    writer.start()
    asyncio.run(append_all(writer, [rows("r1", count=2), rows("r2")]))
    # Readable while the segment is still open (what a crash would leave) ...
    frame = read_capture(tmp_path)
    labelled = CAPTURE_COLUMNS.index("label") + 1
    probabilities = ["p_negative", "p_neutral", "p_positive"]
    assert frame.columns == [*CAPTURE_COLUMNS[:labelled], *probabilities, *CAPTURE_COLUMNS[labelled:]]
    assert sorted(frame["request_id"].to_list()) == ["r1", "r1", "r2"]
    writer.close()
    # ... and after sealing, from exactly one sealed segment.
    assert [path.suffix for path in tmp_path.iterdir()] == [".jsonl"]
    frame = read_capture(tmp_path).sort("request_id", "row")
    assert frame["row"].to_list() == [0, 1, 0]
    assert frame["time"].dtype == pl.Datetime("us", "UTC")
    assert frame["time"][0].timestamp() == pytest.approx(1_700_000_000.25)
    assert frame["p_positive"].to_list() == pytest.approx([0.7, 0.7, 0.7])
    assert frame["review_id"].null_count() == 3


def test_many_concurrent_appends_share_fsyncs(tmp_path: Path, config: CaptureConfig) -> None:
    fsyncs = []

    def counting_fsync(fd: int) -> None:
        fsyncs.append(fd)
        os.fsync(fd)

    writer = CaptureWriter(tmp_path, config, sync_file=counting_fsync)
    writer.start()
    asyncio.run(append_all(writer, [rows(f"r{i}") for i in range(200)]))
    writer.close()
    assert read_capture(tmp_path)["request_id"].n_unique() == 200
    assert len(fsyncs) < 200  # group commit: one fsync covers every record pending at the time


def test_dead_writers_segment_is_cut_and_sealed(tmp_path: Path) -> None:
    dead_pid = 999_999_999  # above any real pid_max
    torn = tmp_path / f"20240101T000000000000Z-{dead_pid}-000001.jsonl.open"
    torn.write_bytes(rows("whole") + b'{"request_id": "half')
    live = tmp_path / f"20240101T000000000000Z-{os.getpid()}-000001.jsonl.open"
    live.write_bytes(rows("live"))
    sealed = seal_abandoned_segments(tmp_path)
    assert sealed == [tmp_path / f"20240101T000000000000Z-{dead_pid}-000001.jsonl"]
    assert sealed[0].read_bytes() == rows("whole")
    assert live.exists()  # a live writer's segment is left alone


def test_dead_writers_preallocated_segment_is_cut_to_its_records(tmp_path: Path) -> None:
    torn = tmp_path / "20240101T000000000000Z-999999999-000001.jsonl.open"
    torn.write_bytes(rows("whole") + rows("torn")[:40] + bytes(8192))
    sealed = seal_abandoned_segments(tmp_path)
    assert [path.read_bytes() for path in sealed] == [rows("whole")]


def test_an_open_preallocated_segment_is_zero_filled_ahead_and_listed_by_its_records(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path, PREALLOCATED)
    writer.start()
    sizes = []
    for request_id in ["r1", "r2"]:
        asyncio.run(writer.append(rows(request_id)))
        sizes.append(list_segments(tmp_path)[0][1])
    (open_segment,) = tmp_path.glob("*.open")
    written = len(rows("r1") + rows("r2"))
    data = open_segment.read_bytes()
    assert len(data) % PREALLOCATED.preallocate_bytes == 0 and len(data) - written >= 4096 // 2
    assert data[written:] == bytes(len(data) - written)
    # What monitoring fingerprints grows with each record, though the file's size does not.
    assert sizes == [len(rows("r1")), written]
    writer.close()
    assert [path.read_bytes() for path in tmp_path.glob("*.jsonl")] == [rows("r1") + rows("r2")]


def test_lone_requests_leave_the_zero_filling_to_the_writer_thread(tmp_path: Path) -> None:
    syncs: list[tuple[str, int]] = []  # (thread, file size at the sync): a size change is a zero fill

    def recording_fsync(fd: int) -> None:
        syncs.append((threading.current_thread().name, os.fstat(fd).st_size))
        os.fsync(fd)

    config = dataclasses.replace(INLINE, preallocate_bytes=4096)
    writer = CaptureWriter(tmp_path, config, sync_file=recording_fsync)
    writer.start()
    request_ids = [f"r{i}" for i in range(200)]  # about 40 kB: several steps of room
    asyncio.run(append_alone(writer, request_ids))
    writer.close()
    assert read_capture(tmp_path)["request_id"].to_list() == request_ids
    caller = threading.current_thread().name
    assert any(thread == caller for thread, _ in syncs), "no record was synced inline"
    fills = [
        (thread, size)
        for (thread, size), (_, before) in zip(syncs[1:], syncs, strict=False)
        if size != before
    ]
    assert len(fills) >= 5
    assert {thread for thread, _ in fills} == {"capture-writer"}


def test_segments_rotate_by_size_with_atomic_rename(tmp_path: Path, config: CaptureConfig) -> None:
    one_record = len(rows("r0"))
    config = dataclasses.replace(config, batch_max_records=1, segment_max_bytes=2 * one_record)
    writer = CaptureWriter(tmp_path, config)
    writer.start()

    async def one_by_one() -> None:
        for i in range(5):
            await writer.append(rows(f"r{i}"))

    asyncio.run(one_by_one())
    sealed_before_close = sorted(path.name for path in tmp_path.glob("*.jsonl"))
    writer.close()
    assert len(sealed_before_close) == 2  # 2 + 2 records sealed, the fifth in the open segment
    assert len(list(tmp_path.glob("*.open"))) == 0
    assert len(list(tmp_path.glob("*.jsonl"))) == 3
    assert read_capture(tmp_path)["request_id"].to_list() == [f"r{i}" for i in range(5)]
    # Sealed segments hold their records only: no zero-filled room is left behind.
    assert [path.stat().st_size for path in sorted(tmp_path.glob("*.jsonl"))] == [
        2 * one_record,
        2 * one_record,
        one_record,
    ]


def test_segments_rotate_by_age(tmp_path: Path, config: CaptureConfig) -> None:
    now = [1_700_000_000.0]
    config = dataclasses.replace(config, segment_max_age_s=0.05)
    writer = CaptureWriter(tmp_path, config, clock=lambda: now[0])
    writer.start()
    asyncio.run(writer.append(rows("early")))
    now[0] += 1.0
    deadline = time.monotonic() + 5
    while not list(tmp_path.glob("*.jsonl")):  # the idle writer notices the age and seals, no new record
        assert time.monotonic() < deadline, "the old segment was not sealed"
        time.sleep(0.01)
    asyncio.run(writer.append(rows("late")))
    writer.close()
    assert len(list(tmp_path.glob("*.jsonl"))) == 2
    assert read_capture(tmp_path)["request_id"].to_list() == ["early", "late"]


def test_failed_fsync_fails_the_append_and_keeps_no_partial_record(
    tmp_path: Path, config: CaptureConfig
) -> None:
    failing = [False]

    def flaky_fsync(fd: int) -> None:
        if failing[0]:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    writer = CaptureWriter(tmp_path, config, sync_file=flaky_fsync)
    writer.start()
    asyncio.run(writer.append(rows("before")))
    failing[0] = True
    with pytest.raises(CaptureError, match="Input/output error"):
        asyncio.run(writer.append(rows("lost")))
    failing[0] = False
    wait_writing(writer)
    asyncio.run(writer.append(rows("after")))
    writer.close()
    # The failed record was cut back out; the writer moved on to a fresh segment.
    assert read_capture(tmp_path)["request_id"].to_list() == ["before", "after"]
    sealed = sorted(tmp_path.glob("*.jsonl"))
    assert [path.read_bytes() for path in sealed] == [rows("before"), rows("after")]


def test_append_after_close_is_refused(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path, CONFIG)
    writer.start()
    writer.close()
    with pytest.raises(CaptureError, match="not running"):
        asyncio.run(writer.append(rows("late")))


# -- a lone request syncing inline ------------------------------------------------------------------

INLINE = dataclasses.replace(
    CONFIG, inline_sync_max_s=0.2, inline_warmup_syncs=3, inline_stall_s=1.0, inline_cooldown_s=3600.0
)


def thread_recording_fsync(threads: list[str], delay_s: float = 0.0):
    def fsync(fd: int) -> None:
        threads.append(threading.current_thread().name)
        time.sleep(delay_s)
        os.fsync(fd)

    return fsync


async def append_alone(writer: CaptureWriter, request_ids: list[str]) -> None:
    for request_id in request_ids:
        await writer.append(rows(request_id), alone=True)


def test_a_lone_request_syncs_inline_once_fsyncs_proved_fast(tmp_path: Path) -> None:
    threads: list[str] = []
    writer = CaptureWriter(tmp_path, INLINE, sync_file=thread_recording_fsync(threads))
    writer.start()
    asyncio.run(append_alone(writer, [f"r{i}" for i in range(6)]))
    writer.close()
    # The warm-up goes through the writer thread; then the caller syncs its own record.
    assert threads[:3] == ["capture-writer"] * 3
    assert threads[3:] == [threading.current_thread().name] * 3
    assert read_capture(tmp_path)["request_id"].to_list() == [f"r{i}" for i in range(6)]


def test_a_slow_disk_never_gets_the_inline_path(tmp_path: Path) -> None:
    threads: list[str] = []
    writer = CaptureWriter(tmp_path, INLINE, sync_file=thread_recording_fsync(threads, delay_s=0.25))
    writer.start()
    asyncio.run(append_alone(writer, [f"r{i}" for i in range(5)]))
    writer.close()
    assert threads == ["capture-writer"] * 5


@pytest.mark.parametrize(
    ("slow_s", "after_it"),
    [
        # A stall (over inline_stall_s) closes the inline path for the cooldown: the thread from then on.
        (1.2, ["capture-writer"] * 5),
        # A slow fsync short of a stall only restarts the warm-up: 3 through the thread, then inline.
        (0.4, ["capture-writer"] * 3 + ["caller"] * 2),
    ],
    ids=["stall", "slow"],
)
def test_a_slow_inline_fsync_sends_records_back_through_the_writer_thread(
    tmp_path: Path, slow_s: float, after_it: list[str]
) -> None:
    threads: list[str] = []
    delays = iter([0.0, 0.0, 0.0, slow_s])  # warm-up, then one slow fsync on the inline path

    def fsync(fd: int) -> None:
        threads.append(threading.current_thread().name)
        time.sleep(next(delays, 0.0))
        os.fsync(fd)

    writer = CaptureWriter(tmp_path, INLINE, sync_file=fsync)
    writer.start()
    asyncio.run(append_alone(writer, [f"r{i}" for i in range(9)]))
    writer.close()
    caller = threading.current_thread().name
    expected = ["capture-writer"] * 3 + ["caller"] + after_it
    assert threads == [caller if name == "caller" else name for name in expected]
    assert read_capture(tmp_path)["request_id"].n_unique() == 9


def test_requests_in_company_are_committed_by_the_writer_thread(tmp_path: Path) -> None:
    threads: list[str] = []
    writer = CaptureWriter(tmp_path, INLINE, sync_file=thread_recording_fsync(threads))
    writer.start()
    asyncio.run(append_alone(writer, ["w1", "w2", "w3"]))
    asyncio.run(append_all(writer, [rows(f"r{i}") for i in range(20)]))  # alone=False
    writer.close()
    assert set(threads) == {"capture-writer"}
    assert read_capture(tmp_path)["request_id"].n_unique() == 23


def test_an_inline_write_failure_is_reported_and_nothing_partial_kept(tmp_path: Path) -> None:
    failing = [False]
    threads: list[str] = []

    def flaky_fsync(fd: int) -> None:
        threads.append(threading.current_thread().name)
        if failing[0]:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)

    writer = CaptureWriter(tmp_path, INLINE, sync_file=flaky_fsync)
    writer.start()
    asyncio.run(append_alone(writer, ["w1", "w2", "w3", "inline-ok"]))
    failing[0] = True
    with pytest.raises(CaptureError, match="Input/output error"):
        asyncio.run(writer.append(rows("lost"), alone=True))
    failing[0] = False
    wait_writing(writer)
    asyncio.run(writer.append(rows("after"), alone=True))
    writer.close()
    assert read_capture(tmp_path)["request_id"].to_list() == ["w1", "w2", "w3", "inline-ok", "after"]
    caller = threading.current_thread().name
    # The failure happened inline; the failed fsync closed the inline path, so the disk's probes and
    # "after" took the thread.
    assert threads[:5] == ["capture-writer"] * 3 + [caller, caller]
    assert set(threads[5:]) == {"capture-writer"}


def test_a_full_disk_makes_no_storm_of_segments_and_the_writer_recovers_when_space_returns(
    tmp_path: Path, config: CaptureConfig
) -> None:
    full = [False]
    states: list[CaptureStatus] = []

    def disk(fd: int) -> None:
        if full[0]:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync(fd)

    writer = CaptureWriter(tmp_path, config, sync_file=disk, on_state=states.append)
    writer.start()
    asyncio.run(writer.append(rows("before")))
    full[0] = True
    refused = 0
    for index in range(300):
        with contextlib.suppress(CaptureError):
            asyncio.run(writer.append(rows(f"refused-{index}")))
            continue
        refused += 1
    status = writer.status()
    assert refused == 300
    assert status.state is CaptureState.FAILING and "No space left on device" in (status.error or "")
    # One segment: the one holding "before", cut back and sealed; no empty segment per refused request
    # (at most the one file a probe of the disk has open for a moment).
    assert len(list(tmp_path.glob("*.jsonl"))) == 1
    assert len(list(tmp_path.glob("*.open"))) <= 1
    full[0] = False
    wait_writing(writer)
    asyncio.run(writer.append(rows("after")))
    writer.close()
    assert read_capture(tmp_path)["request_id"].to_list() == ["before", "after"]
    assert all(path.stat().st_size > 0 for path in tmp_path.iterdir())
    assert [state.state for state in states] == [CaptureState.FAILING, CaptureState.WRITING]


def test_a_failing_disk_is_probed_every_retry_s_not_per_request(tmp_path: Path) -> None:
    syncs: list[float] = []

    def full_disk(fd: int) -> None:
        syncs.append(time.monotonic())
        raise OSError(errno.ENOSPC, "No space left on device")

    writer = CaptureWriter(tmp_path, dataclasses.replace(CONFIG, retry_s=3600.0), sync_file=full_disk)
    writer.start()
    for index in range(50):
        with contextlib.suppress(CaptureError):
            asyncio.run(writer.append(rows(f"r{index}")))
    writer.close()
    assert len(syncs) == 1  # the first write's sync; every later append was refused without a try
    assert list(tmp_path.iterdir()) == []
