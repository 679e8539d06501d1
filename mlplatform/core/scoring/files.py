"""Batch scoring of files: a CSV or Parquet file in, its predictions out, streamed in chunks.

`score_file` reads the input in chunks of `[scoring] chunk_rows` rows (memory stays bounded whatever
the file's size), prepares each review's model text with the one text preparation
(core/data/text.py), scores it with the registered model in ONNX Runtime (core/scoring/model.py: the
runs of a chunk execute side by side on every core) and appends the predictions to a temporary file
beside the output. The output appears, by rename, only when every row was scored and the rows written
equal the rows an independent pass counted in the input; an existing output is replaced only with
`overwrite=True`.

Input layouts: the home's dataset contract's (core/data/contract.py) — its text columns, by source or by
normalised name, joined in the contract's order into the model text; CSV or TSV (no quoting) as the
contract declares, with a header or headerless (`[dataset] column_names`) — or any CSV/Parquet with a
plain `text` column. `.csv` is read as CSV, `.tsv` as TSV, `.txt` in the contract's format. Only the text
(and id) columns need be there. Row ids come from the contract's `id` columns (joined with "|" when there
are several), else its `source_row` column (the published clothing index), else an `id` or `review_id`
column, else the 0-based row number.

Output columns: `row_id`, `label`, one `p_<class>` per class (the model's class order), `no_tokens`,
`model_version`, and with `explain_top_k` an `explanation` column (JSON: the top n-grams of the
predicted class, `[{"ngram", "weight"}]`, strongest first). A review with nothing the model reads
(empty, only punctuation, no n-gram of its vocabulary) is not labelled from the class prior as if it
were a review: `no_tokens` is true, `label` and the probabilities are empty, and the summary counts it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from mlplatform.core.data.contract import SOURCE_ROW, ColumnRole, ColumnType, DatasetContract, FileFormat
from mlplatform.core.data.text import prepare_texts
from mlplatform.core.scoring.model import Prediction, ScoringError, ScoringModel, probability_columns

CSV_SUFFIXES = (".csv",)
TSV_SUFFIXES = (".tsv", ".tab")
TEXT_SUFFIXES = (".txt",)
PARQUET_SUFFIXES = (".parquet", ".pq")
PLAIN_TEXT_COLUMN = "text"
ID_COLUMNS = ("id", "review_id")
EXPLANATION_COLUMN = "explanation"
_ROW_NUMBER = "__row_number"


class ScoringInputError(ScoringError):
    """The input or output file cannot be used: unreadable, unknown format, no text column, exists."""


@dataclass(frozen=True)
class ScoreSummary:
    """What one `score_file` run did."""

    rows_in: int
    rows_out: int
    no_tokens: int
    seconds: float
    output_path: Path


@dataclass(frozen=True)
class _Reading:
    """How to scan one input: Parquet, or delimited text with its separator, quoting and header."""

    parquet: bool
    separator: str = ","
    header: bool = True
    names: tuple[str, ...] | None = None  # headerless: the columns' names, in order

    def scan(self, path: Path, overrides: dict[str, pl.DataType] | None = None) -> pl.LazyFrame:
        if self.parquet:
            return pl.scan_parquet(path)
        return pl.scan_csv(
            path,
            separator=self.separator,
            quote_char=None if self.separator == "\t" else '"',  # TSV: no quoting, as the lake reads it
            has_header=self.header,
            new_columns=list(self.names) if self.names is not None else None,
            infer_schema=False,
            schema_overrides=overrides,
        )


def _reading(input_path: Path, contract: DatasetContract) -> _Reading:
    suffix = input_path.suffix.lower()
    if not input_path.is_file():
        raise ScoringInputError(f"input {input_path} is not a readable file")
    if suffix in PARQUET_SUFFIXES:
        return _Reading(parquet=True)
    if suffix in CSV_SUFFIXES:
        kind = FileFormat.CSV
    elif suffix in TSV_SUFFIXES:
        kind = FileFormat.TSV
    elif suffix in TEXT_SUFFIXES:
        kind = FileFormat.TSV if contract.format is FileFormat.TSV else FileFormat.CSV
    else:
        raise ScoringInputError(f"input {input_path} must be .csv, .tsv, .txt or .parquet")
    separator = "\t" if kind is FileFormat.TSV else ","
    with_header = _Reading(parquet=False, separator=separator)
    # The contract's headerless layout, unless the file names a plain `text` column in its first row.
    headerless = kind is contract.format and not contract.header
    if headerless and PLAIN_TEXT_COLUMN not in _names(with_header, input_path):
        return _Reading(parquet=False, separator=separator, header=False, names=contract.source_names)
    return with_header


def _names(reading: _Reading, input_path: Path) -> list[str]:
    try:
        return reading.scan(input_path).collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ScoringInputError(f"cannot read {input_path}: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _text_columns(names: list[str], contract: DatasetContract) -> tuple[str, ...] | None:
    """The input's text columns in model-text order: a plain `text` column, else the contract's."""
    if PLAIN_TEXT_COLUMN in names:
        return (PLAIN_TEXT_COLUMN,)
    texts = contract.by_role(ColumnRole.TEXT)
    for spelling in ([column.source for column in texts], [column.name for column in texts]):
        if set(spelling) <= set(names):
            return tuple(spelling)
    return None


def _id_columns(names: list[str], contract: DatasetContract) -> tuple[tuple[str, ...], bool]:
    """The input's id column(s) and whether they hold integers (the contract says int)."""
    ids = contract.by_role(ColumnRole.ID)
    candidates = [list(ids), [column for column in contract.columns if column.name == SOURCE_ROW]]
    for columns in candidates:
        if not columns:
            continue
        for spelling in ([column.source for column in columns], [column.name for column in columns]):
            if set(spelling) <= set(names):
                integer = len(columns) == 1 and columns[0].type is ColumnType.INT
                return tuple(spelling), integer
    plain = next((name for name in ID_COLUMNS if name in names), None)
    return ((plain,), False) if plain is not None else ((), False)


