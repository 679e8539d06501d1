"""Reading drops as the contract describes them (CSV, TSV, Parquet; header or not), and the pandera schema
generated from the contract."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from mlplatform.core.data.contract import DatasetContract, load_contract
from mlplatform.core.data.schema import (
    DropFormatError,
    dataframe_schema,
    iter_drop,
    normalised_dtypes,
    read_drop,
    repeated_masks,
    validate_schema,
)
from mlplatform_tests.core.data.contract_fixtures import sentences_contract

HEADER = ",Clothing ID,Age,Title,Review Text,Rating,Recommended IND,Positive Feedback Count,Division Name,Department Name,Class Name\n"
ROW_0 = '0,767,33,,"Soft, and ""comfy""",4,1,0,Initmates,Intimate,Intimates\n'
ROW_1 = '1,1080,34,Love it,"Two lines\nof text",5,1,4,General,Dresses,Dresses\n'
CLOTHING = load_contract()
NORMALISED_DTYPES = normalised_dtypes(CLOTHING)
NORMALISED_COLUMNS = tuple(NORMALISED_DTYPES)
PUBLISHED_COLUMNS = CLOTHING.source_names


def csv_drop(*rows: str, header: str = HEADER) -> bytes:
    return (header + "".join(rows)).encode("utf-8")


NON_UTF8 = csv_drop(ROW_0).replace(b"comfy", b"comfy\xff")
NON_UTF8_OFFSET = NON_UTF8.index(b"\xff")


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()


def reason_of(data: bytes, fmt: str = "csv", contract: DatasetContract = CLOTHING) -> str:
    with pytest.raises(DropFormatError) as caught:
        read_drop(data, fmt, contract)
    assert caught.value.check == "schema"
    return caught.value.reason


def test_published_csv_is_normalised_with_strict_types() -> None:
    frame = read_drop(csv_drop(ROW_0, ROW_1), "csv", CLOTHING)
    assert frame.columns == list(NORMALISED_COLUMNS)
    assert dict(frame.schema) == NORMALISED_DTYPES
    assert frame["source_row"].to_list() == [0, 1]
    assert frame["title"].to_list() == [None, "Love it"]
    assert frame["review_text"].to_list() == ['Soft, and "comfy"', "Two lines\nof text"]
    assert frame["positive_feedback_count"].to_list() == [0, 4]


def test_header_only_parses_to_zero_rows_with_the_normalised_schema() -> None:
    frame = read_drop(HEADER.encode(), "csv", CLOTHING)
    assert frame.height == 0
    assert frame.columns == list(NORMALISED_COLUMNS)


def test_blank_lines_and_utf8_bom_are_tolerated_and_columns_may_come_in_any_order() -> None:
    reordered_header = "Clothing ID,," + HEADER.split(",", 2)[2]
    reordered_row = "767,0," + ROW_0.split(",", 2)[2]
    frame = read_drop(
        b"\xef\xbb\xbf" + csv_drop(reordered_row, "\n", header=reordered_header), "csv", CLOTHING
    )
    assert frame.columns == list(NORMALISED_COLUMNS)
    assert frame.select("source_row", "clothing_id").row(0) == (0, 767)


