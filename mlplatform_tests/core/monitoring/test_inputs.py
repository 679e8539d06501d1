"""Monitoring's inputs from outside the graph: the capture and the labels files, and their fingerprints."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.core.data.contract import load_contract
from mlplatform.core.monitoring.inputs import MonitoringInputs, read_prediction_log
from mlplatform.core.monitoring.prediction_log import INPUT_FINGERPRINT
from mlplatform.core.monitoring.rules import MonitoringError
from mlplatform_tests.core.data.generated import FIVE_CLASS
from mlplatform_tests.core.monitoring.test_capture import rows

CLOTHING = load_contract()


@pytest.fixture
def inputs(tmp_path: Path) -> MonitoringInputs:
    (tmp_path / "capture").mkdir()
    return MonitoringInputs(tmp_path / "capture", None, tmp_path / "labels")


def segment(inputs: MonitoringInputs, name: str, *request_ids: str) -> Path:
    path = inputs.capture_root / f"20240101T00000{name}000000Z-999999999-000001.jsonl"
    path.write_bytes(b"".join(rows(request_id) for request_id in request_ids))
    return path


def test_nothing_captured_has_no_fingerprint_and_an_empty_log(inputs: MonitoringInputs) -> None:
    assert inputs.fingerprint() is None and inputs.capture_summary().fingerprint is None
    assert inputs.capture_summary().data_version == "nothing captured"
    log = read_prediction_log(inputs)
    assert log.frame.height == 0
    assert log.metadata()[INPUT_FINGERPRINT] == "nothing captured"


def test_the_capture_fingerprint_follows_the_capture_and_the_whole_one_the_labels_too(
    inputs: MonitoringInputs,
) -> None:
    first = segment(inputs, "1", "a")
    capture, whole = inputs.capture_summary().fingerprint, inputs.fingerprint()
    assert capture is not None and whole == capture  # no labels yet

    inputs.labels_dir.mkdir()
    (inputs.labels_dir / "truth.csv").write_text("review_id,label\nr1,positive\n")
    assert inputs.capture_summary().fingerprint == capture and inputs.fingerprint() != whole

    first.write_bytes(first.read_bytes() + rows("b"))  # the segment grew
    summary = inputs.capture_summary()
    assert summary.fingerprint != capture and summary.data_version == summary.fingerprint
    assert (summary.segments, summary.size_bytes) == (1, len(rows("a")) + len(rows("b")))
    log = read_prediction_log(inputs)
    assert log.frame["request_id"].to_list() == ["a", "b"]
    assert log.metadata()[INPUT_FINGERPRINT] == inputs.fingerprint()


def test_labels_are_read_from_every_file_by_label_or_rating(inputs: MonitoringInputs) -> None:
    assert inputs.labels(CLOTHING).columns == ["review_id", "label"] and inputs.labels(CLOTHING).height == 0
    inputs.labels_dir.mkdir()
    (inputs.labels_dir / "a.csv").write_text("review_id,label\nr1,positive\n")
    (inputs.labels_dir / "b.csv").write_text("review_id,rating\nr2,1\n")
    (inputs.labels_dir / "c.csv").write_text("review_id,Rating\nr3,3\n")  # the contract's source name
    (inputs.labels_dir / "notes.txt").write_text("not a labels file")
    assert sorted(inputs.labels(CLOTHING).rows()) == [
        ("r1", "positive"),
        ("r2", "negative"),
        ("r3", "neutral"),
    ]


def test_labels_follow_another_contract(inputs: MonitoringInputs) -> None:
    inputs.labels_dir.mkdir()
    (inputs.labels_dir / "stars.csv").write_text("ReviewKey,Stars\nkey-1,2\nkey-2,9\n")
    assert sorted(inputs.labels(FIVE_CLASS).rows()) == [("key-1", "awful"), ("key-2", "great")]
    (inputs.labels_dir / "again.csv").write_text("review_id,label\nkey-1,poor\n")
    with pytest.raises(MonitoringError, match="conflicting labels"):
        inputs.labels(FIVE_CLASS)


def test_a_bad_labels_file_is_named(inputs: MonitoringInputs) -> None:
    inputs.labels_dir.mkdir()
    bad = inputs.labels_dir / "broken.csv"
    bad.write_text("review_id,stars\nx,5\n")
    with pytest.raises(MonitoringError, match=f"labels file {bad}"):
        inputs.labels(CLOTHING)
