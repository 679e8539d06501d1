"""The model registry with its version files on a remote storage location (fsspec `memory://`).

The same behaviour as on the local directory (mlplatform_tests/core/release/test_registry.py), plus what only a
remote location has: meta.json as the commit marker, version numbers taken by another writer, and the
local, SHA-verified model cache.
"""

from __future__ import annotations

import hashlib
import json
import stat
import uuid
from pathlib import Path

import pytest

from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.platform.storage import LocalLocation, StorageLocation, is_home_directory, open_location
from mlplatform.core.release.registry import APPROVED, IntegrityError, ModelRegistry, RegistryError

METRICS = {"macro_f1": 0.7}


def model_bytes(tag: str) -> bytes:
    return f"onnx-model-{tag}".encode() * 50


@pytest.fixture
def location() -> StorageLocation:
    return open_location(f"memory://mlp-registry-{uuid.uuid4().hex}/registry")


@pytest.fixture
def registry(tmp_path: Path, location: StorageLocation) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry", location=location)


def test_versions_live_on_the_location_and_models_come_through_the_cache(
    registry: ModelRegistry, location: StorageLocation
) -> None:
    first = registry.register(model_bytes("a"), {"name": "a"}, METRICS, card_markdown="# a")
    second = registry.register(model_bytes("b"), {"name": "b"}, METRICS)

    assert (first.version, second.version) == ("v1", "v2")
    assert location.list("versions") == [
        "versions/v1/card.json",
        "versions/v1/card.md",
        "versions/v1/meta.json",
        "versions/v1/model.onnx",
        "versions/v2/card.json",
        "versions/v2/meta.json",
        "versions/v2/model.onnx",
    ]
    assert location.get_bytes("versions/v1/card.md") == b"# a"
    assert json.loads(location.get_bytes("versions/v2/meta.json"))["sha256"] == second.sha256
    assert not (registry.root / "versions").exists()  # only records and the cache are local
    assert [version.version for version in registry.list()] == ["v2", "v1"]
    assert registry.get("v1").card == {"name": "a"}
    assert registry.get("v1").to_dict()["onnx_path"] == location.url_of("versions/v1/model.onnx")

    path = registry.get("v1").onnx_path  # fetched on first use
    assert path == registry.cache_dir / f"{first.sha256}.onnx"
    assert path.read_bytes() == model_bytes("a")
    assert not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert registry.verify("v2").read_bytes() == model_bytes("b")
    assert sorted(p.name for p in registry.cache_dir.iterdir()) == sorted(
        f"{v.sha256}.onnx" for v in (first, second)
    )


def test_status_and_aliases_work_the_same(registry: ModelRegistry) -> None:
    versions = []
    for tag in ("a", "b"):
        version = registry.register(model_bytes(tag), {}, METRICS).version
        assert registry.approve(version, by="tester").status == APPROVED
        registry.promote(version, by="tester")
        versions.append(version)
    assert registry.aliases() == {"production": "v2", "previous": "v1"}
    assert registry.production().onnx_path.read_bytes() == model_bytes("b")
    assert registry.rollback(by="oncall", reason="bad") == ("v2", "v1")
    assert registry.production().version == "v1"
    assert registry.register(model_bytes("a"), {}, METRICS).version == "v1"  # same bytes, same version


def test_a_version_exists_only_once_its_meta_is_written(registry: ModelRegistry, location) -> None:
    # A registration that died after its model and card but before meta.json.
    location.put_bytes("versions/v1/model.onnx", model_bytes("lost"), immutable=True)
    location.put_bytes("versions/v1/card.json", b"{}", immutable=True)
    assert registry.list() == []
    with pytest.raises(RegistryError, match="v1 is not registered"):
        registry.get("v1")

    version = registry.register(model_bytes("a"), {}, METRICS)

    assert version.version == "v2"  # the dead registration's number is never handed out again
    assert location.get_bytes("versions/v1/model.onnx") == model_bytes("lost")
    assert [v.version for v in registry.list()] == ["v2"]


