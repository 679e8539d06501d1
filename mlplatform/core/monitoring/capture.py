"""The capture record format and its reader: what the endpoint wrote, as one polars frame.

Format: JSON lines, one line per review row of a 2xx inference request. A request of N reviews writes N
lines that share its `request_id` and `capture_id` and are numbered by `row` (0..N-1); a row is what
monitoring joins with ground truth (by `review_id`), so one row per review keeps the file readable as a
table with no unnesting. Columns: see `CAPTURE_COLUMNS`, and one `p_<class>` per class of the model that
answered (core/scoring/model.py's `probability_columns`: a model of other classes writes other columns,
and a row leaves the columns of classes its model lacks null); `time` is when the request arrived (UTC),
`latency_ms` runs from arrival until the answer was ready, before the wait for the capture fsync (which
the latency histogram in /metrics includes). `text` is the prepared text that was scored
(core/data/text.py). `explanation` is the prediction's explanation (a list of `{ngram, weight}`, the
n-grams that pushed the predicted class most, strongest first) when the request asked for one, else
null; segments written before it existed read it as null. `encode_capture_rows` writes a request's
lines.

Roles (`role`, `CaptureRole`): `answered` rows are what the client was answered, by the version named
in `model_version`. During a shadow rollout each answered row has a `shadow` row beside it (same
`capture_id` and `row`): the rollout's candidate's prediction of the same text, made off the answer's
path and never returned, under the candidate's own `model_version`, with its own scoring time as
`latency_ms`. A candidate that failed to predict (an error, a full shadow queue, or a canary candidate
whose failure production answered for) leaves a `shadow` row with `error` set and no label or
probabilities, so every answered row has its shadow row and failures are counted, not lost; a shadow the
endpoint had no room to hand over is `error` "dropped: ..." (`SHADOW_DROPPED`). Segments
written before roles existed read `role` and `error` as null: answered rows (`answered_only`).

Keys: `request_id` is the client's `X-Request-ID` as given (or one the endpoint made), so clients find
their requests under their own ids; but clients reuse ids (a retry after a timeout, a fixed id in a
script), so it is not a key. `capture_id` is: the endpoint makes one per captured request (a random
UUID, hex) and returns it in the answer's `X-Capture-ID` header. Monitoring deduplicates rows by
(`capture_id`, `row`), so two requests sent with one id are both kept, and a segment read twice still
counts once. Segments written before `capture_id` existed read it as null; readers key those rows by
`request_id`, as before.

Segments: `<utc stamp>-<pid>-<seq>.jsonl.open` while written, `<...>.jsonl` once sealed (an atomic
rename). An open segment may end in zeros (preallocated room) and, after a crash, in a torn last line or
any mix of zeros and partial bytes after its last durable record, never before it: readers take its
bytes up to the first NUL (JSON lines never contain one: orjson escapes control characters) and then up
to the last newline (`complete_lines`).

Capture location (`[storage] capture`): sealed segments may be published elsewhere (object storage);
`read_capture` and `list_segments` read the published segments plus the local ones, each once. The
writer (group commit, rotation, preallocation, publishing) is the endpoint's: `serving/capture.py`.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import polars as pl

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.storage import ObjectNotFound, StorageError, StorageLocation, is_home_directory
from mlplatform.core.scoring.model import PROBABILITY_PREFIX, Contribution, probability_columns

OPEN_SUFFIX = ".open"
SEALED_SUFFIX = ".jsonl"

# The schema as written (time is an ISO-8601 UTC string in the file, a Datetime once read).
_WRITTEN_SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "capture_id": pl.String(),
    "time": pl.String(),
    "route": pl.String(),
    "model_version": pl.String(),
    "row": pl.Int64(),
    "text": pl.String(),
    "product_id": pl.String(),
    "review_id": pl.String(),
    "label": pl.String(),
    "latency_ms": pl.Float64(),
    # The explanation of the prediction when the request asked for one, else null (and in segments
    # written before explanations existed).
    "explanation": pl.List(pl.Struct({"ngram": pl.String(), "weight": pl.Float64()})),
    "role": pl.String(),
    "error": pl.String(),
}
CAPTURE_COLUMNS: tuple[str, ...] = tuple(_WRITTEN_SCHEMA)
"""The columns every record has (besides its model's `p_<class>` columns)."""
# A record's keys follow "{" or ","; inside a JSON string a quote is always escaped, so this finds keys only.
_PROBABILITY_KEY = re.compile(rb'[{,]"(p_[^"\\]*)":')


SHADOW_DROPPED = "dropped: "
"""How the `error` of a shadow row the endpoint could not hand to its shadow worker begins (capacity,
not the candidate's failure: a rollout's judgement leaves these out of the candidate's error rate)."""


class CaptureRole(StrEnum):
    """Whether a captured prediction was returned to the client (see the module docstring)."""

    ANSWERED = "answered"
    SHADOW = "shadow"


class CaptureError(UserError, RuntimeError):
    """Capture records could not be written (or read back)."""


def utc_iso(epoch_seconds: float) -> str:
    """ISO-8601 UTC with microseconds, the `time` column as written."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_capture_rows(
    *,
    request_id: str,
    capture_id: str,
    received_at: float,
    route: str,
    model_version: str,
    texts: Sequence[str],
    product_ids: Sequence[str | None],
    review_ids: Sequence[str | None],
    labels: Sequence[str] | None,
    probabilities: np.ndarray | None,
    latency_ms: float,
    classes: Sequence[str],
    explanations: Sequence[Sequence[Contribution]] | None = None,
    role: CaptureRole = CaptureRole.ANSWERED,
    error: str | None = None,
) -> bytes:
    """The capture lines of one request: one JSON object per review row, each ending in a newline;
    `probabilities` has one column per class of `classes` (the answering model's).

    `explanations`: each row's top n-grams when the request asked to explain (written as a list of
    `{"ngram", "weight"}`), else the column is left out of the lines (read as null).

    With `error` (a candidate that could not predict: a `shadow` row) the rows carry the error and no
    label or probabilities; `labels` and `probabilities` are then None.
    """
    columns = probability_columns(tuple(classes))
    shared = _shared_fields(request_id, capture_id, received_at, route, model_version)
    failed = error is not None
    outputs = (
        itertools.repeat((None, None), len(texts)) if failed else zip(labels, probabilities, strict=True)
    )
    lines = []
    for row, (text, product_id, review_id, (label, scores)) in enumerate(
        zip(texts, product_ids, review_ids, outputs, strict=True)
    ):
        record = {
            **shared,
            "row": row,
            "text": text,
            "product_id": product_id,
            "review_id": review_id,
            "label": label,
            **({} if failed else dict(zip(columns, scores, strict=True))),
            "latency_ms": latency_ms,
            "role": role.value,
            **({"error": error} if failed else {}),
        }
        if explanations is not None:
            record["explanation"] = explanations[row]
        lines.append(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE))
    return b"".join(lines)


def _shared_fields(
    request_id: str, capture_id: str, received_at: float, route: str, model_version: str
) -> dict[str, str]:
    return {
        "request_id": request_id,
        "capture_id": capture_id,
        "time": utc_iso(received_at),
        "route": route,
        "model_version": model_version,
    }


def role_of_rows() -> pl.Expr:
    """Each row's role; rows written before roles existed were answered."""
    return pl.col("role").fill_null(CaptureRole.ANSWERED.value)


def answered_only(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows that were returned to clients (all of a frame without a `role` column)."""
    if "role" not in frame.columns:
        return frame
    return frame.filter(role_of_rows() == CaptureRole.ANSWERED.value)


# --- reading ------------------------------------------------------------------------------------------


def sealed_name(open_path: Path) -> Path:
    """The name an open segment takes when it is sealed."""
    return open_path.with_name(open_path.name.removesuffix(OPEN_SUFFIX))


def complete_lines(data: bytes) -> bytes:
    """A segment's records: its bytes up to the first NUL (preallocated zeros, or what a crash left after
    the last durable record), then up to the last newline (a torn last line is skipped)."""
    end = data.find(b"\0")
    if end >= 0:
        data = data[:end]
    return data[: data.rfind(b"\n") + 1]


def written_length(path: Path, block: int = 1 << 16) -> int:
    """How far a local segment holds data: its size less a zero tail (read backwards, block by block)."""
    with path.open("rb") as handle:
        end = handle.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - block)
            handle.seek(start)
            data = handle.read(end - start).rstrip(b"\0")
            if data:
                return start + len(data)
            end = start
    return 0


def remote_location(location: StorageLocation | None, root: Path) -> StorageLocation | None:
    """The capture location when it is not the local capture directory itself, else None."""
    return None if location is None or is_home_directory(location, root) else location


def _segment_order(item: tuple[str, Any]) -> str:
    """Segments sort by name (UTC stamp first), an open one with the sealed name it will get."""
    return item[0].removesuffix(OPEN_SUFFIX)


def _read_local_segment(path: Path, remote: StorageLocation | None) -> bytes:
    """A local segment's bytes, following a concurrent seal (open -> sealed) and publish (-> remote)."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if path.name.endswith(OPEN_SUFFIX):
            return _read_local_segment(sealed_name(path), remote)
        if remote is None:
            raise
    try:
        return remote.get_bytes(path.name)
    except ObjectNotFound:
        raise CaptureError(
            f"capture segment {path.name} vanished from {path.parent} and {remote.url}"
        ) from None


def _published_segments(remote: StorageLocation | None) -> dict[str, int]:
    """{name: size} of the published segments, sorted, from one listing (no request per segment)."""
    if remote is None:
        return {}
    try:
        listed = remote.list_sizes(recursive=False)
    except (StorageError, OSError) as exc:
        raise CaptureError(f"capture location {remote.url} cannot be listed: {exc}") from exc
    return {key: size for key, size in listed.items() if key.endswith(SEALED_SUFFIX)}


def list_segments(root: Path, location: StorageLocation | None = None) -> list[tuple[str, int]]:
    """(name, size) of every segment, local (open and sealed) and published, in write order.

    An open segment's size is how far it holds records (its zero-filled room ahead is not counted), so
    the size grows with every record whether or not the segment is preallocated.
    """
    found = _published_segments(remote_location(location, Path(root)))
    if Path(root).is_dir():
        for path in Path(root).iterdir():
            if path.name.endswith((SEALED_SUFFIX, SEALED_SUFFIX + OPEN_SUFFIX)):
                with contextlib.suppress(FileNotFoundError):  # sealed or published meanwhile
                    open_segment = path.name.endswith(OPEN_SUFFIX)
                    found[path.name] = written_length(path) if open_segment else path.stat().st_size
    return sorted(found.items(), key=_segment_order)


def _local_segments(root: Path) -> dict[str, Path]:
    """Local segments by sealed name. Open ones are listed first: one sealed meanwhile is then still
    seen (as sealed), and one seen both ways is read once, sealed."""
    found = {sealed_name(path).name: path for path in root.glob(f"*{SEALED_SUFFIX}{OPEN_SUFFIX}")}
    found.update({path.name: path for path in root.glob(f"*{SEALED_SUFFIX}")})
    return found


def _segment_bytes(root: Path, remote: StorageLocation | None) -> list[tuple[str, bytes]]:
    """(name, bytes) of every segment, oldest first; a segment both local and published is read once."""
    local = _local_segments(root)
    published = [name for name in _published_segments(remote) if name not in local]
    segments: list[tuple[str, bytes]] = []
    if remote is not None and published:
        fetched = remote.get_many(published)
        segments += [(name, fetched[name]) for name in published]
    segments += [(path.name, _read_local_segment(path, remote)) for path in local.values()]
    return sorted(segments, key=_segment_order)


def _schema_with(probability_columns: list[str]) -> dict[str, pl.DataType]:
    """The written schema with these `p_<class>` columns where records write them: after `label`."""
    schema: dict[str, pl.DataType] = {}
    for name, dtype in _WRITTEN_SCHEMA.items():
        schema[name] = dtype
        if name == "label":
            schema.update(dict.fromkeys(probability_columns, pl.Float64()))
    return schema


def _probability_keys(data: bytes) -> list[str]:
    """The `p_<class>` columns a segment's records hold, in the order first written."""
    return list(dict.fromkeys(match.decode("utf-8") for match in _PROBABILITY_KEY.findall(data)))


def probabilities_of(record: dict[str, Any]) -> dict[str, float]:
    """A capture record's (or log row's) probabilities by class: its `p_<class>` values that are set."""
    return {
        name.removeprefix(PROBABILITY_PREFIX): value
        for name, value in record.items()
        if name.startswith(PROBABILITY_PREFIX) and value is not None
    }


def read_capture(root: Path, location: StorageLocation | None = None) -> pl.DataFrame:
    """All capture records (sealed and open segments, oldest first) as a polars frame.

    `root` is the local capture directory; `location` the `[storage] capture` location, whose
    published segments are read too when it is elsewhere.
    """
    root = Path(root)
    if not root.is_dir():
        raise CaptureError(f"capture directory {root} does not exist")
    frames = []
    for name, raw in _segment_bytes(root, remote_location(location, root)):
        path = root / name
        data = complete_lines(raw)
        if not data:
            continue
        schema = _schema_with(_probability_keys(data))
        try:
            frames.append(pl.read_ndjson(io.BytesIO(data), schema=schema))
        except pl.exceptions.PolarsError as exc:
            raise CaptureError(f"capture segment {path} is unreadable: {exc}") from exc
    frame = pl.concat(frames, how="diagonal") if frames else pl.DataFrame(schema=_WRITTEN_SCHEMA)
    frame = frame.select(
        list(_schema_with([name for name in frame.columns if name.startswith(PROBABILITY_PREFIX)]))
    )
    return frame.with_columns(
        pl.col("time").str.to_datetime("%Y-%m-%dT%H:%M:%S%.fZ", time_unit="us", time_zone="UTC")
    )
