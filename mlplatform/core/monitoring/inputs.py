"""What the monitors read from outside the asset graph: the endpoint's capture and ground-truth labels.

The capture is written by the endpoint (append-only segments, local and maybe published to a storage
location); labels land later as CSV files, read by the dataset contract (live_quality.ground_truth:
keyed by `review_id` or the contract's id columns, with the contract's label source or a `label`).
Neither is an asset's output, so their fingerprints are how change is noticed: the capture's segment
names and sizes (a new or grown segment changes it), and the labels files' names, sizes and
modification times.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from mlplatform.core.data.contract import DatasetContract
from mlplatform.core.monitoring.capture import list_segments, read_capture
from mlplatform.core.monitoring.live_quality import ground_truth, unique_truth
from mlplatform.core.monitoring.prediction_log import PredictionLog, prediction_log
from mlplatform.core.monitoring.rules import MonitoringError
from mlplatform.core.platform.storage import StorageLocation


@dataclass(frozen=True)
class CaptureSummary:
    """The capture at a glance: how many segments and bytes, and its fingerprint (None: nothing yet)."""

    segments: int
    size_bytes: int
    fingerprint: str | None

    @property
    def data_version(self) -> str:
        """The capture's data version: its fingerprint, or "nothing captured"."""
        return self.fingerprint or "nothing captured"


@dataclass(frozen=True)
class MonitoringInputs:
    """Where a home's capture and labels are: the local capture directory, the `[storage] capture`
    location (None: the local directory only) and the labels landing directory."""

    capture_root: Path
    capture_location: StorageLocation | None
    labels_dir: Path

    def segments(self) -> list[tuple[str, int]]:
        """(name, size) of every capture segment, local and published, in write order."""
        return list_segments(self.capture_root, self.capture_location)

    def capture(self) -> pl.DataFrame:
        """Every capture record as one frame (see capture.read_capture)."""
        return read_capture(self.capture_root, self.capture_location)

    def label_files(self) -> list[Path]:
        return sorted(self.labels_dir.glob("*.csv")) if self.labels_dir.is_dir() else []

    def labels(self, contract: DatasetContract) -> pl.DataFrame:
        """Every labels file, read by the dataset contract, as one (review_id, label) frame of classes
        (empty when none landed); a file that cannot be read or conflicts with another is named."""
        frames = []
        for path in self.label_files():
            try:
                frames.append(ground_truth(pl.read_csv(path, infer_schema=False), contract))
            except (MonitoringError, pl.exceptions.PolarsError) as exc:
                raise MonitoringError(f"labels file {path}: {exc}") from exc
        if not frames:
            return pl.DataFrame(schema={"review_id": pl.String, "label": pl.String})
        return unique_truth(pl.concat(frames))

    def capture_summary(self) -> CaptureSummary:
        """How much is captured and its fingerprint (segment names and sizes)."""
        segments = self.segments()
        return CaptureSummary(
            segments=len(segments),
            size_bytes=sum(size for _, size in segments),
            fingerprint=_fingerprint(segments, []) if segments else None,
        )

    def fingerprint(self) -> str | None:
        """A hash of the capture and the labels files (None: nothing captured yet): the cue that the
        monitors are behind what they read."""
        segments = self.segments()
        return _fingerprint(segments, self.label_files()) if segments else None


def read_prediction_log(inputs: MonitoringInputs) -> PredictionLog:
    """The prediction log of everything `inputs` captured, fingerprinted with the labels beside it."""
    fingerprint = inputs.fingerprint()
    log, stats = prediction_log(inputs.capture())
    return PredictionLog(log, stats, fingerprint)


def _fingerprint(segments: list[tuple[str, int]], label_files: list[Path]) -> str:
    digest = hashlib.sha256()
    for name, size in segments:
        digest.update(f"capture\0{name}\0{size}\n".encode())
    for path in label_files:
        stat = path.stat()
        digest.update(f"labels\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()