def test_a_number_taken_by_another_writer_is_skipped(
    registry: ModelRegistry, location, tmp_path: Path, monkeypatch
) -> None:
    # Another machine (its own records) takes v1 after this registry listed the versions.
    other = ModelRegistry(tmp_path / "other", location=location)
    assert other.register(model_bytes("theirs"), {}, METRICS).version == "v1"
    real, calls = registry._version_files, []

    def stale_then_real() -> dict[str, dict[str, int]]:
        calls.append(1)
        return {} if len(calls) == 1 else real()

    monkeypatch.setattr(registry, "_version_files", stale_then_real)

    assert registry.register(model_bytes("mine"), {}, METRICS).version == "v2"
    assert len(calls) == 2  # v1 was tried, refused, and the listing taken again
    assert registry.get("v1").onnx_path.read_bytes() == model_bytes("theirs")
    assert registry.get("v2").onnx_path.read_bytes() == model_bytes("mine")


def test_endless_number_conflicts_fail_with_a_clear_error(
    registry: ModelRegistry, location, tmp_path: Path, monkeypatch
) -> None:
    ModelRegistry(tmp_path / "other", location=location).register(model_bytes("theirs"), {}, METRICS)
    monkeypatch.setattr(registry, "_version_files", dict)  # a listing that never sees v1

    with pytest.raises(RegistryError, match="no free version number after 5 attempts"):
        registry.register(model_bytes("mine"), {}, METRICS)
    assert [event["event"] for event in registry.events()] == []


def test_a_damaged_cache_file_is_fetched_again(registry: ModelRegistry) -> None:
    version = registry.register(model_bytes("a"), {}, METRICS)
    cached = version.onnx_path
    cached.chmod(0o644)
    cached.write_bytes(b"bit rot")

    assert registry.verify("v1").read_bytes() == model_bytes("a")
    assert registry.get("v1").onnx_path.read_bytes() == model_bytes("a")


@pytest.mark.parametrize("damage", ["corrupted", "missing"])
def test_a_damaged_stored_model_is_never_cached(registry: ModelRegistry, location, damage: str) -> None:
    version = registry.register(model_bytes("a"), {}, METRICS)
    if damage == "corrupted":
        location.put_bytes("versions/v1/model.onnx", model_bytes("tampered"))
    else:
        location.fs.rm_file(f"{location.root}/versions/v1/model.onnx")

    expected = f"expected {version.sha256}" if damage == "corrupted" else "model.onnx is missing"
    with pytest.raises(IntegrityError, match=f"model v1: .*{expected}"):
        registry.verify("v1")
    with pytest.raises(IntegrityError, match=expected):
        _ = registry.get("v1").onnx_path
    assert not registry.cache_dir.exists() or list(registry.cache_dir.iterdir()) == []


def test_rollback_refuses_a_previous_model_that_fails_verification(registry: ModelRegistry, location) -> None:
    for tag in ("a", "b"):
        version = registry.register(model_bytes(tag), {}, METRICS).version
        registry.approve(version, by="tester")
        registry.promote(version, by="tester")
    location.put_bytes("versions/v1/model.onnx", b"tampered")

    with pytest.raises(IntegrityError, match="expected"):
        registry.rollback(by="oncall", reason="bad")
    assert registry.aliases() == {"production": "v2", "previous": "v1"}


def test_an_unreadable_meta_is_a_registry_error(registry: ModelRegistry, location) -> None:
    registry.register(model_bytes("a"), {}, METRICS)
    location.put_bytes("versions/v1/meta.json", b"{not json")
    with pytest.raises(RegistryError, match=r"cannot read .*versions/v1/meta\.json"):
        registry.list()


def test_for_home_uses_the_registry_setting(tmp_path: Path) -> None:
    home = PlatformHome(tmp_path / "home").ensure()
    default = ModelRegistry.for_home(home, Settings.load(home.settings_file).storage)
    assert isinstance(default.location, LocalLocation) and is_home_directory(default.location, home.registry)

    url = f"memory://mlp-registry-{uuid.uuid4().hex}/models"
    home.settings_file.write_text(f'[storage]\nregistry = "{url}"\n', encoding="utf-8")
    registry = ModelRegistry.for_home(home, Settings.load(home.settings_file).storage)
    version = registry.register(model_bytes("a"), {}, METRICS)

    assert registry.location.url == url
    assert open_location(url).exists("versions/v1/meta.json")
    assert registry.events_path == home.registry / "events.jsonl"  # the records stay in the home
    assert hashlib.sha256(version.onnx_path.read_bytes()).hexdigest() == version.sha256


