"""Reading drops as published (CSV) or as Parquet, and the pandera contract of a normalised drop."""

from __future__ import annotations

import io
from pathlib import Path

import polars as pl
import pytest

from mlplatform.core.data.quality import IngestRules
from mlplatform.core.data.schema import (
    NORMALISED_COLUMNS,
    NORMALISED_DTYPES,
    PUBLISHED_COLUMNS,
    DropFormatError,
    read_drop,
    validate_schema,
)

HEADER = ",Clothing ID,Age,Title,Review Text,Rating,Recommended IND,Positive Feedback Count,Division Name,Department Name,Class Name\n"
ROW_0 = '0,767,33,,"Soft, and ""comfy""",4,1,0,Initmates,Intimate,Intimates\n'
ROW_1 = '1,1080,34,Love it,"Two lines\nof text",5,1,4,General,Dresses,Dresses\n'
RULES = IngestRules(
    max_missing_review_text_share=0.1, max_duplicate_row_share=0.0, min_age=18, max_age=99, min_rows=1
)


def csv_drop(*rows: str, header: str = HEADER) -> bytes:
    return (header + "".join(rows)).encode("utf-8")


NON_UTF8 = csv_drop(ROW_0).replace(b"comfy", b"comfy\xff")
NON_UTF8_OFFSET = NON_UTF8.index(b"\xff")


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def reason_of(data: bytes, fmt: str = "csv") -> str:
    with pytest.raises(DropFormatError) as caught:
        read_drop(data, fmt)
    assert caught.value.check == "schema"
    return caught.value.reason


def test_published_csv_is_normalised_with_strict_types() -> None:
    frame = read_drop(csv_drop(ROW_0, ROW_1), "csv")
    assert frame.columns == list(NORMALISED_COLUMNS)
    assert dict(frame.schema) == {name: dtype() for name, dtype in NORMALISED_DTYPES.items()}
    assert frame["source_row"].to_list() == [0, 1]
    assert frame["title"].to_list() == [None, "Love it"]
    assert frame["review_text"].to_list() == ['Soft, and "comfy"', "Two lines\nof text"]
    assert frame["positive_feedback_count"].to_list() == [0, 4]


def test_header_only_parses_to_zero_rows_with_the_normalised_schema() -> None:
    frame = read_drop(HEADER.encode(), "csv")
    assert frame.height == 0
    assert frame.columns == list(NORMALISED_COLUMNS)


def test_blank_lines_and_utf8_bom_are_tolerated_and_columns_may_come_in_any_order() -> None:
    reordered_header = "Clothing ID,," + HEADER.split(",", 2)[2]
    reordered_row = "767,0," + ROW_0.split(",", 2)[2]
    frame = read_drop(b"\xef\xbb\xbf" + csv_drop(reordered_row, "\n", header=reordered_header), "csv")
    assert frame.columns == list(NORMALISED_COLUMNS)
    assert frame.select("source_row", "clothing_id").row(0) == (0, 767)


def test_windows_line_ends_read_like_unix_ones() -> None:
    unix = csv_drop(ROW_0, ROW_1)
    assert (
        read_drop(unix.replace(b"\n", b"\r\n"), "csv")
        .drop("review_text")
        .equals(read_drop(unix, "csv").drop("review_text"))
    )


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        (b"", ["empty file (0 bytes)"]),
        (b"\n\n", ["no header row"]),
        (csv_drop(ROW_0, '1,5,6,,x,"4",1,0,a,b,c\n2,5'), ["truncated last line", "line 4", "2 of 11"]),
        (csv_drop("0,5,6,,x,4\n", ROW_1), ["truncated line: line 2", "6 of 11"]),
        (csv_drop(ROW_0, "1,5,6,,x,4,1,0,a,b,Dres"), ["truncated last line", "line 3", "newline"]),
        (csv_drop(ROW_0, "1,5,6,,x,4,1,0,a,b,c,EXTRA\n"), ["line 3 has 12 fields, expected 11"]),
        (
            csv_drop(ROW_0, '1,5,6,,"never closed,4,1,0,a,b,c\n'),
            ["unbalanced quotes", "line 3", "never closed"],
        ),
        (csv_drop('0,5,6,,"opens here,4,1,0,a,b,c\n', ROW_0), ["unbalanced quotes", "line 3"]),
        (NON_UTF8, ["not valid UTF-8", "0xff", f"byte offset {NON_UTF8_OFFSET}", "line 2"]),
        (csv_drop(ROW_0, "1,5,6,,x,five,1,0,a,b,c\n"), ["'Rating'", "'five'", "line 3"]),
        (csv_drop(ROW_1, "2,5,6,,x,4.0,1,0,a,b,c\n"), ["'Rating'", "'4.0'", "line 4"]),
        (b"PAR1\x00\x01", ["Parquet", "delivered as CSV"]),
    ],
    ids=[
        "empty",
        "blank-lines-only",
        "truncated-last-line",
        "short-line-mid-file",
        "cut-inside-last-field",
        "extra-field",
        "quote-never-closed",
        "quote-closed-too-late",
        "non-utf8",
        "text-in-integer-column",
        "decimal-in-integer-column",
        "parquet-bytes-as-csv",
    ],
)
def test_malformed_csv_is_refused_with_a_located_reason(data: bytes, fragments: list[str]) -> None:
    reason = reason_of(data)
    assert "\n" not in reason
    for fragment in fragments:
        assert fragment in reason


