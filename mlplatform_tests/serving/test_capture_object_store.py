"""Capture published to a real S3 server (moto_server, started by `s3_endpoint`): listing the segments
costs one request, not one per segment (monitoring lists them on every run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.core.monitoring.capture import list_segments, read_capture
from mlplatform.serving.capture import publish_sealed_segments
from mlplatform_tests.core.monitoring.test_capture import rows
from mlplatform_tests.core.platform.test_storage_object_store import RequestLog, is_listing, s3_location
from mlplatform_tests.integration.test_object_store import s3_endpoint  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(60)]


@pytest.mark.usefixtures("s3_endpoint")
def test_list_segments_lists_the_bucket_once(tmp_path: Path) -> None:
    local, location, requests = tmp_path / "capture", s3_location("capture"), RequestLog(tmp_path)
    local.mkdir()
    names = [f"20240101T00000{second}000000Z-1-000001.jsonl" for second in range(5)]
    for second, name in enumerate(names):
        (local / name).write_bytes(rows(f"r{second}", count=second + 1))
    sizes = {name: (local / name).stat().st_size for name in names}
    assert publish_sealed_segments(local, location) == names
    open_segment = local / "20240101T000009000000Z-1-000001.jsonl.open"
    open_segment.write_bytes(rows("still-open"))

    requests.mark()
    listed = list_segments(local, location)
    made = requests.since_mark()

    assert listed == [*sizes.items(), (open_segment.name, open_segment.stat().st_size)]
    assert len(made) == 1 and is_listing(made[0]), made  # no HEAD per published segment
    assert read_capture(local, location)["request_id"].n_unique() == 6
