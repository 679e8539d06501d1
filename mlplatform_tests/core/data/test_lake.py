"""The data lake: landing, duplicates, accept/quarantine, path safety, governed access, the ledger."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest

from mlplatform.core.data.lake import (
    AccessDenied,
    Lake,
    LakeError,
    UnknownDataset,
    UnknownDrop,
    UnsafePathError,
)
from mlplatform.core.platform.fsio import sha256_bytes, sha256_file
from mlplatform.core.platform.home import PlatformHome

CSV_A = b"Clothing ID,Age,Rating\n1,30,5\n"
CSV_B = b"Clothing ID,Age,Rating\n2,41,1\n"


@pytest.fixture
def lake(home: PlatformHome) -> Lake:
    return Lake(home, settle_seconds=2.0)


def write(path: Path, data: bytes, age_seconds: float = 0.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age_seconds:
        past = time.time() - age_seconds
        os.utime(path, (past, past))
    return path


def all_bytes_under(root: Path) -> list[bytes]:
    """Every regular file's bytes under `root` (records excluded), sorted: what 'nothing lost' means."""
    return sorted(
        p.read_bytes()
        for p in root.rglob("*")
        if p.is_file()
        and not p.is_symlink()
        and p.suffix not in {".json", ".jsonl", ".toml"}
        and p.name != ".lock"
    )


def set_policy(lake: Lake, text: str) -> None:
    lake.root.mkdir(parents=True, exist_ok=True)
    lake.policy_file.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------------ hashing


def test_hashes_agree_for_file_and_bytes(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)  # spans several read chunks
    path = write(tmp_path / "x.bin", data)
    assert sha256_file(path) == sha256_bytes(data)
    assert len(sha256_bytes(data)) == 64


# ------------------------------------------------------------------------------------------ landing


def test_land_copies_atomically_and_returns_the_hash(lake: Lake, tmp_path: Path) -> None:
    source = write(tmp_path / "reviews.csv", CSV_A)
    [result] = lake.land([source])
    assert result.status == "landed" and result.hash == sha256_bytes(CSV_A)
    assert result.path == lake.landing / "reviews.csv"
    assert result.path.read_bytes() == CSV_A
    assert source.read_bytes() == CSV_A, "the source is copied, not moved"
    assert [p.name for p in lake.landing.iterdir()] == ["reviews.csv"], "no temp file left behind"
    drop = lake.drop(result.hash)
    assert (drop.state, drop.names, drop.format, drop.size) == ("landed", ("reviews.csv",), "csv", len(CSV_A))
    assert drop.landed_at.endswith("+00:00")


def test_land_refuses_a_missing_source_before_landing_anything(lake: Lake, tmp_path: Path) -> None:
    good = write(tmp_path / "good.csv", CSV_A)
    with pytest.raises(LakeError, match=r"missing\.csv"):
        lake.land([good, tmp_path / "missing.csv"])
    assert not any(lake.landing.iterdir())


