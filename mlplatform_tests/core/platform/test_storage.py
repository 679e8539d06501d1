"""Storage locations: the same contract on a local directory and on an fsspec filesystem (memory://)."""

from __future__ import annotations

import uuid
from pathlib import Path

import polars as pl
import pytest

from mlplatform.core.platform.artifacts import ArtifactStore, IntegrityError, encode, sha256_bytes
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings, SettingsError, StorageRules
from mlplatform.core.platform.storage import (
    FsspecLocation,
    ImmutableConflict,
    LocalLocation,
    ObjectNotFound,
    StorageConfigError,
    StorageError,
    StorageLocation,
    is_home_directory,
    location_from_settings,
    open_location,
)


@pytest.fixture(params=["local", "memory"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> StorageLocation:
    if request.param == "local":
        return open_location(tmp_path / "store")
    return open_location(f"memory://mlp-{uuid.uuid4().hex}/prefix")


def _storage(**storage: str) -> StorageRules:
    return Settings.packaged().with_overrides({"storage": storage}).storage


def test_put_get_exists(location: StorageLocation) -> None:
    assert not location.exists("a/b.bin")
    location.put_bytes("a/b.bin", b"hello")
    assert location.exists("a/b.bin")
    assert location.get_bytes("a/b.bin") == b"hello"
    assert location.sha256("a/b.bin") == sha256_bytes(b"hello")
    with location.open_read("a/b.bin") as handle:
        assert handle.read(2) == b"he"
    location.put_bytes("a/b.bin", b"replaced")  # a mutable object may be replaced (atomically)
    assert location.get_bytes("a/b.bin") == b"replaced"


def test_missing_objects_raise_object_not_found(location: StorageLocation) -> None:
    with pytest.raises(ObjectNotFound, match="no object"):
        location.get_bytes("nothing/here")
    with pytest.raises(ObjectNotFound), location.open_read("nothing/here"):
        pass


def test_immutable_objects_are_never_replaced(location: StorageLocation) -> None:
    location.put_bytes("blob", b"first", immutable=True)
    location.put_bytes("blob", b"first", immutable=True)  # the same bytes again: fine, a no-op
    with pytest.raises(ImmutableConflict, match="exists but holds"):
        location.put_bytes("blob", b"other", immutable=True)
    assert location.get_bytes("blob") == b"first"


def test_list_is_sorted_relative_and_optionally_shallow(location: StorageLocation) -> None:
    for key in ("x/2.json", "x/1.json", "x/deeper/3.json", "y/4.json"):
        location.put_bytes(key, b"{}")
    assert location.list("x") == ["x/1.json", "x/2.json", "x/deeper/3.json"]
    assert location.list("x", recursive=False) == ["x/1.json", "x/2.json"]
    assert location.list() == ["x/1.json", "x/2.json", "x/deeper/3.json", "y/4.json"]
    assert location.list("absent") == []
    assert location.get_many(["y/4.json", "x/1.json"]) == {"y/4.json": b"{}", "x/1.json": b"{}"}


def test_list_sizes_gives_each_key_with_its_size(location: StorageLocation) -> None:
    for key, data in {"x/b": b"12345", "x/a": b"", "x/deeper/c": b"123", "y/d": b"1"}.items():
        location.put_bytes(key, data)
    assert location.list_sizes("x") == {"x/a": 0, "x/b": 5, "x/deeper/c": 3}
    assert list(location.list_sizes("x")) == location.list("x")  # sorted like list
    assert location.list_sizes("x", recursive=False) == {"x/a": 0, "x/b": 5}
    assert location.list_sizes() == {"x/a": 0, "x/b": 5, "x/deeper/c": 3, "y/d": 1}
    assert location.list_sizes("absent") == {}


def test_put_file_uploads_and_verifies(location: StorageLocation, tmp_path: Path) -> None:
    source = tmp_path / "segment.jsonl"
    source.write_bytes(b"line\n" * 1000)
    assert location.put_file("segments/s1.jsonl", source, immutable=True) == sha256_bytes(source.read_bytes())
    assert location.get_bytes("segments/s1.jsonl") == source.read_bytes()
    assert location.put_file("segments/s1.jsonl", source, immutable=True)  # identical: left alone
    source.write_bytes(b"different")
    with pytest.raises(ImmutableConflict):
        location.put_file("segments/s1.jsonl", source, immutable=True)


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", "a/./b", "a\\b", ""])
def test_keys_cannot_escape(location: StorageLocation, key: str) -> None:
    with pytest.raises(StorageError):
        location.put_bytes(key, b"x")


def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path) -> None:
    location = LocalLocation(tmp_path)
    location.put_bytes("d/blob", b"x" * 10, immutable=True)
    assert (tmp_path / "d" / "blob").stat().st_mode & 0o222 == 0
    (tmp_path / "d" / ".blob.0123.tmp").write_bytes(b"half")  # a write in progress elsewhere
    assert location.list() == ["d/blob"]
    assert location.list_sizes() == {"d/blob": 10}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nosuchscheme://bucket/x", "unknown scheme 'nosuchscheme'"),
        ("relative/dir", "must be an absolute path"),
        ("memory://", "names no bucket or directory"),
    ],
)
def test_bad_urls_are_one_line_errors(spec: str, message: str) -> None:
    with pytest.raises(StorageConfigError, match=message) as caught:
        open_location(spec)
    assert "\n" not in str(caught.value)


