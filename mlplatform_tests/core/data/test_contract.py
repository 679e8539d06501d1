"""The dataset contract: the packaged default, another layout, and every malformed contract refused in one
line naming the key, before anything runs."""

from __future__ import annotations

import pytest

from mlplatform.core.data.contract import (
    ColumnRole,
    ContractError,
    DatasetContract,
    FileFormat,
    load_contract,
    normalised_name,
)
from mlplatform_tests.core.data.contract_fixtures import SENTENCES_TOML

UCI = SENTENCES_TOML


def test_the_packaged_default_describes_the_published_clothing_csv() -> None:
    contract = load_contract()
    assert contract.format is FileFormat.CSV and contract.header
    assert contract.source_names[:3] == ("", "Clothing ID", "Age")
    assert contract.text_columns == ("title", "review_text")
    assert (contract.rating_column, contract.label_column, contract.product_column) == (
        "rating",
        None,
        "clothing_id",
    )
    assert contract.facet_columns == ("age_band", "division_name", "department_name")
    assert (
        contract.classes == ("negative", "neutral", "positive") and contract.labels.favourable == "positive"
    )
    assert contract.labels.rating_classes() == {
        1.0: "negative",
        2.0: "negative",
        3.0: "neutral",
        4.0: "positive",
        5.0: "positive",
    }
    # what identifies a review: its content, not the export's index nor the votes it gathered since
    assert contract.identity_columns == (
        "clothing_id",
        "age",
        "title",
        "review_text",
        "rating",
        "recommended_ind",
        "division_name",
        "department_name",
        "class_name",
    )
    assert contract.column("age").bins == (25.0, 35.0, 45.0, 55.0, 65.0)


def test_another_layout_needs_only_a_contract_file(tmp_path) -> None:
    path = tmp_path / "dataset.toml"
    path.write_text(UCI)
    contract = load_contract(path)
    assert contract.format is FileFormat.TSV and not contract.header
    assert contract.normalised_names == ("source_row", "sentence", "label")
    assert contract.text_columns == ("sentence",) and contract.label_column == "label"
    assert contract.product_column is None and contract.facets == ()
    assert contract.labels.mapping == {"0": "negative", "1": "positive"}
    assert contract.identity_columns == ("sentence", "label")
    assert contract.source == str(path)


def test_a_missing_home_contract_is_the_packaged_default(tmp_path) -> None:
    assert load_contract(tmp_path / "absent.toml") == load_contract()


def test_the_fingerprint_follows_the_meaning_not_the_spelling() -> None:
    contract = DatasetContract.from_toml(UCI)
    respelled = DatasetContract.from_toml(UCI.replace('format = "tsv"', 'format   =   "tsv"  # tabs'))
    assert contract.fingerprint == respelled.fingerprint
    other = DatasetContract.from_toml(UCI.replace('favourable = "positive"', 'favourable = "negative"'))
    assert other.fingerprint != contract.fingerprint


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("Review Text", "review_text"),
        ("Clothing ID", "clothing_id"),
        ("", "source_row"),
        ("productId", "product_id"),
        ("2nd score", "c_2nd_score"),
        ("  odd--name ", "odd_name"),
    ],
)
def test_normalised_names_are_snake_case(source: str, expected: str) -> None:
    assert normalised_name(source) == expected


BROKEN = [
    pytest.param(
        ("[labels]", "[labels]\nweights = 1"), "unknown key \\[labels\\] 'weights'", id="unknown label key"
    ),
    pytest.param(('role = "text"', 'role = "body"'), "role must be one of", id="unknown role"),
    pytest.param(
        ("nullable = false\n\n[columns.label]", "nullable = false\ncolour = 1\n\n[columns.label]"),
        "unknown key \\[columns.\"sentence\"\\] 'colour'",
        id="unknown column key",
    ),
    pytest.param(("[dataset]", "shards = 2\n[dataset]"), "unknown key 'shards'", id="unknown top key"),
    pytest.param(('role = "text"', 'role = "extra"'), "no text column", id="no text column"),
    pytest.param(
        ('classes = ["negative", "positive"]', 'classes = ["negative"]'), "2 to 10 classes", id="one class"
    ),
    pytest.param(
        ('map = { "0" = "negative", "1" = "positive" }', 'map = { "0" = "negative", "1" = "negative" }'),
        "class 'positive' is never reachable",
        id="unreachable class",
    ),
    pytest.param(
        (
            'map = { "0" = "negative", "1" = "positive" }',
            'map = { "0" = "negative", "1" = "positive" }\nfrom_rating = { negative = [0] }',
        ),
        "two label sources",
        id="map and from_rating",
    ),
    pytest.param(
        ('favourable = "positive"', 'favourable = "great"'),
        "favourable 'great' is not one of",
        id="unknown favourable",
    ),
    pytest.param(
        ('column_names = ["sentence", "label"]', 'column_names = ["label", "sentence"]'),
        "same order",
        id="names out of order",
    ),
    pytest.param(
        ('column_names = ["sentence", "label"]', ""), "needs column_names", id="headerless without names"
    ),
    pytest.param(('format = "tsv"', 'format = "xlsx"'), "format must be one of", id="unknown format"),
]


@pytest.mark.parametrize(("edit", "message"), BROKEN)
def test_a_malformed_contract_is_refused_in_one_line_naming_the_key(
    edit: tuple[str, str], message: str
) -> None:
    assert edit[0] in UCI
    with pytest.raises(ContractError, match=message) as caught:
        DatasetContract.from_toml(UCI.replace(*edit, 1))
    assert "\n" not in str(caught.value)


RATED = """
[columns.body]
role = "text"
[columns.stars]
role = "rating"
type = "int"
[labels]
classes = ["bad", "good"]
from_rating = { bad = [1, 2, 3], good = [3, 4, 5] }
"""


def test_a_rating_value_mapped_to_two_classes_is_refused() -> None:
    with pytest.raises(ContractError, match="maps the rating 3 to two classes"):
        DatasetContract.from_toml(RATED)


def test_two_label_sources_in_columns_are_refused() -> None:
    text = RATED.replace("[labels]", '[columns.verdict]\nrole = "label"\n[labels]')
    with pytest.raises(ContractError, match="two label sources"):
        DatasetContract.from_toml(text)


def test_a_rating_class_without_values_is_never_reachable() -> None:
    text = RATED.replace('classes = ["bad", "good"]', 'classes = ["bad", "good", "meh"]').replace(
        "good = [3, 4, 5]", "good = [4, 5]"
    )
    with pytest.raises(ContractError, match="class 'meh' is never reachable"):
        DatasetContract.from_toml(text)


def test_bins_are_for_numeric_facets() -> None:
    text = RATED.replace("[columns.stars]", '[columns.shop]\nrole = "facet"\nbins = [1, 2]\n[columns.stars]')
    with pytest.raises(ContractError, match="bins are for numeric facet columns"):
        DatasetContract.from_toml(text)
    fine = DatasetContract.from_toml(
        RATED.replace(
            "[columns.stars]", '[columns.age]\nrole = "facet"\ntype = "int"\nbins = [30]\n[columns.stars]'
        ).replace("good = [3, 4, 5]", "good = [4, 5]")
    )
    assert fine.facet_columns == ("age_band",) and fine.column("age").role is ColumnRole.FACET