def test_same_bytes_under_two_names_are_one_drop(lake: Lake, tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", CSV_A)
    second = write(tmp_path / "b.csv", CSV_A)
    results = lake.land([first, second])
    assert [r.status for r in results] == ["landed", "duplicate"]
    assert results[1].existing_state == "landed"
    assert len({r.hash for r in results}) == 1
    assert [p.name for p in lake.landing.iterdir()] == ["a.csv"]
    [drop] = lake.drops()
    assert drop.names == ("a.csv", "b.csv")


def test_duplicate_of_an_accepted_drop_is_reported_with_its_state(lake: Lake, tmp_path: Path) -> None:
    [landed] = lake.land([write(tmp_path / "a.csv", CSV_A)])
    lake.accept(landed.hash)
    [again] = lake.land([write(tmp_path / "later.csv", CSV_A)])
    assert (again.status, again.existing_state) == ("duplicate", "accepted")
    assert not any(lake.landing.iterdir())
    assert lake.drop(landed.hash).names == ("a.csv", "later.csv")


def test_name_clash_with_different_bytes_gets_its_own_name(lake: Lake, tmp_path: Path) -> None:
    [first] = lake.land([write(tmp_path / "one" / "reviews.csv", CSV_A)])
    [second] = lake.land([write(tmp_path / "two" / "reviews.csv", CSV_B)])
    assert second.status == "landed" and second.hash != first.hash
    assert second.path.name == f"reviews-{second.hash[:12]}.csv"
    assert first.path.read_bytes() == CSV_A and second.path.read_bytes() == CSV_B
    assert lake.drop(second.hash).names == ("reviews.csv",)


def test_dot_prefixed_source_lands_under_a_visible_name(lake: Lake, tmp_path: Path) -> None:
    [result] = lake.land([write(tmp_path / ".hidden.csv", CSV_A)])
    assert result.path.name == "hidden.csv"
    assert [d.hash for d in lake.pending()] == [result.hash]


# ------------------------------------------------------------------------------------------ pending


def test_pending_takes_landed_drops_at_once_in_landing_order(lake: Lake, tmp_path: Path) -> None:
    [a] = lake.land([write(tmp_path / "a.csv", CSV_A)])
    [b] = lake.land([write(tmp_path / "b.parquet", CSV_B)])
    pending = lake.pending()
    assert [d.hash for d in pending] == [a.hash, b.hash]
    assert [d.format for d in pending] == ["csv", "parquet"]


def test_pending_ignores_temp_dot_and_fresh_files(lake: Lake) -> None:
    write(lake.landing / ".reviews.csv.x1.tmp", b"half", age_seconds=60)
    write(lake.landing / "upload.csv.part", b"half", age_seconds=60)
    write(lake.landing / "upload.tmp", b"half", age_seconds=60)
    fresh = write(lake.landing / "being_written.csv", CSV_A)
    assert lake.pending() == []
    assert fresh.exists(), "a fresh file is left alone, not moved"
    past = time.time() - 5
    os.utime(fresh, (past, past))
    [drop] = lake.pending()
    assert (drop.hash, drop.names, drop.path) == (sha256_bytes(CSV_A), ("being_written.csv",), fresh)


def test_pending_hashes_files_copied_in_by_other_means(lake: Lake) -> None:
    copied = write(lake.landing / "external.csv", CSV_B, age_seconds=10)
    [drop] = lake.pending()
    assert drop.hash == sha256_bytes(CSV_B) and drop.state == "landed"
    assert drop.landed_at < time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 5))
    assert lake.pending() == [drop], "a second scan sees the same drop once"
    assert copied.exists()


def test_pending_absorbs_duplicates_of_decided_drops_without_deleting(lake: Lake, tmp_path: Path) -> None:
    [good] = lake.land([write(tmp_path / "good.csv", CSV_A)])
    [bad] = lake.land([write(tmp_path / "bad.csv", CSV_B)])
    lake.accept(good.hash)
    lake.quarantine(bad.hash, "schema", "column Rating missing")
    write(lake.landing / "good_again.csv", CSV_A, age_seconds=10)
    write(lake.landing / "bad_again.csv", CSV_B, age_seconds=10)
    scan = lake.scan_landing()
    assert scan.pending == ()
    assert {(r.name, r.status, r.existing_state) for r in scan.absorbed} == {
        ("good_again.csv", "duplicate", "accepted"),
        ("bad_again.csv", "duplicate", "quarantined"),
    }
    assert not any(lake.landing.iterdir())
    assert (lake.duplicates_dir / good.hash / "good_again.csv").read_bytes() == CSV_A
    assert (lake.duplicates_dir / bad.hash / "bad_again.csv").read_bytes() == CSV_B
    assert lake.drop(good.hash).names == ("good.csv", "good_again.csv")
    assert lake.drop(bad.hash).names == ("bad.csv", "bad_again.csv")


def test_pending_absorbs_a_second_landing_copy_of_a_waiting_drop(lake: Lake, tmp_path: Path) -> None:
    [landed] = lake.land([write(tmp_path / "a.csv", CSV_A)])
    write(lake.landing / "copy.csv", CSV_A, age_seconds=10)
    [drop] = lake.pending()
    assert drop.hash == landed.hash and drop.path == landed.path
    assert drop.names == ("a.csv", "copy.csv")


def test_a_new_file_reusing_the_name_of_a_decided_drop_is_a_new_drop(lake: Lake, tmp_path: Path) -> None:
    [first] = lake.land([write(tmp_path / "reviews.csv", CSV_A)])
    lake.accept(first.hash)
    write(lake.landing / "reviews.csv", CSV_B, age_seconds=10)
    [drop] = lake.pending()
    assert drop.hash == sha256_bytes(CSV_B) and drop.path == lake.landing / "reviews.csv"
    assert lake.drop(first.hash).state == "accepted"


