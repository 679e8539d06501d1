"""The lake on a storage location: decided drops (raw and quarantine) published there, verified."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from mlplatform.core.data.lake import Lake, LakeError
from mlplatform.core.platform.fsio import sha256_bytes
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.platform.storage import LocalLocation, StorageLocation, open_location

CSV_GOOD = b"Clothing ID,Age,Rating\n1,30,5\n"
CSV_BAD = b"Clothing ID,Age,Rating\n2,x,1\n"


class DownLocation(LocalLocation):
    """An object store that refuses uploads."""

    def _upload(self, key: str, source: Path, *, read_only: bool) -> None:
        raise OSError("503 Slow Down")


def _memory_location() -> StorageLocation:
    return open_location(f"memory://mlp-lake-{uuid.uuid4().hex}/lake")


def _land(lake: Lake, tmp_path: Path, name: str, data: bytes) -> str:
    source = tmp_path / "incoming" / name
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(data)
    (result,) = lake.land([source])
    return result.hash


def test_accepted_and_quarantined_drops_are_published(home: PlatformHome, tmp_path: Path) -> None:
    location = _memory_location()
    lake = Lake(home, location=location)
    good = _land(lake, tmp_path, "good.csv", CSV_GOOD)
    bad = _land(lake, tmp_path, "bad.csv", CSV_BAD)
    lake.accept(good)
    lake.quarantine(bad, "schema", "Age is not a number")

    assert location.get_bytes(f"raw/{good}.csv") == CSV_GOOD
    assert sha256_bytes(location.get_bytes(f"raw/{good}.csv")) == good
    assert json.loads(location.get_bytes(f"raw/{good}.json"))["names"] == ["good.csv"]
    assert location.get_bytes(f"quarantine/{bad}.csv") == CSV_BAD
    reason = json.loads(location.get_bytes(f"quarantine/{bad}.reason.json"))
    assert (reason["check"], reason["reason"]) == ("schema", "Age is not a number")
    # the local lake keeps working as before (the sensor and checkout read it)
    assert lake.drop(good).state == "accepted" and lake.drop(good).path.read_bytes() == CSV_GOOD
    assert lake.drop(bad).state == "quarantined"


def test_a_failed_publish_leaves_the_drop_waiting_and_a_retry_publishes(
    home: PlatformHome, tmp_path: Path
) -> None:
    digest = _land(Lake(home), tmp_path, "good.csv", CSV_GOOD)
    with pytest.raises(LakeError, match=r"cannot publish to .*503 Slow Down"):
        Lake(home, location=DownLocation(tmp_path / "down")).accept(digest)
    lake = Lake(home)
    assert [drop.hash for drop in lake.pending()] == [digest]  # still in landing, nothing lost
    assert lake.drop(digest).state == "landed"

    location = _memory_location()
    assert Lake(home, location=location).accept(digest).state == "accepted"
    assert location.get_bytes(f"raw/{digest}.csv") == CSV_GOOD


def test_the_home_lake_is_not_published_to_itself(home: PlatformHome, tmp_path: Path) -> None:
    assert Lake(home, location=LocalLocation(home.lake)).publish_to is None
    assert Lake.from_settings(home, Settings.load()).publish_to is None
    lake = Lake(home, location=LocalLocation(home.lake))
    digest = _land(lake, tmp_path, "good.csv", CSV_GOOD)
    lake.accept(digest)
    assert sorted(path.name for path in home.raw.iterdir()) == [f"{digest}.csv", f"{digest}.json"]


def test_from_settings_uses_the_storage_location(home: PlatformHome, tmp_path: Path) -> None:
    base = Settings.load()
    url = f"file://{tmp_path}/elsewhere"
    settings = base.with_overrides({"storage": {"lake": url}})
    lake = Lake.from_settings(home, settings)
    assert lake.publish_to == LocalLocation(tmp_path / "elsewhere")
    digest = _land(lake, tmp_path, "good.csv", CSV_GOOD)
    lake.accept(digest)
    assert (tmp_path / "elsewhere" / "raw" / f"{digest}.csv").read_bytes() == CSV_GOOD
