"""The published layout of a reviews drop, how to read one, and its pandera contract.

A drop is CSV exactly as published (first column the unnamed original row index) or Parquet with the
published or the normalised column names. `read_drop` turns either into the normalised frame (snake_case
names, strict types) or raises `DropFormatError` with a one-line reason naming the column, value and line.

CSV is tokenised with the standard library's `csv` module in strict mode rather than by polars, because
polars silently pads a short row with nulls (a truncated last line would pass unnoticed) and reports an
unclosed quote as a typing problem; the `csv` module reports both, with line numbers. Every field is read
as text first and then cast with polars, so a bad value is reported with its column and line. An empty
field, quoted or not, is a missing value (null), as in the published file.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any, Protocol

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors

from mlplatform.core.platform.errors import UserError

SCHEMA_CHECK = "schema"

PUBLISHED_TO_NORMALISED: dict[str, str] = {
    "": "source_row",
    "Clothing ID": "clothing_id",
    "Age": "age",
    "Title": "title",
    "Review Text": "review_text",
    "Rating": "rating",
    "Recommended IND": "recommended_ind",
    "Positive Feedback Count": "positive_feedback_count",
    "Division Name": "division_name",
    "Department Name": "department_name",
    "Class Name": "class_name",
}
"""Published column name -> normalised name, in the published order."""

PUBLISHED_COLUMNS: tuple[str, ...] = tuple(PUBLISHED_TO_NORMALISED)
NORMALISED_COLUMNS: tuple[str, ...] = tuple(PUBLISHED_TO_NORMALISED.values())
NORMALISED_TO_PUBLISHED: dict[str, str] = {norm: pub for pub, norm in PUBLISHED_TO_NORMALISED.items()}

INTEGER_COLUMNS: tuple[str, ...] = (
    "source_row",
    "clothing_id",
    "age",
    "rating",
    "recommended_ind",
    "positive_feedback_count",
)
NULLABLE_COLUMNS: frozenset[str] = frozenset(
    {"title", "review_text", "division_name", "department_name", "class_name"}
)
NORMALISED_DTYPES: dict[str, type[pl.DataType]] = {
    name: (pl.Int64 if name in INTEGER_COLUMNS else pl.String) for name in NORMALISED_COLUMNS
}

CSV_FORMAT = "csv"
PARQUET_FORMAT = "parquet"
_FORMAT_ALIASES = {"csv": CSV_FORMAT, "parquet": PARQUET_FORMAT, "pq": PARQUET_FORMAT}
_PARQUET_MAGIC = b"PAR1"
_UTF8_BOM = "\ufeff"
_MAX_LISTED_FAILURES = 5


class DropFormatError(UserError, ValueError):
    """A drop cannot be read as the published layout; `check` names the failed check, `reason` says why."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason


def _schema_error(reason: str) -> DropFormatError:
    return DropFormatError(SCHEMA_CHECK, reason)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


# --- reading -------------------------------------------------------------------------------------------


def read_drop(data: bytes, fmt: str) -> pl.DataFrame:
    """Read a drop's bytes (`fmt` "csv" or "parquet") into the normalised frame, or raise DropFormatError."""
    kind = _FORMAT_ALIASES.get(fmt.lower().lstrip("."))
    if kind is None:
        raise _schema_error(f"unknown drop format {fmt!r} (expected csv or parquet)")
    if not data:
        raise _schema_error("empty file (0 bytes)")
    if kind == CSV_FORMAT:
        return _read_csv(data)
    return _read_parquet(data)


def _read_csv(data: bytes) -> pl.DataFrame:
    if data.startswith(_PARQUET_MAGIC):
        raise _schema_error("file is Parquet (starts with PAR1) but was delivered as CSV")
    text = _decode_utf8(data).removeprefix(_UTF8_BOM)
    header, records, lines = _tokenise_csv(text)
    _check_columns(header, accepted=PUBLISHED_TO_NORMALISED, layout="published CSV")
    raw = pl.DataFrame(
        {
            PUBLISHED_TO_NORMALISED[name]: [record[position] or None for record in records]
            for position, name in enumerate(header)
        },
        schema={PUBLISHED_TO_NORMALISED[name]: pl.String for name in header},
    )
    return _normalise_types(raw, lines)


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.end].hex()
        raise _schema_error(
            f"not valid UTF-8: byte 0x{bad} at byte offset {exc.start} (line {line}) — save the file as UTF-8"
        ) from None


