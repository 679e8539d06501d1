from __future__ import annotations

import math

import polars as pl
import pytest

from mlplatform.core.data.bias import (
    KL_EPSILON,
    METRICS,
    BiasError,
    FacetBias,
    bias_warnings,
    check_bias,
    facet_groups,
    label_metrics,
    pretraining_bias,
    summary_metrics,
)
from mlplatform.core.data.contract import LabelRule
from mlplatform.core.data.features import build_reviews
from mlplatform.core.platform.settings import Settings
from mlplatform_tests.core.data.features_fixtures import CLOTHING, read_real_drop
from mlplatform_tests.core.data.generated import FIVE_CLASS, TWO_CLASS, generated_drop

CLASSES = CLOTHING.classes
ALL_CLASSES = LabelRule(CLASSES, favourable=None, mapping={label: label for label in CLASSES})
"""The clothing classes without a favourable one: label metrics over every class (the rule before)."""
POSITIVE = LabelRule(CLASSES, favourable="positive", mapping={label: label for label in CLASSES})


def _toy() -> pl.DataFrame:
    """Facet g: x has 4 rows (2 negative, 1 neutral, 1 positive), y has 6 (1, 2, 3)."""
    labels_x = ["negative", "negative", "neutral", "positive"]
    labels_y = ["negative", "neutral", "neutral", "positive", "positive", "positive"]
    return pl.DataFrame({"g": ["x"] * 4 + ["y"] * 6, "label": labels_x + labels_y})


def _by_value(results: list[FacetBias]) -> dict[str, FacetBias]:
    return {result.value: result for result in results}


def test_metrics_of_the_toy_example_computed_by_hand() -> None:
    # d = x: P_d = (1/2, 1/4, 1/4); rest a = y: P_a = (1/6, 1/3, 1/2).
    x = _by_value(pretraining_bias(_toy(), ["g"], ALL_CLASSES, min_rows=1))["x"]
    assert x.n == 4
    assert x.metrics["class_imbalance"] == pytest.approx((6 - 4) / 10)
    assert x.dpl_by_label == pytest.approx({"negative": -1 / 3, "neutral": 1 / 12, "positive": 1 / 4})
    assert x.metrics["dpl"] == pytest.approx(-1 / 3)
    kl = (1 / 6) * math.log(1 / 3) + (1 / 3) * math.log(4 / 3) + (1 / 2) * math.log(2)
    assert x.metrics["kl"] == pytest.approx(kl)
    assert x.metrics["kl"] == pytest.approx(0.259366, abs=1e-6)
    # M = (1/3, 7/24, 3/8)
    kl_a_m = (1 / 6) * math.log(1 / 2) + (1 / 3) * math.log(8 / 7) + (1 / 2) * math.log(4 / 3)
    kl_d_m = (1 / 2) * math.log(3 / 2) + (1 / 4) * math.log(6 / 7) + (1 / 4) * math.log(2 / 3)
    assert x.metrics["js"] == pytest.approx((kl_a_m + kl_d_m) / 2)
    assert x.metrics["js"] == pytest.approx(0.067827, abs=1e-6)
    assert x.metrics["tvd"] == pytest.approx((1 / 3 + 1 / 12 + 1 / 4) / 2)
    assert x.metrics["ks"] == pytest.approx(1 / 3)


def test_metrics_swap_sign_or_stay_symmetric_for_the_other_value() -> None:
    results = _by_value(pretraining_bias(_toy(), ["g"], ALL_CLASSES, min_rows=1))
    x, y = results["x"], results["y"]
    assert y.metrics["class_imbalance"] == pytest.approx(-0.2)
    assert y.metrics["dpl"] == pytest.approx(1 / 3)
    # KL is not symmetric: KL(P_x || P_y) = 1/2 ln 3 + 1/4 ln(3/4) + 1/4 ln(1/2)
    assert y.metrics["kl"] == pytest.approx(
        0.5 * math.log(3) + 0.25 * math.log(3 / 4) + 0.25 * math.log(1 / 2)
    )
    for symmetric in ("js", "tvd", "ks"):
        assert y.metrics[symmetric] == pytest.approx(x.metrics[symmetric])


def test_kl_uses_epsilon_only_where_the_facet_lacks_a_class_the_rest_has() -> None:
    metrics, _ = label_metrics(10, 10, [0.5, 0.0, 0.5], [0.0, 0.5, 0.5], CLASSES)
    # negative: rest 0.5, facet 0 -> epsilon; neutral: rest 0 -> contributes nothing.
    assert metrics["kl"] == pytest.approx(0.5 * math.log(0.5 / KL_EPSILON))
    assert math.isfinite(metrics["js"])
    assert metrics["js"] == pytest.approx(math.log(2) / 2)