def test_unknown_extension_is_still_a_drop(lake: Lake, tmp_path: Path) -> None:
    [result] = lake.land([write(tmp_path / "reviews.xlsx", b"PK\x03\x04")])
    [drop] = lake.pending()
    assert (drop.hash, drop.format) == (result.hash, "unknown")
    quarantined = lake.quarantine(drop.hash, "format", "unsupported file type .xlsx")
    assert quarantined.path == lake.home.quarantine / f"{drop.hash}.bin"


# ------------------------------------------------------------------------------ the lake's own bytes


def outside_file_linked_into_landing(lake: Lake, tmp_path: Path, data: bytes, name: str) -> Path:
    """A file outside the lake with a hard link in landing (os.link): one inode, two names."""
    outside = write(tmp_path / "outside" / name, data, age_seconds=10)
    os.link(outside, lake.landing / name)
    assert outside.stat().st_nlink == 2
    return outside


@pytest.mark.parametrize("decide", ["accept", "quarantine"])
def test_a_hard_link_in_landing_is_copied_never_adopted(lake: Lake, tmp_path: Path, decide: str) -> None:
    outside = outside_file_linked_into_landing(lake, tmp_path, CSV_A, "linked.csv")
    mode = stat.S_IMODE(outside.stat().st_mode)
    [drop] = lake.pending()
    assert drop.hash == sha256_bytes(CSV_A) and drop.path == lake.landing / "linked.csv"
    assert not drop.path.samefile(outside) and outside.stat().st_nlink == 1

    decided = lake.accept(drop.hash) if decide == "accept" else lake.quarantine(drop.hash, "schema", "bad")
    outside.write_bytes(CSV_B)  # whoever holds the outside name changes it afterwards
    assert decided.path.read_bytes() == CSV_A and sha256_file(decided.path) == drop.hash
    assert stat.S_IMODE(outside.stat().st_mode) == mode, "making the drop read-only left that file alone"


def test_a_hard_link_made_to_a_waiting_drop_is_not_moved_into_raw(lake: Lake, tmp_path: Path) -> None:
    [landed] = lake.land([write(tmp_path / "a.csv", CSV_A)])
    outside = tmp_path / "grabbed.csv"
    os.link(landed.path, outside)  # linked after landing, while the drop waits for its decision
    drop = lake.accept(landed.hash)
    assert not drop.path.samefile(outside) and drop.path.stat().st_nlink == 1
    assert not landed.path.exists() and outside.read_bytes() == CSV_A
    outside.write_bytes(CSV_B)
    assert drop.path.read_bytes() == CSV_A


def test_a_hard_link_to_known_bytes_is_absorbed_as_a_copy(lake: Lake, tmp_path: Path) -> None:
    [first] = lake.land([write(tmp_path / "a.csv", CSV_A)])
    lake.accept(first.hash)
    outside = outside_file_linked_into_landing(lake, tmp_path, CSV_A, "again.csv")
    [absorbed] = lake.scan_landing().absorbed
    kept = lake.duplicates_dir / first.hash / "again.csv"
    assert absorbed.status == "duplicate" and kept.read_bytes() == CSV_A
    assert not kept.samefile(outside) and outside.stat().st_nlink == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_landing_file_owned_by_another_user_is_copied(lake: Lake) -> None:
    foreign = write(lake.landing / "foreign.csv", CSV_A, age_seconds=10)
    os.chown(foreign, 65534, 65534)
    [drop] = lake.pending()
    assert drop.path.stat().st_uid == os.geteuid()
    accepted = lake.accept(drop.hash)
    assert accepted.path.stat().st_uid == os.geteuid() and accepted.path.read_bytes() == CSV_A


# ---------------------------------------------------------------------------------------- decisions


def test_accept_moves_bytes_intact_read_only_with_a_sidecar(lake: Lake, tmp_path: Path) -> None:
    [landed] = lake.land([write(tmp_path / "reviews.csv", CSV_A)])
    drop = lake.accept(landed.hash)
    assert drop.state == "accepted" and drop.path == lake.home.raw / f"{landed.hash}.csv"
    assert sha256_file(drop.path) == landed.hash
    assert not drop.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert not landed.path.exists()
    sidecar = (lake.home.raw / f"{landed.hash}.json").read_text()
    for field in ("names", "landed_at", "accepted_at", "size", "format"):
        assert f'"{field}"' in sidecar
    assert drop.decided_at is not None and drop.reason is None
    assert lake.pending() == []