def test_windows_line_ends_read_like_unix_ones() -> None:
    unix = csv_drop(ROW_0, ROW_1)
    assert (
        read_drop(unix.replace(b"\n", b"\r\n"), "csv", CLOTHING)
        .drop("review_text")
        .equals(read_drop(unix, "csv", CLOTHING).drop("review_text"))
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
    assert "unexpected column(s) 'Notes': the contract does not name them" in extra
    repeated = reason_of(csv_drop(header=HEADER.replace("Title", "Age")))
    assert "'Age' appear more than once" in repeated


def test_a_malformed_record_is_reported_before_a_header_mismatch_as_before() -> None:
    renamed = HEADER.replace("Rating", "Stars")
    assert (
        reason_of(csv_drop(ROW_0, "1,5\n", header=renamed))
        == "truncated last line: line 3 has 2 of 11 fields"
    )
    assert "'Rating' missing and 'Stars' unexpected" in reason_of(csv_drop(ROW_0, ROW_1, header=renamed))


def test_unknown_format_is_refused() -> None:
    assert reason_of(b"x", "xlsx") == "unknown drop format 'xlsx' (expected csv, tsv, txt or parquet)"


@pytest.mark.parametrize("names", ["published", "normalised"])
def test_parquet_drop_with_published_or_normalised_names(names: str) -> None:
    expected = read_drop(csv_drop(ROW_0, ROW_1), "csv", CLOTHING)
    frame = (
        expected
        if names == "normalised"
        else expected.rename(dict(zip(NORMALISED_COLUMNS, PUBLISHED_COLUMNS, strict=True)))
    )
    assert read_drop(parquet_bytes(frame), "parquet", CLOTHING).equals(expected)


def test_parquet_integral_floats_and_narrow_ints_are_cast_but_fractions_refused() -> None:
    expected = read_drop(csv_drop(ROW_0, ROW_1), "csv", CLOTHING)
    pandas_style = expected.with_columns(pl.col("age").cast(pl.Float64), pl.col("rating").cast(pl.Int8))
    assert read_drop(parquet_bytes(pandas_style), "parquet", CLOTHING).equals(expected)
    fractional = expected.with_columns(pl.Series("rating", [4.5, 5.0]))
    reason = reason_of(parquet_bytes(fractional), "parquet")
    assert "'Rating' must hold integers" in reason
    assert "4.5" in reason
    assert "row 1" in reason


def test_parquet_text_column_holding_numbers_is_refused() -> None:
    frame = read_drop(csv_drop(ROW_0), "csv", CLOTHING).with_columns(pl.lit(7).alias("title"))
    assert "column 'Title' has type Int32, expected text" in reason_of(parquet_bytes(frame), "parquet")


def test_parquet_naming_one_column_twice_is_refused() -> None:
    frame = read_drop(csv_drop(ROW_0), "csv", CLOTHING).with_columns(pl.col("rating").alias("Rating"))
    assert "name the same column twice" in reason_of(parquet_bytes(frame), "parquet")


def test_corrupt_parquet_is_refused() -> None:
    assert reason_of(b"not parquet at all", "parquet").startswith("not a readable Parquet file:")


def test_valid_frame_satisfies_the_contract() -> None:
    assert validate_schema(read_drop(csv_drop(ROW_0, ROW_1), "csv", CLOTHING), CLOTHING) is None


def test_contract_lists_failing_cases_with_column_check_value_and_row() -> None:
    bad = csv_drop(ROW_0, "7,5,12,,x,6,2,-1,a,b,c\n", "8,5,40,,x,4,1,0,a,b,c\n")
    failure = validate_schema(read_drop(bad, "csv", CLOTHING), CLOTHING)
    assert failure is not None
    assert failure.startswith("4 contract violation(s): ")
    assert "age in_range(14, 110): '12' at row 2 (source_row 7)" in failure
    assert "rating in_range(1, 5): '6' at row 2" in failure
    assert "recommended_ind isin([0, 1]): '2' at row 2" in failure
    assert "positive_feedback_count greater_than_or_equal_to(0): '-1' at row 2" in failure


def test_contract_truncates_long_failure_lists_and_refuses_nulls_and_repeated_index() -> None:
    rows = [f"{i},5,6,,x,9,1,0,a,b,c\n" for i in range(8)]
    failure = validate_schema(read_drop(csv_drop(*rows), "csv", CLOTHING), CLOTHING)
    assert failure is not None
    assert failure.startswith("16 contract violation(s)")
    assert failure.endswith("; and 11 more")
    no_rating = validate_schema(read_drop(csv_drop("0,5,30,,x,,1,0,a,b,c\n"), "csv", CLOTHING), CLOTHING)
    assert no_rating is not None
    assert "rating not_nullable" in no_rating
    repeated_index = validate_schema(
        read_drop(csv_drop(ROW_0, ROW_0.replace("767", "768")), "csv", CLOTHING), CLOTHING
    )
    assert repeated_index is not None
    assert "source_row field_uniqueness" in repeated_index


@pytest.mark.realdata
def test_real_file_parses_to_every_row_with_the_normalised_types(real_data_path: Path) -> None:
    frame = read_drop(real_data_path.read_bytes(), "csv", CLOTHING)
    assert frame.height == 19_986
    assert dict(frame.schema) == NORMALISED_DTYPES
    assert frame["rating"].is_between(1, 5).all()
    assert frame["review_text"].null_count() == 717
    assert frame["title"].null_count() == 3_220


# --- other layouts: a contract file is all it takes ------------------------------------------------

UCI = sentences_contract(max_length=40)

# Renamed columns, every type, a 1-10 rating, a product key and a numeric facet; Parquet drops.
SHOP = DatasetContract.from_toml(
    """
[dataset]
format = "parquet"
unknown_columns = "ignore"

[columns.reviewId]
role = "id"
type = "string"
nullable = false
unique = true

[columns.sku]
role = "product"
type = "string"
nullable = false

[columns.body]
role = "text"
type = "string"

[columns.score]
role = "rating"
type = "int"
nullable = false
min = 1
max = 10

[columns.weight]
role = "facet"
type = "float"
min = 0
bins = [1.5, 3.0]

[columns.verified]
role = "extra"
type = "bool"

[columns.written]
role = "timestamp"
type = "datetime"

[labels]
classes = ["negative", "neutral", "positive"]
from_rating = { negative = [1, 2, 3, 4], neutral = [5, 6], positive = [7, 8, 9, 10] }
"""
)


def test_tsv_without_header_keeps_quotes_and_spaces_as_text() -> None:
    data = b'Wow... "Loved" this place.  \t1\nCrust is not good.\t0\n'
    frame = read_drop(data, "txt", UCI)
    assert frame.columns == ["source_row", "sentence", "label"]
    assert dict(frame.schema) == {"source_row": pl.Int64, "sentence": pl.String, "label": pl.String}
    assert frame.rows() == [(0, 'Wow... "Loved" this place.  ', "1"), (1, "Crust is not good.", "0")]
    assert read_drop(data, "tsv", UCI).equals(frame)


def test_headerless_lines_are_checked_and_located() -> None:
    assert (
        reason_of(b"fine\t1\nno label here\n", "txt", UCI) == "truncated last line: line 2 has 1 of 2 fields"
    )
    assert "line 1 has 3 fields, expected 2" in reason_of(b"a\tb\t1\n", "txt", UCI)


def test_headerless_csv_is_named_by_column_names() -> None:
    contract = DatasetContract.from_mapping({**UCI.raw, "dataset": {**UCI.raw["dataset"], "format": "csv"}})
    frame = read_drop(b'"Soft, and ""comfy""",1\nmeh,0\n', "csv", contract)
    assert frame["sentence"].to_list() == ['Soft, and "comfy"', "meh"]


@pytest.mark.parametrize(
    ("fmt", "contract", "fragment"),
    [
        ("tsv", CLOTHING, "a .tsv file, but the contract reads CSV drops"),
        ("csv", UCI, "a .csv file, but the contract reads TSV drops"),
        ("csv", SHOP, "the contract's drops are Parquet"),
    ],
)
def test_a_file_name_contradicting_the_contract_is_refused(fmt, contract, fragment) -> None:
    assert fragment in reason_of(b"a\tb\n", fmt, contract)


def shop_frame(**overrides) -> pl.DataFrame:
    columns = {
        "reviewId": ["r1", "r2", "r3"],
        "sku": ["A-1", "A-1", "B-7"],
        "body": ["great", None, "awful"],
        "score": [9, 5, 2],
        "weight": [1.0, 2.5, None],
        "verified": [True, False, None],
        "written": ["2024-05-01T10:00:00+02:00", "2024-05-02", None],
    }
    return pl.DataFrame(columns | overrides)


def test_parquet_with_renamed_columns_is_typed_per_the_contract() -> None:
    frame = read_drop(parquet_bytes(shop_frame()), "parquet", SHOP)
    assert dict(frame.schema) == normalised_dtypes(SHOP)
    assert frame.columns == [
        "source_row",
        "review_id",
        "sku",
        "body",
        "score",
        "weight",
        "verified",
        "written",
    ]
    assert frame["written"].to_list()[:2] == [
        datetime(2024, 5, 1, 8, tzinfo=UTC),
        datetime(2024, 5, 2, tzinfo=UTC),
    ]
    # the normalised names read the same, and real types (a zoned Datetime, ints as floats) are cast
    typed = shop_frame(
        written=pl.Series([datetime(2024, 5, 1, 10), datetime(2024, 5, 2), None]).dt.replace_time_zone(
            "Europe/Berlin"
        ),
        score=[9.0, 5.0, 2.0],
    ).rename({"reviewId": "review_id"})
    again = read_drop(parquet_bytes(typed), "parquet", SHOP)
    assert again.drop("written").equals(frame.drop("written"))
    assert again["written"][0] == datetime(2024, 5, 1, 8, tzinfo=UTC)


@pytest.mark.parametrize(
    ("column", "values", "fragment"),
    [
        (
            "verified",
            ["yes", "maybe", None],
            "column 'verified' must hold true or false: 1 bad value(s), first 'maybe' at row 2",
        ),
        (
            "written",
            ["2024-05-01", "last tuesday", None],
            "column 'written' must hold ISO 8601 date-times: 1 bad value(s), first 'last tuesday' at row 2",
        ),
        (
            "weight",
            ["1.5", "heavy", "x"],
            "column 'weight' must hold numbers: 2 bad value(s), first 'heavy' at row 2",
        ),
        ("score", [9.5, 5.0, 2.0], "column 'score' must hold integers: 1 bad value(s), first 9.5 at row 1"),
    ],
)
def test_values_of_the_wrong_type_name_column_value_and_row(column, values, fragment) -> None:
    assert fragment in reason_of(parquet_bytes(shop_frame(**{column: values})), "parquet", SHOP)


def test_unknown_columns_are_refused_or_ignored_as_the_contract_says() -> None:
    extra = shop_frame().with_columns(pl.lit("x").alias("internal_note"))
    assert read_drop(parquet_bytes(extra), "parquet", SHOP).equals(
        read_drop(parquet_bytes(shop_frame()), "parquet", SHOP)
    )
    reason = reason_of(csv_drop(ROW_0.replace("\n", ",a note\n"), header=HEADER.replace("\n", ",Notes\n")))
    assert "unexpected column(s) 'Notes'" in reason and 'unknown_columns = "refuse"' in reason
    ignoring = DatasetContract.from_mapping({**CLOTHING.raw, "dataset": {"unknown_columns": "ignore"}})
    noted = csv_drop(ROW_0.replace("\n", ",a note\n"), header=HEADER.replace("\n", ",Notes\n"))
    assert read_drop(noted, "csv", ignoring).equals(read_drop(csv_drop(ROW_0), "csv", CLOTHING))


def test_missing_contract_columns_are_refused_even_when_unknown_ones_are_ignored() -> None:
    reason = reason_of(parquet_bytes(shop_frame().drop("sku")), "parquet", SHOP)
    assert reason.startswith("missing column(s) 'sku'")


def test_the_pandera_schema_is_generated_from_the_contract() -> None:
    schema = dataframe_schema(SHOP)
    assert list(schema.columns) == list(normalised_dtypes(SHOP))
    review_id, score, weight = schema.columns["review_id"], schema.columns["score"], schema.columns["weight"]
    assert (review_id.unique, review_id.nullable) == (True, False)
    assert [check.name for check in score.checks] == ["in_range"]
    assert [check.name for check in weight.checks] == ["greater_than_or_equal_to"]
    uci = dataframe_schema(UCI)
    assert [check.name for check in uci.columns["label"].checks] == ["isin"]
    assert [check.name for check in uci.columns["sentence"].checks] == ["str_length"]
    assert uci.columns["source_row"].unique
    # the packaged default says what the hand-written schema said: age 14..110, rating 1..5, ...
    clothing = dataframe_schema(CLOTHING)
    assert str(clothing.columns["age"].checks[0]) == "<Check in_range: in_range(14, 110)>"
    assert [name for name, column in clothing.columns.items() if not column.nullable] == [
        "source_row",
        "clothing_id",
        "age",
        "rating",
        "recommended_ind",
        "positive_feedback_count",
    ]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"fine\t2\n", "label isin(['0', '1']): '2' at row 1 (source_row 0)"),
        (b"fine\t1\n\t0\n", "sentence not_nullable: None at row 2 (source_row 1)"),
        (b"fine\t1\n" + b"x" * 41 + b"\t0\n", "sentence str_length(None, 40): '" + "x" * 41 + "' at row 2"),
    ],
    ids=["allowed", "nullable", "max_length"],
)
def test_each_breach_of_a_string_column_names_column_value_and_row(data: bytes, fragment: str) -> None:
    failure = validate_schema(read_drop(data, "txt", UCI), UCI)
    assert failure is not None and fragment in failure


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"score": [9, 11, 2]}, "score in_range(1, 10): '11' at row 2 (source_row 1)"),
        ({"weight": [1.0, -0.5, None]}, "weight greater_than_or_equal_to(0.0): '-0.5' at row 2"),
        ({"reviewId": ["r1", "r2", "r1"]}, "review_id field_uniqueness: 'r1' at row 1"),
        ({"sku": ["A-1", None, "B-7"]}, "sku not_nullable: None at row 2"),
    ],
    ids=["max", "min", "unique", "nullable"],
)
def test_each_breach_of_a_typed_column_names_column_value_and_row(overrides, fragment) -> None:
    failure = validate_schema(read_drop(parquet_bytes(shop_frame(**overrides)), "parquet", SHOP), SHOP)
    assert failure is not None and fragment in failure


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 1000])
def test_reading_in_chunks_gives_the_same_frame_and_the_same_reasons(chunk_rows: int) -> None:
    good = csv_drop(ROW_0, ROW_1, "\n", ROW_0.replace("0,767", "2,768"))
    chunks = list(iter_drop(io.BytesIO(good), "csv", CLOTHING, chunk_rows))
    assert len(chunks) == (3 + chunk_rows - 1) // chunk_rows
    assert [chunk.first_row for chunk in chunks] == list(range(0, 3, chunk_rows))
    assert pl.concat([chunk.frame for chunk in chunks]).equals(read_drop(good, "csv", CLOTHING))
    # bad values are counted over every chunk; a malformed record later in the file still wins
    bad = csv_drop(ROW_0, "1,5,6,,x,five,1,0,a,b,c\n", "2,5,6,,x,six,1,0,a,b,c\n")
    with pytest.raises(DropFormatError, match="2 bad value\\(s\\), first 'five' at line 3"):
        list(iter_drop(io.BytesIO(bad), "csv", CLOTHING, chunk_rows))
    worse = bad + b'3,5,6,,"never closed,4,1,0,a,b,c\n'
    with pytest.raises(DropFormatError, match="unbalanced quotes"):
        list(iter_drop(io.BytesIO(worse), "csv", CLOTHING, chunk_rows))


