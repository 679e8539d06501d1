"""The `reviews` table: every accepted drop, deduplicated, labelled, with the text a model sees.

Input: one normalised frame per accepted drop (see `INPUT_SCHEMA`, the contract of core/data/schema.py).
The text a model sees (`prepare_text`) and the label order live in core/data/text.py,
which serving imports without the validation stack.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import polars as pl

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.quality import CheckOutcome, MetadataValue
from mlplatform.core.data.schema import normalised_dtypes
from mlplatform.core.data.text import LABELS, prepare_texts
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import Settings

INPUT_SCHEMA = normalised_dtypes(load_contract())
"""The columns and dtypes of each accepted drop under the packaged default contract (the clothing CSV):
the table below is built for that layout until it takes the home's contract (issue 12, downstream)."""

# What makes a review the same review. Not `source_row` (an export's index) and not
# `positive_feedback_count` (it grows as readers vote, so a later export of the same review differs).
REVIEW_ID_COLUMNS: tuple[str, ...] = (
    "clothing_id",
    "age",
    "title",
    "review_text",
    "rating",
    "recommended_ind",
    "division_name",
    "department_name",
    "class_name",
)

REVIEWS_COLUMNS: tuple[str, ...] = (
    "review_id",
    "drop_hash",
    "source_row",
    "clothing_id",
    "age",
    "age_band",
    "title",
    "review_text",
    "text",
    "rating",
    "label",
    "recommended_ind",
    "positive_feedback_count",
    "division_name",
    "department_name",
    "class_name",
)

UNKNOWN_AGE_BAND = "unknown"
LABEL_DISTRIBUTION_CHECK = "label_distribution"


class FeaturesError(UserError, ValueError):
    """The drops cannot be turned into the reviews table (bad input or bad rules)."""


@dataclass(frozen=True)
class FeatureRules:
    """The `[features]` settings."""

    facets: tuple[str, ...]
    age_band_edges: tuple[int, ...]
    min_facet_rows: int
    label_shift_warn_js: float
    bias_warn: Mapping[str, float]

    def __post_init__(self) -> None:
        edges = self.age_band_edges
        if not edges or any(lo >= hi for lo, hi in pairwise(edges)):
            raise FeaturesError(f"[features].age_band_edges must be strictly increasing, got {list(edges)}")
        if self.min_facet_rows < 1:
            raise FeaturesError(f"[features].min_facet_rows must be at least 1, got {self.min_facet_rows}")

    @classmethod
    def from_settings(cls, settings: Settings) -> FeatureRules:
        """Read the `[features]` section (and its `bias_warn` table)."""
        section = settings.section("features")
        return cls(
            facets=tuple(section["facets"]),
            age_band_edges=tuple(int(edge) for edge in section["age_band_edges"]),
            min_facet_rows=int(section["min_facet_rows"]),
            label_shift_warn_js=float(section["label_shift_warn_js"]),
            bias_warn={name: float(bound) for name, bound in section["bias_warn"].items()},
        )


@dataclass(frozen=True)
class ReviewsStats:
    """What `build_reviews` did, as numbers (nothing is dropped without being counted here)."""

    drops: int
    rows_in: int
    duplicates_removed: int
    empty_text_removed: int
    rows_out: int
    label_counts: Mapping[str, int]

    def as_metadata(self) -> dict[str, float | int]:
        """Flat numeric metadata, e.g. `rows_out`, `label_count/neutral`, `label_share/neutral`."""
        metadata: dict[str, float | int] = {
            "drops": self.drops,
            "rows_in": self.rows_in,
            "duplicates_removed": self.duplicates_removed,
            "empty_text_removed": self.empty_text_removed,
            "rows_out": self.rows_out,
        }
        for label in LABELS:
            count = self.label_counts.get(label, 0)
            metadata[f"label_count/{label}"] = count
            metadata[f"label_share/{label}"] = count / self.rows_out if self.rows_out else 0.0
        return metadata


