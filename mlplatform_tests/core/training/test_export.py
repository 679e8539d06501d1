"""The sparse ONNX text graph: the contract, determinism, parity with scikit-learn on every option the
search may use, on any Unicode, on a bare locale, and its refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline

from mlplatform.core.data.text import CASE_MAP, TOKEN_PATTERN, lowercase_for_tokens
from mlplatform.core.platform.settings import ScoringRules
from mlplatform.core.scoring.model import GRAPH_KIND
from mlplatform.core.training.export import ExportError, check_parity, sklearn_answers, to_onnx
from mlplatform_tests.core.training.training_data import CLASSES as LABELS
from mlplatform_tests.core.training.training_data import review_frame

RULES = ScoringRules(
    chunk_rows=1000, threads=1, run_max_rows=512, run_max_chars=1_000_000, legacy_run_rows=64
)
# Upper case, accents, the two letters whose lower case is ASCII, emoji, NUL, punctuation, nothing.
PROBE_TEXTS = [
    "LOVE this Dress!",
    "Awful. Returned it",
    "Okay, average FIT",
    "Café déjà vu, NAÏVE",
    "İT FİTS, \u212aind of great",
    "so 😀 happy 😀😀 with it",
    "nul\x00byte dress",
    "x",
    "!!! ???",
    "",
]


def pipeline_of(
    vectorizer: dict | None = None, classifier=None, frame: pl.DataFrame | None = None, binary: bool = False
) -> Pipeline:
    frame = review_frame() if frame is None else frame
    labels = frame["label"].to_list()
    if binary:
        labels = ["positive" if label == "positive" else "negative" for label in labels]
    options = {"ngram_range": (1, 2), **(vectorizer or {})}
    steps = [
        (
            "tfidf",
            TfidfVectorizer(
                token_pattern=TOKEN_PATTERN, lowercase=False, preprocessor=lowercase_for_tokens, **options
            ),
        ),
        ("clf", classifier if classifier is not None else LogisticRegression(C=1.0, max_iter=2000)),
    ]
    return Pipeline(steps).fit(frame["text"].to_list(), labels)


def session_answers(onnx_bytes: bytes, texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    labels, probabilities, norms = session.run(
        ["label", "probabilities", "text_norm"], {"text": np.asarray(texts, dtype=object)}
    )
    return labels, probabilities, norms


def assert_parity(pipeline: Pipeline, classes: list[str], texts: list[str]) -> None:
    onnx_bytes = to_onnx(pipeline, classes)
    labels, probabilities, norms = session_answers(onnx_bytes, texts)
    expected_labels, expected_probabilities = sklearn_answers(pipeline, texts, classes)
    assert labels.tolist() == expected_labels.tolist()
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-6)
    # text_norm is 0 exactly when scikit-learn's feature row is empty: nothing the model reads
    features = pipeline.steps[0][1].transform(texts)
    assert ((norms == 0) == (features.getnnz(axis=1) == 0)).all()


def test_export_follows_the_contract() -> None:
    model = onnx.load_from_string(to_onnx(pipeline_of(), LABELS))
    assert [i.name for i in model.graph.input] == ["text"]
    (rows,) = model.graph.input[0].type.tensor_type.shape.dim  # one dimension: [N] texts, N free
    assert not rows.HasField("dim_value")
    assert [o.name for o in model.graph.output] == [
        "label",
        "probabilities",
        "text_norm",
        "term_rows",
        "term_columns",
        "term_contributions",
    ]
    assert model.producer_name == "mlplatform"
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["graph"] == GRAPH_KIND
    assert json.loads(metadata["classes"]) == list(LABELS)
    assert metadata["token_pattern"] == TOKEN_PATTERN
    vocabulary = pipeline_of().steps[0][1].vocabulary_
    assert metadata["vocabulary"].split("\n") == sorted(vocabulary, key=vocabulary.get)
    operators = {node.op_type for node in model.graph.node}
    # never the dense rows x vocabulary matrix of TfIdfVectorizer, nor a MatMul over it
    assert not operators & {"TfIdfVectorizer", "MatMul", "LinearClassifier"}
    normalizers = [n for n in model.graph.node if n.op_type == "StringNormalizer"]
    assert [a.s for n in normalizers for a in n.attribute if a.name == "locale"] == [b"C.UTF-8"]


def test_export_is_byte_identical_for_the_same_model() -> None:
    assert to_onnx(pipeline_of(), LABELS) == to_onnx(pipeline_of(), LABELS)
    stronger = pipeline_of(classifier=LogisticRegression(C=2.0, max_iter=2000))
    assert to_onnx(pipeline_of(), LABELS) != to_onnx(stronger, LABELS)


OPTIONS = [
    pytest.param({}, id="word 1-2 grams"),
    pytest.param({"ngram_range": (1, 3), "sublinear_tf": True}, id="1-3 grams, sublinear tf"),
    pytest.param({"binary": True, "norm": "l1"}, id="binary tf, l1"),
    pytest.param({"ngram_range": (2, 2), "norm": None, "use_idf": False}, id="bigrams only, raw counts"),
    pytest.param(
        {"max_df": 0.3, "max_features": 200, "stop_words": "english"}, id="max_df, max_features, stop words"
    ),
    pytest.param(
        {"ngram_range": (1, 3), "stop_words": ["the", "is", "it", "and"]}, id="stop word list, 1-3 grams"
    ),
    pytest.param({"min_df": 2, "smooth_idf": False}, id="min_df, unsmoothed idf"),
]


@pytest.mark.parametrize("vectorizer", OPTIONS)
def test_every_vectorizer_option_of_the_search_keeps_parity(vectorizer: dict) -> None:
    texts = review_frame(seed=11, rows=300)["text"].to_list() + PROBE_TEXTS
    assert_parity(pipeline_of(vectorizer), list(LABELS), texts)


CLASSIFIERS = [
    pytest.param(LogisticRegression(max_iter=2000), False, id="logistic, 3 classes"),
    pytest.param(LogisticRegression(max_iter=2000), True, id="logistic, 2 classes"),
    pytest.param(SGDClassifier(loss="log_loss", random_state=0), False, id="sgd log_loss, 3 classes"),
    pytest.param(SGDClassifier(loss="log_loss", random_state=0), True, id="sgd log_loss, 2 classes"),
    pytest.param(
        SGDClassifier(loss="modified_huber", random_state=0), False, id="sgd modified_huber, 3 classes"
    ),
    pytest.param(
        SGDClassifier(loss="modified_huber", random_state=0), True, id="sgd modified_huber, 2 classes"
    ),
]


@pytest.mark.parametrize(("classifier", "binary"), CLASSIFIERS)
def test_every_linear_family_keeps_parity(classifier, binary: bool) -> None:
    pipeline = pipeline_of(classifier=classifier, binary=binary)
    texts = review_frame(seed=12, rows=300)["text"].to_list() + PROBE_TEXTS
    classes = ["negative", "positive"] if binary else list(LABELS)
    assert_parity(pipeline, classes, texts)


def test_probability_columns_follow_the_declared_class_order() -> None:
    pipeline = pipeline_of()
    texts = review_frame(seed=13, rows=50)["text"].to_list()
    declared = ["positive", "negative", "neutral"]
    _, probabilities, _ = session_answers(to_onnx(pipeline, declared), texts)
    fitted = list(pipeline.classes_)
    expected = pipeline.predict_proba(texts)[:, [fitted.index(label) for label in declared]]
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert (
        json.loads(
            {p.key: p.value for p in onnx.load_from_string(to_onnx(pipeline, declared)).metadata_props}[
                "classes"
            ]
        )
        == declared
    )


def test_contributions_are_the_exact_parts_of_each_class_score() -> None:
    pipeline = pipeline_of({"sublinear_tf": True})
    texts = [*review_frame(seed=14, rows=40)["text"].to_list(), "", "!!!"]
    session = onnxruntime.InferenceSession(to_onnx(pipeline, LABELS), providers=["CPUExecutionProvider"])
    rows, columns, contributions = session.run(
        ["term_rows", "term_columns", "term_contributions"], {"text": np.asarray(texts, dtype=object)}
    )
    classifier = pipeline.steps[1][1]
    scores = np.tile(classifier.intercept_, (len(texts), 1))
    np.add.at(scores, rows, contributions)
    np.testing.assert_allclose(scores, pipeline.decision_function(texts), atol=1e-9)
    features = pipeline.steps[0][1].transform(texts).tocoo()
    assert sorted(zip(rows.tolist(), columns.tolist(), strict=True)) == sorted(
        zip(features.row.tolist(), features.col.tolist(), strict=True)
    )


def test_case_map_is_exactly_what_onnxruntime_lowercases_into_the_token_alphabet() -> None:
    """Lower-casing differs between Python (full case mapping) and ONNX Runtime (C.UTF-8 simple mapping);
    the token pattern only reads ASCII, so parity needs the exact set of characters lowered into it."""
    node = onnx.helper.make_node(
        "StringNormalizer", ["x"], ["y"], case_change_action="LOWER", locale="C.UTF-8"
    )
    graph = onnx.helper.make_graph(
        [node],
        "lower",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.STRING, [None])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.STRING, [None])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    model.ir_version = 9
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    characters = [chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF]
    lowered = session.run(None, {"x": np.asarray(characters, dtype=object)})[0]
    alphabet = set("abcdefghijklmnopqrstuvwxyz0123456789_")
    into_tokens = {
        source: target
        for source, target in zip(characters, lowered, strict=True)
        if source != target and target in alphabet
    }
    assert into_tokens == CASE_MAP


@pytest.fixture(scope="module")
def fuzz_pipeline() -> Pipeline:
    return pipeline_of({"ngram_range": (1, 3), "stop_words": ["the", "is"]})


@pytest.fixture(scope="module")
def fuzz_session(fuzz_pipeline: Pipeline) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(to_onnx(fuzz_pipeline, LABELS), providers=["CPUExecutionProvider"])


WORDS = ["love", "LOVE", "Dress", "fit", "the", "is", "awful", "great", "İt", "\u212aind", "naïve", "café"]
text_strategy = st.one_of(
    st.text(),  # any Unicode (no lone surrogates: JSON and CSV cannot carry them)
    st.lists(st.sampled_from(WORDS), max_size=40).map(" ".join),
    st.lists(
        st.one_of(st.sampled_from(WORDS), st.text(alphabet=st.characters(codec="utf-8"), max_size=3)),
        max_size=30,
    ).map("".join),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(text_strategy, min_size=1, max_size=8))
def test_any_text_gets_the_same_answer_in_onnxruntime_and_scikit_learn(
    fuzz_pipeline: Pipeline, fuzz_session: onnxruntime.InferenceSession, texts: list[str]
) -> None:
    labels, probabilities = fuzz_session.run(
        ["label", "probabilities"], {"text": np.asarray(texts, dtype=object)}
    )
    expected_labels, expected_probabilities = sklearn_answers(fuzz_pipeline, texts, LABELS)
    assert labels.tolist() == expected_labels.tolist()
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-6)


def test_a_one_megabyte_text_and_repeated_tokens_keep_parity(fuzz_pipeline: Pipeline) -> None:
    texts = [
        "great dress " * 90_000,  # 1 MB of two repeated tokens
        ("Love the fit! İT is café-naïve 😀 " * 30_000)[:1_000_000],
        "awful " * 5 + "great " * 5,
    ]
    assert_parity(fuzz_pipeline, list(LABELS), texts)


def test_parity_check_passes_and_fails_as_it_should() -> None:
    texts = review_frame(seed=5, rows=80)["text"].to_list()
    pipeline = pipeline_of()
    passed = check_parity(pipeline, to_onnx(pipeline, LABELS), texts, LABELS, 1e-4, RULES)
    assert passed.passed and passed.label_mismatches == 0, passed.description
    other = pipeline_of(classifier=LogisticRegression(C=0.01, max_iter=2000))
    failed = check_parity(pipeline, to_onnx(other, LABELS), texts, LABELS, 1e-4, RULES)
    assert not failed.passed
    assert failed.max_abs_prob_diff > 1e-4
    assert "NO parity" in failed.description


@pytest.mark.parametrize(
    ("pipeline", "match"),
    [
        (
            Pipeline(
                [("tfidf", TfidfVectorizer(token_pattern=TOKEN_PATTERN)), ("clf", LogisticRegression())]
            ),
            "preprocessor",
        ),
        (
            Pipeline(
                [
                    ("tfidf", TfidfVectorizer(lowercase=False, preprocessor=lowercase_for_tokens)),
                    ("clf", LogisticRegression()),
                ]
            ),
            "token",
        ),
        (
            Pipeline(
                [
                    (
                        "tfidf",
                        TfidfVectorizer(
                            token_pattern=TOKEN_PATTERN, lowercase=False, preprocessor=lowercase_for_tokens
                        ),
                    ),
                    ("clf", SGDClassifier(loss="hinge")),
                ]
            ),
            "no probabilities",
        ),
    ],
)
def test_unexportable_pipelines_are_refused(pipeline: Pipeline, match: str) -> None:
    frame = review_frame(rows=60)
    pipeline.fit(frame["text"].to_list(), frame["label"].to_list())
    with pytest.raises(ExportError, match=match):
        to_onnx(pipeline, LABELS)


def test_classes_other_than_the_fitted_ones_are_refused() -> None:
    with pytest.raises(ExportError, match="not the declared classes"):
        to_onnx(pipeline_of(), ["negative", "positive"])


BARE_LOCALE_SCRIPT = """
import json, sys
from mlplatform.core.scoring.model import ScoringModel
from mlplatform.core.platform.settings import ScoringRules
rules = ScoringRules(chunk_rows=1000, threads=1, run_max_rows=512, run_max_chars=1_000_000, legacy_run_rows=64)
model = ScoringModel.from_bytes(open(sys.argv[1], "rb").read(), rules)
prediction = model.predict(json.loads(open(sys.argv[2]).read()))
print(json.dumps({"labels": prediction.labels.tolist(), "probabilities": prediction.probabilities.tolist()}))
"""


def assert_bare_locale_parity(pipeline: Pipeline, texts: list[str], tmp_path: Path) -> None:
    """Load the export in a fresh process with LANG=C LC_ALL=C and compare with scikit-learn."""
    model_path, texts_path = tmp_path / "model.onnx", tmp_path / "texts.json"
    model_path.write_bytes(to_onnx(pipeline, LABELS))
    texts_path.write_text(json.dumps(texts), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    env.update(LANG="C", LC_ALL="C")
    result = subprocess.run(
        [sys.executable, "-c", BARE_LOCALE_SCRIPT, str(model_path), str(texts_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    expected_labels, expected_probabilities = sklearn_answers(pipeline, texts, LABELS)
    assert answer["labels"] == expected_labels.tolist()
    assert np.max(np.abs(np.array(answer["probabilities"]) - expected_probabilities)) < 1e-6


def test_model_loads_and_agrees_on_a_bare_locale(tmp_path: Path) -> None:
    texts = review_frame(seed=5, rows=60)["text"].to_list() + PROBE_TEXTS
    assert_bare_locale_parity(pipeline_of(), texts, tmp_path)


@pytest.mark.realdata
def test_real_reviews_keep_parity_in_process_and_on_a_bare_locale(
    real_data_path: Path, tmp_path: Path
) -> None:
    reviews = pl.read_csv(real_data_path, columns=["Title", "Review Text", "Rating"]).filter(
        pl.col("Review Text").is_not_null()
    )
    text = pl.concat_str([pl.col("Title").fill_null(""), pl.col("Review Text")], separator=". ")
    label = pl.when(pl.col("Rating") <= 2).then(pl.lit("negative")).when(pl.col("Rating") == 3)
    reviews = reviews.select(
        text.alias("text"), label.then(pl.lit("neutral")).otherwise(pl.lit("positive")).alias("label")
    )
    train, held_out = reviews.head(3000), reviews.slice(3000, 1000)
    pipeline = pipeline_of({"min_df": 2}, frame=train)
    texts = held_out["text"].to_list()
    report = check_parity(pipeline, to_onnx(pipeline, LABELS), texts, LABELS, 1e-6, RULES)
    assert report.passed, report.description
    assert_bare_locale_parity(pipeline, texts, tmp_path)
