"""Evaluation: metrics on hand-computed examples, facet gaps, latency, every gate, the model card."""

from __future__ import annotations

import polars as pl
import pytest
from pydantic import ValidationError

from mlplatform.core.platform.settings import ClassFloors, GateRules, Settings, SettingsError
from mlplatform.core.scoring.model import ScoringModel
from mlplatform.core.training.evaluation import (
    ERROR,
    WARN,
    EvaluationError,
    blocking_failures,
    card_classes,
    classification_metrics,
    evaluate_gates,
    facet_metrics,
    model_card,
    predict_frame,
    render_model_card_markdown,
    single_review_latency,
)
from mlplatform_tests.core.scoring.models import RULES, fitted_pipeline, sparse_model_bytes
from mlplatform_tests.core.training.training_data import CLASSES, review_frame

# Hand-computed: truth N N N U U P P P P P, predictions N N U U P P P P P N
# (N negative, U neutral, P positive).
Y_TRUE = ["negative"] * 3 + ["neutral"] * 2 + ["positive"] * 5
Y_PRED = [
    "negative",
    "negative",
    "neutral",
    "neutral",
    "positive",
    "positive",
    "positive",
    "positive",
    "positive",
    "negative",
]


def test_classification_metrics_match_hand_computation() -> None:
    metrics = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    assert metrics["rows"] == 10
    assert metrics["accuracy"] == pytest.approx(7 / 10)
    # recalls: negative 2/3, neutral 1/2, positive 4/5
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    negative, neutral, positive = (
        metrics["per_class"][label] for label in ("negative", "neutral", "positive")
    )
    assert negative == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert neutral == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert positive == pytest.approx({"precision": 4 / 5, "recall": 4 / 5, "f1": 4 / 5, "support": 5})
    assert metrics["macro_f1"] == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)
    assert metrics["confusion_matrix"] == {
        "labels": ["negative", "neutral", "positive"],
        "matrix": [[2, 1, 0], [0, 1, 1], [1, 0, 4]],
    }


def test_a_class_never_predicted_scores_zero_not_an_error() -> None:
    metrics = classification_metrics(["negative", "neutral", "positive"], ["positive"] * 3, CLASSES)
    assert metrics["per_class"]["negative"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert metrics["macro_f1"] == pytest.approx((0 + 0 + 2 * (1 / 3) / (1 / 3 + 1)) / 3)


def test_bad_metric_inputs_are_refused() -> None:
    with pytest.raises(EvaluationError, match="unknown label 'great'"):
        classification_metrics(["great"], ["positive"], CLASSES)
    with pytest.raises(EvaluationError, match="rows"):
        classification_metrics(["positive"], ["positive", "negative"], CLASSES)
    with pytest.raises(EvaluationError, match="zero rows"):
        classification_metrics([], [], CLASSES)


def facet_frame() -> pl.DataFrame:
    # Group a: perfect. Group b: every positive predicted neutral. Group c: 2 rows (below min_rows). One null.
    rows = [("a", label, label) for label in ("negative", "neutral", "positive") * 2]
    rows += [("b", "negative", "negative"), ("b", "neutral", "neutral"), ("b", "positive", "neutral")] * 2
    rows += [("c", "positive", "negative"), ("c", "negative", "positive"), (None, "positive", "positive")]
    return pl.DataFrame(rows, schema=["division_name", "label", "predicted_label"], orient="row")


def test_facet_metrics_and_gaps() -> None:
    result = facet_metrics(facet_frame(), ["division_name"], min_rows=3, classes=CLASSES)["division_name"]
    values = result["values"]
    assert set(values) == {"a", "b", "c", "(missing)"}  # nothing dropped, the null is its own group
    assert values["a"]["recall"] == {"negative": 1.0, "neutral": 1.0, "positive": 1.0}
    assert values["b"]["recall"]["positive"] == 0.0
    assert values["b"]["predicted_rate"] == pytest.approx(
        {"negative": 1 / 3, "neutral": 2 / 3, "positive": 0.0}
    )
    assert values["c"]["judged"] is False and values["(missing)"]["judged"] is False
    assert values["(missing)"]["recall"]["negative"] is None  # no support: not a zero
    gaps = result["gaps"]
    assert gaps["judged_values"] == 2
    assert gaps["recall"] == {"negative": 0.0, "neutral": 0.0, "positive": 1.0}
    assert gaps["max_recall_gap"] == pytest.approx(1.0)
    assert gaps["max_predicted_rate_gap"] == pytest.approx(1 / 3)


def test_facet_metrics_need_their_columns() -> None:
    with pytest.raises(EvaluationError, match="age_band"):
        facet_metrics(facet_frame(), ["age_band"], min_rows=1, classes=CLASSES)


@pytest.fixture(scope="module")
def onnx_model() -> ScoringModel:
    frame = review_frame()
    pipeline = fitted_pipeline().fit(frame["text"].to_list(), frame["label"].to_list())
    return ScoringModel.from_bytes(sparse_model_bytes(pipeline), RULES)


def test_predict_frame_and_latency(onnx_model: ScoringModel) -> None:
    frame = review_frame(rows=30, seed=11)
    scored = predict_frame(onnx_model, frame)
    assert scored.height == frame.height
    assert set(scored["predicted_label"].unique()) <= {"negative", "neutral", "positive"}
    latency = single_review_latency(onnx_model, frame["text"].to_list(), n=50)
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] < 1000
    assert latency["calls"] == 50


