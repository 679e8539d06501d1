"""`dataset draft`: a contract inferred from a file loads, reads the file, and guesses the roles a person
would write."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mlplatform.core.data.contract import ColumnRole, ColumnType, FileFormat, load_contract
from mlplatform.core.data.draft import DraftError, draft_contract
from mlplatform.core.data.features import build_reviews
from mlplatform.core.data.quality import validate_drop
from mlplatform.core.data.schema import read_drop
from mlplatform.core.data.synthetic import generate_reviews, to_published_csv
from mlplatform.core.platform.settings import Settings

RULES = Settings.packaged().ingest.replace(
    max_missing_text_share=0.1, max_duplicate_row_share=0.01, min_rows=1
)


def roles(contract) -> dict[str, str]:
    return {column.source: column.role.value for column in contract.columns}


def test_a_headerless_tsv_of_labelled_sentences(tmp_path: Path) -> None:
    path = tmp_path / "sentences.txt"
    lines = [f'I "really" liked dish number {n}, truly.\t{n % 2}' for n in range(60)]
    path.write_text("\n".join(lines) + "\n")
    draft = draft_contract(path)
    contract = draft.contract
    assert (contract.format, contract.header) == (FileFormat.TSV, False)
    assert roles(contract) == {"text": "text", "label": "label"}
    assert contract.column("label").allowed == ("0", "1")
    assert contract.labels.mapping == {"0": "negative", "1": "positive"}
    assert contract.classes == ("negative", "positive")
    assert validate_drop(path, "txt", contract, RULES).passed


def test_a_published_csv_with_a_header_index_rating_product_and_facets(tmp_path: Path) -> None:
    path = tmp_path / "reviews.csv"
    path.write_bytes(to_published_csv(generate_reviews(2_000, seed=4)))
    contract = draft_contract(path).contract
    assert contract.header and contract.format is FileFormat.CSV
    assert roles(contract) | {} == {
        "": "extra",
        "Clothing ID": "product",
        "Age": "extra",
        "Title": "text",
        "Review Text": "text",
        "Rating": "rating",
        "Recommended IND": "extra",
        "Positive Feedback Count": "extra",
        "Division Name": "facet",
        "Department Name": "facet",
        "Class Name": "facet",
    }
    index = contract.column("source_row")
    assert (index.unique, index.identity, index.nullable) == (True, False, False)
    assert contract.labels.from_rating == load_contract().labels.from_rating
    assert (contract.column("rating").min, contract.column("rating").max) == (1, 5)
    assert validate_drop(path, "csv", contract, RULES).passed


def test_a_parquet_file_with_a_ten_point_rating_ids_and_times(tmp_path: Path) -> None:
    n = 400
    frame = pl.DataFrame(
        {
            "review_id": [f"r{index:05d}" for index in range(n)],
            "sku": [f"SKU-{index % 37}" for index in range(n)],
            "body": [f"the colour faded after wash {index}" for index in range(n)],
            "stars": [1 + index % 10 for index in range(n)],
            "store": [("north", "south", "east")[index % 3] for index in range(n)],
            "posted": pl.datetime_range(
                pl.datetime(2024, 1, 1), pl.datetime(2024, 1, 1) + pl.duration(hours=n - 1), "1h", eager=True
            ),
        }
    )
    path = tmp_path / "export.parquet"
    frame.write_parquet(path)
    contract = draft_contract(path).contract
    assert contract.format is FileFormat.PARQUET
    assert roles(contract) == {
        "review_id": "id",
        "sku": "product",
        "body": "text",
        "stars": "rating",
        "store": "facet",
        "posted": "timestamp",
    }
    assert contract.column("posted").type is ColumnType.DATETIME
    assert contract.labels.from_rating == {
        "negative": (1.0, 2.0, 3.0, 4.0),
        "neutral": (5.0, 6.0),
        "positive": (7.0, 8.0, 9.0, 10.0),
    }
    assert validate_drop(path, "parquet", contract, RULES).passed


def test_a_label_column_of_names_becomes_the_classes(tmp_path: Path) -> None:
    path = tmp_path / "labelled.csv"
    rows = [
        f'"Delivery took {n} days and the box was torn",{("good", "bad", "meh")[n % 3]}' for n in range(30)
    ]
    path.write_text("comment,sentiment\n" + "\n".join(rows) + "\n")
    contract = draft_contract(path).contract
    assert contract.label_column == "sentiment"
    assert contract.classes == ("bad", "good", "meh")
    assert contract.labels.mapping == {"bad": "bad", "good": "good", "meh": "meh"}


def test_a_column_named_like_one_the_platform_derives_gets_a_name_of_its_own(tmp_path: Path) -> None:
    # An export's own "split" column (a facet here) would be replaced by the platform's split: the draft
    # names it split_column, so it loads and the file's values reach the reviews table.
    path = tmp_path / "export.csv"
    rows = [f'"The parcel came on day {n}, all fine",{n % 2},{("train", "test")[n % 2]}' for n in range(40)]
    path.write_text("comment,label,split\n" + "\n".join(rows) + "\n")
    draft = draft_contract(path)
    split = draft.contract.columns[-1]
    assert (split.source, split.name) == ("split", "split_column")
    assert 'name = "split_column"' in draft.text and "which the platform derives" in draft.text
    assert draft.contract.label_column == "label"  # the column the name stands for keeps it
    assert validate_drop(path, "csv", draft.contract, RULES).passed
    reviews = build_reviews({"drop": read_drop(path.read_bytes(), "csv", draft.contract)}, draft.contract)
    assert sorted(reviews.frame["split_column"].unique()) == ["test", "train"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "no rows"),
        (b"id,text\n1,hello there you\n2,hello again friend\n", "no column looks like a label source"),
        (b"a,b\n1,2\n3,4\n", "no column holds text"),
        (b"text,label\nnice \xff\xfe,1\n", "not valid UTF-8"),
        (b"text,label\nnice one,1\nbad,0,extra\n", "line 3 has 3 fields"),
    ],
)
def test_files_that_cannot_make_a_contract_are_refused_in_one_line(tmp_path: Path, content, message) -> None:
    path = tmp_path / "x.csv"
    path.write_bytes(content)
    with pytest.raises(DraftError, match=message) as caught:
        draft_contract(path)
    assert "\n" not in str(caught.value)


@pytest.mark.realdata
def test_the_real_uci_file_drafts_a_contract_that_reads_it(real_data_path: Path) -> None:
    path = real_data_path.parent / "uci_sentiment_sentences" / "yelp_labelled.txt"
    if not path.exists():
        pytest.skip(f"{path} not found (see ../shared/data/README.md)")
    contract = draft_contract(path).contract
    assert [column.role for column in contract.columns] == [ColumnRole.TEXT, ColumnRole.LABEL]
    validation = validate_drop(path, "txt", contract, RULES)
    assert validation.rows == 1_000
    assert validation.checks[0].passed, validation.checks[0].description


@pytest.mark.realdata
def test_the_real_clothing_file_drafts_close_to_the_packaged_default(real_data_path: Path) -> None:
    contract = draft_contract(real_data_path).contract
    default = load_contract()
    assert contract.text_columns == default.text_columns
    assert (contract.rating_column, contract.product_column) == ("rating", "clothing_id")
    assert contract.labels.from_rating == default.labels.from_rating
    assert validate_drop(real_data_path, "csv", contract, RULES).checks[0].passed