def test_header_problems_name_the_columns() -> None:
    missing = reason_of(csv_drop(header=HEADER.replace(",Rating", "")))
    assert "missing column(s) 'Rating'" in missing
    renamed = reason_of(csv_drop(header=HEADER.replace("Rating", "Stars")))
    assert "'Rating' missing and 'Stars' unexpected (renamed?)" in renamed
    extra = reason_of(csv_drop(header=HEADER.replace("\n", ",Notes\n")))
    assert "unexpected column(s) 'Notes'" in extra
    repeated = reason_of(csv_drop(header=HEADER.replace("Title", "Age")))
    assert "'Age' appear more than once" in repeated


def test_unknown_format_is_refused() -> None:
    assert reason_of(b"x", "xlsx") == "unknown drop format 'xlsx' (expected csv or parquet)"


@pytest.mark.parametrize("names", ["published", "normalised"])
def test_parquet_drop_with_published_or_normalised_names(names: str) -> None:
    expected = read_drop(csv_drop(ROW_0, ROW_1), "csv")
    frame = (
        expected
        if names == "normalised"
        else expected.rename(dict(zip(NORMALISED_COLUMNS, PUBLISHED_COLUMNS, strict=True)))
    )
    assert read_drop(parquet_bytes(frame), "parquet").equals(expected)


def test_parquet_integral_floats_and_narrow_ints_are_cast_but_fractions_refused() -> None:
    expected = read_drop(csv_drop(ROW_0, ROW_1), "csv")
    pandas_style = expected.with_columns(pl.col("age").cast(pl.Float64), pl.col("rating").cast(pl.Int8))
    assert read_drop(parquet_bytes(pandas_style), "parquet").equals(expected)
    fractional = expected.with_columns(pl.Series("rating", [4.5, 5.0]))
    reason = reason_of(parquet_bytes(fractional), "parquet")
    assert "'Rating' must hold integers" in reason
    assert "4.5" in reason
    assert "row 1" in reason


def test_parquet_text_column_holding_numbers_is_refused() -> None:
    frame = read_drop(csv_drop(ROW_0), "csv").with_columns(pl.lit(7).alias("title"))
    assert "column 'Title' has type Int32, expected text" in reason_of(parquet_bytes(frame), "parquet")


def test_parquet_naming_one_column_twice_is_refused() -> None:
    frame = read_drop(csv_drop(ROW_0), "csv").with_columns(pl.col("rating").alias("Rating"))
    assert "name the same column twice" in reason_of(parquet_bytes(frame), "parquet")


def test_corrupt_parquet_is_refused() -> None:
    assert reason_of(b"not parquet at all", "parquet").startswith("not a readable Parquet file:")


def test_valid_frame_satisfies_the_contract() -> None:
    assert validate_schema(read_drop(csv_drop(ROW_0, ROW_1), "csv"), RULES) is None


def test_contract_lists_failing_cases_with_column_check_value_and_row() -> None:
    bad = csv_drop(ROW_0, "7,5,12,,x,6,2,-1,a,b,c\n", "8,5,40,,x,4,1,0,a,b,c\n")
    failure = validate_schema(read_drop(bad, "csv"), RULES)
    assert failure is not None
    assert failure.startswith("4 contract violation(s): ")
    assert "age in_range(18, 99): '12' at row 2 (source_row 7)" in failure
    assert "rating in_range(1, 5): '6' at row 2" in failure
    assert "recommended_ind isin([0, 1]): '2' at row 2" in failure
    assert "positive_feedback_count greater_than_or_equal_to(0): '-1' at row 2" in failure


def test_contract_truncates_long_failure_lists_and_refuses_nulls_and_repeated_index() -> None:
    rows = [f"{i},5,6,,x,9,1,0,a,b,c\n" for i in range(8)]
    failure = validate_schema(read_drop(csv_drop(*rows), "csv"), RULES)
    assert failure is not None
    assert failure.startswith("16 contract violation(s)")
    assert failure.endswith("; and 11 more")
    no_rating = validate_schema(read_drop(csv_drop("0,5,30,,x,,1,0,a,b,c\n"), "csv"), RULES)
    assert no_rating is not None
    assert "rating not_nullable" in no_rating
    repeated_index = validate_schema(read_drop(csv_drop(ROW_0, ROW_0.replace("767", "768")), "csv"), RULES)
    assert repeated_index is not None
    assert "source_row field_uniqueness" in repeated_index


@pytest.mark.realdata
def test_real_file_parses_to_every_row_with_the_normalised_types(real_data_path: Path) -> None:
    frame = read_drop(real_data_path.read_bytes(), "csv")
    assert frame.height == 19_986
    assert dict(frame.schema) == {name: dtype() for name, dtype in NORMALISED_DTYPES.items()}
    assert frame["rating"].is_between(1, 5).all()
    assert frame["review_text"].null_count() == 717
    assert frame["title"].null_count() == 3_220