@pytest.fixture
def rules(settings: Settings) -> GateRules:
    return settings.gates


def good_inputs() -> dict:
    metrics = classification_metrics(Y_TRUE * 3, Y_TRUE * 3, CLASSES)  # perfect model
    fairness = facet_metrics(
        facet_frame().with_columns(pl.col("label").alias("predicted_label")), ["division_name"], 3, CLASSES
    )
    return {
        "metrics": metrics,
        "model_size_bytes": 1_000_000,
        "latency": {"p50_ms": 0.5, "p99_ms": 1.0},
        "fairness": fairness,
        "production_metrics": None,
    }


def outcome(outcomes: list, name: str):
    return next(o for o in outcomes if o.name == name)


def test_gate_rules_come_from_settings(rules: GateRules) -> None:
    assert 0 < rules.min_macro_f1 < 1
    floors = rules.min_class_recall
    # the packaged floors: a default for every class, overrides for two of the clothing classes
    assert floors.for_classes(CLASSES) == {"negative": 0.40, "neutral": 0.30, "positive": 0.60}
    assert floors.for_classes(["awful", "great"]) == {"awful": 0.30, "great": 0.30}
    assert floors.unused(["negative", "positive"]) == [] and floors.unused(["a", "b"]) == [
        "negative",
        "positive",
    ]


def test_class_floors_need_a_default_and_floors_in_0_1(tmp_path) -> None:
    with pytest.raises(ValidationError, match="needs `default`"):
        ClassFloors.model_validate({"negative": 0.4})  # a file cannot drop the packaged default
    with pytest.raises(
        SettingsError, match=r"^\[gates.min_class_recall\] great: must be between 0 and 1, got 1.5"
    ):
        ClassFloors.of(0.3, {"great": 1.5})
    # a deployment names floors for its own classes (keys the packaged settings do not have)
    override = tmp_path / "platform.toml"
    override.write_text("[gates.min_class_recall]\ndefault = 0.2\ngreat = 0.7\n")
    floors = Settings.load(override).gates.min_class_recall
    assert floors.for_classes(["awful", "great", "negative"]) == {"awful": 0.2, "great": 0.7, "negative": 0.4}


FIVE = ("awful", "poor", "okay", "good", "great")


