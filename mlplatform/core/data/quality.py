"""Blocking quality checks on one drop: schema, completeness, duplicates, non_empty.

`validate_drop` evaluates all four, always in that order, before anything is written, so a caller can
quarantine a failing drop with the first failed check's name and description as the reason.

What the checks judge comes from the dataset contract (core/data/contract.py: columns, types, bounds,
which columns are text); how strict they are from settings section [ingest] (`IngestRules`).

- schema: the drop reads as the contract describes it (core/data/schema.py) and satisfies the pandera
  schema generated from it; the reason names column, value and row.
- completeness: the share of rows whose text columns (role "text") are all empty stays within bounds.
- duplicates: the share of exact duplicate rows (every column but `source_row`) stays within bounds.
- non_empty: at least `min_rows` rows.

Memory is bounded by chunking: the drop is read `[ingest] chunk_rows` rows at a time from its file, each
chunk is checked and let go, and what must see the whole drop is carried across chunks in compact form —
the row count, missing counts per column, a 128-bit hash of each row's content and its source_row
(duplicates) and the values of `unique` columns; repeats are found by sorting one 64-bit column, not by
hashing every row into a table. So a drop of any size validates in about the memory of one chunk plus
some 32 bytes a row (unless the caller keeps the normalised frame; bench/validation.py measures it),
and every verdict and reason is the same for any chunk size.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import polars as pl

from mlplatform.core.data.contract import SOURCE_ROW, DatasetContract
from mlplatform.core.data.schema import (
    MAX_LISTED_VIOLATIONS,
    SCHEMA_CHECK,
    DropChunk,
    DropFormatError,
    SchemaAccumulator,
    Violation,
    describe_rules,
    iter_drop,
    repeated_masks,
)
from mlplatform.core.platform.settings import IngestRules

COMPLETENESS_CHECK = "completeness"
DUPLICATES_CHECK = "duplicates"
NON_EMPTY_CHECK = "non_empty"
BLOCKING_CHECKS: tuple[str, ...] = (SCHEMA_CHECK, COMPLETENESS_CHECK, DUPLICATES_CHECK, NON_EMPTY_CHECK)
"""The blocking checks of `raw_reviews`, in the order they are reported."""

_MAX_DUPLICATE_EXAMPLES = 3
_HASH_SEEDS = (0x6D6C70, 0x6C6174)  # two independent 64-bit row hashes: collisions out of reach

MetadataValue = float | int | str


@dataclass(frozen=True)
class CheckOutcome:
    """The result of one check: its name, whether it passed, why, and numbers to plot."""

    name: str
    passed: bool
    description: str
    metadata: dict[str, MetadataValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a drop, for a person: which check, where (column, row, line) and what."""

    check: str
    message: str
    column: str | None = None
    row: int | None = None  # 1-based data row
    line: int | None = None
    value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "column": self.column,
            "row": self.row,
            "line": self.line,
            "value": self.value,
            "message": self.message,
        }


@dataclass(frozen=True)
class DropValidation:
    """The outcome of every blocking check, the schema's violations, and the normalised frame when kept
    (None when the drop is unparseable or the caller did not ask for it)."""

    frame: pl.DataFrame | None
    checks: tuple[CheckOutcome, ...]
    rows: int | None = None
    violations: tuple[Violation, ...] = ()
    violation_count: int = 0
    format_error: DropFormatError | None = None

    @property
    def passed(self) -> bool:
        return all(outcome.passed for outcome in self.checks)

    @property
    def first_failure(self) -> CheckOutcome | None:
        return next((outcome for outcome in self.checks if not outcome.passed), None)

    def problems(self) -> list[Problem]:
        """Every problem, one per line for a person: the format error, each listed contract violation
        (and how many more), each other failed check."""
        error = self.format_error
        if error is not None:
            return [Problem(SCHEMA_CHECK, error.reason, error.column, error.row, error.line, error.value)]
        found = [
            Problem(SCHEMA_CHECK, v.describe(), v.column, None if v.row is None else v.row + 1, None, v.value)
            for v in self.violations
        ]
        if self.violation_count > len(self.violations):
            more = self.violation_count - len(self.violations)
            found.append(Problem(SCHEMA_CHECK, f"and {more} more contract violation(s)"))
        found += [
            Problem(outcome.name, outcome.description)
            for outcome in self.checks
            if not outcome.passed and outcome.name != SCHEMA_CHECK
        ]
        return found


@contextmanager
def _opened(source: bytes | Path) -> Iterator[IO[bytes]]:
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(bytes(source))
        return
    with open(source, "rb") as stream:
        yield stream


def validate_drop(
    source: bytes | Path,
    fmt: str,
    contract: DatasetContract,
    rules: IngestRules,
    *,
    keep_frame: bool = True,
    max_listed: int = MAX_LISTED_VIOLATIONS,
) -> DropValidation:
    """Read a drop (its bytes, or its file read chunk by chunk) and run every blocking check; nothing is
    written. `keep_frame=False` lets each chunk go once checked (memory of one chunk); `max_listed` is
    how many contract violations are listed (the reason of the schema check always lists at most 5)."""
    schema = SchemaAccumulator(contract, max(max_listed, MAX_LISTED_VIOLATIONS))
    tally = _Tally(contract)
    frames: list[pl.DataFrame] = []
    try:
        with _opened(source) as stream:
            for chunk in iter_drop(stream, fmt, contract, rules.chunk_rows):
                schema.add(chunk)
                tally.add(chunk)
                if keep_frame:
                    frames.append(chunk.frame)
    except DropFormatError as exc:
        return _unparseable(exc)
    checks = (
        _schema_outcome(schema, tally, contract),
        tally.completeness(rules),
        tally.duplicates(rules),
        tally.non_empty(rules),
    )
    frame = None
    if keep_frame:
        frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical", rechunk=True)
    return DropValidation(
        frame=frame,
        checks=checks,
        rows=tally.rows,
        violations=tuple(schema.violations[:max_listed]),
        violation_count=schema.count,
    )


