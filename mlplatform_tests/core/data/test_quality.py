"""The blocking checks of a drop: schema, completeness, duplicates, non_empty."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.quality import BLOCKING_CHECKS, validate_drop
from mlplatform.core.platform.settings import Settings, SettingsError

HEADER = ",Clothing ID,Age,Title,Review Text,Rating,Recommended IND,Positive Feedback Count,Division Name,Department Name,Class Name\n"
RULES = Settings.packaged().ingest.replace(
    max_missing_text_share=0.25, max_duplicate_row_share=0.0, min_rows=1
)
CLOTHING = load_contract()


def review(source_row: int, text: str = "Lovely, soft top", age: int = 30, title: str = "") -> str:
    return f'{source_row},862,{age},{title},"{text}",5,1,0,General,Tops,Knits\n'


def drop(*rows: str, header: str = HEADER) -> bytes:
    return (header + "".join(rows)).encode("utf-8")


GOOD = drop(review(0), review(1, "Runs small"), review(2, "Too short"), review(3, "Great"))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"max_missing_text_share": 1.5},
            "[ingest] max_missing_text_share: must be between 0 and 1, got 1.5",
        ),
        ({"max_duplicate_row_share": -0.1}, "[ingest] max_duplicate_row_share: must be between 0 and 1"),
        ({"min_rows": -1}, "[ingest] min_rows: must not be negative, got -1"),
        ({"chunk_rows": 0}, "[ingest] chunk_rows: must be positive, got 0"),
    ],
)
def test_implausible_rules_are_refused(change: dict[str, float], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        RULES.replace(**change)


def test_good_drop_passes_all_four_checks_in_order() -> None:
    validation = validate_drop(GOOD, "csv", CLOTHING, RULES)
    assert [outcome.name for outcome in validation.checks] == list(BLOCKING_CHECKS)
    assert [outcome.name for outcome in validation.checks] == [
        "schema",
        "completeness",
        "duplicates",
        "non_empty",
    ]
    assert validation.passed
    assert validation.first_failure is None
    assert validation.frame is not None
    assert validation.frame.height == 4


# Every bad drop of issue 2 section 7 that this module judges: (drop, failed check, reason fragment).
BAD_DROPS = {
    "missing-column": (drop(header=HEADER.replace(",Rating", "")), "schema", "missing column(s) 'Rating'"),
    "renamed-column": (
        drop(review(0), header=HEADER.replace("Rating", "Stars")),
        "schema",
        "'Rating' missing and 'Stars' unexpected (renamed?)",
    ),
    "wrong-type": (
        drop(review(0), review(1).replace(",5,1,0,", ",five,1,0,")),
        "schema",
        "column 'Rating' must hold integers: 1 bad value(s), first 'five' at line 3",
    ),
    "empty-file": (b"", "schema", "empty file (0 bytes)"),
    "header-only": (HEADER.encode(), "non_empty", "only 0 rows, at least 1 required"),
    "truncated-last-line": (
        drop(review(0), "1,862,30,,"),
        "schema",
        "truncated last line: line 3 has 5 of 11 fields",
    ),
    "unbalanced-quotes": (
        drop(review(0), '1,862,30,,"never closed,5,1,0,General,Tops,Knits\n'),
        "schema",
        "unbalanced quotes: a quoted field in the record starting on line 3 is never closed",
    ),
    "non-utf8": (
        drop(review(0)).replace(b"soft", b"s\xe9ft"),
        "schema",
        f"not valid UTF-8: byte 0xe9 at byte offset {len(HEADER) + 20} (line 2)",
    ),
    "all-null-review-text": (
        drop(review(0, text=""), review(1, text="")),
        "completeness",
        "text (title, review_text) is missing in every row (2 of 2)",
    ),
    "implausible-age": (drop(review(0, age=7)), "schema", "age in_range(14, 110): '7' at row 1"),
    "duplicate-rows": (drop(review(0), review(1)), "duplicates", "1 duplicate row(s) (50.00%)"),
}


@pytest.mark.parametrize("case", list(BAD_DROPS))
def test_bad_drop_fails_its_check_with_a_clear_reason(case: str) -> None:
    data, check, fragment = BAD_DROPS[case]
    validation = validate_drop(data, "csv", CLOTHING, RULES)
    assert not validation.passed
    failure = validation.first_failure
    assert failure is not None
    assert failure.name == check
    assert fragment in failure.description
    assert [outcome.name for outcome in validation.checks] == list(BLOCKING_CHECKS)


def test_unparseable_drop_reports_the_later_checks_as_not_evaluated() -> None:
    validation = validate_drop(b"", "csv", CLOTHING, RULES)
    assert validation.frame is None
    assert [(outcome.name, outcome.passed) for outcome in validation.checks] == [
        (name, False) for name in BLOCKING_CHECKS
    ]
    assert {outcome.description for outcome in validation.checks[1:]} == {
        "not evaluated: empty file (0 bytes)"
    }


def test_completeness_counts_blank_text_and_reports_numeric_missing_shares() -> None:
    data = drop(review(0), review(1, text="   "), review(2, "Fine", title="Nice"), review(3, "Good"))
    outcome = validate_drop(data, "csv", CLOTHING, RULES).checks[1]
    assert outcome.passed  # 1 of 4 = 25% is within the 25% bound
    assert outcome.description == (
        "text (title, review_text) missing in 1 of 4 rows (25.00%), within the bound of 25.00%"
    )
    assert outcome.metadata["missing_text_rows"] == 1
    assert outcome.metadata["missing_share_review_text"] == 0.25
    assert outcome.metadata["missing_share_title"] == 0.75
    assert outcome.metadata["missing_share_rating"] == 0.0
    stricter = RULES.replace(max_missing_text_share=0.2)
    strict_outcome = validate_drop(data, "csv", CLOTHING, stricter).checks[1]
    assert not strict_outcome.passed
    assert "exceeds the bound of 20.00%" in strict_outcome.description


def test_duplicates_ignore_the_index_and_respect_the_bound() -> None:
    data = drop(review(0), review(1, "Other"), review(5), review(9), review(7, "Third"))
    outcome = validate_drop(data, "csv", CLOTHING, RULES).checks[2]
    assert not outcome.passed
    assert outcome.metadata["duplicate_rows"] == 2
    assert outcome.metadata["duplicate_row_share"] == pytest.approx(0.4)
    assert "e.g. source_rows 0/5/9" in outcome.description
    lenient = RULES.replace(max_duplicate_row_share=0.4)
    assert validate_drop(data, "csv", CLOTHING, lenient).checks[2].passed


def test_non_empty_needs_min_rows() -> None:
    rules = RULES.replace(min_rows=5)
    outcome = validate_drop(GOOD, "csv", CLOTHING, rules).checks[3]
    assert not outcome.passed
    assert outcome.description == "only 4 rows, at least 5 required"
    assert outcome.metadata == {"rows": 4, "min_rows": 5}


@pytest.mark.realdata
def test_real_file_passes_every_check_with_the_default_rules(
    real_data_path: Path, settings: Settings
) -> None:
    validation = validate_drop(real_data_path, "csv", CLOTHING, settings.ingest)
    assert validation.passed, validation.first_failure
    assert validation.frame is not None
    assert validation.frame.height == 19_986
    completeness, duplicates = validation.checks[1], validation.checks[2]
    assert completeness.metadata["missing_share_review_text"] == pytest.approx(717 / 19_986)
    assert duplicates.metadata["duplicate_rows"] == 13


# --- chunked validation: the same verdicts and reasons whatever the chunk size ------------------------

CHUNKED_DROPS = {
    "good": GOOD,
    # violations in several chunks, an index repeated across chunks, a duplicate row across chunks
    "violations": drop(
        review(0),
        review(1, age=7),
        review(2, "Other"),
        review(0, "Third"),
        review(4, age=130),
        review(5, "Other"),
        *(f"{row},862,30,,x,9,1,0,a,b,c\n" for row in range(6, 12)),
    ),
    "duplicates": drop(review(0), review(1, "Other"), review(5), review(9), review(7, "Third")),
    "textless": drop(review(0, text=""), review(1), review(2, text=" "), review(3, text="")),
    "bad-values": drop(
        review(0), review(1).replace(",5,1,0,", ",five,1,0,"), review(2).replace(",5,1,0,", ",x,1,0,")
    ),
    "bad-values-then-bad-quotes": drop(
        review(0).replace(",5,1,0,", ",five,1,0,"), review(1), '2,862,30,,"never closed,5,1,0,a,b,c\n'
    ),
    "truncated": drop(review(0), review(1), "2,862,30,,"),
    "renamed-header-and-a-short-line": drop(
        review(0), review(1), "2,862\n", header=HEADER.replace("Rating", "Stars")
    ),
    "header-only": drop(),
}


def _verdict(validation) -> tuple:
    return (
        [(c.name, c.passed, c.description, c.metadata) for c in validation.checks],
        [problem.to_dict() for problem in validation.problems()],
        validation.rows,
    )


@pytest.mark.parametrize("case", list(CHUNKED_DROPS))
@pytest.mark.parametrize("chunk_rows", [1, 2, 5])
def test_chunked_validation_gives_the_same_verdicts_and_reasons_as_one_chunk(
    case: str, chunk_rows: int
) -> None:
    data = CHUNKED_DROPS[case]
    whole = validate_drop(data, "csv", CLOTHING, RULES.replace(chunk_rows=1_000_000))
    chunked = validate_drop(data, "csv", CLOTHING, RULES.replace(chunk_rows=chunk_rows))
    assert _verdict(chunked) == _verdict(whole)
    if whole.frame is None:
        assert chunked.frame is None
    else:
        assert chunked.frame.equals(whole.frame)


def test_cross_chunk_checks_are_caught_in_chunks_of_one_row() -> None:
    validation = validate_drop(CHUNKED_DROPS["violations"], "csv", CLOTHING, RULES.replace(chunk_rows=1))
    schema = validation.checks[0]
    assert not schema.passed
    assert schema.description.startswith("10 contract violation(s): ")
    # pandera's order: by column, then uniqueness before the range checks, then by row
    assert schema.description.split(": ", 1)[1].split("; ")[:3] == [
        "source_row field_uniqueness: '0' at row 1 (source_row 0)",
        "source_row field_uniqueness: '0' at row 4 (source_row 0)",
        "age in_range(14, 110): '7' at row 2 (source_row 1)",
    ]
    assert validation.violation_count == 10
    duplicates = validation.checks[2]
    assert duplicates.metadata["duplicate_rows"] == 6  # row 5 repeats row 2; rows 7-11 repeat row 6
    assert "source_rows 2/5" in duplicates.description


def test_a_file_is_validated_like_its_bytes_and_the_frame_can_be_let_go(tmp_path: Path) -> None:
    path = tmp_path / "drop.csv"
    path.write_bytes(CHUNKED_DROPS["violations"])
    from_bytes = validate_drop(path.read_bytes(), "csv", CLOTHING, RULES)
    from_file = validate_drop(path, "csv", CLOTHING, RULES.replace(chunk_rows=3), keep_frame=False)
    assert _verdict(from_file) == _verdict(from_bytes)
    assert from_file.frame is None and from_bytes.frame is not None


def test_problems_name_column_and_row_one_per_line() -> None:
    validation = validate_drop(CHUNKED_DROPS["violations"], "csv", CLOTHING, RULES, max_listed=50)
    problems = validation.problems()
    schema = [problem for problem in problems if problem.check == "schema"]
    assert len(schema) == 10 and all(problem.column and problem.row for problem in schema)
    assert {"check": "schema", "column": "age", "row": 2, "line": None, "value": "7"}.items() <= schema[
        2
    ].to_dict().items()
    assert [problem.check for problem in problems[10:]] == ["duplicates"]
    short = validate_drop(CHUNKED_DROPS["violations"], "csv", CLOTHING, RULES, max_listed=2).problems()
    assert short[2].message == "and 8 more contract violation(s)"
    unreadable = validate_drop(CHUNKED_DROPS["bad-values"], "csv", CLOTHING, RULES).problems()
    assert [p.to_dict() for p in unreadable] == [
        {
            "check": "schema",
            "column": "Rating",
            "row": 2,
            "line": 3,
            "value": "five",
            "message": "column 'Rating' must hold integers: 2 bad value(s), first 'five' at line 3",
        }
    ]
