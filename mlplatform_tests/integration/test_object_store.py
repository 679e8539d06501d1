"""The data stage with its lake and artifacts on a real S3 server (moto_server, started by the test)."""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.runner import run_pending
from mlplatform_tests.integration.processes import free_port, start, stop, wait_until

s3fs = pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed: pip install -e '.[s3]'")
pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(120)]

BUCKET = "mlplatform-test"


@pytest.fixture
def s3_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on a free port; the AWS environment points every S3 client at it."""
    moto_server = Path(sys.executable).with_name("moto_server")
    if not moto_server.exists():
        pytest.skip(f"moto_server not found next to {sys.executable} (pip install 'moto[server]')")
    port = free_port()
    process = start([str(moto_server), "-H", "127.0.0.1", "-p", str(port)], os.environ, tmp_path / "moto.log")
    endpoint = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"moto_server exited early:\n{(tmp_path / 'moto.log').read_text()}")
        with urllib.request.urlopen(f"{endpoint}/", timeout=1) as response:
            return response.status == 200

    try:
        wait_until(answers, 30, "moto_server to answer", every_s=0.1)
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        s3fs.S3FileSystem.clear_instance_cache()  # no client made for another endpoint is reused
        yield endpoint
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        stop(process)


def _home_on_s3(tmp_path: Path) -> PlatformHome:
    home = PlatformHome(tmp_path / "home").ensure()
    home.settings_file.write_text(
        f'[storage]\nlake = "s3://{BUCKET}/lake"\nartifacts = "s3://{BUCKET}/artifacts"\n', encoding="utf-8"
    )
    return home


def test_data_stage_with_lake_and_artifacts_on_s3(s3_endpoint: str, tmp_path: Path) -> None:
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    home = _home_on_s3(tmp_path)
    drops = write_demo_drops(tmp_path / "drops", n_drops=2, rows_per_drop=300, seed=5)
    hashes = sorted(result.hash for result in Lake(home).land(drops))

    report = run_pending(home, say=lambda _: None, groups=("ingest", "features"))
    assert report.exit_code == 0, report.blocked
    assert sorted(report.accepted) == hashes

    # accepted drops are in the bucket, byte for byte
    for digest in hashes:
        raw = fs.cat_file(f"{BUCKET}/lake/raw/{digest}.csv")
        assert hashlib.sha256(raw).hexdigest() == digest
        assert fs.exists(f"{BUCKET}/lake/raw/{digest}.json")

    # every version is in the bucket, loads back, and its bytes have its hash
    store = ArtifactStore.from_settings(home, Settings.load(home.settings_file).storage)
    assert store.assets() == ["raw_reviews", "review_splits", "reviews"]
    assert sorted(store.partitions("raw_reviews")) == hashes
    for asset in ("raw_reviews", "reviews", "review_splits"):
        for artifact in store.versions(asset, "*"):
            assert artifact.path == f"s3://{BUCKET}/artifacts/{artifact.relative_path}"
            stored = fs.cat_file(f"{BUCKET}/artifacts/{artifact.relative_path}")
            assert hashlib.sha256(stored).hexdigest() == artifact.version
    splits = store.load(store.latest("review_splits"))
    assert set(splits["split"].unique()) == {"train", "validation", "test"}
    reviews = store.load(store.latest("reviews"))
    assert 500 < reviews.height <= 600  # 2 drops of 300 rows, less rows without text or duplicates
    assert sorted(splits["review_id"].to_list()) == sorted(reviews["review_id"].to_list())
    assert fs.find(f"{BUCKET}/artifacts/reviews/_versions")  # one record object per put, no index file
    assert not any(path.is_file() for path in home.artifacts.rglob("*"))  # nothing written locally

    # the next run finds nothing new (reads versions back from S3)
    again = run_pending(home, say=lambda _: None, groups=("ingest", "features"))
    assert again.exit_code == 0 and again.materialized == []