def _tokenise_csv(text: str) -> tuple[list[str], list[list[str]], list[int]]:
    """Split CSV text into header, records and each record's first line, strictly."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    records: list[list[str]] = []
    lines: list[int] = []
    while True:
        start_line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _schema_error(_describe_csv_error(str(exc), start_line, reader.line_num)) from None
        if not record:  # a blank line carries no data
            continue
        if header is None:
            header = record
            continue
        if len(record) != len(header):
            is_last = reader.line_num >= _physical_lines(text)
            raise _schema_error(_describe_ragged(record, len(header), start_line, reader.line_num, is_last))
        records.append(record)
        lines.append(start_line)
    if header is None:
        raise _schema_error("no header row (the file holds only blank lines)")
    _check_last_record_complete(text, records, lines)
    return header, records, lines


def _check_last_record_complete(text: str, records: list[list[str]], lines: list[int]) -> None:
    # A file cut mid-way through its last field still has the right field count; the missing final
    # newline is then the only trace. Published exports always end with one, so demand it.
    if records and not text.endswith(("\n", "\r")):
        raise _schema_error(f"truncated last line: line {lines[-1]} does not end with a newline")


def _describe_csv_error(message: str, start_line: int, current_line: int) -> str:
    if "unexpected end of data" in message:
        return (
            f"unbalanced quotes: a quoted field in the record starting on line {start_line} is never closed"
        )
    if "field larger than field limit" in message:
        return (
            f"unbalanced quotes: a field in the record starting on line {start_line} runs past "
            f"{csv.field_size_limit()} characters (a quote never closed?)"
        )
    if "expected after" in message:
        return (
            f"unbalanced quotes on line {current_line}: text follows a closing quote "
            f"(a quote inside a quoted field must be doubled)"
        )
    return f"malformed CSV in the record starting on line {start_line}: {message}"


def _physical_lines(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def _describe_ragged(record: list[str], expected: int, start_line: int, end_line: int, is_last: bool) -> str:
    found = len(record)
    if end_line > start_line and any("\n" in field or "\r" in field for field in record):
        return (
            f"unbalanced quotes: the record on lines {start_line}-{end_line} has {found} fields, "
            f"expected {expected} (a quote opened on line {start_line} is closed too late?)"
        )
    if found < expected:
        where = "last line" if is_last else "line"
        return f"truncated {where}: line {start_line} has {found} of {expected} fields"
    return f"line {start_line} has {found} fields, expected {expected}"


def _check_columns(names: Sequence[str], accepted: dict[str, str], layout: str) -> None:
    """Refuse duplicate, missing and unexpected columns; `accepted` maps accepted names to normalised ones."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise _schema_error(f"column(s) {_quoted(repeated)} appear more than once in the header")
    present = {accepted[name] for name in names if name in accepted}
    if len(present) != len([name for name in names if name in accepted]):
        raise _schema_error(f"columns {_quoted(list(names))} name the same column twice")
    unexpected = [name for name in names if name not in accepted]
    missing = [NORMALISED_TO_PUBLISHED[norm] for norm in NORMALISED_COLUMNS if norm not in present]
    if missing and unexpected:
        raise _schema_error(
            f"column(s) {_quoted(missing)} missing and {_quoted(unexpected)} unexpected "
            f"(renamed?); the {layout} layout is {_quoted(PUBLISHED_COLUMNS)}"
        )
    if missing:
        raise _schema_error(
            f"missing column(s) {_quoted(missing)}; the {layout} layout is {_quoted(PUBLISHED_COLUMNS)}"
        )
    if unexpected:
        raise _schema_error(
            f"unexpected column(s) {_quoted(unexpected)}; only the {layout} layout is accepted"
        )


def _read_parquet(data: bytes) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(io.BytesIO(data))
    except Exception as exc:  # polars raises several error types for corrupt files; all mean "unreadable"
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _schema_error(f"not a readable Parquet file: {first_line}") from None
    accepted = {**PUBLISHED_TO_NORMALISED, **{norm: norm for norm in NORMALISED_COLUMNS}}
    _check_columns(frame.columns, accepted=accepted, layout="published or normalised")
    return _normalise_types(frame.rename({name: accepted[name] for name in frame.columns}), lines=None)


# --- typing --------------------------------------------------------------------------------------------


def _normalise_types(frame: pl.DataFrame, lines: list[int] | None) -> pl.DataFrame:
    """Cast every column to its normalised type, in the normalised order; `lines` locates CSV rows."""
    columns = [
        _as_integer(frame[name], lines) if name in INTEGER_COLUMNS else _as_text(frame[name])
        for name in NORMALISED_COLUMNS
    ]
    return pl.DataFrame(columns)


def _where(row: int, lines: list[int] | None) -> str:
    return f"line {lines[row]}" if lines is not None else f"row {row + 1}"


