"""Product report: a product with many negative predictions is flagged, one with a handful is not."""

from __future__ import annotations

import csv
import io

import polars as pl
import pytest

from mlplatform.core.data.contract import LabelRule, load_contract
from mlplatform.core.data.features import build_reviews
from mlplatform.core.monitoring.product_report import (
    REPORT_CSV,
    REPORT_MARKDOWN,
    product_quality_report,
    product_report,
    report_columns,
    taxonomy_columns,
    to_markdown,
    to_safe_csv,
    watched_class,
)
from mlplatform.core.monitoring.rules import MonitoringError
from mlplatform.core.platform.settings import MonitoringRules, Settings
from mlplatform_tests.core.data.generated import FIVE_CLASS, TWO_CLASS, generated_drop

CLOTHING = load_contract()
TAXONOMY = taxonomy_columns(CLOTHING)
REPORT_COLUMNS = report_columns("negative", TAXONOMY)


@pytest.fixture
def rules(settings: Settings) -> MonitoringRules:
    return settings.monitoring


def predictions(product_id: str | None, negative: int, positive: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "product_id": [product_id] * (negative + positive),
            "label": ["negative"] * negative + ["positive"] * positive,
        },
        schema={"product_id": pl.String, "label": pl.String},
    )


@pytest.fixture
def log() -> pl.DataFrame:
    background = [predictions(str(product), negative=2, positive=38) for product in range(100, 120)]
    return pl.concat(
        [
            *background,
            predictions("1078", negative=30, positive=30),  # seeded with many negative reviews
            predictions("862", negative=4, positive=1),  # only a handful, however negative
            predictions(None, negative=50, positive=0),  # no product: in neither the products nor the rate
        ]
    )


def test_flags_the_product_seeded_with_negatives_and_not_the_one_with_a_handful(log, rules) -> None:
    report = product_quality_report(log, None, rules, "negative", "clothing_id", TAXONOMY)
    assert report.columns == list(REPORT_COLUMNS)
    assert TAXONOMY == ("division_name", "department_name", "class_name")
    assert report["product_id"].to_list() == ["1078"]
    row = report.row(0, named=True)
    assert row["predictions"] == 60 and row["negative_predictions"] == 30
    assert row["overall_negative_rate"] == pytest.approx((20 * 2 + 30 + 4) / (20 * 40 + 60 + 5))
    assert row["overall_negative_rate"] < row["wilson_lower"] < row["negative_share"] == 0.5


def test_catalogue_adds_the_most_frequent_class_and_department(log, rules) -> None:
    catalogue = pl.DataFrame(
        {
            "clothing_id": [1078, 1078, 1078, 862],
            "department_name": ["Dresses", "Dresses", "Tops", "Tops"],
            "class_name": ["Dresses", "Dresses", "Knits", "Knits"],
        }
    )
    row = product_quality_report(log, catalogue, rules, "negative", "clothing_id", TAXONOMY).row(
        0, named=True
    )
    assert (row["product_id"], row["department_name"], row["class_name"], row["division_name"]) == (
        "1078",
        "Dresses",
        "Dresses",
        None,
    )


def test_a_log_without_any_product_is_refused(rules) -> None:
    with pytest.raises(MonitoringError, match="names a product"):
        product_quality_report(predictions(None, 3, 3), None, rules, "negative", "clothing_id", TAXONOMY)


def test_csv_cells_that_start_a_formula_are_neutralised() -> None:
    frame = pl.DataFrame(
        {
            "product_id": ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tx", "1078"],
            "predictions": [1, 2, 3, 4, 5, -6],
        }
    )
    rows = list(csv.reader(io.StringIO(to_safe_csv(frame).decode("utf-8"))))
    assert rows[0] == ["product_id", "predictions"]
    assert [row[0] for row in rows[1:]] == [
        '\'=HYPERLINK("http://x")',
        "'+1",
        "'-2",
        "'@SUM(A1)",
        "'\tx",
        "1078",
    ]
    assert rows[-1][1] == "-6"  # numbers stay numbers


def test_markdown_shows_the_top_rows_and_escapes_pipes() -> None:
    frame = pl.DataFrame({"product_id": ["a|b", "c", "d"], "negative_share": [0.5, 0.25, 0.125]})
    markdown = to_markdown(frame, top_n=2)
    lines = markdown.splitlines()
    assert lines[0] == "| product_id | negative_share |"
    assert lines[2] == "| a\\|b | 0.5000 |"
    assert len([line for line in lines if line.startswith("| ")]) == 3
    assert "(1 more rows not shown)" in markdown


def test_the_report_comes_as_csv_and_markdown_files_with_its_numbers(log, rules) -> None:
    report = product_report(log, None, rules, CLOTHING)
    assert report.metadata() == {
        "flagged": 1,
        "predictions_with_product": 20 * 40 + 60 + 5,
        "watched_class": "negative",
        "summary": "1 product(s) flagged of 22",
        "top_product_ids": "1078",
    }
    files = report.files()
    assert pl.read_csv(files[REPORT_CSV], schema_overrides={"product_id": pl.String})[
        "product_id"
    ].to_list() == ["1078"]
    assert "1078" in files[REPORT_MARKDOWN].decode()