def test_missing_driver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from fsspec.registry import known_implementations

    # a scheme fsspec knows whose driver package is not installed here
    monkeypatch.setitem(
        known_implementations,
        "mlpnodriver",
        {"class": "mlp_no_such_package.FileSystem", "err": "install mlp-no-such-package"},
    )
    with pytest.raises(StorageConfigError, match=r"driver is not installed.*install mlp-no-such-package"):
        open_location("mlpnodriver://bucket/x")


def test_file_urls_and_absolute_paths_are_local(tmp_path: Path) -> None:
    assert open_location(f"file://{tmp_path}/a") == LocalLocation(tmp_path / "a")
    assert open_location(str(tmp_path / "b")) == LocalLocation(tmp_path / "b")
    assert isinstance(open_location("memory://bucket/p"), FsspecLocation)


def test_settings_select_locations(home: PlatformHome, tmp_path: Path) -> None:
    defaults = Settings.packaged().storage
    assert location_from_settings(home, defaults, "artifacts") == LocalLocation(home.artifacts)
    assert is_home_directory(location_from_settings(home, defaults, "lake"), home.lake)
    assert is_home_directory(location_from_settings(home, defaults, "capture"), home.capture)
    chosen = _storage(artifacts="memory://mlp-settings/artifacts", capture=f"file://{tmp_path}/capture")
    assert location_from_settings(home, chosen, "artifacts").url == "memory://mlp-settings/artifacts"
    capture = location_from_settings(home, chosen, "capture")
    assert capture == LocalLocation(tmp_path / "capture")
    assert not is_home_directory(capture, home.capture)
    with pytest.raises(StorageConfigError, match=r"^\[storage\] registry: .*unknown scheme"):
        location_from_settings(home, _storage(registry="bogus://x/y"), "registry")
    with pytest.raises(SettingsError, match=r"^\[storage\] lake: must be a string, got 3"):
        _storage(lake=3)
    with pytest.raises(StorageConfigError, match="unknown storage kind 'models'"):
        location_from_settings(home, defaults, "models")


def test_artifact_store_on_object_storage_keeps_history_and_verifies() -> None:
    location = open_location(f"memory://mlp-{uuid.uuid4().hex}/artifacts")
    store = ArtifactStore(location)
    frame = pl.DataFrame({"a": [1, 2, 3]})
    first = store.put("reviews", None, encode(frame), extra={"run_id": "r1"})
    second = store.put("reviews", None, encode(pl.DataFrame({"a": [4]})))
    store.put("raw_reviews", "d" * 64, encode(b"drop"))
    assert first.path == f"{location.url}/reviews/{first.version}.parquet"
    assert store.put("reviews", None, encode(pl.DataFrame({"a": [4]}))) == second  # already latest
    assert [a.version for a in store.versions("reviews")] == [first.version, second.version]
    assert store.latest("reviews") == second
    assert store.load(store.get("reviews", first.version[:10])).equals(frame)
    assert store.assets() == ["raw_reviews", "reviews"]
    assert store.partitions("raw_reviews") == ["d" * 64]
    location.put_bytes(f"reviews/{second.version}.parquet", b"tampered")  # bypass immutability
    with pytest.raises(IntegrityError, match="corrupt"):
        store.load(second)