def test_an_accepted_drop_keeps_the_contract_it_was_accepted_under(lake: Lake, tmp_path: Path) -> None:
    [a, b] = lake.land([write(tmp_path / "a.csv", CSV_A), write(tmp_path / "b.csv", CSV_B)])
    accepted = lake.accept(a.hash, contract="1a2b3c4d5e6f7a8b")
    assert accepted.contract == "1a2b3c4d5e6f7a8b"
    assert '"contract": "1a2b3c4d5e6f7a8b"' in (lake.home.raw / f"{a.hash}.json").read_text()
    # accepting again (under another contract) changes nothing: raw drops stay what they were
    assert lake.accept(a.hash, contract="ffffffffffffffff").contract == "1a2b3c4d5e6f7a8b"
    assert lake.accept(b.hash).contract is None
    assert {drop.hash: drop.to_dict()["contract"] for drop in lake.drops()} == {
        a.hash: "1a2b3c4d5e6f7a8b",
        b.hash: None,
    }


@pytest.mark.parametrize(
    ("name", "fmt", "stored_as"),
    [
        ("r.csv", "csv", ".csv"),
        ("r.TSV", "tsv", ".tsv"),
        ("yelp_labelled.txt", "txt", ".txt"),
        ("r.pq", "parquet", ".parquet"),
    ],
)
def test_a_drop_keeps_the_format_its_name_announces(lake: Lake, tmp_path: Path, name, fmt, stored_as) -> None:
    [landed] = lake.land([write(tmp_path / name, CSV_A)])
    assert lake.drop(landed.hash).format == fmt
    assert lake.accept(landed.hash).path.name == f"{landed.hash}{stored_as}"


def test_accept_and_quarantine_are_idempotent(lake: Lake, tmp_path: Path) -> None:
    [a, b] = lake.land([write(tmp_path / "a.csv", CSV_A), write(tmp_path / "b.csv", CSV_B)])
    assert lake.accept(a.hash) == lake.accept(a.hash)
    first = lake.quarantine(b.hash, "schema", "missing column")
    assert lake.quarantine(b.hash, "completeness", "other reason") == first
    assert lake.drop(b.hash).reason == "missing column"


def test_quarantine_keeps_original_bytes_and_the_reason(lake: Lake, tmp_path: Path) -> None:
    [landed] = lake.land([write(tmp_path / "broken.csv", CSV_B)])
    drop = lake.quarantine(landed.hash, "schema", "column 'Rating' missing")
    assert drop.state == "quarantined"
    assert drop.path == lake.home.quarantine / f"{landed.hash}.csv"
    assert drop.path.read_bytes() == CSV_B
    assert (drop.check, drop.reason, drop.names) == ("schema", "column 'Rating' missing", ("broken.csv",))
    reason_file = lake.home.quarantine / f"{landed.hash}.reason.json"
    assert "column 'Rating' missing" in reason_file.read_text()
    assert [d.to_dict()["state"] for d in lake.drops()] == ["quarantined"]


def test_a_decided_drop_cannot_switch_sides(lake: Lake, tmp_path: Path) -> None:
    [a, b] = lake.land([write(tmp_path / "a.csv", CSV_A), write(tmp_path / "b.csv", CSV_B)])
    lake.accept(a.hash)
    lake.quarantine(b.hash, "schema", "bad")
    with pytest.raises(LakeError, match="immutable"):
        lake.quarantine(a.hash, "schema", "bad")
    with pytest.raises(LakeError, match="quarantined"):
        lake.accept(b.hash)


def test_accept_refuses_bytes_changed_after_landing(lake: Lake, tmp_path: Path) -> None:
    [landed] = lake.land([write(tmp_path / "a.csv", CSV_A)])
    landed.path.write_bytes(CSV_B)
    with pytest.raises(LakeError, match="changed since landing"):
        lake.accept(landed.hash)
    assert landed.path.read_bytes() == CSV_B, "nothing moved or lost"