def _published(name: str) -> str:
    return repr(NORMALISED_TO_PUBLISHED[name])


def _as_integer(column: pl.Series, lines: list[int] | None) -> pl.Series:
    name = column.name
    dtype = column.dtype
    if dtype.is_integer() or dtype == pl.Null:
        try:
            return column.cast(pl.Int64, strict=True)
        except pl.exceptions.InvalidOperationError:
            raise _schema_error(f"column {_published(name)} holds integers too large for Int64") from None
    if dtype.is_float():
        integral = column.cast(pl.Int64, strict=False)
        bad = column.is_not_null() & (integral.is_null() | (integral.cast(pl.Float64) != column))
        return _reject_bad_integers(column, integral, bad, lines)
    if dtype == pl.String:
        parsed = column.cast(pl.Int64, strict=False)
        bad = column.is_not_null() & parsed.is_null()
        return _reject_bad_integers(column, parsed, bad, lines)
    raise _schema_error(f"column {_published(name)} has type {dtype}, expected integers")


def _reject_bad_integers(
    original: pl.Series, parsed: pl.Series, bad: pl.Series, lines: list[int] | None
) -> pl.Series:
    bad_rows = bad.arg_true()
    if bad_rows.len() == 0:
        return parsed.alias(original.name)
    first = int(bad_rows[0])
    raise _schema_error(
        f"column {_published(original.name)} must hold integers: {bad_rows.len()} bad value(s), "
        f"first {original[first]!r} at {_where(first, lines)}"
    )


def _as_text(column: pl.Series) -> pl.Series:
    if column.dtype in (pl.String, pl.Null, pl.Categorical) or isinstance(column.dtype, pl.Enum):
        return column.cast(pl.String)
    raise _schema_error(f"column {_published(column.name)} has type {column.dtype}, expected text")


# --- contract ------------------------------------------------------------------------------------------


class AgeBounds(Protocol):
    """The configurable part of the contract: the accepted ages (quality.IngestRules carries them)."""

    @property
    def min_age(self) -> int: ...

    @property
    def max_age(self) -> int: ...


def raw_review_schema(rules: AgeBounds) -> pa.DataFrameSchema:
    """The pandera contract of a normalised drop: columns, dtypes, nullability and value ranges."""

    def column(name: str, *checks: pa.Check, unique: bool = False) -> pa.Column:
        return pa.Column(
            NORMALISED_DTYPES[name], checks=list(checks), nullable=name in NULLABLE_COLUMNS, unique=unique
        )

    return pa.DataFrameSchema(
        {
            "source_row": column("source_row", pa.Check.ge(0), unique=True),
            "clothing_id": column("clothing_id", pa.Check.ge(0)),
            "age": column("age", pa.Check.in_range(rules.min_age, rules.max_age)),
            "title": column("title"),
            "review_text": column("review_text"),
            "rating": column("rating", pa.Check.in_range(1, 5)),
            "recommended_ind": column("recommended_ind", pa.Check.isin([0, 1])),
            "positive_feedback_count": column("positive_feedback_count", pa.Check.ge(0)),
            "division_name": column("division_name"),
            "department_name": column("department_name"),
            "class_name": column("class_name"),
        },
        strict=True,
        ordered=True,
        name="raw_reviews",
    )


def validate_schema(frame: pl.DataFrame, rules: AgeBounds) -> str | None:
    """Validate `frame` against the contract (lazily); None when valid, else a one-line failure summary."""
    try:
        raw_review_schema(rules).validate(frame, lazy=True)
    except SchemaErrors as exc:
        return _describe_failures(exc.failure_cases, frame)
    return None


def _describe_failures(failures: pl.DataFrame, frame: pl.DataFrame) -> str:
    listed = [
        _describe_failure(case, frame) for case in failures.head(_MAX_LISTED_FAILURES).iter_rows(named=True)
    ]
    more = failures.height - len(listed)
    suffix = f"; and {more} more" if more > 0 else ""
    return f"{failures.height} contract violation(s): " + "; ".join(listed) + suffix


def _describe_failure(case: dict[str, Any], frame: pl.DataFrame) -> str:
    """One pandera failure case as "column check: value at row N (source_row S)"."""
    column = case["column"] if case["column"] is not None else "(frame)"
    text = f"{column} {case['check']}: {case['failure_case']!r}"
    row: int | None = case["index"]
    if row is None:
        return text
    source_row = frame["source_row"][row] if "source_row" in frame.columns else None
    locator = f"row {row + 1}" + (f" (source_row {source_row})" if source_row is not None else "")
    return f"{text} at {locator}"