def scoring_frame(input_path: Path, contract: DatasetContract) -> tuple[pl.LazyFrame, tuple[str, ...]]:
    """The input as a lazy frame of `row_id` and its text columns (in model-text order), in input order."""
    reading = _reading(input_path, contract)
    names = _names(reading, input_path)
    text_columns = _text_columns(names, contract)
    if text_columns is None:
        sources = [column.source for column in contract.by_role(ColumnRole.TEXT)]
        raise ScoringInputError(
            f"input {input_path} has no text: expected a 'text' column or the contract's text column(s) "
            f"{', '.join(repr(name) for name in sources)} (found {names})"
        )
    id_columns, integer_id = _id_columns(names, contract)
    overrides = {id_columns[0]: pl.Int64()} if integer_id and not reading.parquet else None
    try:
        frame = reading.scan(input_path, overrides)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ScoringInputError(f"cannot read {input_path}: {_first_line(exc)}") from exc
    if not id_columns:
        frame = frame.with_row_index(_ROW_NUMBER)
        row_id = pl.col(_ROW_NUMBER)
    elif len(id_columns) == 1:
        row_id = pl.col(id_columns[0])
    else:
        row_id = pl.concat_str([pl.col(name).cast(pl.String) for name in id_columns], separator="|")
    selected = [row_id.alias("row_id")]
    selected += [
        pl.col(name).cast(pl.String).alias(f"__text_{index}") for index, name in enumerate(text_columns)
    ]
    return frame.select(selected), tuple(f"__text_{index}" for index in range(len(text_columns)))


