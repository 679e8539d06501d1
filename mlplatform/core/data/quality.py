"""Blocking quality checks on one drop: schema, completeness, duplicates, non_empty.

`validate_drop` evaluates all four, always in that order, before anything is written, so a caller can
quarantine a failing drop with the first failed check's name and description as the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from mlplatform.core.data.schema import (
    NORMALISED_COLUMNS,
    SCHEMA_CHECK,
    DropFormatError,
    read_drop,
    validate_schema,
)
from mlplatform.core.platform.settings import Settings, SettingsError

COMPLETENESS_CHECK = "completeness"
DUPLICATES_CHECK = "duplicates"
NON_EMPTY_CHECK = "non_empty"
BLOCKING_CHECKS: tuple[str, ...] = (SCHEMA_CHECK, COMPLETENESS_CHECK, DUPLICATES_CHECK, NON_EMPTY_CHECK)
"""The blocking checks of `raw_reviews`, in the order they are reported."""

_MAX_DUPLICATE_EXAMPLES = 3

MetadataValue = float | int | str


@dataclass(frozen=True)
class IngestRules:
    """The thresholds of the blocking checks, from settings section [ingest]."""

    max_missing_review_text_share: float
    max_duplicate_row_share: float
    min_age: int
    max_age: int
    min_rows: int

    def __post_init__(self) -> None:
        for name in ("max_missing_review_text_share", "max_duplicate_row_share"):
            share = getattr(self, name)
            if not 0.0 <= share <= 1.0:
                raise SettingsError(f"[ingest].{name} must be a share between 0 and 1, got {share}")
        if self.min_age > self.max_age:
            raise SettingsError(f"[ingest].min_age ({self.min_age}) exceeds max_age ({self.max_age})")
        if self.min_rows < 0:
            raise SettingsError(f"[ingest].min_rows must not be negative, got {self.min_rows}")

    @classmethod
    def from_settings(cls, settings: Settings) -> IngestRules:
        """Read the rules from section [ingest] of the platform settings."""
        return cls.from_mapping(settings.section("ingest"))

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> IngestRules:
        """Build the rules from the keys of an [ingest] section."""
        try:
            return cls(
                max_missing_review_text_share=float(section["max_missing_review_text_share"]),
                max_duplicate_row_share=float(section["max_duplicate_row_share"]),
                min_age=int(section["min_age"]),
                max_age=int(section["max_age"]),
                min_rows=int(section["min_rows"]),
            )
        except KeyError as exc:
            raise SettingsError(f"settings section [ingest] lacks key {exc.args[0]!r}") from None


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one check: its name, whether it passed, why, and numbers to plot."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True)
class DropValidation:
    """A drop's normalised frame (None when unparseable) and the outcome of every blocking check."""

    frame: pl.DataFrame | None
    checks: tuple[CheckOutcome, ...]

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.checks)

    @property
    def first_failure(self) -> CheckOutcome | None:
        return next((outcome for outcome in self.checks if not outcome.passed), None)


def validate_drop(data: bytes, fmt: str, rules: IngestRules) -> DropValidation:
    """Parse a drop and run every blocking check on it; nothing is written."""
    try:
        frame = read_drop(data, fmt)
    except DropFormatError as exc:
        return _unparseable(exc)
    checks = (
        check_schema(frame, rules),
        check_completeness(frame, rules),
        check_duplicates(frame, rules),
        check_non_empty(frame, rules),
    )
    return DropValidation(frame=frame, checks=checks)


def _unparseable(error: DropFormatError) -> DropValidation:
    # read_drop raises only structural (schema) errors; every later check is then not evaluated.
    checks = tuple(
        CheckOutcome(name, False, error.reason if name == error.check else f"not evaluated: {error.reason}")
        for name in BLOCKING_CHECKS
    )
    return DropValidation(frame=None, checks=checks)


def _percent(share: float) -> str:
    return f"{share:.2%}"


