"""The content-addressed artifact store: deterministic encoding, immutability, lookup, recovery."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import polars as pl
import pytest

from mlplatform.core.platform.artifacts import (
    AmbiguousVersion,
    ArtifactNotFound,
    ArtifactStore,
    Bundle,
    EncodedValue,
    IntegrityError,
    UnsafeName,
    decode,
    encode,
    sha256_bytes,
)
from mlplatform.core.platform.home import PlatformHome


def _frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "review_id": ["r1", "r2", "r3"],
            "rating": [5, 1, 3],
            "score": [0.9, None, 0.5],
            "label": pl.Series(["positive", "negative", "neutral"], dtype=pl.Categorical),
        }
    )


def _values() -> dict[str, object]:
    return {
        "parquet": _frame(),
        "json": {"b": [1, 2.5, None], "a": {"z": "ü", "y": True}},
        "bin": b"\x00onnx-bytes\xff",
        "tar": Bundle({"models/lr.onnx": b"lr", "metrics.json": b'{"f1": 0.8}'}),
    }


# Prints fmt and sha256 of each sample value, in a fresh interpreter.
_SUBPROCESS_SCRIPT = """
import json, sys
sys.path.insert(0, {tests_root!r})
from mlplatform_tests.core.platform.test_artifacts import _values
from mlplatform.core.platform.artifacts import encode
print(json.dumps({{name: encode(value).sha256 for name, value in _values().items()}}))
"""


@pytest.fixture
def store(home: PlatformHome) -> ArtifactStore:
    return ArtifactStore(home.artifacts)


# --- encoding ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["parquet", "json", "bin", "tar"])
def test_encoding_is_deterministic_and_round_trips(name: str) -> None:
    first, second = encode(_values()[name]), encode(_values()[name])
    assert first.fmt == name
    assert first.payload == second.payload
    assert first.sha256 == second.sha256 == sha256_bytes(first.payload)
    decoded = decode(first.payload, first.fmt)
    original = _values()[name]
    if isinstance(original, pl.DataFrame):
        assert decoded.equals(original)
        assert decoded.schema == original.schema
    else:
        assert decoded == original


def test_encoding_is_identical_in_another_process() -> None:
    tests_root = str(Path(__file__).resolve().parents[3])
    script = _SUBPROCESS_SCRIPT.format(tests_root=tests_root)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == {name: encode(value).sha256 for name, value in _values().items()}


def test_table_encoding_records_rows_and_schema() -> None:
    encoded = encode(_frame())
    assert encoded.rows == 3
    assert encoded.schema == [
        ("review_id", "String"),
        ("rating", "Int64"),
        ("score", "Float64"),
        ("label", "Categorical"),
    ]
    assert encode([1, 2]).rows == 2
    assert encode({"a": 1}).rows is None


def test_json_is_canonical() -> None:
    assert encode({"b": 1, "a": "é"}).payload == '{"a":"é","b":1}'.encode()
    assert encode({"b": 1, "a": 2}).sha256 == encode({"a": 2, "b": 1}).sha256


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ({"f1": math.nan}, ValueError, r"non-finite.*\$\.f1"),
        ([1.0, math.inf], ValueError, r"non-finite.*\$\[1\]"),
        ({1: "int key"}, TypeError, "not str"),
        ({"when": object()}, TypeError, r"object at \$\.when"),
    ],
)
def test_json_refuses_what_it_would_change(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        encode(value)


def test_unsupported_type_is_named() -> None:
    with pytest.raises(TypeError, match=r"builtins\.set"):
        encode({1, 2})


def test_tar_is_normalised() -> None:
    bundle = Bundle({"b.onnx": b"bb", "a/metrics.json": b"{}"})
    with tarfile.open(fileobj=io.BytesIO(encode(bundle).payload)) as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == ["a/metrics.json", "b.onnx"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {(0, 0, 0, "", "", 0o644)}
    assert encode(Bundle({"a/metrics.json": b"{}", "b.onnx": b"bb"})).sha256 == encode(bundle).sha256


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/../b", "a//b", "./a", "a\\b", ""])
def test_bundle_member_names_are_validated(name: str) -> None:
    with pytest.raises(UnsafeName):
        Bundle({name: b"x"})


# --- the store --------------------------------------------------------------------------------


def test_put_writes_content_addressed_read_only_file(store: ArtifactStore) -> None:
    encoded = encode(_frame())
    artifact = store.put("reviews", None, encoded, extra={"run_id": "r-1"})
    assert artifact.path == store.root / "reviews" / f"{encoded.sha256}.parquet"
    assert artifact.path.read_bytes() == encoded.payload
    assert artifact.path.stat().st_mode & 0o222 == 0
    (record_file,) = (store.root / "reviews" / "_versions").iterdir()
    assert record_file.stat().st_mode & 0o222 == 0  # records are immutable too
    record = json.loads(record_file.read_text())
    assert record["version"] == encoded.sha256
    assert record["path"] == f"reviews/{encoded.sha256}.parquet"
    assert (record["size"], record["format"], record["rows"]) == (encoded.size, "parquet", 3)
    assert record["extra"] == {"run_id": "r-1"}
    assert store.load(store.latest("reviews")).equals(_frame())


def test_put_is_idempotent(store: ArtifactStore) -> None:
    encoded = encode({"a": 1})
    first = store.put("metrics", None, encoded)
    again = store.put("metrics", None, encoded)
    assert again == first
    assert len(store.versions("metrics")) == 1


def test_put_never_overwrites_a_different_file(store: ArtifactStore) -> None:
    encoded = encode({"a": 1})
    squatter = store.root / "metrics" / f"{encoded.sha256}.json"
    squatter.parent.mkdir(parents=True)
    squatter.write_bytes(b'{"a":2}')
    with pytest.raises(IntegrityError, match="exists but holds"):
        store.put("metrics", None, encoded)
    assert squatter.read_bytes() == b'{"a":2}'


def test_put_refuses_an_inconsistent_encoded_value(store: ArtifactStore) -> None:
    forged = EncodedValue(b"payload", "bin", "0" * 64)
    with pytest.raises(IntegrityError):
        store.put("blob", None, forged)


def test_versions_pointer_and_history(store: ArtifactStore) -> None:
    v1 = store.put("model", None, encode(b"one")).version
    v2 = store.put("model", None, encode(b"two")).version
    assert [a.version for a in store.versions("model")] == [v1, v2]
    assert store.latest("model").version == v2
    # going back to an earlier version moves the pointer and is recorded
    store.put("model", None, encode(b"one"))
    assert store.latest("model").version == v1
    assert [a.version for a in store.versions("model")] == [v1, v2, v1]
    assert store.load(store.get("model", v2)) == b"two"
    records = sorted((store.root / "model" / "_versions").iterdir())
    assert [json.loads(path.read_text())["version"] for path in records] == [v1, v2, v1]


def test_partitions_and_listing(store: ArtifactStore) -> None:
    drop_hash = "0123456789abcdef" * 4
    store.put("raw_reviews", drop_hash, encode(b"drop-a"))
    store.put("raw_reviews", "2024-05-01", encode(b"drop-b"))
    store.put("features/reviews", None, encode(b"nested"))
    assert store.partitions("raw_reviews") == [drop_hash, "2024-05-01"]
    assert store.latest("raw_reviews", drop_hash).path.parent == store.root / "raw_reviews" / drop_hash
    assert [a.partition for a in store.versions("raw_reviews", "*")] == [drop_hash, "2024-05-01"]
    assert store.versions("raw_reviews") == []  # no unpartitioned versions
    assert store.assets() == ["features/reviews", "raw_reviews"]
    assert len(list((store.root / "features" / "reviews" / "_versions").iterdir())) == 1
    assert len(list((store.root / "raw_reviews" / "_versions" / drop_hash).iterdir())) == 1
    with pytest.raises(ArtifactNotFound, match="partition 'other'"):
        store.latest("raw_reviews", "other")


def test_missing_asset_is_a_clear_error(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactNotFound, match="asset 'nothing' has no stored version"):
        store.latest("nothing")
    with pytest.raises(ArtifactNotFound, match="'nothing'"):
        store.versions("nothing")


def test_prefix_lookup(store: ArtifactStore) -> None:
    first = store.put("blob", None, encode(b"first")).version
    second = store.put("blob", None, encode(b"second")).version
    assert store.get("blob", first[:8]).version == first
    assert store.get("blob", second.upper()).version == second
    with pytest.raises(ValueError, match="at least 8"):
        store.get("blob", first[:7])
    unused = next(p for p in ("00000000", "11111111") if not first.startswith(p) and not second.startswith(p))
    with pytest.raises(ArtifactNotFound, match="no stored version matching"):
        store.get("blob", unused)


def test_ambiguous_prefix_is_an_error(store: ArtifactStore) -> None:
    real = store.put("blob", None, encode(b"real")).version
    # two distinct versions sharing 8 characters are rare; add one to the index to check the rule
    (index,) = (store.root / "blob" / "_versions").iterdir()
    record = json.loads(index.read_text())
    record["version"] = real[:8] + ("0" if real[8] != "0" else "1") * 56
    (index.parent / f"{index.stem}-twin.json").write_text(json.dumps(record))
    with pytest.raises(AmbiguousVersion, match="ambiguous"):
        store.get("blob", real[:8])
    assert store.get("blob", real).version == real


def test_tampered_file_is_detected_on_load_and_restore(store: ArtifactStore, tmp_path: Path) -> None:
    artifact = store.put("reviews", None, encode(_frame()))
    artifact.path.chmod(0o644)
    artifact.path.write_bytes(artifact.path.read_bytes()[:-1] + b"X")
    with pytest.raises(IntegrityError, match="corrupt"):
        store.load(artifact)
    with pytest.raises(IntegrityError, match="corrupt"):
        store.restore("reviews", artifact.version, tmp_path)
    assert not (tmp_path / artifact.path.name).exists()


def test_restore_copies_byte_for_byte(store: ArtifactStore, tmp_path: Path) -> None:
    bundle = Bundle({"model.onnx": b"\x08\x07onnx", "card.json": b"{}"})
    artifact = store.put("candidate_models", None, encode(bundle))
    store.put("candidate_models", None, encode(Bundle({"model.onnx": b"newer"})))
    into_dir = store.restore("candidate_models", artifact.version[:10], tmp_path)
    assert into_dir == tmp_path / artifact.path.name
    assert into_dir.read_bytes() == artifact.path.read_bytes()
    as_file = store.restore("candidate_models", artifact.version, tmp_path / "out" / "old.tar")
    assert decode(as_file, "tar") == bundle
    assert store.restore("candidate_models", artifact.version, as_file) == as_file  # identical: fine
    as_file.write_bytes(b"something else")
    with pytest.raises(FileExistsError):
        store.restore("candidate_models", artifact.version, as_file)


def test_restore_finds_a_version_in_any_partition(store: ArtifactStore, tmp_path: Path) -> None:
    artifact = store.put("raw_reviews", "drop1", encode(b"drop bytes"))
    restored = store.restore("raw_reviews", artifact.version, tmp_path / "drop.bin")
    assert restored.read_bytes() == b"drop bytes"


@pytest.mark.parametrize(
    ("asset", "partition"),
    [
        ("../escape", None),
        ("/abs", None),
        ("a/../b", None),
        (".hidden", None),
        ("ok", ".."),
        ("ok", "a/b"),
        ("ok", "_versions"),
        ("_versions", None),
        ("ok", "x|y"),
        ("ok", "a" * 64 + ".parquet"),
    ],
)
def test_unsafe_names_are_refused(store: ArtifactStore, asset: str, partition: str | None) -> None:
    with pytest.raises(UnsafeName):
        store.put(asset, partition, encode(b"x"))
    assert not any(store.root.rglob("*.bin"))


def _put_many(root: str, worker: int, count: int) -> list[str]:
    store = ArtifactStore(Path(root))
    return [store.put("shared", None, encode({"worker": worker, "n": n})).version for n in range(count)]


def test_concurrent_puts_from_two_processes(store: ArtifactStore) -> None:
    count = 25
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_put_many, str(store.root), worker, count) for worker in (1, 2)]
        written = [f.result(timeout=60) for f in futures]
    recorded = store.versions("shared")
    assert len(recorded) == 2 * count
    assert {a.version for a in recorded} == set(written[0]) | set(written[1])
    assert store.latest("shared").version in {written[0][-1], written[1][-1]}
    for artifact in recorded:
        assert store.load(artifact)["n"] < count
    assert not list((store.root / "shared").glob(".*.tmp"))
