"""ScoringModel: ONNX Runtime on the registered bytes — answers, no_tokens, explanations, runs, legacy graphs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from mlplatform.core.scoring.model import (
    Contribution,
    ExplanationUnavailable,
    GraphKind,
    ModelIntegrityError,
    ScoringError,
    ScoringModel,
    load_model,
    model_classes,
)
from mlplatform.core.training.export import sklearn_answers, to_onnx
from mlplatform_tests.core.scoring.models import (
    LABELS,
    RULES,
    fitted_pipeline,
    legacy_model_bytes,
    sparse_model_bytes,
    training_corpus,
    tricky_texts,
    write_model,
)


def test_predictions_equal_scikit_learn_row_for_row(model: ScoringModel, pipeline) -> None:
    texts = tricky_texts(300)
    prediction = model.predict(texts)
    labels, probabilities = sklearn_answers(pipeline, texts, LABELS)
    assert len(prediction) == 300
    assert prediction.labels.tolist() == labels.tolist()
    assert prediction.probabilities.dtype == np.float32
    np.testing.assert_allclose(prediction.probabilities, probabilities, atol=1e-6)
    assert model.classes == LABELS
    assert model.kind is GraphKind.SPARSE_TEXT


@pytest.mark.parametrize(
    "text",
    ["", "   ", "!!! ??? ...", "x", "😀😀 日本語 ∑", "zzqx blorf wibble", "a b c d"],
    ids=["empty", "blank", "punctuation", "one-letter", "no ASCII word", "unknown words", "single letters"],
)
def test_a_text_with_nothing_the_model_reads_is_flagged_no_tokens(model: ScoringModel, text: str) -> None:
    prediction = model.predict([text, "I love this dress"])
    assert prediction.no_tokens.tolist() == [True, False]


def test_explanations_are_the_strongest_ngrams_of_the_predicted_class(model: ScoringModel, pipeline) -> None:
    texts = [
        "love the perfect dress but awful fabric",
        "terrible, returned it",
        "okay fit, average color",
        "",
    ]
    prediction = model.predict(texts, explain_top_k=3)
    assert prediction.explanations is not None and len(prediction.explanations) == 4
    vectorizer, classifier = pipeline.steps[0][1], pipeline.steps[1][1]
    terms = {column: term for term, column in vectorizer.vocabulary_.items()}
    features = vectorizer.transform(texts)
    for row, (label, explanation) in enumerate(zip(prediction.labels, prediction.explanations, strict=True)):
        klass = list(classifier.classes_).index(label)
        row_features = features[row].tocoo()
        exact = sorted(
            (
                (terms[column], value * classifier.coef_[klass, column])
                for column, value in zip(row_features.col, row_features.data, strict=True)
            ),
            key=lambda item: -item[1],
        )[:3]
        assert [item.ngram for item in explanation] == [ngram for ngram, _ in exact]
        np.testing.assert_allclose(
            [item.weight for item in explanation], [weight for _, weight in exact], atol=1e-9
        )
    assert prediction.explanations[3] == ()  # nothing read, nothing to explain
    assert all(isinstance(item, Contribution) for item in prediction.explanations[0])
    assert model.predict(texts).explanations is None  # only when asked for


def test_a_binary_models_explanation_is_half_its_log_odds_contribution() -> None:
    """Two classes: the graph's class scores are -d/2 and d/2 (d the decision function), so an n-gram's
    weight for the predicted class is half its contribution to d, signed towards that class."""
    texts, targets = training_corpus(400, seed=3)
    binary = fitted_pipeline()
    binary.steps[1] = ("clf", LogisticRegression(max_iter=500))
    binary_targets = ["negative" if target == "negative" else "positive" for target in targets]
    binary.fit(texts, binary_targets)
    model = ScoringModel.from_bytes(to_onnx(binary, ["negative", "positive"]), RULES)
    for text in ("love love perfect", "awful cheap dress"):
        prediction = model.predict([text], explain_top_k=1)
        (top,) = prediction.explanations[0]
        vectorizer, classifier = binary.steps[0][1], binary.steps[1][1]
        column = vectorizer.vocabulary_[top.ngram]
        value = vectorizer.transform([text])[0, column]
        sign = 1 if prediction.labels[0] == "positive" else -1
        assert top.weight == pytest.approx(sign * value * classifier.coef_[0, column] / 2)


def test_runs_are_bounded_and_their_split_never_changes_an_answer(model: ScoringModel) -> None:
    texts = tricky_texts(200)
    texts.insert(50, "great " * 20_000)  # one huge text among short ones
    bounds = list(model._runs(texts))
    assert bounds[0][0] == 0 and bounds[-1][1] == len(texts)
    assert all(end == start for (_, end), (start, _) in itertools.pairwise(bounds))
    for start, end in bounds:
        longest = max(len(text) + 1 for text in texts[start:end])
        assert end - start <= RULES.run_max_rows
        assert end - start == 1 or (end - start) * longest <= RULES.run_max_chars
    assert (50, 51) in bounds  # the huge text runs alone
    one_run = ScoringModel.from_bytes(
        sparse_model_bytes(), RULES.replace(threads=1, run_max_rows=10_000, run_max_chars=10**9)
    )
    many, single = model.predict(texts, explain_top_k=2), one_run.predict(texts, explain_top_k=2)
    assert len(list(one_run._runs(texts))) == 1
    assert many.labels.tolist() == single.labels.tolist()
    np.testing.assert_array_equal(many.probabilities, single.probabilities)
    assert many.explanations == single.explanations


def test_an_empty_batch_gives_empty_answers(model: ScoringModel) -> None:
    prediction = model.predict([])
    assert prediction.labels.shape == (0,) and prediction.probabilities.shape == (0, 3)
    assert model.predict([], explain_top_k=5).explanations == ()


def test_load_model_refuses_a_file_that_does_not_match_its_hash(tmp_path) -> None:
    path, sha256 = write_model(sparse_model_bytes(), tmp_path)
    assert load_model(path, sha256, RULES).predict(["love it"]).labels.tolist() == ["positive"]
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(ModelIntegrityError, match="sha256"):
        load_model(path, sha256, RULES)


def test_model_classes_reads_a_file_without_a_session_for_both_graph_kinds(tmp_path) -> None:
    (tmp_path / "sparse").mkdir()
    (tmp_path / "legacy").mkdir()
    sparse, _ = write_model(sparse_model_bytes(), tmp_path / "sparse")
    legacy, _ = write_model(legacy_model_bytes(fitted_pipeline(platform=False)), tmp_path / "legacy")
    assert model_classes(sparse) == model_classes(legacy) == LABELS
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx model")
    with pytest.raises(ScoringError, match="cannot read model file"):
        model_classes(broken)


def test_bytes_that_are_not_a_model_are_refused() -> None:
    with pytest.raises(ScoringError, match=r"not an ONNX model|cannot load"):
        ScoringModel.from_bytes(b"not an onnx model", RULES)


def test_models_registered_before_the_sparse_graph_still_score_correctly() -> None:
    """skl2onnx graphs (input [N, 1], outputs label and probabilities) run in ONNX Runtime as before."""
    pipeline = fitted_pipeline(platform=False)
    legacy = ScoringModel.from_bytes(legacy_model_bytes(pipeline), RULES, "v1")
    texts = [*tricky_texts(60)[:3], "love the dress", "awful and cheap", "", "!!!"]
    prediction = legacy.predict(texts)
    assert legacy.kind is GraphKind.LEGACY and legacy.classes == LABELS
    assert prediction.labels.tolist() == pipeline.predict(texts).tolist()
    np.testing.assert_allclose(prediction.probabilities, pipeline.predict_proba(texts), atol=1e-4)
    # their graph does not say what it matched: no_tokens means "no token at all" for them
    assert prediction.no_tokens.tolist() == [False] * 5 + [True, True]
    assert not legacy.explains
    with pytest.raises(ExplanationUnavailable, match="retrain"):
        legacy.predict(texts, explain_top_k=3)


def test_a_plain_prediction_fetches_none_of_the_explanations_arrays(model: ScoringModel) -> None:
    """ONNX Runtime copies every output asked for; a prediction without explanations needs three."""
    asked: list[list[str]] = []
    session = model._session

    class RecordingSession:
        def run(self, outputs: list[str], feed: dict) -> list:
            asked.append(list(outputs))
            return session.run(outputs, feed)

    model._session = RecordingSession()
    try:
        plain = model.predict(["the dress fit well"])
        explained = model.predict(["the dress fit well"], explain_top_k=2)
    finally:
        model._session = session
    assert asked[0] == ["label", "probabilities", "text_norm"]
    assert len(asked[1]) == 6
    assert plain.labels.tolist() == explained.labels.tolist() and plain.explanations is None