def check_schema(frame: pl.DataFrame, rules: IngestRules) -> CheckOutcome:
    """The pandera contract: columns, dtypes, nullability, value ranges."""
    failure = validate_schema(frame, rules)
    metadata: dict[str, MetadataValue] = {"rows": frame.height, "columns": frame.width}
    if failure is not None:
        return CheckOutcome(SCHEMA_CHECK, False, failure, metadata)
    description = (
        f"{frame.width} columns with the published names and types; "
        f"rating 1..5, age {rules.min_age}..{rules.max_age}, recommended 0/1, counts >= 0"
    )
    return CheckOutcome(SCHEMA_CHECK, True, description, metadata)


def missing_shares(frame: pl.DataFrame) -> dict[str, float]:
    """Share of rows with a null (or, for text, blank) value, per column; 0.0 for an empty frame."""
    if frame.height == 0:
        return {name: 0.0 for name in frame.columns}
    return {name: _missing_mask(frame[name]).mean() or 0.0 for name in frame.columns}


def _missing_mask(column: pl.Series) -> pl.Series:
    if column.dtype == pl.String:
        return column.is_null() | (column.str.strip_chars() == "")
    return column.is_null()


def check_completeness(frame: pl.DataFrame, rules: IngestRules) -> CheckOutcome:
    """Share of rows with null or blank review text stays within the bound."""
    shares = missing_shares(frame)
    bound = rules.max_missing_review_text_share
    metadata: dict[str, MetadataValue] = {f"missing_share_{name}": share for name, share in shares.items()}
    missing = int(_missing_mask(frame["review_text"]).sum())
    metadata["missing_review_text_rows"] = missing
    metadata["max_missing_review_text_share"] = bound
    if frame.height == 0:
        return CheckOutcome(COMPLETENESS_CHECK, True, "no rows to judge (see non_empty)", metadata)
    share = shares["review_text"]
    if missing == frame.height:
        description = f"review text is missing in every row ({missing} of {frame.height})"
        return CheckOutcome(COMPLETENESS_CHECK, False, description, metadata)
    passed = share <= bound
    verdict = "within" if passed else "exceeds"
    description = (
        f"review text missing in {missing} of {frame.height} rows ({_percent(share)}), "
        f"{verdict} the bound of {_percent(bound)}"
    )
    return CheckOutcome(COMPLETENESS_CHECK, passed, description, metadata)


def check_duplicates(frame: pl.DataFrame, rules: IngestRules) -> CheckOutcome:
    """Share of exact duplicate rows (every column but source_row) stays within the bound."""
    content = [name for name in NORMALISED_COLUMNS if name != "source_row"]
    repeated = frame.filter(frame.select(content).is_duplicated())
    groups = repeated.group_by(content, maintain_order=True).agg(pl.col("source_row"))
    duplicates = repeated.height - groups.height  # copies beyond each group's first row
    share = duplicates / frame.height if frame.height else 0.0
    bound = rules.max_duplicate_row_share
    metadata: dict[str, MetadataValue] = {
        "duplicate_rows": duplicates,
        "duplicate_row_share": share,
        "max_duplicate_row_share": bound,
    }
    passed = share <= bound
    verdict = "within" if passed else "exceeds"
    description = (
        f"{duplicates} duplicate row(s) ({_percent(share)}), {verdict} the bound of {_percent(bound)}"
    )
    if duplicates:
        examples = [
            "source_rows " + "/".join(str(row) for row in rows)
            for rows in groups["source_row"].head(_MAX_DUPLICATE_EXAMPLES).to_list()
        ]
        description += "; e.g. " + ", ".join(examples)
    return CheckOutcome(DUPLICATES_CHECK, passed, description, metadata)


def check_non_empty(frame: pl.DataFrame, rules: IngestRules) -> CheckOutcome:
    """The drop holds at least `rules.min_rows` rows."""
    metadata: dict[str, MetadataValue] = {"rows": frame.height, "min_rows": rules.min_rows}
    passed = frame.height >= rules.min_rows
    if passed:
        description = f"{frame.height} rows (at least {rules.min_rows} required)"
    else:
        description = f"only {frame.height} rows, at least {rules.min_rows} required"
    return CheckOutcome(NON_EMPTY_CHECK, passed, description, metadata)
