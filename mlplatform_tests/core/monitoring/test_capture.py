"""The capture record format and its reader: torn tails, zero-filled room, a missing or empty capture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlplatform.core.monitoring.capture import (
    CAPTURE_COLUMNS,
    CaptureError,
    CaptureRole,
    answered_only,
    encode_capture_rows,
    probabilities_of,
    read_capture,
)
from mlplatform.core.scoring.model import Contribution


def rows(
    request_id: str,
    count: int = 1,
    version: str = "v1",
    classes: tuple[str, ...] = ("negative", "neutral", "positive"),
    role: CaptureRole = CaptureRole.ANSWERED,
) -> bytes:
    shares = np.array([0.1, 0.2, 0.7]) if len(classes) == 3 else np.linspace(1.0, 2.0, len(classes))
    return encode_capture_rows(
        request_id=request_id,
        capture_id=f"capture-of-{request_id}",
        received_at=1_700_000_000.25,
        route="/predict",
        model_version=version,
        texts=[f"text {i} of {request_id}" for i in range(count)],
        product_ids=[str(i) for i in range(count)],
        review_ids=[None] * count,
        labels=[classes[-1]] * count,
        probabilities=np.tile((shares / shares.sum()).astype(np.float32), (count, 1)),
        latency_ms=1.5,
        classes=classes,
        role=role,
    )


def test_reader_skips_a_torn_tail(tmp_path: Path) -> None:
    complete = rows("whole")
    (tmp_path / "20240101T000000000000Z-999999999-000001.jsonl.open").write_bytes(
        complete + rows("torn")[:25]
    )
    frame = read_capture(tmp_path)
    assert frame["request_id"].to_list() == ["whole"]


def test_reader_skips_zero_filled_room_and_what_a_crash_left_in_it(tmp_path: Path) -> None:
    whole = rows("whole")
    torn = rows("torn")
    # Preallocated room after the records ...
    (tmp_path / "20240101T000000000000Z-999999999-000001.jsonl.open").write_bytes(whole + bytes(4096))
    # ... and a crash that wrote the end of a record's page but not its start: zeros, then bytes.
    (tmp_path / "20240101T000000000000Z-999999999-000002.jsonl.open").write_bytes(
        whole + bytes(30) + torn[30:] + bytes(100)
    )
    assert read_capture(tmp_path)["request_id"].to_list() == ["whole", "whole"]


def test_reading_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="does not exist"):
        read_capture(tmp_path / "absent")


def test_empty_capture_reads_as_an_empty_typed_frame(tmp_path: Path) -> None:
    frame = read_capture(tmp_path)
    assert frame.height == 0
    assert frame.columns == list(CAPTURE_COLUMNS)


def test_shadow_rows_and_failed_ones_read_back_beside_the_answers(tmp_path: Path) -> None:
    failed = encode_capture_rows(
        request_id="b",
        capture_id="capture-of-b",
        received_at=1_700_000_001.0,
        route="/predict",
        model_version="v2",
        texts=["one", "two"],
        product_ids=["7", None],
        review_ids=[None, "r2"],
        labels=None,
        probabilities=None,
        latency_ms=0.0,
        classes=("negative", "neutral", "positive"),
        role=CaptureRole.SHADOW,
        error="shadow queue full: dropped",
    )
    segment = rows("a") + rows("a", version="v2", role=CaptureRole.SHADOW) + failed
    (tmp_path / "20240101T000000000000Z-999999999-000001.jsonl").write_bytes(segment)

    frame = read_capture(tmp_path)
    assert frame.select("request_id", "model_version", "role").rows() == [
        ("a", "v1", "answered"),
        ("a", "v2", "shadow"),
        ("b", "v2", "shadow"),
        ("b", "v2", "shadow"),
    ]
    dropped = "shadow queue full: dropped"
    assert frame["error"].to_list() == [None, None, dropped, dropped]
    assert frame["label"].to_list()[2:] == [None, None] and frame["p_positive"].to_list()[2:] == [None, None]
    assert answered_only(frame)["model_version"].to_list() == ["v1"]


def test_segments_written_before_roles_read_as_answered(tmp_path: Path) -> None:
    old = b"".join(line.replace(b',"role":"answered"', b"") + b"\n" for line in rows("old").splitlines())
    (tmp_path / "20240101T000000000000Z-999999999-000001.jsonl").write_bytes(old)
    frame = read_capture(tmp_path)
    assert frame["role"].to_list() == [None] and frame["error"].to_list() == [None]
    assert answered_only(frame).height == 1


def test_each_record_holds_the_probabilities_of_its_models_classes(tmp_path: Path) -> None:
    (tmp_path / "20240101T000000000000Z-999999999-000001.jsonl").write_bytes(
        rows("three") + rows("two", 2, "v2", ("bad", "good"))
    )
    (tmp_path / "20240101T000000000000Z-999999999-000002.jsonl").write_bytes(
        rows("five", 1, "v3", ("awful", "poor", "okay", "good", "great"))
    )
    frame = read_capture(tmp_path)
    probabilities = [column for column in frame.columns if column.startswith("p_")]
    assert probabilities == [
        "p_negative",
        "p_neutral",
        "p_positive",
        "p_bad",
        "p_good",
        "p_awful",
        "p_poor",
        "p_okay",
        "p_great",
    ]
    assert all(frame.schema[column] == pl.Float64 for column in probabilities)
    by_request = {row["request_id"]: row for row in frame.iter_rows(named=True)}
    assert probabilities_of(by_request["two"]) == pytest.approx({"bad": 1 / 3, "good": 2 / 3})
    assert set(probabilities_of(by_request["three"])) == {"negative", "neutral", "positive"}
    assert set(probabilities_of(by_request["five"])) == {"awful", "poor", "okay", "good", "great"}
    # a text that spells a probability key is a text, not a column
    tricky = encode_capture_rows(
        request_id="tricky",
        capture_id="capture-of-tricky",
        received_at=1.0,
        route="/predict",
        model_version="v1",
        texts=['x","p_evil":1,"y'],
        product_ids=[None],
        review_ids=[None],
        labels=["good"],
        probabilities=np.array([[0.5, 0.5]], dtype=np.float32),
        latency_ms=1.0,
        classes=("bad", "good"),
    )
    (tmp_path / "20240101T000000000000Z-999999999-000003.jsonl").write_bytes(tricky)
    assert "p_evil" not in read_capture(tmp_path).columns


def test_explanations_are_captured_and_older_records_read_them_as_null(tmp_path: Path) -> None:
    explained = encode_capture_rows(
        request_id="explained",
        capture_id="capture-of-explained",
        received_at=2.0,
        route="/predict",
        model_version="v2",
        texts=["runs small, p_evil fabric"],
        product_ids=[None],
        review_ids=[None],
        labels=["bad"],
        probabilities=np.array([[0.8, 0.2]], dtype=np.float32),
        latency_ms=1.0,
        classes=("bad", "good"),
        explanations=[(Contribution("runs small", 0.75), Contribution("p_evil", 0.25))],
    )
    # Written before explanations existed: no `explanation` key at all.
    (tmp_path / "20240101T000000000000Z-999999999-000001.jsonl").write_bytes(rows("older"))
    (tmp_path / "20240101T000000000000Z-999999999-000002.jsonl").write_bytes(explained + rows("plain"))
    frame = read_capture(tmp_path)
    by_request = {row["request_id"]: row for row in frame.iter_rows(named=True)}
    assert by_request["older"]["explanation"] is None and by_request["plain"]["explanation"] is None
    assert by_request["explained"]["explanation"] == [
        {"ngram": "runs small", "weight": 0.75},
        {"ngram": "p_evil", "weight": 0.25},
    ]
    assert "p_evil" not in frame.columns