def _unparseable(error: DropFormatError) -> DropValidation:
    # iter_drop raises only structural (schema) errors; every later check is then not evaluated.
    checks = tuple(
        CheckOutcome(name, False, error.reason if name == error.check else f"not evaluated: {error.reason}")
        for name in BLOCKING_CHECKS
    )
    return DropValidation(frame=None, checks=checks, format_error=error)


def _percent(share: float) -> str:
    return f"{share:.2%}"


def _schema_outcome(schema: SchemaAccumulator, tally: _Tally, contract: DatasetContract) -> CheckOutcome:
    """The pandera schema generated from the contract: columns, dtypes, nullability, values."""
    metadata: dict[str, MetadataValue] = {"rows": tally.rows, "columns": len(tally.columns)}
    failure = schema.reason()
    if failure is not None:
        return CheckOutcome(SCHEMA_CHECK, False, failure, metadata)
    rules = describe_rules(contract)
    description = f"{len(tally.columns)} columns with the contract's names and types" + (
        f"; {rules}" if rules else ""
    )
    return CheckOutcome(SCHEMA_CHECK, True, description, metadata)


class _Tally:
    """What completeness, duplicates and non_empty need from the whole drop, gathered chunk by chunk."""

    def __init__(self, contract: DatasetContract) -> None:
        self.text_columns = contract.text_columns
        self.columns: list[str] = []
        self.rows = 0
        self.missing: dict[str, int] = {}
        self.textless = 0
        self._hashes: list[pl.DataFrame] = []

    def add(self, chunk: DropChunk) -> None:
        frame = chunk.frame
        if not self.columns:
            self.columns = frame.columns
            self.missing = dict.fromkeys(frame.columns, 0)
        self.rows += frame.height
        if frame.height == 0:
            return
        masks = {name: _missing_mask(frame[name]) for name in frame.columns}
        for name, mask in masks.items():
            self.missing[name] += int(mask.sum())
        textless = pl.Series([True] * frame.height)
        for name in self.text_columns:
            textless = textless & masks[name]
        self.textless += int(textless.sum())
        content = frame.select(name for name in frame.columns if name != SOURCE_ROW)
        self._hashes.append(
            pl.DataFrame(
                {
                    "h1": content.hash_rows(seed=_HASH_SEEDS[0]),
                    "h2": content.hash_rows(seed=_HASH_SEEDS[1]),
                    "source_row": frame[SOURCE_ROW],
                }
            )
        )

    def shares(self) -> dict[str, float]:
        return {name: (count / self.rows if self.rows else 0.0) for name, count in self.missing.items()}

    def completeness(self, rules: IngestRules) -> CheckOutcome:
        """Share of rows whose text columns are all null or blank stays within the bound."""
        bound = rules.max_missing_text_share
        what = (
            self.text_columns[0] if len(self.text_columns) == 1 else f"text ({', '.join(self.text_columns)})"
        )
        metadata: dict[str, MetadataValue] = {
            f"missing_share_{name}": share for name, share in self.shares().items()
        }
        metadata["missing_text_rows"] = self.textless
        metadata["max_missing_text_share"] = bound
        if self.rows == 0:
            return CheckOutcome(COMPLETENESS_CHECK, True, "no rows to judge (see non_empty)", metadata)
        if self.textless == self.rows:
            description = f"{what} is missing in every row ({self.textless} of {self.rows})"
            return CheckOutcome(COMPLETENESS_CHECK, False, description, metadata)
        share = self.textless / self.rows
        metadata["missing_text_share"] = share
        passed = share <= bound
        verdict = "within" if passed else "exceeds"
        description = (
            f"{what} missing in {self.textless} of {self.rows} rows ({_percent(share)}), "
            f"{verdict} the bound of {_percent(bound)}"
        )
        return CheckOutcome(COMPLETENESS_CHECK, passed, description, metadata)

    def duplicates(self, rules: IngestRules) -> CheckOutcome:
        """Share of exact duplicate rows (every column but source_row) stays within the bound."""
        # Rows whose first hash repeats, then grouped by both hashes, in order of first appearance.
        masks = repeated_masks([hashes["h1"] for hashes in self._hashes])
        candidates = pl.concat(
            [hashes.filter(mask) for hashes, mask in zip(self._hashes, masks, strict=True)]
            or [pl.DataFrame(schema={"h1": pl.UInt64, "h2": pl.UInt64, "source_row": pl.Int64})],
            how="vertical",
        )
        groups = (
            candidates.group_by("h1", "h2", maintain_order=True)
            .agg(pl.col("source_row"))
            .filter(pl.col("source_row").list.len() > 1)
        )
        duplicates = int(groups["source_row"].list.len().sum()) - groups.height  # copies beyond the first
        share = duplicates / self.rows if self.rows else 0.0
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

    def non_empty(self, rules: IngestRules) -> CheckOutcome:
        """The drop holds at least `rules.min_rows` rows."""
        metadata: dict[str, MetadataValue] = {"rows": self.rows, "min_rows": rules.min_rows}
        passed = self.rows >= rules.min_rows
        if passed:
            description = f"{self.rows} rows (at least {rules.min_rows} required)"
        else:
            description = f"only {self.rows} rows, at least {rules.min_rows} required"
        return CheckOutcome(NON_EMPTY_CHECK, passed, description, metadata)


def _missing_mask(column: pl.Series) -> pl.Series:
    if column.dtype == pl.String:
        return (column.is_null() | (column.str.strip_chars() == "")).fill_null(True)
    return column.is_null()