class _ChunkWriter:
    """Appends prediction chunks to a temp file (CSV or Parquet) that is renamed into place at the end."""

    def __init__(self, output_path: Path, overwrite: bool) -> None:
        suffix = output_path.suffix.lower()
        if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
            raise ScoringInputError(f"output {output_path} must end in .csv or .parquet")
        if output_path.exists() and not overwrite:
            raise ScoringInputError(f"output {output_path} exists: pass --overwrite to replace it")
        self.output_path = output_path
        self.overwrite = overwrite
        self.parquet = suffix in PARQUET_SUFFIXES
        self.temp_path = output_path.with_name(f".{output_path.name}.{os.getpid()}.partial")
        self.rows = 0
        self._csv = None
        self._parquet: pq.ParquetWriter | None = None

    def write(self, chunk: pl.DataFrame) -> None:
        if self.parquet:
            table = chunk.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.temp_path, table.schema)
            self._parquet.write_table(table)
        else:
            if self._csv is None:
                self._csv = self.temp_path.open("wb")
                chunk.write_csv(self._csv, include_header=True)
            else:
                chunk.write_csv(self._csv, include_header=False)
        self.rows += chunk.height

    def finish(self) -> int:
        """Close the temp file and make it durable; returns the rows it holds."""
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
            written = pq.ParquetFile(self.temp_path).metadata.num_rows
        else:
            assert self._csv is not None
            self._csv.close()
            self._csv = None
            written = self.rows
        with self.temp_path.open("rb+") as handle:
            os.fsync(handle.fileno())
        return written

    def publish(self) -> None:
        if self.overwrite:
            os.replace(self.temp_path, self.output_path)
            return
        try:  # link() never replaces: a file that appeared meanwhile is kept, not overwritten
            os.link(self.temp_path, self.output_path)
        except FileExistsError:
            raise ScoringInputError(
                f"output {self.output_path} appeared while scoring: pass --overwrite"
            ) from None
        self.temp_path.unlink()

    def abandon(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._csv is not None:
            self._csv.close()
        self.temp_path.unlink(missing_ok=True)


def prediction_frame(
    row_ids: pl.Series, prediction: Prediction, classes: tuple[str, ...], version: str
) -> pl.DataFrame:
    """One output chunk: a no_tokens row has no label and no probabilities."""
    answered = ~prediction.no_tokens
    unanswered = np.flatnonzero(~answered)
    # From a list, then blanked: polars cannot build a String series from an object array whose first
    # value is None (a chunk that starts with a no_tokens row).
    labels = pl.Series("label", prediction.labels.tolist(), dtype=pl.String)
    columns: dict[str, Any] = {
        "row_id": row_ids,
        "label": labels.scatter(unanswered, None) if len(unanswered) else labels,
    }
    for index, name in enumerate(probability_columns(classes)):
        values = pl.Series(name, prediction.probabilities[:, index], dtype=pl.Float32)
        columns[name] = values.scatter(unanswered, None) if len(unanswered) else values
    columns["no_tokens"] = pl.Series("no_tokens", prediction.no_tokens, dtype=pl.Boolean)
    columns["model_version"] = pl.repeat(version, len(row_ids), dtype=pl.String, eager=True)
    if prediction.explanations is not None:
        columns[EXPLANATION_COLUMN] = pl.Series(
            EXPLANATION_COLUMN,
            [
                json.dumps([{"ngram": item.ngram, "weight": item.weight} for item in row])
                if answered_row
                else None
                for row, answered_row in zip(prediction.explanations, answered.tolist(), strict=True)
            ],
            dtype=pl.String,
        )
    return pl.DataFrame(columns)


def score_file(
    input_path: Path,
    output_path: Path,
    model: ScoringModel,
    model_version: str,
    chunk_rows: int,
    *,
    contract: DatasetContract,
    explain_top_k: int = 0,
    overwrite: bool = False,
    on_progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score a CSV/TSV/Parquet file (in `contract`'s layout, or with a `text` column) in chunks into a
    CSV/Parquet file (by extension); rows in = rows out."""
    started = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    if output_path.resolve() == input_path.resolve():
        raise ScoringInputError(f"output {output_path} would overwrite the input")
    frame, text_columns = scoring_frame(input_path, contract)
    if explain_top_k:
        model.require_explanations()
    output_path.parent.mkdir(parents=True, exist_ok=True)
    writer = _ChunkWriter(output_path, overwrite)
    rows_in = no_tokens = 0
    try:
        for chunk in _chunks(frame, chunk_rows, input_path):
            texts = prepare_texts([chunk[name] for name in text_columns]).to_list()
            prediction = model.predict(texts, explain_top_k)
            writer.write(prediction_frame(chunk["row_id"], prediction, model.classes, model_version))
            rows_in += chunk.height
            no_tokens += int(prediction.no_tokens.sum())
            if on_progress is not None:
                on_progress(rows_in)
        if rows_in == 0:
            empty = model.predict([], explain_top_k)
            row_ids = pl.Series("row_id", [], dtype=frame.collect_schema()["row_id"])
            writer.write(prediction_frame(row_ids, empty, model.classes, model_version))
        # Rows in counted by an independent pass over the input, rows out from the written file.
        expected, rows_out = count_input_rows(input_path, contract), writer.finish()
        if not expected == rows_in == rows_out:
            raise ScoringError(
                f"rows in != rows out for {input_path}: input has {expected}, read {rows_in}, wrote {rows_out}"
            )
        writer.publish()
    except BaseException:
        writer.abandon()
        raise
    return ScoreSummary(expected, rows_out, no_tokens, time.perf_counter() - started, output_path)


def count_input_rows(input_path: Path, contract: DatasetContract) -> int:
    """Rows of an input, counted without scoring (Parquet: from its metadata), read as `score_file` reads it."""
    reading = _reading(input_path, contract)
    try:
        if reading.parquet:
            return pq.ParquetFile(input_path).metadata.num_rows
        return int(reading.scan(input_path).select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise ScoringInputError(f"cannot read {input_path}: {_first_line(exc)}") from exc


def _chunks(frame: pl.LazyFrame, chunk_rows: int, input_path: Path) -> Iterator[pl.DataFrame]:
    batches = frame.collect_batches(chunk_size=chunk_rows, maintain_order=True)
    while True:
        try:
            chunk = next(batches)
        except StopIteration:
            return
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ScoringInputError(f"cannot read {input_path}: {_first_line(exc)}") from exc
        if chunk.height:
            yield chunk