def test_nothing_is_deleted_across_the_whole_life_of_drops(lake: Lake, tmp_path: Path) -> None:
    sources = [write(tmp_path / f"s{i}.csv", data) for i, data in enumerate([CSV_A, CSV_B, CSV_A])]
    lake.land(sources)
    write(lake.landing / "external_copy.csv", CSV_B, age_seconds=10)
    before = all_bytes_under(lake.root)
    first, second = lake.pending()
    lake.accept(first.hash)
    lake.quarantine(second.hash, "schema", "bad")
    write(lake.landing / "late_copy.csv", CSV_A, age_seconds=10)
    lake.pending()
    assert all_bytes_under(lake.root) == sorted([*before, CSV_A])


def test_unknown_drops_are_reported(lake: Lake) -> None:
    with pytest.raises(UnknownDrop):
        lake.drop("0" * 64)
    with pytest.raises(UnknownDrop, match="not a drop hash"):
        lake.open_drop("../../etc/passwd")
    assert lake.drops() == []


def test_open_drop_follows_the_bytes(lake: Lake, tmp_path: Path) -> None:
    [landed] = lake.land([write(tmp_path / "a.csv", CSV_A)])
    assert lake.open_drop(landed.hash) == landed.path
    lake.accept(landed.hash)
    assert lake.open_drop(landed.hash).read_bytes() == CSV_A


# --------------------------------------------------------------------------------------- path safety


def test_resolve_refuses_dotdot_and_absolute_names(lake: Lake) -> None:
    lake.landing.mkdir(parents=True, exist_ok=True)
    assert lake.resolve("x.csv", under=lake.landing) == lake.landing.resolve() / "x.csv"
    for name in ("../raw/x.csv", "a/../../x", "/etc/passwd", ""):
        with pytest.raises(UnsafePathError):
            lake.resolve(name, under=lake.landing)
    with pytest.raises(UnsafePathError, match="not inside the lake"):
        lake.resolve("x", under=lake.home.root)


def test_resolve_refuses_symlinks_escaping_the_lake(lake: Lake, tmp_path: Path) -> None:
    outside = write(tmp_path / "secret.csv", CSV_A)
    lake.landing.mkdir(parents=True, exist_ok=True)
    (lake.landing / "link.csv").symlink_to(outside)
    with pytest.raises(UnsafePathError, match="outside"):
        lake.resolve("link.csv", under=lake.landing)


def test_escaping_symlink_in_landing_is_moved_aside_with_its_reason(lake: Lake, tmp_path: Path) -> None:
    outside = write(tmp_path / "secret.csv", CSV_A)
    lake.landing.mkdir(parents=True, exist_ok=True)
    (lake.landing / "link.csv").symlink_to(outside)
    scan = lake.scan_landing()
    assert scan.pending == ()
    [refused] = scan.refused
    assert refused.name == "link.csv" and "outside the lake" in refused.reason
    assert refused.moved_to.is_symlink() and outside.read_bytes() == CSV_A
    assert "outside the lake" in (lake.unsafe_dir / "link.csv.reason.json").read_text()
    assert not any(lake.landing.iterdir())


# -------------------------------------------------------------------------------------- governed access


def accepted_drop(lake: Lake, tmp_path: Path, data: bytes = CSV_A, name: str = "a.csv") -> str:
    [landed] = lake.land([write(tmp_path / name, data)])
    return lake.accept(landed.hash).hash


def test_default_policy_is_written_and_allows_checkout(lake: Lake, tmp_path: Path) -> None:
    digest = accepted_drop(lake, tmp_path)
    out = tmp_path / "out"
    checkout = lake.checkout("raw_reviews", reader="ana", purpose="eda", version=digest, dest=out)
    assert lake.policy_file.read_text().startswith("#")
    assert checkout.version == digest and checkout.copied_to == out / f"{digest}.csv"
    assert sha256_file(checkout.copied_to) == digest
    [entry] = lake.audit()
    assert (entry.consumer, entry.kind, entry.dataset, entry.version, entry.purpose, entry.allowed) == (
        "ana",
        "person",
        "raw_reviews",
        digest,
        "eda",
        True,
    )
    assert entry.reason is None


def test_checkout_defaults_to_the_latest_accepted_drop(lake: Lake, tmp_path: Path) -> None:
    accepted_drop(lake, tmp_path, CSV_A, "a.csv")
    latest = accepted_drop(lake, tmp_path, CSV_B, "b.csv")
    assert lake.checkout("raw_reviews", reader="ana", purpose="eda").version == latest


