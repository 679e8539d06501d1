"""Reading a drop as the dataset contract describes it, and the pandera schema generated from the contract.

`read_drop(data, fmt, contract)` turns a drop's bytes into the normalised frame: one column per contract
column, named `ColumnSpec.name`, typed per `ColumnSpec.type` (string -> String, int -> Int64, float ->
Float64, bool -> Boolean, datetime -> Datetime(us, UTC)), in contract order, plus `source_row` (Int64,
the row's 0-based position in its file) first when the contract has no column of that name. Anything
else raises `DropFormatError` with a one-line reason naming the column, value and line (or row).
`iter_drop` is the same reading, chunk by chunk, from a file: validation (core/data/quality.py) never
holds more than one chunk of a drop, whatever its size.

Formats. Text drops (`.csv`, `.tsv`, `.txt`) are read in the contract's `[dataset] format`: CSV, or TSV
without quoting (a tab separates fields, a quote is an ordinary character: real sentences contain them).
A `.csv` or `.tsv` name that contradicts the contract is refused, `.txt` takes the contract's word.
Parquet drops (`.parquet`, `.pq`) are accepted under any contract (they carry their own types); their
columns may carry the source names or the normalised names. With `header = false` the columns of a text
drop are named by `[dataset] column_names`, in order; otherwise by its header row, in any order. File
columns the contract does not name are refused, or dropped with `[dataset] unknown_columns = "ignore"`;
missing contract columns are always refused.

CSV is tokenised with the standard library's `csv` module in strict mode rather than by polars, because
polars silently pads a short row with nulls (a truncated last line would pass unnoticed) and reports an
unclosed quote as a typing problem; the `csv` module reports both, with line numbers. Every field is read
as text first and then cast with polars, so a bad value is reported with its column and line. An empty
field, quoted or not, is a missing value (null), as in the published file. The reasons do not depend on
the chunk size: a file is first checked as UTF-8 in one streaming pass (the first bad byte wins), then
tokenised in order (the first malformed record wins), and only then are bad values reported — for the
first column, in contract order, that holds one, with the count over the whole file.

The pandera schema (`dataframe_schema`) is generated from the contract: dtype and `nullable` per
column, `min`/`max` as `in_range` (or `greater_than_or_equal_to` / `less_than_or_equal_to`), `allowed`
as `isin`, `max_length` as `str_length`, `unique` as pandera's uniqueness. `SchemaAccumulator` applies
it chunk by chunk: the per-row checks run on each chunk, uniqueness over the whole drop (a value
repeated across two chunks is caught), and the reason lists violations in pandera's own order (column,
then nullability, uniqueness, the checks, then row), so one chunk or many give the same reason.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import pandera.polars as pa
import polars as pl
import pyarrow.parquet as pq
from pandera.errors import SchemaErrors

from mlplatform.core.data.contract import (
    SOURCE_ROW,
    ColumnRole,
    ColumnSpec,
    ColumnType,
    DatasetContract,
    FileFormat,
)
from mlplatform.core.platform.errors import UserError

SCHEMA_CHECK = "schema"
MAX_LISTED_VIOLATIONS = 5
"""Contract violations a check's reason lists (the count covers all of them)."""

DEFAULT_CHUNK_ROWS = 1 << 62  # read_drop: the whole drop as one chunk

# The drop formats a file name may announce, and what each means.
TEXT_FORMATS = ("csv", "tsv", "txt")
PARQUET_FORMATS = ("parquet", "pq")
_DELIMITED = {FileFormat.CSV: "csv", FileFormat.TSV: "tsv"}
_PARQUET_MAGIC = b"PAR1"
_SCAN_BLOCK = 1 << 20

POLARS_TYPES: dict[ColumnType, pl.DataType] = {
    ColumnType.STRING: pl.String(),
    ColumnType.INT: pl.Int64(),
    ColumnType.FLOAT: pl.Float64(),
    ColumnType.BOOL: pl.Boolean(),
    ColumnType.DATETIME: pl.Datetime("us", "UTC"),
}
"""The polars type of each contract type in the normalised frame."""

_ROW_INDEX = ColumnSpec(
    source="",
    name=SOURCE_ROW,
    role=ColumnRole.EXTRA,
    type=ColumnType.INT,
    nullable=False,
    unique=True,
    min=0.0,
    identity=False,
)
"""`source_row` when the contract has no such column: the row's position, added by the reader."""


