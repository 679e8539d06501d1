"""Train / validation / test splits that are a pure function of the review id.

A review's position is a hash of (salt, review_id) read as a number in [0, 1): below `test_share` it is
test, below `test_share + validation_share` validation, else train. Nothing else is an input, so growing
data never moves a review between splits, and changing the validation share never moves a test review.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import polars as pl

from mlplatform.core.data.quality import CheckOutcome, MetadataValue
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import SplitRules

SPLITS: tuple[str, ...] = ("train", "validation", "test")
_POSITION_BYTES = 8
NO_LEAKAGE_CHECK = "no_leakage"
PROPORTIONS_CHECK = "proportions"
CLASS_COVERAGE_CHECK = "class_coverage"


class SplitError(UserError, ValueError):
    """Splits cannot be assigned or checked for this input."""


def split_position(review_id: str, salt: str) -> float:
    """Where a review falls in [0, 1): the first 8 bytes of SHA-256(salt NUL review_id) over 2**64."""
    digest = hashlib.sha256(f"{salt}\x00{review_id}".encode()).digest()
    return int.from_bytes(digest[:_POSITION_BYTES], "big") / 2 ** (8 * _POSITION_BYTES)


def split_of(review_id: str, rules: SplitRules) -> str:
    """The split of one review id."""
    position = split_position(review_id, rules.salt)
    if position < rules.test_share:
        return "test"
    if position < rules.test_share + rules.validation_share:
        return "validation"
    return "train"


def assign_splits(frame: pl.DataFrame, rules: SplitRules) -> pl.DataFrame:
    """`frame` with a `split` column ("train" / "validation" / "test") derived from `review_id`."""
    if "review_id" not in frame.columns:
        raise SplitError("cannot assign splits: the frame has no 'review_id' column")
    ids = frame.get_column("review_id")
    if ids.null_count():
        raise SplitError(f"cannot assign splits: {ids.null_count()} rows have no review_id")
    splits = [split_of(review_id, rules) for review_id in ids.to_list()]
    return frame.with_columns(pl.Series("split", splits, dtype=pl.String))


# --- checks -----------------------------------------------------------------------------------------


def _require(frame: pl.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise SplitError(f"cannot check splits: missing columns {missing}")


def split_metadata(
    frame: pl.DataFrame, classes: Sequence[str], label_col: str = "label"
) -> dict[str, MetadataValue]:
    """Rows, share of all rows and the share of each of `classes` in each split, e.g. `test/rows`,
    `test/label_share/neutral`."""
    _require(frame, ("split", label_col))
    unknown = set(frame.get_column("split").unique().to_list()) - set(SPLITS)
    if unknown:
        raise SplitError(f"column 'split' holds values that are not splits: {sorted(map(str, unknown))}")
    counts = {(split, label): n for split, label, n in frame.group_by("split", label_col).len().iter_rows()}
    metadata: dict[str, MetadataValue] = {"rows": frame.height}
    for split in SPLITS:
        rows = sum(n for (name, _), n in counts.items() if name == split)
        metadata[f"{split}/rows"] = rows
        metadata[f"{split}/share"] = rows / frame.height if frame.height else 0.0
        for label in classes:
            share = counts.get((split, label), 0) / rows if rows else 0.0
            metadata[f"{split}/label_share/{label}"] = share
    return metadata


def check_no_leakage(frame: pl.DataFrame, previous: pl.DataFrame | None = None) -> CheckOutcome:
    """No review id sits in two splits: within `frame`, nor moved since the `previous` version.

    Reviews sharing the same model text across splits are counted in the metadata for information
    (different reviews may say the same thing; their ids differ, so it is not a failure).
    """
    _require(frame, ("review_id", "split"))
    leaked = (
        frame.group_by("review_id")
        .agg(pl.col("split").n_unique().alias("splits"))
        .filter(pl.col("splits") > 1)
    )
    problems = []
    if leaked.height:
        problems.append(f"{leaked.height} review ids are in more than one split (e.g. {_examples(leaked)})")
    metadata: dict[str, MetadataValue] = {"rows": frame.height, "ids_in_several_splits": leaked.height}
    if previous is not None:
        _require(previous, ("review_id", "split"))
        moved = frame.join(
            previous.select("review_id", pl.col("split").alias("previous_split")), on="review_id"
        )
        moved = moved.filter(pl.col("split") != pl.col("previous_split")).unique("review_id")
        metadata["ids_moved_since_previous"] = moved.height
        if moved.height:
            problems.append(
                f"{moved.height} review ids changed split since the previous version (e.g. {_examples(moved)})"
            )
    if "text" in frame.columns:
        shared = frame.group_by("text").agg(pl.col("split").n_unique().alias("splits"))
        metadata["texts_in_several_splits"] = shared.filter(pl.col("splits") > 1).height
    if problems:
        return CheckOutcome(NO_LEAKAGE_CHECK, False, "; ".join(problems), metadata)
    against = "" if previous is None else ", and none moved since the previous version"
    return CheckOutcome(
        NO_LEAKAGE_CHECK,
        True,
        f"every review id of {frame.height} rows is in exactly one split{against}",
        metadata,
    )


def _examples(rows: pl.DataFrame) -> str:
    return ", ".join(rows.get_column("review_id").sort().head(3).to_list())


def allowed_share_gap(target: float, rows: int, rules: SplitRules) -> float:
    """How far a split's share may stray: the fixed tolerance, widened on small data to
    `proportion_sigmas` binomial standard deviations (hash-assigned splits wobble like coin flips)."""
    return max(rules.proportion_tolerance, rules.proportion_sigmas * math.sqrt(target * (1 - target) / rows))


def check_proportions(
    frame: pl.DataFrame, rules: SplitRules, classes: Sequence[str], label_col: str = "label"
) -> CheckOutcome:
    """Each split's share of rows is within `allowed_share_gap` of its target."""
    metadata = split_metadata(frame, classes, label_col)
    if frame.height == 0:
        return CheckOutcome(PROPORTIONS_CHECK, False, "no rows to split", metadata)
    problems = []
    for split, target in rules.target_shares().items():
        share = float(metadata[f"{split}/share"])
        allowed = allowed_share_gap(target, frame.height, rules)
        metadata[f"{split}/share_gap"] = share - target
        if abs(share - target) > allowed:
            problems.append(
                f"{split} share {share:.3f} is off target {target:.3f} by more than {allowed:.3f}"
            )
    if problems:
        return CheckOutcome(PROPORTIONS_CHECK, False, "; ".join(problems), metadata)
    return CheckOutcome(PROPORTIONS_CHECK, True, "all split shares within tolerance of target", metadata)


