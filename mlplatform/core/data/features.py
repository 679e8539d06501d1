"""The `reviews` table: every accepted drop, deduplicated, labelled, with the text a model sees.

Input: one normalised frame per accepted drop, as core/data/schema.py's `read_drop` returns it for the
home's dataset contract (core/data/contract.py): one column per contract column, named by its
`ColumnSpec.name` and typed as the contract says, plus `source_row`. Everything that describes the data
comes from the contract, handed in as a `DatasetContract`:

- `label`: the contract's rule: the rating mapped by `labels.from_rating`, or the label column's value
  (read as text: 0 and "0" are the same value) mapped by `labels.map`. A row the rule does not map (a
  rating or label value no class names, or none at all) is dropped as unlabelled and counted in
  `ReviewsStats.unlabelled_removed`, never silently.
- `review_id`: one `id` column's value as text; with several, or none, the content hash of the
  contract's `identity_columns` in declared order (`review_ids`). The packaged clothing contract's
  identity columns are every column but the export's index and the feedback votes, so its ids are the
  ones the platform always computed.
- `<facet>_band`: each binned facet's band ("<25", "25-34", ..., "65+"; "unknown" when missing).
- `text`: the contract's text columns, in declared order, through `prepare_texts` (core/data/text.py).
  A review whose text is empty is dropped and counted.

The table keeps the contract's columns plus `review_id`, `drop_hash`, `source_row`, `text`, `label` and
the band columns (`reviews_columns`: the contract's order, each band after its facet, `text` after the
last text column, `label` after the label source). Only the column a derived name stands for may carry
it (the contract refuses others: contract.DERIVED_NAMES): a text column named `text` is replaced by the
model text, a label column named `label` by the class, one id column named `review_id` by its value as
text; its raw values stay in the raw drop.
What judges the data is settings (`[features]`: `FeatureRules`), not the contract.
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

from mlplatform.core.data.contract import SOURCE_ROW, ColumnSpec, ColumnType, DatasetContract, LabelRule
from mlplatform.core.data.quality import CheckOutcome, MetadataValue
from mlplatform.core.data.schema import normalised_dtypes
from mlplatform.core.data.text import prepare_texts
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import FeatureRules

UNKNOWN_BAND = "unknown"
LABEL_DISTRIBUTION_CHECK = "label_distribution"
DERIVED_COLUMNS: tuple[str, ...] = ("review_id", "drop_hash", SOURCE_ROW, "text", "label")
"""The columns every reviews table has, whatever the contract."""


class FeaturesError(UserError, ValueError):
    """The drops cannot be turned into the reviews table (bad input or bad rules)."""


@dataclass(frozen=True)
class ReviewsStats:
    """What `build_reviews` did, as numbers (nothing is dropped without being counted here)."""

    drops: int
    rows_in: int
    duplicates_removed: int
    unlabelled_removed: int
    empty_text_removed: int
    rows_out: int
    label_counts: Mapping[str, int]
    """Rows per class, every declared class in the contract's order (0 when absent)."""

    def as_metadata(self) -> dict[str, float | int]:
        """Flat numeric metadata, e.g. `rows_out`, `label_count/neutral`, `label_share/neutral`."""
        metadata: dict[str, float | int] = {
            "drops": self.drops,
            "rows_in": self.rows_in,
            "duplicates_removed": self.duplicates_removed,
            "unlabelled_removed": self.unlabelled_removed,
            "empty_text_removed": self.empty_text_removed,
            "rows_out": self.rows_out,
        }
        for label, count in self.label_counts.items():
            metadata[f"label_count/{label}"] = count
            metadata[f"label_share/{label}"] = count / self.rows_out if self.rows_out else 0.0
        return metadata


@dataclass(frozen=True)
class ReviewsTable:
    frame: pl.DataFrame
    stats: ReviewsStats


# --- labels, ids, bands -----------------------------------------------------------------------------


def class_labels(rule: LabelRule, source: pl.Expr) -> pl.Expr:
    """Each row's class by the contract's rule, from its label source (the rating, or the label column's
    value read as text); null where the rule maps nothing."""
    if rule.from_rating is not None:
        mapping = rule.rating_classes()
        return source.cast(pl.Float64).replace_strict(
            list(mapping), list(mapping.values()), default=None, return_dtype=pl.String
        )
    mapping = dict(rule.mapping or {})
    return source.cast(pl.String).replace_strict(
        list(mapping), list(mapping.values()), default=None, return_dtype=pl.String
    )


def label_source(contract: DatasetContract) -> str:
    """The normalised name of the contract's label source: its rating or its label column."""
    name = contract.rating_column or contract.label_column
    if name is None:  # the contract loader refuses this; a hand-built contract may not
        raise FeaturesError("the dataset contract has no rating or label column to label reviews with")
    return name


