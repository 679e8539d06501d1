"""Capture on a storage location: sealed segments published (verified, then removed locally), read back."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from mlplatform.core.monitoring.capture import CaptureError, list_segments, read_capture
from mlplatform.core.platform.storage import LocalLocation, StorageLocation, open_location
from mlplatform.serving.capture import CaptureConfig, CaptureWriter, publish_sealed_segments
from mlplatform_tests.core.monitoring.test_capture import rows
from mlplatform_tests.serving.test_capture import append_all

SMALL_SEGMENTS = CaptureConfig(
    fsync_max_delay_s=0.0, batch_max_records=1, segment_max_bytes=1, segment_max_age_s=3600.0
)


def _memory_location() -> StorageLocation:
    return open_location(f"memory://mlp-capture-{uuid.uuid4().hex}/capture")


class BrokenUpload(LocalLocation):
    """A location whose uploads fail (the object store is down)."""

    def _upload(self, key: str, source: Path, *, read_only: bool) -> None:
        raise OSError("connection refused")


class CorruptingUpload(LocalLocation):
    """A location that stores something other than what was sent."""

    def _upload(self, key: str, source: Path, *, read_only: bool) -> None:
        self.put_bytes(key, b"garbled\n")


class SlowUpload(LocalLocation):
    """A location whose uploads take a while (a busy object store)."""

    def _upload(self, key: str, source: Path, *, read_only: bool) -> None:
        time.sleep(0.3)
        super()._upload(key, source, read_only=read_only)


def test_the_segment_sealed_at_close_is_published_even_while_an_upload_is_running(tmp_path: Path) -> None:
    local, location = tmp_path / "capture", SlowUpload(tmp_path / "bucket")
    writer = CaptureWriter(local, SMALL_SEGMENTS, publish_to=location)
    writer.start()
    asyncio.run(append_all(writer, [rows("r1")]))
    asyncio.run(append_all(writer, [rows("r2")]))  # seals r1's segment: its upload starts
    time.sleep(0.05)
    writer.close()  # seals r2's segment while r1's is still uploading
    assert list(local.iterdir()) == []
    assert read_capture(local, location)["request_id"].to_list() == ["r1", "r2"]


def test_sealed_segments_move_to_the_location_and_read_back(tmp_path: Path) -> None:
    local, location = tmp_path / "capture", _memory_location()
    writer = CaptureWriter(local, SMALL_SEGMENTS, publish_to=location)
    writer.start()
    for request in ("r1", "r2", "r3"):  # one-byte segments: every request seals the previous segment
        asyncio.run(append_all(writer, [rows(request, count=2)]))
    writer.close()
    published = location.list()
    assert len(published) == 3 and all(name.endswith(".jsonl") for name in published)
    assert list(local.iterdir()) == []  # removed locally only once verified in the location
    frame = read_capture(local, location)
    assert frame["request_id"].to_list() == ["r1", "r1", "r2", "r2", "r3", "r3"]
    assert [name for name, _ in list_segments(local, location)] == published
    assert read_capture(local).height == 0  # without the location, nothing is local any more


def test_failed_upload_keeps_the_segment_local_and_a_later_publish_moves_it(tmp_path: Path) -> None:
    local = tmp_path / "capture"
    writer = CaptureWriter(local, SMALL_SEGMENTS, publish_to=BrokenUpload(tmp_path / "down"))
    writer.start()
    asyncio.run(append_all(writer, [rows("r1")]))
    writer.close()
    (kept,) = local.iterdir()
    assert kept.name.endswith(".jsonl")
    assert read_capture(local)["request_id"].to_list() == ["r1"]
    with pytest.raises(CaptureError, match=r"could not be published.*connection refused"):
        publish_sealed_segments(local, BrokenUpload(tmp_path / "down"))
    assert kept.exists()

    location = _memory_location()
    assert publish_sealed_segments(local, location) == [kept.name]
    assert not kept.exists()
    assert read_capture(local, location)["request_id"].to_list() == ["r1"]


def test_a_corrupt_upload_is_detected_and_the_local_copy_kept(tmp_path: Path) -> None:
    local = tmp_path / "capture"
    local.mkdir()
    (local / "20240101T000000000000Z-1-000001.jsonl").write_bytes(rows("r1"))
    with pytest.raises(CaptureError, match="corrupt"):
        publish_sealed_segments(local, CorruptingUpload(tmp_path / "bad"))
    assert (local / "20240101T000000000000Z-1-000001.jsonl").read_bytes() == rows("r1")


def test_segments_sealed_before_start_are_published_on_start(tmp_path: Path) -> None:
    local, location = tmp_path / "capture", _memory_location()
    local.mkdir()
    (local / "20240101T000000000000Z-1-000001.jsonl").write_bytes(rows("old"))
    (local / "20240101T000001000000Z-999999999-000001.jsonl.open").write_bytes(rows("dead") + b'{"torn')
    writer = CaptureWriter(local, SMALL_SEGMENTS, publish_to=location)
    writer.start()
    writer.close()
    assert location.list() == [
        "20240101T000000000000Z-1-000001.jsonl",
        "20240101T000001000000Z-999999999-000001.jsonl",
    ]
    assert read_capture(local, location)["request_id"].to_list() == ["old", "dead"]


def test_a_segment_both_local_and_published_is_read_once(tmp_path: Path) -> None:
    local, location = tmp_path / "capture", _memory_location()
    local.mkdir()
    name = "20240101T000000000000Z-1-000001.jsonl"
    (local / name).write_bytes(rows("r1"))
    location.put_bytes(name, rows("r1"))  # uploaded, local copy not yet removed
    location.put_bytes("20230101T000000000000Z-1-000001.jsonl", rows("r0"))
    assert read_capture(local, location)["request_id"].to_list() == ["r0", "r1"]


def test_the_home_directory_itself_is_not_published_to(tmp_path: Path) -> None:
    writer = CaptureWriter(tmp_path, SMALL_SEGMENTS, publish_to=LocalLocation(tmp_path))
    writer.start()
    asyncio.run(append_all(writer, [rows("r1")]))
    writer.close()
    assert [path.suffix for path in tmp_path.iterdir()] == [".jsonl"]
    assert read_capture(tmp_path, LocalLocation(tmp_path))["request_id"].to_list() == ["r1"]