def test_checkout_of_an_empty_lake_fails_clearly_without_a_read(lake: Lake) -> None:
    with pytest.raises(UnknownDrop, match="no versions yet"):
        lake.checkout("raw_reviews", reader="ana", purpose="eda")
    assert lake.audit() == []


def test_checkout_serves_quarantined_bytes_only_as_quarantined_reviews(lake: Lake, tmp_path: Path) -> None:
    [landed] = lake.land([write(tmp_path / "bad.csv", CSV_B)])
    lake.quarantine(landed.hash, "schema", "bad")
    with pytest.raises(UnknownDrop, match="quarantined"):
        lake.checkout("raw_reviews", reader="ana", purpose="eda", version=landed.hash)
    checkout = lake.checkout("quarantined_reviews", reader="ana", purpose="why rejected")
    assert checkout.source_path.read_bytes() == CSV_B


def test_denied_checkout_raises_one_line_and_is_recorded(lake: Lake, tmp_path: Path) -> None:
    digest = accepted_drop(lake, tmp_path)
    set_policy(lake, '[[rules]]\nreaders = ["ana"]\ndatasets = ["*"]\nallow = true\n')
    out = tmp_path / "out"
    with pytest.raises(AccessDenied) as denied:
        lake.checkout("raw_reviews", reader="bob", purpose="curious", version=digest, dest=out)
    message = str(denied.value)
    assert "\n" not in message and "'bob'" in message and "raw_reviews" in message
    assert str(lake.policy_file) in message
    assert not out.exists()
    [entry] = lake.audit()
    assert (entry.consumer, entry.allowed, entry.version) == ("bob", False, digest)
    assert str(lake.policy_file) in entry.reason


def test_first_matching_rule_wins(lake: Lake, tmp_path: Path) -> None:
    digest = accepted_drop(lake, tmp_path)
    set_policy(
        lake,
        '[[rules]]\nreaders = ["intern-*"]\ndatasets = ["raw_*"]\nallow = false\n\n'
        '[[rules]]\nreaders = ["*"]\ndatasets = ["*"]\nallow = true\n',
    )
    with pytest.raises(AccessDenied, match="rule 1"):
        lake.checkout("raw_reviews", reader="intern-joe", purpose="x", version=digest)
    assert lake.checkout("raw_reviews", reader="ana", purpose="x", version=digest).version == digest
    assert [e.allowed for e in lake.audit()] == [False, True]


@pytest.mark.parametrize(
    "policy",
    [
        "rules = [",
        '[[rules]]\nreaders = "ana"\ndatasets = ["*"]\nallow = true\n',
        '[[rules]]\nreaders = ["ana"]\ndatasets = ["*"]\nallow = "yes"\n',
        '[[rules]]\nreader = ["ana"]\ndatasets = ["*"]\nallow = true\n',
    ],
)
def test_malformed_policy_names_the_file(lake: Lake, tmp_path: Path, policy: str) -> None:
    digest = accepted_drop(lake, tmp_path)
    set_policy(lake, policy)
    with pytest.raises(LakeError, match=r"access_policy\.toml"):
        lake.checkout("raw_reviews", reader="ana", purpose="x", version=digest)


def test_empty_policy_denies_everything(lake: Lake, tmp_path: Path) -> None:
    digest = accepted_drop(lake, tmp_path)
    set_policy(lake, "# nobody\n")
    with pytest.raises(AccessDenied, match="no rule"):
        lake.record_read("raw_reviews", digest, "run1:raw_reviews", "validate")


def test_other_datasets_go_through_the_resolver(lake: Lake, tmp_path: Path) -> None:
    artifact = tmp_path / "store" / "reviews" / "v7"
    write(artifact / "part-0.parquet", b"p0")
    write(artifact / "nested" / "part-1.parquet", b"p1")
    calls = []

    def resolver(dataset: str, version: str | None) -> tuple[str, Path]:
        calls.append((dataset, version))
        return "v7", artifact

    out = tmp_path / "out"
    checkout = lake.checkout("reviews", reader="ana", purpose="train", dest=out, resolver=resolver)
    assert calls == [("reviews", None)] and checkout.version == "v7"
    assert (out / "v7" / "nested" / "part-1.parquet").read_bytes() == b"p1"
    again = lake.checkout("reviews", reader="ana", purpose="train", dest=out, resolver=resolver)
    assert again.copied_to == checkout.copied_to, "an identical copy is reused"
    with pytest.raises(UnknownDataset):
        lake.checkout("reviews", reader="ana", purpose="train")