def test_quality_bar_judges_the_classes_the_metrics_hold(rules: GateRules) -> None:
    truth = [label for label in FIVE for _ in range(4)]
    predicted = [label if index % 4 else "okay" for index, label in enumerate(truth)]  # recall 0.75, okay 1.0
    metrics = classification_metrics(truth, predicted, FIVE)
    strict = rules.replace(min_macro_f1=0.0, min_class_recall=ClassFloors.of(0.5, {"great": 0.8}))
    gate = outcome(evaluate_gates(**{**good_inputs(), "metrics": metrics}, rules=strict), "quality_bar")
    assert not gate.passed and gate.description == "great recall 0.7500 < 0.8"
    assert gate.metadata["min_class_recall"] == {
        "awful": 0.5,
        "poor": 0.5,
        "okay": 0.5,
        "good": 0.5,
        "great": 0.8,
    }
    two = classification_metrics(
        ["negative", "positive"] * 5, ["negative", "positive"] * 5, ("negative", "positive")
    )
    gate = outcome(evaluate_gates(**{**good_inputs(), "metrics": two}, rules=rules), "quality_bar")
    assert gate.passed and "the recall of each of 2 classes" in gate.description
    assert gate.metadata["unused_floors"] == [] and "not used" not in gate.description
    gate = outcome(evaluate_gates(**{**good_inputs(), "metrics": metrics}, rules=rules), "quality_bar")
    assert "not used: negative, positive" in gate.description
    assert gate.metadata["unused_floors"] == ["negative", "positive"]


def test_every_gate_passes_for_a_good_first_model(rules: GateRules) -> None:
    outcomes = evaluate_gates(**good_inputs(), rules=rules)
    assert [o.name for o in outcomes] == [
        "quality_bar",
        "no_regression",
        "latency_budget",
        "model_size_budget",
        "fairness_gap",
    ]
    assert all(o.passed for o in outcomes), [o.description for o in outcomes if not o.passed]
    assert blocking_failures(outcomes) == []
    first_model = outcome(outcomes, "no_regression")
    assert first_model.metadata == {"evaluated": False}
    assert "not evaluated" in first_model.description


def test_quality_bar_fails_on_macro_f1_and_on_a_class_recall(rules: GateRules) -> None:
    useless = classification_metrics(Y_TRUE, ["positive"] * len(Y_TRUE), CLASSES)
    gate = outcome(evaluate_gates(**{**good_inputs(), "metrics": useless}, rules=rules), "quality_bar")
    assert not gate.passed and gate.severity == ERROR
    assert "macro-F1" in gate.description and "negative recall 0.0000" in gate.description
    floors = rules.min_class_recall
    strict = rules.replace(
        min_macro_f1=0.0,
        min_class_recall=ClassFloors.of(floors.default, {**floors.by_class, "neutral": 1.0}),
    )
    decent = classification_metrics(Y_TRUE, Y_PRED, CLASSES)
    gate = outcome(evaluate_gates(**{**good_inputs(), "metrics": decent}, rules=strict), "quality_bar")
    assert not gate.passed and gate.description == "neutral recall 0.5000 < 1.0"


def test_no_regression_against_production_on_the_same_split(rules: GateRules) -> None:
    candidate = classification_metrics(Y_TRUE, Y_PRED, CLASSES)  # macro-F1 0.6556
    better_production = {"macro_f1": candidate["macro_f1"] + rules.max_macro_f1_drop + 0.01}
    gate = outcome(
        evaluate_gates(
            **{**good_inputs(), "metrics": candidate, "production_metrics": better_production}, rules=rules
        ),
        "no_regression",
    )
    assert not gate.passed and gate.severity == ERROR and gate.metadata["evaluated"] is True
    assert "> allowed" in gate.description
    within_drop = {"macro_f1": candidate["macro_f1"] + rules.max_macro_f1_drop / 2}
    gate = outcome(
        evaluate_gates(
            **{**good_inputs(), "metrics": candidate, "production_metrics": within_drop}, rules=rules
        ),
        "no_regression",
    )
    assert gate.passed


def test_no_regression_says_why_when_production_has_other_classes(rules: GateRules) -> None:
    reason = "the production model's classes ['negative', 'positive'] are not this model's"
    gate = outcome(evaluate_gates(**good_inputs(), rules=rules, not_compared=reason), "no_regression")
    assert gate.passed and gate.metadata == {"evaluated": False}
    assert gate.description == f"not evaluated: {reason}"


def test_latency_and_size_budgets_fail_above_their_limits(rules: GateRules) -> None:
    slow = {"p50_ms": 1.0, "p99_ms": rules.max_p99_latency_ms + 1}
    outcomes = evaluate_gates(
        **{**good_inputs(), "latency": slow, "model_size_bytes": rules.max_model_size_bytes + 1}, rules=rules
    )
    assert not outcome(outcomes, "latency_budget").passed
    assert not outcome(outcomes, "model_size_budget").passed
    assert {o.name for o in blocking_failures(outcomes)} == {"latency_budget", "model_size_budget"}