def test_identical_distributions_give_zero_divergence() -> None:
    metrics, _ = label_metrics(30, 10, [0.2, 0.3, 0.5], [0.2, 0.3, 0.5], CLASSES)
    assert metrics["class_imbalance"] == pytest.approx(0.5)
    assert all(metrics[name] == pytest.approx(0.0, abs=1e-12) for name in ("dpl", "kl", "js", "tvd", "ks"))


def test_small_and_missing_facet_values_are_reported_as_skipped_not_hidden() -> None:
    frame = pl.concat(
        [_toy(), pl.DataFrame({"g": [None, None], "label": ["positive", "negative"]}, schema=_toy().schema)]
    )
    results = _by_value(pretraining_bias(frame, ["g"], ALL_CLASSES, min_rows=5))
    assert set(results) == {"x", "y", "(missing)"}
    assert results["x"].skip_reason == "4 rows < min_facet_rows 5"
    assert results["x"].metrics == {}
    assert results["(missing)"].n == 2
    assert results["(missing)"].skip_reason is not None
    assert results["y"].skip_reason is None
    # the rest of y includes the missing rows: 2 + 1 negatives out of 6
    assert results["y"].dpl_by_label["negative"] == pytest.approx(3 / 6 - 1 / 6)


def test_a_facet_with_one_value_has_nothing_to_compare_with() -> None:
    groups = facet_groups(pl.DataFrame({"g": ["x"] * 3, "label": ["positive"] * 3}), "g", min_rows=1)
    assert [(group.value, group.n, group.judged) for group in groups] == [("x", 3, False)]
    assert groups[0].skip_reason == "no other facet value to compare with"


def test_facet_groups_split_members_from_rest_for_reuse() -> None:
    frame = _toy().with_columns(pl.Series("predicted", ["positive"] * 10))
    groups = {group.value: group for group in facet_groups(frame, "g", min_rows=1)}
    assert groups["x"].members.height == 4
    assert groups["x"].rest.get_column("g").unique().to_list() == ["y"]
    assert "predicted" in groups["x"].members.columns


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(BiasError, match="facet column 'nope'"):
        pretraining_bias(_toy(), ["nope"], ALL_CLASSES, min_rows=1)
    with pytest.raises(BiasError, match="label column 'label'"):
        pretraining_bias(_toy().drop("label"), ["g"], ALL_CLASSES, min_rows=1)
    with pytest.raises(BiasError, match="not classes"):
        pretraining_bias(_toy().with_columns(pl.lit("meh").alias("label")), ["g"], ALL_CLASSES, min_rows=1)
    with pytest.raises(BiasError, match="unknown metrics"):
        bias_warnings([], {"accuracy": 0.1})


def test_warnings_name_facet_value_metric_and_bound() -> None:
    results = pretraining_bias(_toy(), ["g"], ALL_CLASSES, min_rows=1)
    warnings = bias_warnings(results, {"dpl": 0.3, "class_imbalance": 0.5, "kl": 0.28})
    # |DPL| = 1/3 > 0.3 for both values; CI 0.2 under 0.5; KL 0.259 (x) under, 0.304 (y) over.
    assert warnings == [
        "g=x (n=4): dpl -0.3333 exceeds bound 0.3",
        "g=y (n=6): dpl +0.3333 exceeds bound 0.3",
        "g=y (n=6): kl +0.3041 exceeds bound 0.28",
    ]
    assert bias_warnings(results, {"dpl": 0.34}) == []


def test_summary_metrics_are_flat_maxima_of_magnitudes_per_facet() -> None:
    frame = _toy().with_columns(pl.Series("h", ["u"] * 9 + ["v"]))
    summary = summary_metrics(pretraining_bias(frame, ["g", "h"], ALL_CLASSES, min_rows=2))
    assert summary["bias/g/values_judged"] == 2
    assert summary["bias/g/class_imbalance_max"] == pytest.approx(0.2)
    assert summary["bias/g/dpl_max"] == pytest.approx(1 / 3)
    assert summary["bias/g/kl_max"] == pytest.approx(
        0.5 * math.log(3) + 0.25 * math.log(3 / 4) + 0.25 * math.log(0.5)
    )
    assert summary["bias/h/values_judged"] == 1
    assert summary["bias/h/values_skipped"] == 1
    assert {f"bias/g/{metric}_max" for metric in METRICS} <= set(summary)
    assert all(isinstance(value, float) for value in summary.values())