class DropFormatError(UserError, ValueError):
    """A drop cannot be read as the contract describes it; `check` names the failed check, `reason` says
    why, and `column` / `line` / `row` locate the problem where it has a place."""

    def __init__(
        self,
        check: str,
        reason: str,
        *,
        column: str | None = None,
        line: int | None = None,
        row: int | None = None,
        value: str | None = None,
    ) -> None:
        super().__init__(f"{check}: {reason}")
        self.check = check
        self.reason = reason
        self.column = column
        self.line = line
        self.row = row
        self.value = value


def _schema_error(reason: str, **where: Any) -> DropFormatError:
    return DropFormatError(SCHEMA_CHECK, reason, **where)


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(repr(name) for name in names)


# --- the normalised layout --------------------------------------------------------------------------


def normalised_columns(contract: DatasetContract) -> tuple[ColumnSpec, ...]:
    """The columns of the normalised frame, in order: `source_row` first when the reader adds it."""
    if any(column.name == SOURCE_ROW for column in contract.columns):
        return contract.columns
    return (_ROW_INDEX, *contract.columns)


def normalised_dtypes(contract: DatasetContract) -> dict[str, pl.DataType]:
    """Normalised column name -> polars type, in the frame's order."""
    return {column.name: POLARS_TYPES[column.type] for column in normalised_columns(contract)}


def _file_columns(contract: DatasetContract) -> tuple[ColumnSpec, ...]:
    """The columns a text drop holds (all but an added `source_row`)."""
    return contract.columns


# --- reading ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DropChunk:
    """Consecutive rows of a drop, normalised: `first_row` is the 0-based row of its first row in the
    file; `lines` the first line of each row (text drops) or None (Parquet, where rows are counted)."""

    frame: pl.DataFrame
    first_row: int
    lines: Sequence[int] | None

    def where(self, index: int) -> str:
        """Where row `index` of this chunk is in the file: "line N" or "row N"."""
        if self.lines is not None:
            return f"line {self.lines[index]}"
        return f"row {self.first_row + index + 1}"


def read_drop(data: bytes, fmt: str, contract: DatasetContract) -> pl.DataFrame:
    """Read a drop's bytes (`fmt` from its name: csv, tsv, txt or parquet) into the normalised frame, or
    raise DropFormatError."""
    frames = [chunk.frame for chunk in iter_drop(io.BytesIO(data), fmt, contract)]
    return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")


def iter_drop(
    stream: IO[bytes], fmt: str, contract: DatasetContract, chunk_rows: int = DEFAULT_CHUNK_ROWS
) -> Iterator[DropChunk]:
    """The normalised frame of the drop in `stream` (seekable), `chunk_rows` rows at a time, in order.

    Yields at least one chunk (empty for a drop without rows). Raises DropFormatError at the first
    structural problem, or after the last chunk when a column holds values of the wrong type (every
    chunk read, so the reason counts them all): a caller must not act on the chunks before the end.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    kind = _drop_kind(fmt, contract)
    head = stream.read(len(_PARQUET_MAGIC))
    stream.seek(0)
    if not head:
        raise _schema_error("empty file (0 bytes)")
    typer = _Typer(contract)
    if kind is FileFormat.PARQUET:
        yield from _parquet_chunks(stream, contract, chunk_rows, typer)
    else:
        if head.startswith(_PARQUET_MAGIC):
            raise _schema_error(
                f"file is Parquet (starts with PAR1) but was delivered as {kind.value.upper()}"
            )
        yield from _text_chunks(stream, kind, contract, chunk_rows, typer)
    typer.raise_first()


def _drop_kind(fmt: str, contract: DatasetContract) -> FileFormat:
    """How to read a drop named as `fmt`: Parquet always; text in the contract's delimited format."""
    name = fmt.lower().lstrip(".")
    if name in PARQUET_FORMATS:
        return FileFormat.PARQUET
    if name not in TEXT_FORMATS:
        raise _schema_error(f"unknown drop format {fmt!r} (expected csv, tsv, txt or parquet)")
    if contract.format is FileFormat.PARQUET:
        raise _schema_error(
            f'a {name} file, but the contract\'s drops are Parquet ([dataset] format = "parquet")'
        )
    if name != "txt" and name != _DELIMITED[contract.format]:
        raise _schema_error(
            f"a .{name} file, but the contract reads {contract.format.value.upper()} drops "
            f'([dataset] format = "{contract.format.value}"): rename it, or fix the contract'
        )
    return contract.format


