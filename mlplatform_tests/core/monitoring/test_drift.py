"""Drift of live traffic vs the training baseline: another domain drifts, a held-back slice does not."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.features import class_labels
from mlplatform.core.data.schema import read_drop
from mlplatform.core.data.synthetic import generate_reviews
from mlplatform.core.data.text import TOKEN_PATTERN, prepare_texts
from mlplatform.core.monitoring.drift import (
    DriftBaseline,
    ModelVocabulary,
    TrainingBaseline,
    drift_report,
    ks_statistic,
    population_stability_index,
    predicted_class_shares,
    unjudged_report,
)
from mlplatform.core.monitoring.rules import DRIFT_METRICS, ERROR, MonitoringError
from mlplatform.core.platform.settings import MonitoringRules, Settings
from mlplatform.core.training.export import to_onnx
from mlplatform_tests.core.data.generated import FIVE_CLASS, TWO_CLASS, generated_drop
from mlplatform_tests.core.scoring.models import LABELS, fitted_pipeline, legacy_model_bytes

CLOTHING = load_contract()

VERSION = "v1"
_SUBJECTS = ("The weather", "My phone", "The train", "Our meeting", "The coffee", "This movie", "The printer")
_PREDICATES = (
    "is nice today",
    "was late again",
    "starts at noon",
    "tastes great",
    "broke down",
    "ran out of ink",
)


def labelled_texts(reviews: pl.DataFrame) -> pl.DataFrame:
    """Model text and true label of every review with some text."""
    return reviews.select(
        prepare_texts([reviews["title"], reviews["review_text"]]),
        class_labels(CLOTHING.labels, pl.col("rating")).alias("label"),
    ).filter(pl.col("text") != "")


def generic_sentences(count: int, seed: int) -> list[str]:
    """Short sentences from another domain (no clothing, no reviews)."""
    rng = random.Random(seed)
    return [f"{rng.choice(_SUBJECTS)} {rng.choice(_PREDICATES)}." for _ in range(count)]


class TrainedSlices:
    """A tiny model trained on one slice, its baseline, and a scorer producing captured-log rows."""

    def __init__(
        self, data: pl.DataFrame, train_rows: int, test_rows: int, classes: tuple[str, ...] = LABELS
    ) -> None:
        self.train = data.head(train_rows)
        self.test = data.slice(train_rows, test_rows)
        self.held_back = data.slice(train_rows + test_rows)
        self.pipeline = fitted_pipeline().fit(self.train["text"].to_list(), self.train["label"].to_list())
        self.vocabulary = ModelVocabulary.from_onnx(onnx.load_from_string(to_onnx(self.pipeline, classes)))
        predicted = self.pipeline.predict(self.test["text"].to_list())
        shares = {label: float(np.mean(predicted == label)) for label in classes}
        training = TrainingBaseline.from_training(self.train["text"], shares, self.vocabulary, classes)
        self.baseline = DriftBaseline(training, self.vocabulary, VERSION)

    def log_rows(self, texts: list[str]) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "model_version": [VERSION] * len(texts),
                "text": texts,
                "label": [str(label) for label in self.pipeline.predict(texts)],
            }
        )


@pytest.fixture
def rules(settings: Settings) -> MonitoringRules:
    return settings.monitoring


@pytest.fixture(scope="module")
def synthetic() -> TrainedSlices:
    return TrainedSlices(labelled_texts(generate_reviews(2400, seed=3)), train_rows=1200, test_rows=400)


def failed(report) -> dict[str, str]:
    return {outcome.name: outcome.severity for outcome in report.outcomes if not outcome.passed}


def test_vocabulary_is_the_models_unigrams_read_from_onnx(synthetic: TrainedSlices) -> None:
    vectorizer = synthetic.pipeline.named_steps["tfidf"]
    assert synthetic.vocabulary.tokens == frozenset(
        term for term in vectorizer.vocabulary_ if " " not in term
    )
    assert synthetic.vocabulary.token_pattern == TOKEN_PATTERN
    assert synthetic.vocabulary.lowercase is True


def test_a_model_registered_before_the_sparse_graph_gives_its_unigrams_too() -> None:
    pipeline = fitted_pipeline(platform=False)
    vocabulary = ModelVocabulary.from_onnx(onnx.load_from_string(legacy_model_bytes(pipeline)))
    expected = {term for term in pipeline.named_steps["tfidf"].vocabulary_ if " " not in term}
    assert vocabulary.tokens == frozenset(expected)


def test_held_back_slice_of_the_same_data_does_not_drift(synthetic: TrainedSlices, rules) -> None:
    report = drift_report(
        synthetic.log_rows(synthetic.held_back["text"].to_list()), synthetic.baseline, rules
    )
    assert report.rows == synthetic.held_back.height >= rules.min_rows
    assert failed(report) == {}
    assert report.worst_severity is None
    assert set(DRIFT_METRICS) <= set(report.metrics)


def test_traffic_from_another_domain_drifts(synthetic: TrainedSlices, rules) -> None:
    report = drift_report(synthetic.log_rows(generic_sentences(400, seed=1)), synthetic.baseline, rules)
    failures = failed(report)
    assert failures["length_psi"] == ERROR
    assert failures["length_ks"] == ERROR
    assert failures["oov_rate_increase"] == ERROR
    assert report.worst_severity == ERROR
    assert report.metrics["live_oov_rate"] > report.metrics["baseline_oov_rate"] + 0.3


def test_empty_and_very_short_texts_raise_the_short_text_share(synthetic: TrainedSlices, rules) -> None:
    texts = synthetic.held_back["text"].head(300).to_list()
    texts[:100] = [""] * 50 + ["ok"] * 50
    report = drift_report(synthetic.log_rows(texts), synthetic.baseline, rules)
    assert report.metrics["short_text_share_increase"] == pytest.approx(
        1 / 3 - report.metrics["baseline_short_text_share"]
    )
    assert failed(report)["short_text_share_increase"] == ERROR


def test_too_little_traffic_is_not_enough_data_not_a_pass(synthetic: TrainedSlices, rules) -> None:
    rows = synthetic.log_rows(synthetic.held_back["text"].head(rules.min_rows - 1).to_list())
    report = drift_report(rows, synthetic.baseline, rules)
    assert [outcome.name for outcome in report.outcomes] == list(DRIFT_METRICS)
    assert all(not outcome.passed and outcome.severity == "WARN" for outcome in report.outcomes)
    assert all(outcome.metadata["evaluated"] == 0 for outcome in report.outcomes)
    assert "not enough data" in report.outcomes[0].description
    assert report.metrics == {}


def test_training_baseline_survives_a_json_round_trip(synthetic: TrainedSlices, rules) -> None:
    recorded = json.loads(json.dumps(synthetic.baseline.training.to_dict()))
    assert "vocabulary" not in recorded  # the vocabulary stays in the ONNX graph, not in the card
    restored = DriftBaseline(TrainingBaseline.from_dict(recorded), synthetic.vocabulary, VERSION)
    assert restored == synthetic.baseline
    rows = synthetic.log_rows(generic_sentences(300, seed=2))
    assert (
        drift_report(rows, restored, rules).metrics == drift_report(rows, synthetic.baseline, rules).metrics
    )


def test_training_baseline_summarises_the_texts_it_is_given(synthetic: TrainedSlices) -> None:
    texts = ["  abc  ", "hello world", "", "abc"]
    shares = {"negative": 0.25, "neutral": 0.25, "positive": 0.5}
    baseline = TrainingBaseline.from_training(texts, shares, synthetic.vocabulary)
    assert baseline.rows == 4
    assert baseline.length_counts == {0: 1, 3: 2, 11: 1}
    assert baseline.lengths().tolist() == [0, 3, 3, 11]
    assert baseline.predicted_class_shares == shares
    assert baseline.classes == ("negative", "neutral", "positive")
    tokens, oov = synthetic.vocabulary.token_counts(pl.Series(texts))
    assert (baseline.tokens, baseline.oov_rate) == (tokens, oov / tokens)


def test_training_baseline_from_splits_reads_only_the_train_rows(synthetic: TrainedSlices) -> None:
    splits = pl.DataFrame({"split": ["train", "test", "train"], "text": ["abc", "a much longer text", "xy"]})
    matrix = {"labels": list(LABELS), "matrix": [[1, 0, 0], [0, 1, 0], [0, 0, 2]]}
    baseline = TrainingBaseline.from_splits(splits, matrix, synthetic.vocabulary)
    assert (baseline.rows, baseline.length_counts) == (2, {2: 1, 3: 1})
    assert baseline.predicted_class_shares == {"negative": 0.25, "neutral": 0.25, "positive": 0.5}
    with pytest.raises(MonitoringError, match="split"):
        TrainingBaseline.from_splits(splits.drop("split"), matrix, synthetic.vocabulary)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda card: card.pop("length_counts"), r"lacks keys \['length_counts'\]"),
        (lambda card: card.update(rows="many"), "malformed"),
        (lambda card: card.update(predicted_class_shares={"negative": 1.0, "meh": 0.0}), "not the classes"),
        (lambda card: card.update(predicted_class_shares={"negative": 0.5}), "sum to 1"),
        (lambda card: card.update(rows=card["rows"] + 1), "text lengths for"),
        (lambda card: card.update(length_counts=[1, 2]), "malformed"),
    ],
)
def test_a_malformed_recorded_baseline_is_refused_in_one_line(
    synthetic: TrainedSlices, change, message
) -> None:
    card = synthetic.baseline.training.to_dict()
    change(card)
    with pytest.raises(MonitoringError, match=message) as raised:
        TrainingBaseline.from_dict(card)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("contract", [TWO_CLASS, FIVE_CLASS], ids=["two-class", "five-class"])
def test_drift_is_judged_over_the_models_own_classes(contract, rules) -> None:
    data = generated_drop(contract, rows=1200, seed=4)
    labelled = data.select(
        prepare_texts([data[column] for column in contract.text_columns]),
        class_labels(contract.labels, pl.col(contract.rating_column or contract.label_column)).alias("label"),
    )
    slices = TrainedSlices(labelled, train_rows=600, test_rows=200, classes=contract.classes)
    assert slices.baseline.training.classes == contract.classes
    recorded = json.loads(json.dumps(slices.baseline.training.to_dict()))
    assert recorded["classes"] == list(contract.classes)
    assert TrainingBaseline.from_dict(recorded) == slices.baseline.training
    steady = drift_report(slices.log_rows(slices.held_back["text"].to_list()), slices.baseline, rules)
    assert failed(steady) == {}
    assert {f"live_share_{label}" for label in contract.classes} <= set(steady.metrics)
    assert not {key for key in steady.metrics if key.startswith("live_share_")} - {
        f"live_share_{label}" for label in contract.classes
    }
    # every review now answered with the first class: the predicted-class mix drifts
    rows = slices.log_rows(slices.held_back["text"].to_list()).with_columns(
        pl.lit(contract.classes[0]).alias("label")
    )
    shifted = drift_report(rows, slices.baseline, rules)
    assert failed(shifted)["predicted_class_psi"] == ERROR
    with pytest.raises(MonitoringError, match="not the model's classes"):
        drift_report(rows.with_columns(pl.lit("neutralish").alias("label")), slices.baseline, rules)


def test_a_baseline_recorded_before_baselines_named_their_classes_reads_them_from_its_shares(
    synthetic: TrainedSlices,
) -> None:
    recorded = synthetic.baseline.training.to_dict()
    del recorded["classes"]
    assert TrainingBaseline.from_dict(recorded).classes == LABELS


def test_a_recorded_baseline_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(MonitoringError, match="not a mapping"):
        TrainingBaseline.from_dict(["rows", 3])  # type: ignore[arg-type]


def test_predicted_class_shares_are_the_confusion_matrix_column_sums() -> None:
    matrix = {"labels": list(LABELS), "matrix": [[3, 1, 0], [0, 2, 2], [1, 1, 10]]}
    assert predicted_class_shares(matrix) == pytest.approx(
        dict(zip(LABELS, [4 / 20, 4 / 20, 12 / 20], strict=True))
    )
    with pytest.raises(MonitoringError, match="empty"):
        predicted_class_shares({"labels": list(LABELS), "matrix": [[0] * 3] * 3})


def test_a_version_without_a_baseline_is_unjudged_not_passed() -> None:
    report = unjudged_report("v3", 500, "no training baseline recorded for v3")
    assert [outcome.name for outcome in report.outcomes] == list(DRIFT_METRICS)
    assert all(
        not o.passed and o.severity == "WARN" and o.metadata["evaluated"] == 0 for o in report.outcomes
    )
    assert report.outcomes[0].description.startswith("not enough data: no training baseline recorded for v3")
    assert (report.rows, report.metrics, report.worst_severity) == (500, {}, "WARN")


def test_rows_of_another_version_or_of_several_versions_are_refused(synthetic: TrainedSlices, rules) -> None:
    rows = synthetic.log_rows(synthetic.held_back["text"].head(300).to_list())
    with pytest.raises(MonitoringError, match="baseline of v1"):
        drift_report(rows.with_columns(pl.lit("v2").alias("model_version")), synthetic.baseline, rules)
    mixed = rows.with_columns(
        pl.when(pl.int_range(pl.len()) < 10)
        .then(pl.lit("v2"))
        .otherwise(pl.col("model_version"))
        .alias("model_version")
    )
    with pytest.raises(MonitoringError, match="exactly one model version"):
        drift_report(mixed, synthetic.baseline, rules)


def test_psi_and_ks_on_known_distributions() -> None:
    assert population_stability_index([0.5, 0.5], [0.5, 0.5], 1e-4) == 0.0
    assert population_stability_index([0.5, 0.5], [0.9, 0.1], 1e-4) == pytest.approx(
        0.4 * np.log(0.9 / 0.5) - 0.4 * np.log(0.1 / 0.5)
    )
    assert ks_statistic(np.array([1, 2, 3, 4]), np.array([1, 2, 3, 4])) == 0.0
    assert ks_statistic(np.array([1, 2]), np.array([3, 4])) == 1.0


@pytest.mark.realdata
def test_real_data_held_back_slice_does_not_drift_and_generic_sentences_do(
    real_data_path: Path, rules
) -> None:
    reviews = read_drop(real_data_path.read_bytes(), "csv", load_contract()).sample(
        fraction=1.0, shuffle=True, seed=11
    )
    slices = TrainedSlices(labelled_texts(reviews), train_rows=5000, test_rows=1500)
    held_back = slices.log_rows(slices.held_back["text"].head(3000).to_list())
    assert failed(drift_report(held_back, slices.baseline, rules)) == {}
    other = drift_report(slices.log_rows(generic_sentences(400, seed=1)), slices.baseline, rules)
    assert {"length_psi", "length_ks", "oov_rate_increase"} <= set(failed(other))
    assert other.worst_severity == ERROR