@dataclass(frozen=True)
class ReviewsTable:
    frame: pl.DataFrame
    stats: ReviewsStats


# --- labels, ids, bands -----------------------------------------------------------------------------


def label_from_rating(rating: pl.Expr) -> pl.Expr:
    """Rating 1-2 -> negative, 3 -> neutral, 4-5 -> positive; anything else -> null."""
    return (
        pl.when(rating.is_between(1, 2))
        .then(pl.lit(LABELS[0]))
        .when(rating == 3)
        .then(pl.lit(LABELS[1]))
        .when(rating.is_between(4, 5))
        .then(pl.lit(LABELS[2]))
        .otherwise(pl.lit(None, dtype=pl.String))
    )


def review_id(values: Mapping[str, Any]) -> str:
    """Stable id of one review from its content (`REVIEW_ID_COLUMNS`): 32 hex characters.

    The content is serialised as a JSON array (so null differs from "" and no separator is ambiguous)
    and hashed with BLAKE2b; the id depends on nothing but these values.
    """
    return _content_hash([values[column] for column in REVIEW_ID_COLUMNS])


def _content_hash(ordered_values: Sequence[Any]) -> str:
    canonical = json.dumps(list(ordered_values), ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def review_ids(frame: pl.DataFrame) -> pl.Series:
    """`review_id` for every row of a frame holding `REVIEW_ID_COLUMNS`."""
    missing = [column for column in REVIEW_ID_COLUMNS if column not in frame.columns]
    if missing:
        raise FeaturesError(f"cannot compute review ids: missing columns {missing}")
    rows = frame.select(REVIEW_ID_COLUMNS).iter_rows()
    return pl.Series("review_id", [_content_hash(row) for row in rows], dtype=pl.String)


def age_band_labels(edges: Sequence[int]) -> list[str]:
    """Band names for the edges, e.g. [25, 35] -> ["<25", "25-34", "35+"]."""
    inner = [f"{lo}-{hi - 1}" for lo, hi in pairwise(edges)]
    return [f"<{edges[0]}", *inner, f"{edges[-1]}+"]


def age_band(age: pl.Expr, edges: Sequence[int]) -> pl.Expr:
    """The age band of each age (bands of `age_band_labels`); a missing age is "unknown"."""
    labels = age_band_labels(edges)
    expr = pl.when(age.is_null()).then(pl.lit(UNKNOWN_AGE_BAND))
    for edge, label in zip(edges, labels, strict=False):
        expr = expr.when(age < edge).then(pl.lit(label))
    return expr.otherwise(pl.lit(labels[-1]))


# --- the reviews table ------------------------------------------------------------------------------


def _conformed(drop_hash: str, frame: pl.DataFrame) -> pl.DataFrame:
    missing = [column for column in INPUT_SCHEMA if column not in frame.columns]
    if missing:
        raise FeaturesError(f"drop {drop_hash} lacks columns {missing}")
    try:
        conformed = frame.select(pl.col(name).cast(dtype) for name, dtype in INPUT_SCHEMA.items())
    except pl.exceptions.PolarsError as exc:
        raise FeaturesError(f"drop {drop_hash} has a column of the wrong type: {exc}") from exc
    bad_ratings = conformed.filter(~pl.col("rating").is_between(1, 5) | pl.col("rating").is_null()).height
    if bad_ratings:
        raise FeaturesError(f"drop {drop_hash} has {bad_ratings} rows with a rating outside 1..5")
    return conformed.with_columns(pl.lit(drop_hash, dtype=pl.String).alias("drop_hash"))


def build_reviews(drops: Mapping[str, pl.DataFrame], rules: FeatureRules) -> ReviewsTable:
    """All accepted drops as one labelled, deduplicated table, sorted by `review_id`.

    A review in several drops is kept once, from the first drop by hash (then by source row), so the
    result does not depend on the mapping's order. Reviews whose model text is empty are removed and
    counted. Raises FeaturesError on no drops, missing columns, wrong types or a rating outside 1..5.
    """
    if not drops:
        raise FeaturesError("no accepted drops to build the reviews table from")
    combined = pl.concat(
        [_conformed(drop_hash, frame) for drop_hash, frame in sorted(drops.items())], how="vertical"
    ).sort(["drop_hash", "source_row"], maintain_order=True)
    with_ids = combined.with_columns(review_ids(combined))
    deduplicated = with_ids.unique(subset="review_id", keep="first", maintain_order=True)
    with_text = deduplicated.with_columns(prepare_texts([deduplicated["title"], deduplicated["review_text"]]))
    kept = with_text.filter(pl.col("text") != "")
    reviews = (
        kept.with_columns(
            label_from_rating(pl.col("rating")).alias("label"),
            age_band(pl.col("age"), rules.age_band_edges).alias("age_band"),
        )
        .select(REVIEWS_COLUMNS)
        .sort("review_id")
    )
    counts = dict(reviews.group_by("label").len().iter_rows())
    stats = ReviewsStats(
        drops=len(drops),
        rows_in=combined.height,
        duplicates_removed=combined.height - deduplicated.height,
        empty_text_removed=with_text.height - kept.height,
        rows_out=reviews.height,
        label_counts={label: int(counts.get(label, 0)) for label in LABELS},
    )
    return ReviewsTable(frame=reviews, stats=stats)


# --- label distribution and its shift ---------------------------------------------------------------


def label_distribution(frame: pl.DataFrame, label_col: str = "label") -> dict[str, float]:
    """Share of each label in `LABELS` order (absent labels get 0.0). Raises on an empty frame."""
    if frame.height == 0:
        raise FeaturesError("cannot compute a label distribution of an empty frame")
    counts = dict(frame.group_by(label_col).len().iter_rows())
    unknown = set(counts) - set(LABELS)
    if unknown:
        raise FeaturesError(
            f"column '{label_col}' holds values that are not labels: {sorted(map(str, unknown))}"
        )
    return {label: counts.get(label, 0) / frame.height for label in LABELS}


def _kl_terms(p: Sequence[float], q: Sequence[float]) -> float:
    # Terms with p == 0 contribute 0 (the limit of p log p); callers make q > 0 wherever p > 0.
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence in nats (natural log), between 0 and ln 2; needs no epsilon."""
    mean = [(pi + qi) / 2 for pi, qi in zip(p, q, strict=True)]
    return 0.5 * _kl_terms(p, mean) + 0.5 * _kl_terms(q, mean)


def label_shift(previous: Mapping[str, float], current: Mapping[str, float]) -> float:
    """JS divergence (nats) between two label distributions, e.g. from `label_distribution`."""
    return js_divergence(
        [previous.get(label, 0.0) for label in LABELS], [current.get(label, 0.0) for label in LABELS]
    )


def check_label_distribution(
    current: pl.DataFrame, previous: Mapping[str, float] | None, rules: FeatureRules
) -> CheckOutcome:
    """Every label present, and the JS shift against the previous version's distribution within its bound.

    `previous` is the label distribution recorded with the previous version (its metadata), so the check
    needs no second copy of the data.
    """
    shares = label_distribution(current)
    metadata: dict[str, MetadataValue] = {f"label_share/{label}": share for label, share in shares.items()}
    problems = [f"label '{label}' is absent" for label, share in shares.items() if share == 0]
    if previous is not None:
        shift = label_shift(previous, shares)
        metadata["label_shift_js"] = shift
        metadata["label_shift_warn_js"] = rules.label_shift_warn_js
        if shift > rules.label_shift_warn_js:
            problems.append(f"label shift JS {shift:.4f} > {rules.label_shift_warn_js}")
    if problems:
        return CheckOutcome(LABEL_DISTRIBUTION_CHECK, False, "; ".join(problems), metadata)
    against = "no previous version" if previous is None else f"shift JS {metadata['label_shift_js']:.4f}"
    return CheckOutcome(
        LABEL_DISTRIBUTION_CHECK, True, f"all {len(LABELS)} labels present; {against}", metadata
    )