# --- text drops -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TextFacts:
    """What one streaming pass over a text drop learnt: it is UTF-8, how many "\\n" it holds, how it ends."""

    newlines: int
    ends_with_newline: bool
    ends_with_line_break: bool


def _scan_utf8(stream: IO[bytes]) -> _TextFacts:
    """Check the whole stream is UTF-8 (locating the first bad byte) without holding it; then rewind."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    last = b""
    while True:
        block = stream.read(_SCAN_BLOCK)
        final = not block
        try:
            decoder.decode(block, final=final)
        except UnicodeDecodeError as exc:
            pending = len(exc.object) - len(block)  # bytes of a character begun in the previous block
            bad_at = offset - pending + exc.start
            stream.seek(0)
            line = _count_newlines(stream, bad_at) + 1
            bad = bytes(exc.object[exc.start : exc.end]).hex()
            raise _schema_error(
                f"not valid UTF-8: byte 0x{bad} at byte offset {bad_at} (line {line}) "
                "— save the file as UTF-8",
                line=line,
            ) from None
        if final:
            break
        newlines += block.count(b"\n")
        offset += len(block)
        last = block[-1:]
    stream.seek(0)
    return _TextFacts(newlines, last == b"\n", last in (b"\n", b"\r"))


def _count_newlines(stream: IO[bytes], limit: int) -> int:
    count = 0
    remaining = limit
    while remaining > 0:
        block = stream.read(min(_SCAN_BLOCK, remaining))
        if not block:
            break
        count += block.count(b"\n")
        remaining -= len(block)
    return count


def _reader(text: IO[str], kind: FileFormat):
    if kind is FileFormat.TSV:
        # No quoting at all: a quote is part of the text, a tab always separates fields.
        return csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
    return csv.reader(text, strict=True)


def _text_chunks(
    stream: IO[bytes], kind: FileFormat, contract: DatasetContract, chunk_rows: int, typer: _Typer
) -> Iterator[DropChunk]:
    facts = _scan_utf8(stream)
    # utf-8-sig: a byte order mark is not part of the first field.
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
    try:
        yield from _tokenise(text, kind, contract, chunk_rows, typer, facts)
    finally:
        text.detach()  # the caller owns the stream


def _tokenise(
    text: IO[str],
    kind: FileFormat,
    contract: DatasetContract,
    chunk_rows: int,
    typer: _Typer,
    facts: _TextFacts,
) -> Iterator[DropChunk]:
    """Tokenise strictly, record by record, and yield typed chunks of `chunk_rows` records.

    A header that does not match the contract is reported only once the whole file tokenised, as a
    malformed record anywhere comes first; its chunks are not typed meanwhile.
    """
    reader = _reader(text, kind)
    positions: dict[str, int] | None = None
    header_problem: DropFormatError | None = None
    width = 0
    if not contract.header:
        positions = {column.name: index for index, column in enumerate(_file_columns(contract))}
        width = len(positions)
    records: list[list[str]] = []
    lines: list[int] = []
    rows = 0
    last_line = 0
    while True:
        start_line = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise _schema_error(
                _describe_csv_error(str(exc), start_line, reader.line_num, kind), line=start_line
            ) from None
        if not record:  # a blank line carries no data
            continue
        if positions is None:
            try:
                positions = _header_positions(record, contract, kind)
            except DropFormatError as problem:
                positions, header_problem = {}, problem
            width = len(record)
            continue
        if len(record) != width:
            is_last = reader.line_num >= facts.newlines + (0 if facts.ends_with_newline else 1)
            raise _schema_error(
                _describe_ragged(record, width, start_line, reader.line_num, is_last), line=start_line
            )
        records.append(record)
        lines.append(start_line)
        last_line = start_line
        if len(records) == chunk_rows:
            if header_problem is None:
                yield typer.chunk(_text_columns(records, positions, contract), rows, lines)
            rows += len(records)
            records, lines = [], []
    if positions is None:
        raise _schema_error("no header row (the file holds only blank lines)")
    # A file cut mid-way through its last field still has the right field count; the missing final
    # newline is then the only trace. Exports always end with one, so demand it.
    if (rows or records) and not facts.ends_with_line_break:
        raise _schema_error(
            f"truncated last line: line {last_line} does not end with a newline", line=last_line
        )
    if header_problem is not None:
        raise header_problem
    if records or rows == 0:
        yield typer.chunk(_text_columns(records, positions, contract), rows, lines)


def _text_columns(
    records: list[list[str]], positions: Mapping[str, int], contract: DatasetContract
) -> dict[str, pl.Series]:
    fields = list(zip(*records, strict=True)) if records else None
    columns = {}
    for column in _file_columns(contract):
        values = fields[positions[column.name]] if fields is not None else ()
        columns[column.name] = pl.Series(column.name, [value or None for value in values], dtype=pl.String)
    return columns


def _header_positions(header: list[str], contract: DatasetContract, kind: FileFormat) -> dict[str, int]:
    """Normalised name -> position in the file, from its header row; refuses missing and unknown columns."""
    accepted = {column.source: column.name for column in _file_columns(contract)}
    layout = f"the contract's {kind.value.upper()} layout is {_quoted(list(accepted))}"
    _check_names(header, accepted, contract, layout)
    return {accepted[name]: index for index, name in enumerate(header) if name in accepted}


def _check_names(
    names: Sequence[str], accepted: Mapping[str, str], contract: DatasetContract, layout: str
) -> None:
    """Refuse duplicate, missing and (unless ignored) unknown columns; `accepted` maps names to normalised."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise _schema_error(f"column(s) {_quoted(repeated)} appear more than once in the header")
    known = [name for name in names if name in accepted]
    present = {accepted[name] for name in known}
    if len(present) != len(known):
        raise _schema_error(f"columns {_quoted(list(names))} name the same column twice")
    unexpected = [name for name in names if name not in accepted]
    missing = [column.source for column in _file_columns(contract) if column.name not in present]
    if missing and unexpected:
        raise _schema_error(
            f"column(s) {_quoted(missing)} missing and {_quoted(unexpected)} unexpected (renamed?); {layout}",
            column=missing[0],
        )
    if missing:
        raise _schema_error(f"missing column(s) {_quoted(missing)}; {layout}", column=missing[0])
    if unexpected and contract.unknown_columns.value == "refuse":
        raise _schema_error(
            f"unexpected column(s) {_quoted(unexpected)}: the contract does not name them "
            '([dataset] unknown_columns = "refuse"; "ignore" drops them)',
            column=unexpected[0],
        )