def test_check_bias_fails_on_warnings_and_always_names_skipped_values() -> None:
    frame = _toy().with_columns(pl.Series("h", ["u"] * 9 + ["v"]))
    results = pretraining_bias(frame, ["g", "h"], ALL_CLASSES, min_rows=2)
    # |DPL|: g=x 1/3, g=y 1/3, h=u 2/3 (its rest is the one row of v)
    failed = check_bias(results, {"dpl": 0.3}, ["g", "h"], ALL_CLASSES)
    assert failed.name == "pretraining_bias"
    assert not failed.passed
    assert failed.description.startswith("3 over bounds: g=x (n=4): dpl -0.3333 exceeds bound 0.3;")
    assert "not judged: h=v (1 rows < min_facet_rows 2); no favourable class declared" in failed.description
    assert failed.metadata == summary_metrics(results)
    passed = check_bias(results, {"dpl": 0.7}, ["g", "h"], ALL_CLASSES)
    assert passed.passed
    assert passed.description == (
        "3 facet values within bounds; not judged: h=v (1 rows < min_facet_rows 2); no favourable class "
        "declared ([labels] favourable): label metrics compare all 3 classes, DPL the class with the largest gap"
    )


def test_with_a_favourable_class_label_metrics_judge_it_against_everything_else_as_clarify_does() -> None:
    # favourable = positive. d = x: q_d = 1/4; rest a = y: q_a = 3/6 = 1/2.
    x = _by_value(pretraining_bias(_toy(), ["g"], POSITIVE, min_rows=1))["x"]
    assert x.dpl_by_label == pytest.approx({"positive": 1 / 4})
    assert x.metrics["dpl"] == pytest.approx(1 / 2 - 1 / 4)
    assert x.metrics["class_imbalance"] == pytest.approx(0.2)
    # P_a = (1/2, 1/2), P_d = (1/4, 3/4) over (positive, not positive)
    assert x.metrics["kl"] == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3))
    m = (3 / 8, 5 / 8)
    js = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    )
    assert x.metrics["js"] == pytest.approx(js)
    assert x.metrics["tvd"] == pytest.approx(1 / 4) and x.metrics["ks"] == pytest.approx(1 / 4)
    # the negative/neutral mix inside "not positive" does not matter to a favourable-class metric
    merged = pl.when(pl.col("label") == "neutral").then(pl.lit("negative")).otherwise(pl.col("label"))
    again = _by_value(
        pretraining_bias(_toy().with_columns(merged.alias("label")), ["g"], POSITIVE, min_rows=1)
    )
    assert again["x"].metrics == pytest.approx(x.metrics)
    outcome = check_bias([x], {"dpl": 0.3}, ["g"], POSITIVE)
    assert outcome.passed and "label metrics judge the favourable class 'positive'" in outcome.description


def test_no_facet_declared_is_nothing_to_judge_and_passes() -> None:
    outcome = check_bias([], {"dpl": 0.1}, [], TWO_CLASS.labels)
    assert outcome.passed
    assert "no facet declared in the dataset contract" in outcome.description


def test_a_five_class_contract_judges_its_own_facets_and_favourable_class() -> None:
    reviews = build_reviews({"h": generated_drop(FIVE_CLASS, rows=400)}, FIVE_CLASS).frame
    results = pretraining_bias(reviews, FIVE_CLASS.facet_columns, FIVE_CLASS.labels, min_rows=20)
    assert {result.facet for result in results} == {"region", "income_band"}
    judged = [result for result in results if result.skip_reason is None]
    assert judged and all(set(result.dpl_by_label) == {"great"} for result in judged)
    # classes dealt in turn over four regions: every region gets exactly its share of "great"
    regions = [result for result in judged if result.facet == "region"]
    assert all(abs(result.metrics["dpl"]) < 0.05 for result in regions)


@pytest.mark.realdata
def test_default_bounds_on_the_real_data_flag_only_the_tiny_trend_department(real_data_path) -> None:
    rules = Settings.load().features
    reviews = build_reviews({"real": read_real_drop(real_data_path)}, CLOTHING).frame
    facets = CLOTHING.facet_columns
    results = pretraining_bias(reviews, facets, CLOTHING.labels, min_rows=rules.min_facet_rows)
    warnings = bias_warnings(results, rules.bias_warn.as_dict())
    assert not check_bias(results, rules.bias_warn.as_dict(), facets, CLOTHING.labels).passed
    assert len(warnings) == 1
    assert warnings[0].startswith("department_name=Trend (n=101): class_imbalance +0.98")
    skipped = {(result.facet, result.value) for result in results if result.skip_reason}
    assert skipped == {("division_name", "(missing)"), ("department_name", "(missing)")}
    assert summary_metrics(results)["bias/age_band/values_judged"] == 6