def test_a_registered_version_missing_its_card_is_named(registry: ModelRegistry, location) -> None:
    registry.register(model_bytes("a"), {}, METRICS)
    location.fs.rm_file(f"{location.root}/versions/v1/card.json")
    with pytest.raises(RegistryError, match=r"v1 is incomplete: .*versions/v1/card\.json is missing"):
        registry.get("v1")


class StorageCalls:
    """What a registry asks of its location: the listings and the keys read."""

    def __init__(self, location: StorageLocation, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listings: list[str] = []
        self.reads: list[str] = []
        list_sizes, get_many = location.list_sizes, location.get_many

        def counted_list_sizes(prefix: str = "", *, recursive: bool = True) -> dict[str, int]:
            self.listings.append(prefix)
            return list_sizes(prefix, recursive=recursive)

        def counted_get_many(keys: list[str]) -> dict[str, bytes]:
            self.reads.extend(keys)
            return get_many(keys)

        def refused(*args: object, **kwargs: object) -> None:
            raise AssertionError("the registry read its location around list_sizes and get_many")

        monkeypatch.setattr(location, "list_sizes", counted_list_sizes)
        monkeypatch.setattr(location, "get_many", counted_get_many)
        for name in ("list", "get_bytes", "open_read"):
            monkeypatch.setattr(location, name, refused)

    def reset(self) -> None:
        self.listings.clear()
        self.reads.clear()


def test_registering_lists_once_and_reads_no_other_version(
    registry: ModelRegistry, location: StorageLocation, monkeypatch: pytest.MonkeyPatch
) -> None:
    for tag in "abcd":  # models of one size: the log's sha256, not the size, rules the others out
        registry.register(model_bytes(tag), {}, METRICS)
    calls = StorageCalls(location, monkeypatch)

    assert registry.register(model_bytes("e"), {}, METRICS).version == "v5"
    assert calls.listings == ["versions"]
    assert calls.reads == ["versions/v5/meta.json", "versions/v5/card.json"]  # the answer, by get()

    calls.reset()
    assert registry.register(model_bytes("b"), {}, METRICS).version == "v2"  # a duplicate
    assert calls.listings == ["versions"]
    assert calls.reads == ["versions/v2/meta.json", "versions/v2/meta.json", "versions/v2/card.json"]
    assert [event.get("sha256") for event in registry.events()] == [
        hashlib.sha256(model_bytes(tag)).hexdigest() for tag in "abcde"
    ]


def test_a_duplicate_registered_elsewhere_is_found_by_its_meta(
    registry: ModelRegistry, location: StorageLocation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another machine (its own records) registered these bytes: this log knows nothing of them.
    other = ModelRegistry(tmp_path / "other", location=location)
    other.register(model_bytes("a"), {}, METRICS)
    other.register(model_bytes("a") * 2, {}, METRICS)
    calls = StorageCalls(location, monkeypatch)

    assert registry.register(model_bytes("a"), {}, METRICS).version == "v1"
    assert "versions/v2/meta.json" not in calls.reads  # another size: not these bytes
    assert calls.reads[0] == "versions/v1/meta.json"
    (event,) = registry.events()
    assert (event["event"], event["version"], event["sha256"]) == (
        "registered",
        "v1",
        hashlib.sha256(model_bytes("a")).hexdigest(),
    )


def test_a_duplicate_the_log_records_is_found_whatever_its_stored_model_size(
    registry: ModelRegistry, location: StorageLocation
) -> None:
    registry.register(model_bytes("a"), {}, METRICS)
    location.put_bytes("versions/v1/model.onnx", b"truncated")  # damaged: the size no longer matches

    assert registry.register(model_bytes("a"), {}, METRICS).version == "v1"
    assert [version.version for version in registry.list()] == ["v1"]