def _describe_csv_error(message: str, start_line: int, current_line: int, kind: FileFormat) -> str:
    if "field larger than field limit" in message:
        if kind is FileFormat.TSV:
            return (
                f"a field in the record starting on line {start_line} runs past "
                f"{csv.field_size_limit()} characters"
            )
        return (
            f"unbalanced quotes: a field in the record starting on line {start_line} runs past "
            f"{csv.field_size_limit()} characters (a quote never closed?)"
        )
    if "unexpected end of data" in message:
        return (
            f"unbalanced quotes: a quoted field in the record starting on line {start_line} is never closed"
        )
    if "expected after" in message:
        return (
            f"unbalanced quotes on line {current_line}: text follows a closing quote "
            f"(a quote inside a quoted field must be doubled)"
        )
    return f"malformed {kind.value.upper()} in the record starting on line {start_line}: {message}"


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


# --- Parquet drops ----------------------------------------------------------------------------------


def _parquet_chunks(
    stream: IO[bytes], contract: DatasetContract, chunk_rows: int, typer: _Typer
) -> Iterator[DropChunk]:
    try:
        parquet = pq.ParquetFile(stream)
        names = list(parquet.schema_arrow.names)
        # By position: polars renames a column without a name ("" is the published index column).
        dtypes = dict(zip(names, _as_frame(parquet.schema_arrow.empty_table()).dtypes, strict=True))
    except Exception as exc:  # pyarrow raises several error types for corrupt files; all mean "unreadable"
        raise _schema_error(f"not a readable Parquet file: {_first_line(exc)}") from None
    columns = normalised_columns(contract)
    # Source names first: a normalised name that is also another column's source name means that one.
    accepted = {column.name: column.name for column in columns}
    accepted |= {column.source: column.name for column in _file_columns(contract)}
    layout = (
        f"the contract's columns are {_quoted([column.source for column in _file_columns(contract)])} "
        "(or their normalised names)"
    )
    _check_names(names, accepted, contract, layout)
    selected = [(index, accepted[name]) for index, name in enumerate(names) if name in accepted]
    typer.check_dtypes({normalised: dtypes[names[index]] for index, normalised in selected})

    def raw(frame: pl.DataFrame) -> dict[str, pl.Series]:
        return {normalised: frame.to_series(index).alias(normalised) for index, normalised in selected}

    rows = 0
    try:
        for batch in parquet.iter_batches(batch_size=min(chunk_rows, 1 << 30)):
            frame = _as_frame(batch)
            if frame.height:
                yield typer.chunk(raw(frame), rows, None)
                rows += frame.height
    except DropFormatError:
        raise
    except Exception as exc:
        raise _schema_error(f"not a readable Parquet file: {_first_line(exc)}") from None
    if rows == 0:
        yield typer.chunk(raw(_as_frame(parquet.schema_arrow.empty_table())), 0, None)


