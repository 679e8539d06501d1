"""A draft dataset contract inferred from a file, for a person to read, edit and save as dataset.toml.

`draft_contract(path)` looks at the first `sample_rows` rows of a file and guesses what a person would
otherwise write by hand (core/data/contract.py documents every key):

- format: Parquet by its extension or magic bytes; text as TSV when every sampled line has the same
  number of tabs, else CSV.
- header: a first row whose values do not fit the types of the rows below it (a name over a column of
  numbers, an empty name over a column without empties) is a header; one whose values do is data.
- types: polars casts of the sampled values — int, float, bool (true/false/yes/no), datetime (ISO
  8601), else string; `nullable` when the sample holds an empty value.
- roles: text = long free text (most values phrases, more varied than a few categories); rating = a
  small range of integers (3 to 11 values within 0..10); label = a few distinct values (2 to 10, each
  recurring); id = a distinct
  value in every row; product = many repeated ids under a product-like name; facet = a few distinct
  strings; timestamp = date-times; everything else extra. Names help where they say it ("rating",
  "stars", "label", "sentiment", "product", "sku", ...).
- labels: a rating range split into negative / neutral / positive (1-2 / 3 / 4-5 for five stars); a
  label column's values as classes, 0/1 mapped to negative/positive.

The draft always loads as a valid contract (it is parsed before it is returned); a file that cannot make
one (no column could be text or a label source) is refused with the reason.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from mlplatform.core.data.contract import (
    MAX_CLASSES,
    MIN_CLASSES,
    ColumnRole,
    ColumnType,
    DatasetContract,
    FileFormat,
    normalised_name,
)
from mlplatform.core.platform.errors import UserError

DEFAULT_SAMPLE_ROWS = 100_000
_SNIFF_LINES = 50
_FREE_TEXT_MIN_MEAN_CHARS = 12
_FACET_MAX_DISTINCT = 25
_RATING_NAMES = re.compile(r"rating|stars?|score|grade", re.IGNORECASE)
_LABEL_NAMES = re.compile(r"label|sentiment|polarity|target|class$|verdict", re.IGNORECASE)
_PRODUCT_NAMES = re.compile(r"product|item|sku|asin|article|listing|clothing|(^|[\s_])id$", re.IGNORECASE)
_ID_NAMES = re.compile(r"(^|[\s_])(review[\s_]?)?id$|^uuid$", re.IGNORECASE)
_BOOL_WORDS = {"true", "false", "yes", "no"}
_INTEGER = re.compile(r"[+-]?\d+")


class DraftError(UserError, ValueError):
    """No draft contract can be inferred from the file: the message says why."""


@dataclass
class _Column:
    """What the sample says about one column, and the guess made from it."""

    source: str
    values: pl.Series  # the sampled values, typed (nulls for empty fields)
    type: ColumnType
    nullable: bool
    role: ColumnRole = ColumnRole.EXTRA
    why: str = ""
    keys: dict[str, Any] = field(default_factory=dict)

    @property
    def distinct(self) -> int:
        return self.values.drop_nulls().n_unique()

    @property
    def present(self) -> int:
        return self.values.len() - self.values.null_count()


@dataclass(frozen=True)
class Draft:
    """A draft contract: the TOML a person edits, and the contract it loads as."""

    text: str
    contract: DatasetContract
    rows_sampled: int


def draft_contract(path: Path, sample_rows: int = DEFAULT_SAMPLE_ROWS) -> Draft:
    """Infer a draft contract from the file at `path` (see the module docstring)."""
    if not path.is_file():
        raise DraftError(f"{path} is not a readable file")
    with open(path, "rb") as stream:
        head = stream.read(4)
    if path.suffix.lower() in (".parquet", ".pq") or head == b"PAR1":
        file_format, header, raw = FileFormat.PARQUET, True, _parquet_sample(path, sample_rows)
    else:
        file_format, header, raw = _text_sample(path, sample_rows)
    if not raw or next(iter(raw.values())).len() == 0:
        raise DraftError(f"{path}: no data rows to infer a contract from")
    columns = [_typed(source, values) for source, values in raw.items()]
    rows = columns[0].values.len()
    _guess_roles(columns, rows)
    labels = _labels(columns)
    if not header:
        _name_headerless(columns)
    text = _render(path, file_format, header, columns, labels, rows)
    try:
        contract = DatasetContract.from_toml(text, f"draft of {path.name}")
    except UserError as exc:  # a bug here, not the file's fault; say it in one line anyway
        raise DraftError(f"{path}: the inferred draft does not load: {exc}") from exc
    return Draft(text, contract, rows)


# --- sampling -----------------------------------------------------------------------------------------


def _parquet_sample(path: Path, sample_rows: int) -> dict[str, pl.Series]:
    try:
        frame = pl.scan_parquet(path).head(sample_rows).collect()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DraftError(f"{path}: not a readable Parquet file: {_first_line(exc)}") from None
    return {name: frame.to_series(index) for index, name in enumerate(frame.columns)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _text_sample(path: Path, sample_rows: int) -> tuple[FileFormat, bool, dict[str, pl.Series]]:
    records = _records(path, sample_rows + 1)
    if not records:
        raise DraftError(f"{path}: no rows (the file is empty or holds only blank lines)")
    file_format = records.format
    first, body = records.rows[0], records.rows[1:]
    header = _looks_like_header(first, body)
    names = first if header else [f"column_{index + 1}" for index in range(len(first))]
    data = body if header else records.rows[:sample_rows]
    raw = {
        name: pl.Series(name, [row[index] or None for row in data], dtype=pl.String)
        for index, name in enumerate(names)
    }
    if len(raw) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise DraftError(f"{path}: the header names {repeated[0]!r} more than once")
    return file_format, header, raw


@dataclass(frozen=True)
class _Records:
    format: FileFormat
    rows: list[list[str]]

    def __len__(self) -> int:
        return len(self.rows)


def _records(path: Path, limit: int) -> _Records:
    with open(path, "rb") as stream:
        sniffed = stream.read(1 << 16)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(sniffed, final=False)
    except UnicodeDecodeError as exc:
        raise DraftError(
            f"{path}: not valid UTF-8 (byte 0x{sniffed[exc.start : exc.end].hex()} at byte offset "
            f"{exc.start}) — save the file as UTF-8"
        ) from None
    lines = [line for line in sniffed.decode("utf-8", errors="ignore").splitlines()[:_SNIFF_LINES] if line]
    if len(lines) > 1:
        lines = lines[:-1]  # the last sniffed line may be cut
    tabs = {line.count("\t") for line in lines}
    file_format = FileFormat.TSV if len(tabs) == 1 and tabs != {0} else FileFormat.CSV
    rows: list[list[str]] = []
    with open(path, encoding="utf-8-sig", newline="") as text:
        if file_format is FileFormat.TSV:
            reader = csv.reader(text, delimiter="\t", quoting=csv.QUOTE_NONE, strict=True)
        else:
            reader = csv.reader(text, strict=True)
        try:
            for record in reader:
                if not record:
                    continue
                if rows and len(record) != len(rows[0]):
                    raise DraftError(
                        f"{path}: line {reader.line_num} has {len(record)} fields, the first row has "
                        f"{len(rows[0])}"
                    )
                rows.append(record)
                if len(rows) >= limit:
                    break
        except csv.Error as exc:
            raise DraftError(
                f"{path}: malformed {file_format.value.upper()} near line {reader.line_num}: {exc}"
            ) from None
        except UnicodeDecodeError:
            raise DraftError(f"{path}: not valid UTF-8 — save the file as UTF-8") from None
    return _Records(file_format, rows)


def _fits(value: str, kind: ColumnType) -> bool:
    return _parse(pl.Series([value], dtype=pl.String), kind).null_count() == 0


def _looks_like_header(first: Sequence[str], body: Sequence[Sequence[str]]) -> bool:
    """Whether the first row names the columns: its values do not fit the types of the rows below."""
    if not body:
        return True
    header_votes = data_votes = 0
    for index, value in enumerate(first):
        column = pl.Series([row[index] or None for row in body], dtype=pl.String)
        kind = _infer_type(column)
        has_empty = column.null_count() > 0
        if not value:
            if not has_empty:
                header_votes += 1  # an unnamed column over values that are never empty: the index
            continue
        if kind is ColumnType.STRING:
            continue
        if _fits(value, kind):
            data_votes += 1
        else:
            header_votes += 1
    if header_votes or data_votes:
        return header_votes > data_votes
    # Only text columns: names are short, distinct, and unlike the values below them.
    lengths = [len(value) for value in first]
    distinct = len(set(first)) == len(first)
    body_values = {value for row in body[:1000] for value in row}
    return distinct and max(lengths) <= 40 and not (set(first) & body_values)


# --- types --------------------------------------------------------------------------------------------


def _parse(values: pl.Series, kind: ColumnType) -> pl.Series:
    text = values.str.strip_chars()
    if kind is ColumnType.INT:
        return text.cast(pl.Int64, strict=False)
    if kind is ColumnType.FLOAT:
        return text.cast(pl.Float64, strict=False)
    if kind is ColumnType.BOOL:
        mapping = {"true": True, "false": False, "yes": True, "no": False}
        return text.str.to_lowercase().replace_strict(mapping, default=None, return_dtype=pl.Boolean)
    if kind is ColumnType.DATETIME:
        parsed = {value: _datetime(value) for value in text.drop_nulls().unique().to_list()}
        return text.replace_strict(parsed, default=None, return_dtype=pl.Datetime("us"))
    return values


def _datetime(value: str) -> datetime | None:
    if "-" not in value:  # "2024" alone is a number, not a date
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=None)
    except ValueError:
        return None


def _infer_type(values: pl.Series) -> ColumnType:
    present = values.drop_nulls()
    if present.len() == 0:
        return ColumnType.STRING
    stripped = present.str.strip_chars()
    if stripped.str.contains(r"^[+-]?\d+$").all():
        # Leading zeros ("007") are codes, not numbers: keep them as text.
        if not stripped.str.contains(r"^[+-]?0\d").any():
            return ColumnType.INT
        return ColumnType.STRING
    for kind in (ColumnType.FLOAT, ColumnType.BOOL, ColumnType.DATETIME):
        if _parse(present, kind).null_count() == 0:
            return kind
    return ColumnType.STRING


_FROM_POLARS = (
    (lambda dtype: dtype == pl.Boolean, ColumnType.BOOL),
    (lambda dtype: dtype.is_integer(), ColumnType.INT),
    (lambda dtype: dtype.is_float(), ColumnType.FLOAT),
    (lambda dtype: isinstance(dtype, pl.Datetime | pl.Date), ColumnType.DATETIME),
)


def _typed(source: str, values: pl.Series) -> _Column:
    if values.dtype == pl.String:
        kind = _infer_type(values)
        typed = _parse(values, kind) if kind is not ColumnType.STRING else values
    else:
        kind = next((kind for test, kind in _FROM_POLARS if test(values.dtype)), ColumnType.STRING)
        typed = values if kind is not ColumnType.STRING else values.cast(pl.String)
    if typed.dtype == pl.String:
        typed = typed.replace("", None)
    return _Column(source, typed, kind, nullable=typed.null_count() > 0)


# --- roles --------------------------------------------------------------------------------------------


def _is_free_text(column: _Column, rows: int) -> bool:
    if column.type is not ColumnType.STRING or column.present == 0:
        return False
    present = column.values.drop_nulls()
    spaced = present.str.contains(r"\s").mean() or 0.0
    mean_chars = present.str.len_chars().mean() or 0.0
    # Phrases rather than a few categories: many distinct values, or mostly distinct in a small sample.
    varied = column.distinct > _FACET_MAX_DISTINCT or column.distinct >= 0.3 * column.present
    return spaced >= 0.5 and mean_chars >= _FREE_TEXT_MIN_MEAN_CHARS and varied


def _rating_values(column: _Column) -> list[float] | None:
    if column.type not in (ColumnType.INT, ColumnType.FLOAT) or column.present == 0:
        return None
    values = sorted(column.values.drop_nulls().unique().to_list())
    if not 3 <= len(values) <= 11 or values[0] < 0 or values[-1] > 10:
        return None
    if column.type is ColumnType.FLOAT and not all(float(value * 2).is_integer() for value in values):
        return None
    return values


def _label_values(column: _Column) -> list[str] | None:
    if column.type in (ColumnType.FLOAT, ColumnType.DATETIME) or column.present == 0:
        return None
    values = sorted({str(value) for value in column.values.drop_nulls().to_list()}, key=_natural)
    repeated = 2 * len(values) <= column.present  # classes recur; a column of distinct ids does not
    return values if MIN_CLASSES <= len(values) <= MAX_CLASSES and repeated else None


def _natural(value: str) -> tuple[int, float, str]:
    return (0, float(value), "") if _INTEGER.fullmatch(value) else (1, 0.0, value)


def _guess_roles(columns: list[_Column], rows: int) -> None:
    for column in columns:
        if (
            column.source == ""
            and column.type is ColumnType.INT
            and column.distinct == column.present == rows
        ):
            column.role, column.why = ColumnRole.EXTRA, "an unnamed running index (the export's row numbers)"
            column.keys.update(unique=True, identity=False)
            continue
        if _is_free_text(column, rows):
            column.role, column.why = ColumnRole.TEXT, "free text: phrases, many distinct"
    if not any(column.role is ColumnRole.TEXT for column in columns):
        strings = [column for column in columns if column.type is ColumnType.STRING and column.present]
        if not strings:
            raise DraftError("no column holds text: a contract needs at least one text column")
        longest = max(strings, key=lambda column: column.values.drop_nulls().str.len_chars().mean() or 0.0)
        longest.role, longest.why = ColumnRole.TEXT, "the longest strings (no column looked like free text)"
    _guess_label_source(columns)
    undecided = [column for column in columns if column.role is ColumnRole.EXTRA and not column.why]
    product_taken = False
    for column in undecided:
        tokens = column.type is ColumnType.INT or (
            column.type is ColumnType.STRING
            and column.present
            and not column.values.drop_nulls().str.contains(r"\s").any()
        )
        if tokens and column.present == rows and column.distinct == rows and rows > 1:
            column.role, column.why = ColumnRole.ID, "a distinct value in every row"
            column.keys.update(unique=True)
            if column.type is ColumnType.INT and not _ID_NAMES.search(column.source):
                column.role, column.why = ColumnRole.EXTRA, "distinct integers in every row (a row number?)"
                column.keys.update(identity=False)
        elif tokens and not product_taken and _PRODUCT_NAMES.search(column.source) and column.distinct > 1:
            column.role, column.why = ColumnRole.PRODUCT, "repeated ids under a product-like name"
            product_taken = True
        elif column.type is ColumnType.DATETIME:
            column.role, column.why = ColumnRole.TIMESTAMP, "date-times"
        elif (
            column.type is ColumnType.STRING
            and 2 <= column.distinct <= _FACET_MAX_DISTINCT
            and column.distinct <= 0.05 * max(column.present, 1)
        ):
            column.role, column.why = ColumnRole.FACET, f"a few distinct strings ({column.distinct})"
    timestamps = [column for column in columns if column.role is ColumnRole.TIMESTAMP]
    for extra in timestamps[1:]:
        extra.role, extra.why = ColumnRole.EXTRA, "date-times (another column is the timestamp)"
    for column in columns:
        if not column.why:
            column.why = _describe(column)


def _guess_label_source(columns: list[_Column]) -> None:
    free = [column for column in columns if column.role is ColumnRole.EXTRA and not column.why]
    ratings = [column for column in free if _rating_values(column) is not None]
    labels = [column for column in free if _label_values(column) is not None]
    ordered = (
        [(column, ColumnRole.LABEL) for column in labels if _LABEL_NAMES.search(column.source)]
        + [(column, ColumnRole.RATING) for column in ratings if _RATING_NAMES.search(column.source)]
        + [(column, ColumnRole.RATING) for column in ratings]
        + [(column, ColumnRole.LABEL) for column in labels]
    )
    if not ordered:
        raise DraftError(
            "no column looks like a label source (a rating of 3 to 11 values within 0..10, or a label "
            "with 2 to 10 distinct values): a contract needs one"
        )
    column, role = ordered[0]
    column.role = role
    if role is ColumnRole.RATING:
        values = _rating_values(column) or []
        column.why = f"a small range of numbers ({_number(values[0])}..{_number(values[-1])})"
        column.keys.update(min=values[0], max=values[-1])
    else:
        values = _label_values(column) or []
        column.why = f"a few distinct values ({', '.join(values)})"
        column.type = ColumnType.STRING  # classes are names: "0" and "1", not numbers
        column.keys.update(allowed=values)


def _describe(column: _Column) -> str:
    if column.type in (ColumnType.INT, ColumnType.FLOAT) and column.present:
        present = column.values.drop_nulls()
        return f"numbers {_number(present.min())}..{_number(present.max())}, {column.distinct} distinct"
    return f"{column.distinct} distinct value(s)"


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- labels -------------------------------------------------------------------------------------------


def _labels(columns: Sequence[_Column]) -> dict[str, Any]:
    source = next(column for column in columns if column.role in (ColumnRole.RATING, ColumnRole.LABEL))
    if source.role is ColumnRole.RATING:
        values = _rating_values(source) or []
        side = round(len(values) * 0.4)
        negative, neutral, positive = (
            values[:side],
            values[side : len(values) - side],
            values[len(values) - side :],
        )
        rule = {"negative": negative, "neutral": neutral, "positive": positive}
        rule = {label: group for label, group in rule.items() if group}
        return {"classes": list(rule), "favourable": "positive", "from_rating": rule}
    values = source.keys["allowed"]
    if values == ["0", "1"]:
        mapping = {"0": "negative", "1": "positive"}
    elif values == ["-1", "0", "1"]:
        mapping = {"-1": "negative", "0": "neutral", "1": "positive"}
    else:
        classes = [str(value) for value in values]
        favourable = next((label for label in classes if label.lower() in ("positive", "pos")), None)
        return {"classes": classes, "favourable": favourable}
    return {"classes": list(dict.fromkeys(mapping.values())), "favourable": "positive", "map": mapping}


def _name_headerless(columns: list[_Column]) -> None:
    taken: set[str] = set()
    base = {
        ColumnRole.TEXT: "text",
        ColumnRole.LABEL: "label",
        ColumnRole.RATING: "rating",
        ColumnRole.PRODUCT: "product_id",
        ColumnRole.ID: "id",
        ColumnRole.TIMESTAMP: "created_at",
    }
    for index, column in enumerate(columns):
        name = base.get(column.role, f"column_{index + 1}")
        candidate, counter = name, 2
        while candidate in taken:
            candidate, counter = f"{name}_{counter}", counter + 1
        taken.add(candidate)
        column.source = candidate


# --- rendering ----------------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_toml(str(key))} = {_toml(item)}" for key, item in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def _render(
    path: Path,
    file_format: FileFormat,
    header: bool,
    columns: Sequence[_Column],
    labels: dict[str, Any],
    rows: int,
) -> str:
    lines = [
        f"# Draft dataset contract inferred from {path.name} ({rows:,} rows sampled) by `mlplatform dataset draft`.",
        "# Read every guess, edit what is wrong, save it as $MLPLATFORM_HOME/dataset.toml, then try it with",
        "# `mlplatform dataset check FILE`. Keys: see `mlplatform dataset show` and core/data/contract.py.",
        "",
        "[dataset]",
        f"format = {_toml(file_format.value)}",
        f"header = {_toml(header)}" + ("" if header else "  # the file's first row is data"),
    ]
    if not header:
        lines.append(f"column_names = {_toml([column.source for column in columns])}")
    lines.append('unknown_columns = "refuse"  # or "ignore": drop file columns this contract does not name')
    for column in columns:
        why = column.why
        if column.source and normalised_name(column.source) != column.source:
            why += f"; normalised name {normalised_name(column.source)}"
        lines += ["", f"[columns.{_toml(column.source)}]  # {why}"]
        lines.append(f"role = {_toml(column.role.value)}")
        lines.append(f"type = {_toml(column.type.value)}")
        note = "empty values in the sample" if column.nullable else "no empty value in the sample"
        lines.append(f"nullable = {_toml(column.nullable)}  # {note}")
        for key, value in column.keys.items():
            lines.append(f"{key} = {_toml(value)}")
    lines += ["", "[labels]", f"classes = {_toml(labels['classes'])}"]
    if labels.get("favourable"):
        lines.append(f"favourable = {_toml(labels['favourable'])}  # the class bias metrics judge")
    if "from_rating" in labels:
        lines.append(f"from_rating = {_toml(labels['from_rating'])}")
    if "map" in labels:
        lines.append(f"map = {_toml(labels['map'])}")
    return "\n".join(lines) + "\n"