def test_checkout_never_overwrites_a_different_file(lake: Lake, tmp_path: Path) -> None:
    digest = accepted_drop(lake, tmp_path)
    out = tmp_path / "out"
    write(out / f"{digest}.csv", b"mine")
    with pytest.raises(LakeError, match="not overwritten"):
        lake.checkout("raw_reviews", reader="ana", purpose="x", version=digest, dest=out)
    assert (out / f"{digest}.csv").read_bytes() == b"mine"


def test_checkout_requires_reader_and_purpose(lake: Lake, tmp_path: Path) -> None:
    digest = accepted_drop(lake, tmp_path)
    with pytest.raises(LakeError, match="purpose"):
        lake.checkout("raw_reviews", reader="ana", purpose=" ", version=digest)
    with pytest.raises(LakeError, match="reserved"):
        lake.checkout("raw_reviews", reader="pipeline", purpose="x", version=digest)
    with pytest.raises(LakeError, match="dataset name"):
        lake.checkout("../raw", reader="ana", purpose="x")


def test_pipeline_reads_are_recorded_and_checked(lake: Lake, tmp_path: Path) -> None:
    digest = accepted_drop(lake, tmp_path)
    entry = lake.record_read("raw_reviews", digest, "run-42:raw_reviews", "validate drop")
    assert (entry.kind, entry.consumer, entry.allowed) == ("pipeline", "run-42:raw_reviews", True)
    set_policy(lake, '[[rules]]\nreaders = ["pipeline"]\ndatasets = ["reviews"]\nallow = false\n')
    with pytest.raises(AccessDenied, match="'pipeline'"):
        lake.record_read("reviews", "v1", "run-43:review_splits", "split")
    assert [(e.consumer, e.allowed) for e in lake.audit()] == [
        ("run-42:raw_reviews", True),
        ("run-43:review_splits", False),
    ]
    assert lake.audit()[0].to_dict()["dataset"] == "raw_reviews"


# ------------------------------------------------------------------------------------------- ledger


def _append_reads(root: str, worker: int, count: int) -> None:
    lake = Lake(PlatformHome(Path(root)))
    for i in range(count):
        lake.record_read("reviews", f"v{i}", f"run-{worker}:reviews", "load " + "x" * 200)


def test_concurrent_appends_from_several_processes_are_all_intact(home: PlatformHome) -> None:
    workers, per_worker = 4, 50
    Lake(home).access_policy()  # one writer of the default policy, as the CLI would on first use
    context = multiprocessing.get_context("fork")
    processes = [
        context.Process(target=_append_reads, args=(str(home.root), w, per_worker)) for w in range(workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    log = Lake(home).audit_log()
    assert log.skipped_lines == 0
    seen = {(e.consumer, e.version) for e in log.entries}
    assert len(log.entries) == len(seen) == workers * per_worker
    assert seen == {(f"run-{w}:reviews", f"v{i}") for w in range(workers) for i in range(per_worker)}


def test_torn_tail_is_skipped_and_counted_and_next_append_is_clean(lake: Lake, tmp_path: Path) -> None:
    digest = accepted_drop(lake, tmp_path)
    lake.record_read("raw_reviews", digest, "run-1:raw_reviews", "validate")
    with open(lake.ledger_file, "ab") as handle:
        handle.write(b'{"time": "2024-01-01T00:00:00+00:00", "consu')  # crash mid-write
    log = lake.audit_log()
    assert (len(log.entries), log.skipped_lines) == (1, 1)
    lake.record_read("raw_reviews", digest, "run-2:raw_reviews", "validate")
    log = lake.audit_log()
    assert [e.consumer for e in log.entries] == ["run-1:raw_reviews", "run-2:raw_reviews"]
    assert log.skipped_lines == 1


@pytest.mark.realdata
def test_real_file_lands_and_is_accepted_intact(lake: Lake, real_data_path: Path, tmp_path: Path) -> None:
    [landed] = lake.land([real_data_path])
    assert landed.hash == sha256_file(real_data_path)
    [waiting] = lake.pending()
    drop = lake.accept(waiting.hash)
    assert drop.names == (real_data_path.name,) and drop.size == real_data_path.stat().st_size
    checkout = lake.checkout("raw_reviews", reader="ana", purpose="eda", dest=tmp_path / "out")
    assert sha256_file(checkout.copied_to) == landed.hash