def _as_frame(table: Any) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    return frame


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- typing -------------------------------------------------------------------------------------------


@dataclass
class _BadColumn:
    """A column that holds values of the wrong type: the first one seen and how many in all."""

    column: ColumnSpec
    reason: str | None = None  # a whole-column problem (its type), else bad values
    expected: str = ""
    count: int = 0
    first_value: Any = None
    first_where: str = ""
    first_line: int | None = None
    first_row: int | None = None

    def message(self) -> str:
        name = repr(self.column.source or self.column.name)
        if self.reason is not None:
            return f"column {name} {self.reason}"
        return (
            f"column {name} must hold {self.expected}: {self.count} bad value(s), "
            f"first {self.first_value!r} at {self.first_where}"
        )


_EXPECTED = {
    ColumnType.INT: "integers",
    ColumnType.FLOAT: "numbers",
    ColumnType.BOOL: "true or false",
    ColumnType.DATETIME: "ISO 8601 date-times",
    ColumnType.STRING: "text",
}
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


class _Typer:
    """Casts each chunk's columns to their contract types, remembering every column with bad values."""

    def __init__(self, contract: DatasetContract) -> None:
        self.columns = normalised_columns(contract)
        self.bad: dict[str, _BadColumn] = {}

    def check_dtypes(self, dtypes: Mapping[str, pl.DataType]) -> None:
        """Whole-column type problems of a typed (Parquet) drop, known before any row is read."""
        for column in self.columns:
            dtype = dtypes.get(column.name)
            if dtype is not None and not _castable(dtype, column.type):
                self.bad[column.name] = _BadColumn(
                    column, reason=f"has type {dtype}, expected {_EXPECTED[column.type]}"
                )

    def chunk(self, raw: Mapping[str, pl.Series], first_row: int, lines: Sequence[int] | None) -> DropChunk:
        height = len(next(iter(raw.values()))) if raw else len(lines or ())
        located = DropChunk(pl.DataFrame(), first_row, lines)
        typed = []
        for column in self.columns:
            if column.name not in raw:  # the reader's own source_row
                typed.append(pl.int_range(first_row, first_row + height, dtype=pl.Int64, eager=True))
                typed[-1] = typed[-1].alias(column.name)
                continue
            typed.append(self._cast(column, raw[column.name], located))
        return DropChunk(pl.DataFrame(typed), first_row, lines)

    def raise_first(self) -> None:
        """After the last chunk: the first column (in the frame's order) with bad values, if any."""
        for column in self.columns:
            bad = self.bad.get(column.name)
            if bad is not None:
                raise _schema_error(
                    bad.message(),
                    column=column.source or column.name,
                    line=bad.first_line,
                    row=bad.first_row,
                    value=None if bad.first_value is None else str(bad.first_value),
                )

    def _cast(self, column: ColumnSpec, values: pl.Series, chunk: DropChunk) -> pl.Series:
        target = POLARS_TYPES[column.type]
        if column.name in self.bad and self.bad[column.name].reason is not None:
            return pl.Series(column.name, [None] * len(values), dtype=target)
        dtype = values.dtype
        if dtype == pl.Null:
            return values.cast(target).alias(column.name)
        try:
            parsed = _PARSERS[column.type](values)
        except pl.exceptions.InvalidOperationError:
            # An unsigned integer beyond Int64: a whole-column problem without a single bad "value".
            self.bad.setdefault(column.name, _BadColumn(column, reason="holds integers too large for Int64"))
            return pl.Series(column.name, [None] * len(values), dtype=target)
        bad = values.is_not_null() & parsed.is_null()
        if column.type is ColumnType.INT and dtype.is_float():
            bad = bad | (values.is_not_null() & (parsed.cast(pl.Float64) != values).fill_null(False))
        bad_rows = bad.arg_true()
        if bad_rows.len():
            self._remember(column, values, bad_rows, chunk)
        return parsed.alias(column.name)

    def _remember(self, column: ColumnSpec, values: pl.Series, bad_rows: pl.Series, chunk: DropChunk) -> None:
        record = self.bad.get(column.name)
        if record is None:
            first = int(bad_rows[0])
            record = self.bad[column.name] = _BadColumn(
                column,
                expected=_EXPECTED[column.type],
                first_value=values[first],
                first_where=chunk.where(first),
                first_line=chunk.lines[first] if chunk.lines is not None else None,
                first_row=chunk.first_row + first + 1,
            )
        record.count += bad_rows.len()


