"""Live bias drift: facet values from the request or the product's catalogue rows, judged against the card."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from mlplatform.core.monitoring.bias_drift import FacetSource, bias_drift, product_facet
from mlplatform.core.monitoring.rules import ERROR, WARN
from mlplatform.core.platform.settings import Settings, SettingsError

CLASSES = ("negative", "neutral", "positive")
RULES = Settings.packaged().monitoring.bias_drift.replace(min_rows=30)
DAY = datetime(2026, 3, 1, 9, tzinfo=UTC)
# Products 1-4 are dresses, 5-8 tops; reviewers of every age review both.
CATALOGUE = pl.DataFrame(
    {
        "clothing_id": [product for product in range(1, 9) for _ in range(10)],
        "department_name": [
            "Dresses" if product <= 4 else "Tops" for product in range(1, 9) for _ in range(10)
        ],
        "age_band": [["25-34", "45-54"][index % 2] for index in range(80)],
    }
)


# At training every department and age band was predicted alike: 20% negative, 20% neutral, 60% positive.
def _alike(*values: str) -> dict:
    rates = {"negative": 0.2, "neutral": 0.2, "positive": 0.6}
    return {"values": {value: {"rows": 500, "judged": True, "predicted_rate": rates} for value in values}}


CARD_FACETS = {"department_name": _alike("Dresses", "Tops"), "age_band": _alike("25-34", "45-54")}


def live(dress_negative: float, top_negative: float, rows: int = 200, version: str = "v1") -> pl.DataFrame:
    """Answered predictions: half for dresses (products 1-4), half for tops (5-8), with these negative shares."""
    records = []
    for index in range(rows):
        dress = index % 2 == 0
        negative_share = dress_negative if dress else top_negative
        position = (index // 2) / (rows // 2)
        label = (
            "negative"
            if position < negative_share
            else ("neutral" if position < negative_share + 0.2 else "positive")
        )
        records.append(
            {
                "model_version": version,
                "time": DAY + timedelta(hours=index % 30),
                "label": label,
                "product_id": str(1 + index % 4 if dress else 5 + index % 4),
            }
        )
    return pl.DataFrame(records, schema_overrides={"time": pl.Datetime("us", "UTC")})


def report(log: pl.DataFrame, **overrides):
    options = {
        "version": "v1",
        "card_facets": CARD_FACETS,
        "facets": ("department_name", "age_band"),
        "product_column": "clothing_id",
        "classes": CLASSES,
        "rules": RULES,
        **overrides,
    }
    return bias_drift(log, CATALOGUE, **options)


def facet(result, name):
    return next(item for item in result.facets if item.facet == name)


def test_one_department_predicted_more_negative_than_at_training_is_an_error():
    result = report(live(dress_negative=0.5, top_negative=0.2))

    department = facet(result, "department_name")
    assert department.source is FacetSource.CATALOGUE
    dresses = next(value for value in department.values if value.value == "Dresses")
    assert dresses.live_rate["negative"] == pytest.approx(0.5) and dresses.worst_class == "negative"
    # live gap to all traffic +0.15, training gap 0: shift 0.15 (WARN); tops -0.15 alike
    assert dresses.shift == pytest.approx(0.15) and dresses.severity == WARN
    assert (
        result.outcome.severity == WARN
        and "department_name=Dresses shift 0.150" in result.outcome.description
    )

    worse = report(live(dress_negative=0.7, top_negative=0.1))
    assert worse.outcome.severity == ERROR and not worse.outcome.passed


def test_a_shift_of_every_group_alike_is_drift_not_bias():
    result = report(live(dress_negative=0.5, top_negative=0.5))
    assert result.outcome.passed and result.outcome.metadata["max_shift"] == pytest.approx(0.0)


def test_a_facet_that_is_no_property_of_the_product_is_not_guessed():
    result = report(live(0.2, 0.2))
    age = facet(result, "age_band")
    assert age.source is None and age.values == ()
    assert (
        "age_band is not a property of the product: its most frequent value per product covers 0.50"
        in age.reason
    )


def test_a_facet_sent_with_the_request_is_used_as_given():
    log = live(0.2, 0.2).with_columns(
        pl.when(pl.col("label") == "negative")
        .then(pl.lit("45-54"))
        .otherwise(pl.lit("25-34"))
        .alias("age_band")
    )
    age = facet(report(log), "age_band")
    assert age.source is FacetSource.REQUEST
    assert {value.value: value.severity for value in age.values} == {"25-34": WARN, "45-54": ERROR}


def test_values_with_few_predictions_or_no_baseline_are_shown_not_judged():
    result = report(live(0.5, 0.2, rows=40))
    department = facet(result, "department_name")
    assert {value.value: value.shift for value in department.values} == {"Dresses": None, "Tops": None}
    assert result.outcome.severity == WARN and result.outcome.metadata["evaluated"] == 0

    thin = {
        "department_name": {
            "values": {"Dresses": {**_alike("Dresses")["values"]["Dresses"], "rows": 12, "judged": False}}
        }
    }
    (value,) = facet(report(live(0.9, 0.2), card_facets=thin), "department_name").values[:1]
    assert (
        value.shift is None
        and value.note == "12 test rows at training (< [features] min_facet_rows): not judged"
    )

    unknown = report(live(0.2, 0.2).with_columns(pl.lit("99").alias("product_id")))
    missing = facet(unknown, "department_name").values
    assert [(value.value, value.note) for value in missing] == [("(missing)", "not in the training baseline")]


def test_other_versions_and_a_card_without_facets():
    result = report(pl.concat([live(0.2, 0.2), live(0.9, 0.0, version="v2")]))
    assert (
        result.outcome.passed and sum(value.rows for value in facet(result, "department_name").values) == 200
    )
    bare = report(live(0.2, 0.2), card_facets={})
    assert facet(bare, "department_name").reason == "the model card has no predicted rates for it"


def test_rates_by_day_cover_every_class_of_every_value():
    by_day = report(live(0.5, 0.2)).by_day
    assert set(by_day.columns) == {"day", "facet", "value", "label", "rows", "rate"}
    per_group = by_day.group_by("day", "facet", "value").agg(pl.col("rate").sum(), pl.len())
    assert per_group["len"].to_list() == [3] * per_group.height
    assert per_group["rate"].to_list() == pytest.approx([1.0] * per_group.height)


def test_product_facet_maps_each_product_to_its_value():
    mapping, note = product_facet(CATALOGUE, "clothing_id", "department_name", 0.95)
    assert dict(mapping.iter_rows()) == {str(p): "Dresses" if p <= 4 else "Tops" for p in range(1, 9)}
    assert "1.00 of catalogue rows agree" in note
    assert product_facet(CATALOGUE, "product", "department_name", 0.95)[0] is None


def test_rules_refuse_bounds_out_of_order():
    with pytest.raises(SettingsError, match=r"\[monitoring.bias_drift\].*warn 0.5 must be at most error 0.2"):
        Settings.packaged().with_overrides({"monitoring": {"bias_drift": {"warn": 0.5}}})