def _max_label_share_gap(metadata: Mapping[str, MetadataValue], overall: Mapping[str, float]) -> float:
    return max(
        abs(float(metadata[f"{split}/label_share/{label}"]) - share)
        for split in SPLITS
        if metadata[f"{split}/rows"]
        for label, share in overall.items()
    )


def check_class_coverage(
    frame: pl.DataFrame, classes: Sequence[str], label_col: str = "label"
) -> CheckOutcome:
    """Every declared class appears in every split (a model learns, is tuned and is judged on each);
    metadata also carries the largest gap between a split's class share and the overall one (how well
    the hash split stratifies)."""
    metadata = split_metadata(frame, classes, label_col)
    if frame.height == 0:
        return CheckOutcome(CLASS_COVERAGE_CHECK, False, "no rows to split", metadata)
    overall_counts = dict(frame.group_by(label_col).len().iter_rows())
    unknown = set(overall_counts) - set(classes)
    if unknown:
        raise SplitError(
            f"column '{label_col}' holds values that are not classes {list(classes)}: {sorted(map(str, unknown))}"
        )
    overall = {label: overall_counts.get(label, 0) / frame.height for label in classes}
    metadata["max_label_share_gap"] = _max_label_share_gap(metadata, overall)
    missing = [
        f"{label} in {split}"
        for split in SPLITS
        for label in classes
        if metadata[f"{split}/rows"] == 0 or metadata[f"{split}/label_share/{label}"] == 0
    ]
    if missing:
        return CheckOutcome(CLASS_COVERAGE_CHECK, False, f"classes missing: {', '.join(missing)}", metadata)
    return CheckOutcome(
        CLASS_COVERAGE_CHECK, True, f"all {len(classes)} classes in all {len(SPLITS)} splits", metadata
    )