def _castable(dtype: pl.DataType, kind: ColumnType) -> bool:
    if dtype == pl.Null or dtype == pl.String or isinstance(dtype, pl.Categorical | pl.Enum):
        return True
    if kind is ColumnType.STRING:
        return False
    if kind in (ColumnType.INT, ColumnType.FLOAT):
        return dtype.is_integer() or dtype.is_float()
    if kind is ColumnType.BOOL:
        return dtype == pl.Boolean or dtype.is_integer()
    return isinstance(dtype, pl.Datetime | pl.Date)


def _as_text(values: pl.Series) -> pl.Series:
    return values.cast(pl.String)


def _as_int(values: pl.Series) -> pl.Series:
    dtype = values.dtype
    if dtype.is_integer():
        return values.cast(pl.Int64, strict=True)
    if dtype.is_float():
        return values.cast(pl.Int64, strict=False)
    return values.cast(pl.String).cast(pl.Int64, strict=False)


def _as_float(values: pl.Series) -> pl.Series:
    if values.dtype.is_numeric():
        return values.cast(pl.Float64)
    return values.cast(pl.String).cast(pl.Float64, strict=False)


def _as_bool(values: pl.Series) -> pl.Series:
    if values.dtype == pl.Boolean:
        return values
    text = values.cast(pl.String).str.strip_chars().str.to_lowercase()
    return text.replace_strict(_BOOLEANS, default=None, return_dtype=pl.Boolean)


def _as_datetime(values: pl.Series) -> pl.Series:
    target = POLARS_TYPES[ColumnType.DATETIME]
    dtype = values.dtype
    if isinstance(dtype, pl.Datetime):
        zoned = values.dt.replace_time_zone("UTC") if dtype.time_zone is None else values
        return zoned.dt.convert_time_zone("UTC").cast(target)
    if dtype == pl.Date:
        return values.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    text = values.cast(pl.String)
    parsed = {value: _parse_datetime(value) for value in text.drop_nulls().unique().to_list()}
    return text.replace_strict(parsed, default=None, return_dtype=target)


def _parse_datetime(value: str) -> datetime | None:
    """ISO 8601 (date, date and time, with an offset or "Z"); a naive time is taken as UTC."""
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


_PARSERS: dict[ColumnType, Callable[[pl.Series], pl.Series]] = {
    ColumnType.STRING: _as_text,
    ColumnType.INT: _as_int,
    ColumnType.FLOAT: _as_float,
    ColumnType.BOOL: _as_bool,
    ColumnType.DATETIME: _as_datetime,
}


# --- the pandera schema -----------------------------------------------------------------------------


def _bound(column: ColumnSpec, value: float) -> int | float:
    return int(value) if column.type is ColumnType.INT and float(value).is_integer() else value


def _checks(column: ColumnSpec) -> list[pa.Check]:
    checks = []
    if column.min is not None and column.max is not None:
        checks.append(pa.Check.in_range(_bound(column, column.min), _bound(column, column.max)))
    elif column.min is not None:
        checks.append(pa.Check.ge(_bound(column, column.min)))
    elif column.max is not None:
        checks.append(pa.Check.le(_bound(column, column.max)))
    if column.allowed is not None:
        checks.append(pa.Check.isin(list(column.allowed)))
    if column.max_length is not None:
        checks.append(pa.Check.str_length(max_value=column.max_length))
    return checks