def content_hash(ordered_values: Sequence[Any]) -> str:
    """Stable id of ordered values: 32 hex characters.

    The values are serialised as a JSON array (so null differs from "" and no separator is ambiguous)
    and hashed with BLAKE2b; the id depends on nothing but these values.
    """
    canonical = json.dumps(list(ordered_values), ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def review_id(values: Mapping[str, Any], contract: DatasetContract) -> str:
    """Stable id of one review (a mapping of normalised column names to values); see `review_ids`."""
    if len(contract.id_columns) == 1:
        return str(values[contract.id_columns[0]])
    return content_hash([values[column] for column in contract.identity_columns])


def review_ids(frame: pl.DataFrame, contract: DatasetContract) -> pl.Series:
    """`review_id` of every row: one `id` column's value as text, else the content hash of the
    contract's identity columns in declared order."""
    columns = contract.id_columns if len(contract.id_columns) == 1 else contract.identity_columns
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise FeaturesError(f"cannot compute review ids: missing columns {missing}")
    if len(contract.id_columns) == 1:
        ids = frame.get_column(columns[0]).cast(pl.String).alias("review_id")
        if ids.null_count():
            raise FeaturesError(f"{ids.null_count()} rows have no {columns[0]} (the review id)")
        return ids
    rows = frame.select(columns).iter_rows()
    return pl.Series("review_id", [content_hash(row) for row in rows], dtype=pl.String)


def band_labels(edges: Sequence[float], whole_numbers: bool = True) -> list[str]:
    """Band names for the edges, e.g. [25, 35] -> ["<25", "25-34", "35+"]. An int column with
    whole-number edges gets whole-number bands (25-34 holds 25 to 34); otherwise "lo-hi" holds
    lo <= value < hi."""
    whole = whole_numbers and all(float(edge).is_integer() for edge in edges)
    text = [f"{int(edge)}" if whole else f"{edge:g}" for edge in edges]
    inner = [
        f"{lo}-{int(hi_edge) - 1}" if whole else f"{lo}-{hi}"
        for (lo, hi), hi_edge in zip(pairwise(text), edges[1:], strict=True)
    ]
    return [f"<{text[0]}", *inner, f"{text[-1]}+"]


def band(values: pl.Expr, edges: Sequence[float], whole_numbers: bool = True) -> pl.Expr:
    """The band of each value (bands of `band_labels`); a missing value is "unknown"."""
    labels = band_labels(edges, whole_numbers)
    expr = pl.when(values.is_null()).then(pl.lit(UNKNOWN_BAND))
    for edge, label in zip(edges, labels, strict=False):
        expr = expr.when(values < edge).then(pl.lit(label))
    return expr.otherwise(pl.lit(labels[-1]))


def binned_facets(contract: DatasetContract) -> tuple[ColumnSpec, ...]:
    return tuple(column for column in contract.facets if column.bins)


# --- the reviews table ------------------------------------------------------------------------------


def reviews_columns(contract: DatasetContract) -> tuple[str, ...]:
    """The reviews table's columns, in order (see the module docstring)."""
    names = ["review_id", "drop_hash", SOURCE_ROW]
    last_text = contract.text_columns[-1]
    source = label_source(contract)
    for column in contract.columns:
        names.append(column.name)
        if column.bins:
            names.append(column.band_name)
        if column.name == last_text:
            names.append("text")
        if column.name == source:
            names.append("label")
    return tuple(dict.fromkeys(names))


def _conformed(drop_hash: str, frame: pl.DataFrame, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    missing = [column for column in schema if column not in frame.columns]
    if missing:
        raise FeaturesError(f"drop {drop_hash} lacks columns {missing}")
    try:
        conformed = frame.select(pl.col(name).cast(dtype) for name, dtype in schema.items())
    except pl.exceptions.PolarsError as exc:
        raise FeaturesError(f"drop {drop_hash} has a column of the wrong type: {exc}") from exc
    return conformed.with_columns(pl.lit(drop_hash, dtype=pl.String).alias("drop_hash"))


def build_reviews(drops: Mapping[str, pl.DataFrame], contract: DatasetContract) -> ReviewsTable:
    """All accepted drops as one labelled, deduplicated table, sorted by `review_id`.

    A review in several drops is kept once, from the first drop by hash (then by source row), so the
    result does not depend on the mapping's order. Reviews the label rule does not map, and reviews
    whose model text is empty, are removed and counted. Raises FeaturesError on no drops, missing
    columns or wrong types.
    """
    if not drops:
        raise FeaturesError("no accepted drops to build the reviews table from")
    schema = normalised_dtypes(contract)
    combined = pl.concat(
        [_conformed(drop_hash, frame, schema) for drop_hash, frame in sorted(drops.items())], how="vertical"
    ).sort(["drop_hash", SOURCE_ROW], maintain_order=True)
    with_ids = combined.with_columns(review_ids(combined, contract))
    deduplicated = with_ids.unique(subset="review_id", keep="first", maintain_order=True)
    labelled = deduplicated.with_columns(
        class_labels(contract.labels, pl.col(label_source(contract))).alias("_class")
    ).filter(pl.col("_class").is_not_null())
    with_text = labelled.with_columns(
        prepare_texts([labelled[column] for column in contract.text_columns]),
        pl.col("_class").alias("label"),
        *(
            band(pl.col(column.name), column.bins or (), column.type is ColumnType.INT).alias(
                column.band_name
            )
            for column in binned_facets(contract)
        ),
    )
    kept = with_text.filter(pl.col("text") != "")
    reviews = kept.select(reviews_columns(contract)).sort("review_id")
    counts = dict(reviews.group_by("label").len().iter_rows())
    stats = ReviewsStats(
        drops=len(drops),
        rows_in=combined.height,
        duplicates_removed=combined.height - deduplicated.height,
        unlabelled_removed=deduplicated.height - labelled.height,
        empty_text_removed=with_text.height - kept.height,
        rows_out=reviews.height,
        label_counts={label: int(counts.get(label, 0)) for label in contract.classes},
    )
    return ReviewsTable(frame=reviews, stats=stats)


# --- label distribution and its shift ---------------------------------------------------------------


def label_distribution(
    frame: pl.DataFrame, classes: Sequence[str], label_col: str = "label"
) -> dict[str, float]:
    """Share of each class, in `classes` order (absent classes get 0.0). Raises on an empty frame."""
    if frame.height == 0:
        raise FeaturesError("cannot compute a label distribution of an empty frame")
    counts = dict(frame.group_by(label_col).len().iter_rows())
    unknown = set(counts) - set(classes)
    if unknown:
        raise FeaturesError(
            f"column '{label_col}' holds values that are not classes {list(classes)}: "
            f"{sorted(map(str, unknown))}"
        )
    return {label: counts.get(label, 0) / frame.height for label in classes}


def _kl_terms(p: Sequence[float], q: Sequence[float]) -> float:
    # Terms with p == 0 contribute 0 (the limit of p log p); callers make q > 0 wherever p > 0.
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)


def js_divergence(p: Sequence[float], q: Sequence[float]) -> float:
    """Jensen-Shannon divergence in nats (natural log), between 0 and ln 2; needs no epsilon."""
    mean = [(pi + qi) / 2 for pi, qi in zip(p, q, strict=True)]
    return 0.5 * _kl_terms(p, mean) + 0.5 * _kl_terms(q, mean)


def label_shift(previous: Mapping[str, float], current: Mapping[str, float]) -> float:
    """JS divergence (nats) between two label distributions over the classes either names."""
    classes = list(dict.fromkeys([*previous, *current]))
    return js_divergence(
        [previous.get(label, 0.0) for label in classes], [current.get(label, 0.0) for label in classes]
    )


def check_label_distribution(
    current: pl.DataFrame,
    previous: Mapping[str, float] | None,
    rules: FeatureRules,
    classes: Sequence[str],
) -> CheckOutcome:
    """Every declared class present, and the JS shift against the previous version's distribution
    within its bound.

    `previous` is the label distribution recorded with the previous version (its metadata), so the
    check needs no second copy of the data. A previous version over other classes (the contract
    changed) is not compared: the description says so.
    """
    shares = label_distribution(current, classes)
    metadata: dict[str, MetadataValue] = {f"label_share/{label}": share for label, share in shares.items()}
    problems = [f"label '{label}' is absent" for label, share in shares.items() if share == 0]
    if previous is not None and set(previous) != set(classes):
        against = f"not compared: the previous version's classes {sorted(previous)} are not these"
        previous = None
    elif previous is None:
        against = "no previous version"
    else:
        shift = label_shift(previous, shares)
        metadata["label_shift_js"] = shift
        metadata["label_shift_warn_js"] = rules.label_shift_warn_js
        against = f"shift JS {shift:.4f}"
        if shift > rules.label_shift_warn_js:
            problems.append(f"label shift JS {shift:.4f} > {rules.label_shift_warn_js}")
    if problems:
        return CheckOutcome(LABEL_DISTRIBUTION_CHECK, False, "; ".join(problems), metadata)
    return CheckOutcome(
        LABEL_DISTRIBUTION_CHECK, True, f"all {len(classes)} classes present; {against}", metadata
    )