def test_a_bad_utf8_byte_is_located_across_read_blocks(monkeypatch) -> None:
    monkeypatch.setattr("mlplatform.core.data.schema._SCAN_BLOCK", 7)  # split characters across blocks
    data = csv_drop(ROW_0, ROW_1).replace(b"Love", "Lövé".encode()).replace(b"Two", b"T\xffo")
    offset = data.index(b"\xff")
    assert reason_of(data) == (
        f"not valid UTF-8: byte 0xff at byte offset {offset} (line 3) — save the file as UTF-8"
    )


@pytest.mark.realdata
def test_the_real_uci_sentences_read_per_their_contract(real_data_path: Path) -> None:
    path = real_data_path.parent / "uci_sentiment_sentences" / "yelp_labelled.txt"
    if not path.exists():
        pytest.skip(f"{path} not found (see ../shared/data/README.md)")
    contract = DatasetContract.from_mapping(
        {**UCI.raw, "columns": {**UCI.raw["columns"], "sentence": {"role": "text", "nullable": False}}}
    )
    frame = read_drop(path.read_bytes(), "txt", contract)
    assert frame.height == 1_000
    assert set(frame["label"]) == {"0", "1"}
    assert frame.filter(pl.col("sentence").str.contains('"')).height == 12
    assert validate_schema(frame, contract) is None


def test_repeats_are_found_across_chunks_nulls_included() -> None:
    chunks = [pl.Series([3, None, 7]), pl.Series([1, 7]), pl.Series([None, 2])]
    masks = repeated_masks(chunks)
    assert [mask.to_list() for mask in masks] == [[False, True, True], [False, True], [True, False]]
    assert [mask.to_list() for mask in repeated_masks([pl.Series(["a", None]), pl.Series(["b"])])] == [
        [False, False],
        [False],
    ]
    assert repeated_masks([]) == []