def dataframe_schema(contract: DatasetContract) -> pa.DataFrameSchema:
    """The pandera schema of a normalised drop, generated from the contract (see the module docstring)."""
    return pa.DataFrameSchema(
        {
            column.name: pa.Column(
                POLARS_TYPES[column.type],
                checks=_checks(column),
                nullable=column.nullable,
                unique=column.unique,
            )
            for column in normalised_columns(contract)
        },
        strict=True,
        ordered=True,
        name="raw_reviews",
    )


def column_rules(column: ColumnSpec) -> list[str]:
    """What the contract demands of one column, in a few words each: "14..110", "in [0, 1]", "unique"."""
    rules = []
    if column.min is not None and column.max is not None:
        rules.append(f"{_bound(column, column.min)}..{_bound(column, column.max)}")
    elif column.min is not None:
        rules.append(f">= {_bound(column, column.min)}")
    elif column.max is not None:
        rules.append(f"<= {_bound(column, column.max)}")
    if column.allowed is not None:
        rules.append(f"in {list(column.allowed)}")
    if column.max_length is not None:
        rules.append(f"at most {column.max_length} characters")
    if not column.nullable:
        rules.append("required")
    if column.unique:
        rules.append("unique")
    return rules


def describe_rules(contract: DatasetContract) -> str:
    """The contract's checks in a few words, e.g. "age 14..110, required; rating 1..5, required"."""
    described = ((column.name, column_rules(column)) for column in normalised_columns(contract))
    return "; ".join(f"{name} {', '.join(rules)}" for name, rules in described if rules)


def repeated_masks(chunks: Sequence[pl.Series]) -> list[pl.Series]:
    """For a column read in chunks: per chunk, which of its values occur more than once in the whole
    column (nulls count as equal values, as in pandera's uniqueness).

    By sorting one copy of the column rather than hashing every value: the memory is that copy (8
    bytes a row for numbers and row hashes), whatever the number of distinct values.
    """
    if not chunks:
        return []
    ordered = pl.concat(chunks, rechunk=True).sort()
    repeated = ordered.filter((ordered == ordered.shift(1)).fill_null(False)).unique()
    nulls_repeat = ordered.null_count() > 1
    del ordered
    return [chunk.is_in(repeated).fill_null(nulls_repeat) for chunk in chunks]


@dataclass(frozen=True)
class Violation:
    """One failure of the pandera schema: column, check, the offending value and where it is."""

    column: str
    check: str
    value: str | None
    row: int | None  # 0-based row in the drop
    source_row: int | None

    def describe(self) -> str:
        """As "column check: value at row N (source_row S)"."""
        text = f"{self.column} {self.check}: {self.value!r}"
        if self.row is None:
            return text
        locator = f"row {self.row + 1}" + (
            f" (source_row {self.source_row})" if self.source_row is not None else ""
        )
        return f"{text} at {locator}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "check": self.check,
            "value": self.value,
            "row": None if self.row is None else self.row + 1,
            "source_row": self.source_row,
        }


@dataclass
class _Bucket:
    count: int = 0
    listed: list[Violation] = field(default_factory=list)