def test_fairness_gap_only_warns(rules: GateRules) -> None:
    unfair = facet_metrics(facet_frame(), ["division_name"], 3, CLASSES)  # recall gap 1.0 on positive
    outcomes = evaluate_gates(**{**good_inputs(), "fairness": unfair}, rules=rules)
    gate = outcome(outcomes, "fairness_gap")
    assert not gate.passed and gate.severity == WARN
    assert "division_name: recall gap 1.000" in gate.description
    assert blocking_failures(outcomes) == []
    gate = outcome(evaluate_gates(**{**good_inputs(), "fairness": {}}, rules=rules), "fairness_gap")
    assert gate.passed and gate.description == "no facet to compare: the dataset contract declares none"


LINEAGE = {
    "split_versions": {"review_splits": "abc123"},
    "drop_hashes": ["d1", "d2"],
    "code_version": "training-7f3e",
    "run_id": "run-42",
    "created_at": "2026-01-01T00:00:00Z",
}


def card(rules: GateRules) -> dict:
    inputs = good_inputs()
    return model_card(
        model_name="logreg,C=1.0",
        family="logreg",
        classes=CLASSES,
        hyperparameters={"C": 1.0, "class_offsets": {"negative": -0.2, "neutral": 0.1, "positive": 0.0}},
        test_metrics=classification_metrics(Y_TRUE, Y_PRED, CLASSES),
        validation_metrics=classification_metrics(Y_TRUE, Y_TRUE, CLASSES),
        facets=inputs["fairness"],
        gates=evaluate_gates(**inputs, rules=rules),
        latency={"p50_ms": 0.42, "p99_ms": 1.37},
        model_size_bytes=123456,
        onnx_sha256="f" * 64,
        lineage=LINEAGE,
        smoke_cases=[{"text": "love it", "expected": "positive"}],
    )


def test_model_card_holds_metrics_gates_and_lineage(rules: GateRules) -> None:
    result = card(rules)
    assert result["model"]["classes"] == list(CLASSES) and card_classes(result) == CLASSES
    assert result["smoke_cases"] == [{"text": "love it", "expected": "positive"}]
    legacy = {**result, "model": {"name": "m", "family": "f", "labels": list(CLASSES), "format": "onnx"}}
    assert card_classes(legacy) == CLASSES  # a card from before: the confusion matrix's labels
    assert result["metrics"]["test"]["macro_f1"] == pytest.approx(0.6556, abs=1e-4)
    assert result["lineage"] == LINEAGE
    assert [g["name"] for g in result["gates"]] == [
        o.name for o in evaluate_gates(**good_inputs(), rules=rules)
    ]
    with pytest.raises(EvaluationError, match="run_id"):
        model_card(**{**_card_kwargs(rules), "lineage": {k: v for k, v in LINEAGE.items() if k != "run_id"}})


def _card_kwargs(rules: GateRules) -> dict:
    result = card(rules)
    return {
        "model_name": "m",
        "family": "f",
        "classes": CLASSES,
        "hyperparameters": {},
        "test_metrics": result["metrics"]["test"],
        "validation_metrics": result["metrics"]["validation"],
        "facets": result["facets"],
        "gates": [],
        "latency": result["latency"],
        "model_size_bytes": 1,
        "onnx_sha256": "0",
    }


def test_model_card_markdown_shows_the_key_numbers(rules: GateRules) -> None:
    markdown = render_model_card_markdown(card(rules))
    assert markdown.startswith("# Model card: logreg,C=1.0")
    for expected in (
        "macro-F1 0.6556",
        "balanced accuracy 0.6556",
        "| neutral | 0.5000 | 0.5000 | 0.5000 | 2 |",
        "| positive | 1 | 0 | 4 |",
        "| quality_bar | ERROR | pass |",
        "no_regression",
        "run-42",
        "abc123",
        "p99 1.37 ms",
        "class_offsets",
        "f" * 64,
        "| division_name | 2 |",
        "- classes: negative, neutral, positive",
    ):
        assert expected in markdown, expected