def test_a_log_naming_no_product_reports_nothing_and_says_so(rules) -> None:
    report = product_report(predictions(None, negative=5, positive=5), None, rules, CLOTHING)
    assert report.report.height == 0 and report.report.columns == list(REPORT_COLUMNS)
    assert report.metadata()["summary"] == "no captured prediction names a product: nothing to report on"
    assert report.metadata()["top_product_ids"] == ""


def test_the_watched_class_is_the_one_farthest_from_the_favourable_class() -> None:
    def rule(classes: tuple[str, ...], favourable: str | None) -> LabelRule:
        return LabelRule(classes, favourable, mapping={label: label for label in classes})

    assert watched_class(CLOTHING.labels) == "negative"
    assert watched_class(FIVE_CLASS.labels) == "awful"
    assert watched_class(rule(("good", "bad"), "good")) == "bad"
    assert watched_class(rule(("bad", "good"), None)) == "bad"


def test_a_five_class_contract_reports_its_products_by_its_watched_class(rules) -> None:
    reviews = build_reviews({"h": generated_drop(FIVE_CLASS, rows=60)}, FIVE_CLASS).frame
    background = [
        pl.DataFrame({"product_id": [f"sku-{n}"] * 40, "label": ["awful"] * 2 + ["great"] * 38})
        for n in range(2, 7)
    ]
    log = pl.concat(
        [*background, pl.DataFrame({"product_id": ["sku-1"] * 40, "label": ["awful"] * 20 + ["okay"] * 20})]
    )
    report = product_report(log, reviews, rules, FIVE_CLASS)
    assert not report.skipped
    assert report.report.columns == list(report_columns("awful", ("region", "channel")))
    assert "awful_share" in report.report.columns and "overall_awful_rate" in report.report.columns
    row = report.report.row(0, named=True)
    assert (row["product_id"], row["awful_predictions"]) == ("sku-1", 20)
    assert row["region"] in {"north", "south", "east", "west"}


def test_a_contract_without_a_product_column_skips_the_report_and_says_why(log, rules) -> None:
    report = product_report(log, None, rules, TWO_CLASS)
    assert report.skipped and report.report.height == 0
    metadata = report.metadata()
    assert metadata["skipped"].startswith("skipped: the dataset contract declares no product column")
    assert metadata["skipped"] == metadata["summary"]
    assert "no product column" in report.files()[REPORT_MARKDOWN].decode()


def test_flagged_products_list_the_ngrams_that_push_them_to_the_watched_class(log, rules) -> None:
    """Each watched-class prediction of a flagged product is explained by the version that made it; the
    report counts the n-grams among its positive pushes."""
    from mlplatform.core.scoring.model import Contribution

    texts = {"v1": "too small and cheap fabric", "v2": "cheap fabric, ripped"}
    pushes = {
        "v1": (Contribution("too small", 0.9), Contribution("cheap", 0.5), Contribution("and", -0.1)),
        "v2": (Contribution("cheap", 0.7), Contribution("ripped", 0.6)),
    }
    asked: list[tuple[str, int]] = []

    def explain(version: str, batch: list[str]):
        asked.append((version, len(batch)))
        assert set(batch) == {texts.get(version, texts["v1"])}
        return None if version == "legacy" else [pushes[version]] * len(batch)

    versions = ["v1"] * 15 + ["v2"] * 10 + ["legacy"] * 5  # the seeded product's 30 negatives
    seeded = log.filter(pl.col("product_id") == "1078")
    negatives = seeded.filter(pl.col("label") == "negative").with_columns(
        pl.Series("model_version", versions)
    )
    with_version = pl.concat(
        [
            log.filter(pl.col("product_id") != "1078").with_columns(pl.lit("v1").alias("model_version")),
            negatives,
            seeded.filter(pl.col("label") != "negative").with_columns(pl.lit("v1").alias("model_version")),
        ]
    ).with_columns(
        pl.when(pl.col("model_version") == "v2")
        .then(pl.lit(texts["v2"]))
        .otherwise(pl.lit(texts["v1"]))
        .alias("text")
    )
    report = product_quality_report(with_version, None, rules, "negative", "clothing_id", TAXONOMY, explain)
    assert report["product_id"].to_list() == ["1078"]
    # cheap: 15 + 10; too small: 15; ripped: 10; "and" pushed away from negative: not counted; the
    # legacy version cannot explain, so its 5 rows add nothing
    assert report["pushing_ngrams"].to_list() == ["cheap (25), too small (15), ripped (10)"]
    assert sorted(asked) == [("legacy", 5), ("v1", 15), ("v2", 10)]
    assert product_quality_report(with_version, None, rules, "negative", "clothing_id", TAXONOMY)[
        "pushing_ngrams"
    ].to_list() == [None]