class SchemaAccumulator:
    """The pandera schema applied to a drop chunk by chunk (see the module docstring).

    `add` each chunk in order, then read `count` and `violations` (the first `max_listed` in pandera's
    order) or `reason()`. The result does not depend on how the drop was cut into chunks.
    """

    def __init__(self, contract: DatasetContract, max_listed: int = MAX_LISTED_VIOLATIONS) -> None:
        self.max_listed = max_listed
        full = dataframe_schema(contract)
        self.unique_columns = [name for name, column in full.columns.items() if column.unique]
        # Uniqueness is judged over the whole drop below, never within one chunk.
        self._schema = full.update_columns({name: {"unique": False} for name in self.unique_columns})
        self._order = {name: position for position, name in enumerate(full.columns)}
        self._buckets: dict[tuple[int, int, int], _Bucket] = {}
        # Per unique column, per chunk: (first row, values, source rows unless the column is source_row).
        self._seen: dict[str, list[tuple[int, pl.Series, pl.Series | None]]] = {
            name: [] for name in self.unique_columns
        }
        self._finished = False

    def add(self, chunk: DropChunk) -> None:
        frame = chunk.frame
        source_rows = frame[SOURCE_ROW] if SOURCE_ROW in frame.columns else None
        for name in self.unique_columns:
            rows = None if name == SOURCE_ROW else source_rows
            self._seen[name].append((chunk.first_row, frame[name], rows))
        try:
            self._schema.validate(frame, lazy=True)
        except SchemaErrors as exc:
            for case in exc.failure_cases.iter_rows(named=True):
                index = case["index"]
                self._put(
                    case["column"],
                    case["check"],
                    case["check_number"],
                    case["failure_case"],
                    None if index is None else chunk.first_row + index,
                    None if index is None or source_rows is None else source_rows[index],
                )

    def _put(
        self, column: str | None, check: str, number: int | None, value: Any, row: int | None, source_row: Any
    ) -> None:
        name = column if column is not None else "(frame)"
        kind = 0 if check == "not_nullable" else 1 if check == "field_uniqueness" else 2
        key = (self._order.get(name, -1), kind, number if number is not None else -1)
        bucket = self._buckets.setdefault(key, _Bucket())
        bucket.count += 1
        if len(bucket.listed) < self.max_listed:
            bucket.listed.append(
                Violation(name, check, None if value is None else str(value), row, source_row)
            )

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        for name in self.unique_columns:
            seen = self._seen.pop(name)
            masks = repeated_masks([values for _, values, _ in seen])
            for (first_row, values, source_rows), mask in zip(seen, masks, strict=True):
                for index in mask.arg_true().to_list():
                    value = values[index]
                    source_row = value if source_rows is None else source_rows[index]
                    self._put(name, "field_uniqueness", None, value, first_row + index, source_row)

    @property
    def count(self) -> int:
        self._finish()
        return sum(bucket.count for bucket in self._buckets.values())

    @property
    def violations(self) -> list[Violation]:
        self._finish()
        listed: list[Violation] = []
        for key in sorted(self._buckets):
            listed.extend(self._buckets[key].listed)
        return listed[: self.max_listed]

    def reason(self) -> str | None:
        """None when the drop satisfies the schema, else a one-line summary of its violations."""
        count = self.count
        if count == 0:
            return None
        listed = self.violations
        more = count - len(listed)
        suffix = f"; and {more} more" if more > 0 else ""
        return f"{count} contract violation(s): " + "; ".join(v.describe() for v in listed) + suffix


def validate_schema(frame: pl.DataFrame, contract: DatasetContract) -> str | None:
    """Validate a whole normalised frame against the contract; None when valid, else the reason."""
    accumulator = SchemaAccumulator(contract)
    accumulator.add(DropChunk(frame, 0, None))
    return accumulator.reason()


# --- layouts of accepted drops ------------------------------------------------------------------------


class LayoutMismatch(UserError, ValueError):
    """Accepted drops were read under contracts whose normalised columns differ from the current one."""


def check_layouts(
    frames: Mapping[str, pl.DataFrame], accepted_under: Mapping[str, str | None], contract: DatasetContract
) -> None:
    """Refuse to combine drops whose normalised columns (names and types) are not the current contract's.

    `frames` are the accepted drops' normalised frames by drop hash; `accepted_under` the fingerprint of
    the contract each was accepted under (the lake's sidecar; None for drops accepted before contracts
    were recorded). A contract change that keeps the normalised columns (a label map, a bound, a role)
    mixes nothing and passes.
    """
    expected = normalised_dtypes(contract)
    groups: dict[str, list[str]] = {}
    for drop_hash, frame in sorted(frames.items()):
        if dict(frame.schema) != expected:
            groups.setdefault(accepted_under.get(drop_hash) or "unrecorded", []).append(drop_hash[:12])
    if not groups:
        return
    described = "; ".join(
        f"{len(hashes)} drop(s) accepted under contract {fingerprint} ({', '.join(hashes)})"
        for fingerprint, hashes in sorted(groups.items())
    )
    raise LayoutMismatch(
        f"accepted drops hold other columns than the current contract {contract.fingerprint} "
        f"({', '.join(expected)}): {described}; restore the contract they were accepted under "
        "(dataset.toml), or re-validate them under this one (materialize their raw_reviews partitions)"
    )
