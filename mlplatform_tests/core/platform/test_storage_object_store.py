"""Storage locations on a real S3 server (moto_server, started by `s3_endpoint`): what each call costs in
requests, counted in the server's request log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlplatform.core.platform.storage import StorageLocation, open_location
from mlplatform_tests.integration.test_object_store import BUCKET, s3_endpoint  # noqa: F401 (a fixture)

s3fs = pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed: pip install -e '.[s3]'")
pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(60)]

_REQUEST_LINE = re.compile(r'"(?:\x1b\[[0-9;]*m)?([A-Z]+) (\S+) HTTP/')


class RequestLog:
    """The requests moto_server logged (to `<tmp_path>/moto.log`, see `s3_endpoint`) since `mark()`."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "moto.log"
        self._seen = 0

    def _requests(self) -> list[tuple[str, str]]:
        lines = self.path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [match.groups() for line in lines if (match := _REQUEST_LINE.search(line))]

    def mark(self) -> None:
        self._seen = len(self._requests())

    def since_mark(self) -> list[tuple[str, str]]:
        """(method, path) of every request since `mark()`, in order."""
        return self._requests()[self._seen :]


def s3_location(prefix: str) -> StorageLocation:
    """A location in a fresh test bucket (the `s3_endpoint` fixture must be active)."""
    s3fs.S3FileSystem().mkdir(BUCKET)
    return open_location(f"s3://{BUCKET}/{prefix}")


def is_listing(request: tuple[str, str]) -> bool:
    method, path = request
    return method == "GET" and "list-type=2" in path


@pytest.mark.usefixtures("s3_endpoint")
def test_list_sizes_is_one_listing_request_however_many_objects(tmp_path: Path) -> None:
    location, requests = s3_location("objects"), RequestLog(tmp_path)
    for index in range(6):
        location.put_bytes(f"seg-{index}.jsonl", b"x" * (index + 1))
    location.put_bytes("deeper/seg.jsonl", b"yy")

    requests.mark()
    shallow = location.list_sizes(recursive=False)
    assert shallow == {f"seg-{index}.jsonl": index + 1 for index in range(6)}
    assert location.list_sizes() == {**shallow, "deeper/seg.jsonl": 2}
    made = requests.since_mark()
    assert len(made) == 2 and all(map(is_listing, made)), made  # no HEAD per object
