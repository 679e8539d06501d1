"""Batch scoring: the verified model, the parity-gated fast path, and streaming files in chunks."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import pytest
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import StringTensorType
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.naive_bayes import MultinomialNB
from sklearn.pipeline import Pipeline

from mlplatform.core.data.text import model_text, model_text_values
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import IntegrityError
from mlplatform.core.scoring.files import (
    CASE_AMBIGUOUS_CHARACTERS,
    OUTPUT_COLUMNS,
    IntegerLookup,
    ScoringError,
    ScoringInputError,
    ScoringModel,
    ScoringRules,
    linear_text_plan,
    load_model,
    ngram_keys,
    ngram_token_ids,
    score_file,
)
from mlplatform.core.scoring.lean import LeanTextScorer

TOKEN_PATTERN = r"[a-zA-Z0-9_]{2,}"
WORDS = {
    "negative": ["awful", "terrible", "ripped", "returned", "cheap", "itchy", "disappointed", "worst"],
    "neutral": ["okay", "average", "fine", "decent", "expected", "ordinary", "alright", "so"],
    "positive": ["love", "perfect", "beautiful", "gorgeous", "great", "comfortable", "flattering", "best"],
}
COMMON = ["the", "dress", "fit", "fabric", "color", "size", "top", "is", "was", "very", "not", "really"]


def training_corpus(rows: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = list(WORDS)
    texts, targets = [], []
    for _ in range(rows):
        label = labels[int(rng.integers(3))]
        words = [*rng.choice(WORDS[label], size=3), *rng.choice(COMMON, size=4)]
        # Some words of another class, so probabilities are not all extreme.
        words += list(rng.choice(WORDS[labels[int(rng.integers(3))]], size=1))
        rng.shuffle(words)
        texts.append(" ".join(words))
        targets.append(label)
    return texts, targets


def export(pipeline: Pipeline, classifier_type: type) -> bytes:
    options = {TfidfVectorizer: {"locale": "C.UTF-8"}, classifier_type: {"zipmap": False}}
    onnx_model = convert_sklearn(
        pipeline, initial_types=[("text", StringTensorType([None, 1]))], options=options, target_opset=17
    )
    assert [output.name for output in onnx_model.graph.output] == ["label", "probabilities"]
    return onnx_model.SerializeToString()


def fitted(classifier) -> Pipeline:
    texts, targets = training_corpus(600, seed=1)
    vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=(1, 2))
    return Pipeline([("tfidf", vectorizer), ("clf", classifier)]).fit(texts, targets)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("model") / "model.onnx"
    content = export(fitted(LogisticRegression(max_iter=500)), LogisticRegression)
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


@pytest.fixture(scope="module")
def skip_gram_file(model_file, tmp_path_factory) -> tuple[Path, str]:
    """The model with skip-grams switched on (max_skip_count=1): valid ONNX the fast path does not implement."""
    graph = onnx.load(str(model_file[0]))
    vectorizer = next(node for node in graph.graph.node if node.op_type == "TfIdfVectorizer")
    next(attribute for attribute in vectorizer.attribute if attribute.name == "max_skip_count").i = 1
    path = tmp_path_factory.mktemp("skip_grams") / "model.onnx"
    content = graph.SerializeToString()
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


@pytest.fixture(
    scope="module",
    params=["sgd_log_loss", "sgd_modified_huber", "multinomial_nb"],
)
def tail_graph_file(request, tmp_path_factory) -> tuple[Path, str]:
    """Graphs whose scores come from MatMul + Add and whose probabilities from a numeric tail."""
    classifiers = {
        "sgd_log_loss": SGDClassifier(loss="log_loss", alpha=2e-5, random_state=0),
        "sgd_modified_huber": SGDClassifier(loss="modified_huber", alpha=2e-5, random_state=0),
        "multinomial_nb": MultinomialNB(),
    }
    classifier = classifiers[request.param]
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    content = export(fitted(classifier), type(classifier))
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


@pytest.fixture
def rules(settings: Settings) -> ScoringRules:
    return ScoringRules.from_settings(settings)


@pytest.fixture
def model(model_file, rules) -> ScoringModel:
    return load_model(model_file[0], model_file[1], rules)


def onnxruntime_answers(path: Path, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The reference: a plain onnxruntime session, one text per run (no batching effects)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    labels, probabilities = [], []
    for text in texts:
        label, probability = session.run(
            ["label", "probabilities"], {"text": np.array([[text]], dtype=object)}
        )
        labels.append(label[0])
        probabilities.append(probability[0])
    return np.asarray(labels, dtype=object), np.asarray(probabilities)


def tricky_texts(count: int, seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    vocabulary = [word for words in WORDS.values() for word in words] + COMMON
    fixed = [
        "",
        " ",
        "!!!???...",
        "a",
        "I LOVE THIS DRESS",
        "Love,the-dress;perfect!fit",
        "naïve café — crème brûlée, très “beautiful”",
        "ÀWFUL ünïcode Ωmega 😀 love 😀",
        "İtchy fabric, \u212aind of awful",  # characters whose lower case is ASCII
        "tabs\tand\nnewlines\r\nperfect",
        "x" * 3000,
        " ".join(rng.choice(vocabulary, size=2000)),
        "12 34 size_4 top_5",
    ]
    texts = list(fixed)
    while len(texts) < count:
        words = list(rng.choice(vocabulary, size=int(rng.integers(1, 25))))
        words = [word.upper() if rng.random() < 0.2 else word for word in words]
        texts.append(rng.choice([" ", ", ", "! ", "é", "\n"]).join(words))
    return texts


# -- the model ---------------------------------------------------------------------------------


def test_load_model_refuses_a_file_that_does_not_match_its_hash(model_file, rules, tmp_path) -> None:
    path, sha256 = model_file
    with pytest.raises(IntegrityError, match="expected"):
        load_model(path, "0" * 64, rules)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(IntegrityError, match=sha256):
        load_model(truncated, sha256, rules)


def test_fast_path_matches_onnxruntime_on_tricky_texts(model, model_file) -> None:
    texts = tricky_texts(300)
    assert model.engine == "fast", model.fast_path_reason

    labels, probabilities = model.predict(texts)
    expected_labels, expected_probabilities = onnxruntime_answers(model_file[0], texts)

    assert list(labels) == list(expected_labels)
    assert np.max(np.abs(probabilities - expected_probabilities)) <= 1e-4
    assert probabilities.dtype == np.float32
    assert set(labels) == {"negative", "neutral", "positive"}, "the texts should exercise every class"


def test_matmul_graphs_use_the_fast_path_with_the_graphs_own_tail(tail_graph_file, rules) -> None:
    model = load_model(*tail_graph_file, rules)
    texts = tricky_texts(200, seed=9)

    labels, probabilities = model.predict(texts)
    expected_labels, expected_probabilities = onnxruntime_answers(tail_graph_file[0], texts)

    assert model.engine == "fast", model.fast_path_reason
    assert list(labels) == list(expected_labels)
    assert np.max(np.abs(probabilities - expected_probabilities)) <= 1e-4


def test_small_batches_and_the_fallback_give_the_same_answers(model, model_file, rules) -> None:
    texts = tricky_texts(150, seed=3)
    fallback = load_model(*model_file, dataclasses.replace(rules, fast_path=False))

    fast_labels, fast_probabilities = model.predict(texts)
    slow_labels, slow_probabilities = fallback.predict(texts)
    single_label, single_probabilities = model.predict(texts[:1])

    assert fallback.engine == "onnxruntime"
    assert list(fast_labels) == list(slow_labels)
    assert np.max(np.abs(fast_probabilities - slow_probabilities)) <= 1e-4
    assert single_label[0] == slow_labels[0]
    np.testing.assert_allclose(single_probabilities[0], slow_probabilities[0], atol=1e-6)


def record_session_runs(model, monkeypatch) -> list[int]:
    """The row count of every run of the model's full ONNX Runtime session, as it happens."""
    rows: list[int] = []
    run_session = model._run_session
    monkeypatch.setattr(model, "_run_session", lambda feed: rows.append(len(feed)) or run_session(feed))
    return rows


def test_single_reviews_take_the_per_text_engine_and_match_onnxruntime(
    model, model_file, monkeypatch
) -> None:
    texts = tricky_texts(120, seed=11)
    expected_labels, expected_probabilities = onnxruntime_answers(model_file[0], texts)
    session_rows = record_session_runs(model, monkeypatch)

    answers = [model.predict([text]) for text in texts]

    labels = [label[0] for label, _ in answers]
    probabilities = np.vstack([probability for _, probability in answers])
    assert labels == list(expected_labels)
    assert np.max(np.abs(probabilities - expected_probabilities)) <= 1e-4
    # Only the case-ambiguous texts (and exact ties, none here) went to onnxruntime.
    ambiguous = [text for text in texts if any(c in text for c in CASE_AMBIGUOUS_CHARACTERS)]
    assert len(session_rows) == len(ambiguous) >= 1


def test_per_text_engine_serves_the_graphs_own_tail(tail_graph_file, rules, monkeypatch) -> None:
    model = load_model(*tail_graph_file, rules)
    texts = tricky_texts(60, seed=12)
    expected_labels, expected_probabilities = onnxruntime_answers(tail_graph_file[0], texts)
    full_graph_runs = record_session_runs(model, monkeypatch)

    answers = [model.predict([text]) for text in texts]

    assert model.engine == "fast", model.fast_path_reason
    # Scores from the per-text engine, only the graph's tail from onnxruntime; the whole graph ran for
    # the case-ambiguous texts (and near-ties) alone.
    ambiguous = [text for text in texts if any(c in text for c in CASE_AMBIGUOUS_CHARACTERS)]
    assert len(ambiguous) <= len(full_graph_runs) < len(texts) // 2

    assert [label[0] for label, _ in answers] == list(expected_labels)
    probabilities = np.vstack([probability for _, probability in answers])
    assert np.max(np.abs(probabilities - expected_probabilities)) <= 1e-4


def space_holding_pipeline() -> Pipeline:
    """A vocabulary with the phrase "love the" but not the word "the" (as max_features can leave it):
    skl2onnx then lists "love the" among the 1-grams, where no single token can ever match it."""
    texts, targets = training_corpus(300, seed=4)
    vocabulary = sorted(
        {word for words in WORDS.values() for word in words} | {"dress", "love dress", "love the"}
    )
    vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=(1, 2), vocabulary=vocabulary)
    return Pipeline([("tfidf", vectorizer), ("clf", LogisticRegression(max_iter=500))]).fit(texts, targets)


def test_a_pool_entry_holding_a_space_never_counts_as_a_two_word_phrase(rules, tmp_path) -> None:
    content = export(space_holding_pipeline(), LogisticRegression)
    graph = onnx.load_from_string(content)
    pool = next(
        list(attribute.strings)
        for node in graph.graph.node
        if node.op_type == "TfIdfVectorizer"
        for attribute in node.attribute
        if attribute.name == "pool_strings"
    )
    assert b"love the" in pool, "the export should list the phrase as one pool entry"
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    model = load_model(path, hashlib.sha256(content).hexdigest(), rules)
    probes = ["love the dress", "I love the fit", "the love", "love love the the", "love dress awful"]

    single = [model.predict([text]) for text in probes]
    expected_labels, expected_probabilities = onnxruntime_answers(path, probes)

    assert model.engine == "fast", model.fast_path_reason
    assert [label[0] for label, _ in single] == list(expected_labels)
    np.testing.assert_allclose(
        np.vstack([probability for _, probability in single]), expected_probabilities, atol=1e-4
    )


def test_pool_ngrams_decode_the_graphs_vocabulary_per_length() -> None:
    pipeline = space_holding_pipeline()
    columns = pipeline.named_steps["tfidf"].vocabulary_
    plan = linear_text_plan(onnx.load_from_string(export(pipeline, LogisticRegression)))

    unigrams = dict(zip(*(part.tolist() for part in plan.pool_ngrams(1)), strict=True))
    bigrams = dict(zip(*(part.tolist() for part in plan.pool_ngrams(2)), strict=True))
    lean_tables = LeanTextScorer.from_plan(plan).gram_columns

    # "love the" stays a 1-gram, as the graph lists it; "love dress" is decoded from its 2-gram key.
    assert bigrams == {"love dress": columns["love dress"]}
    assert unigrams == {phrase: column for phrase, column in columns.items() if phrase != "love dress"}
    assert plan.gram_lengths == [1, 2]
    assert lean_tables == {1: unigrams, 2: bigrams}


def test_ngram_keys_put_the_first_token_first_and_decode_back() -> None:
    rng = np.random.default_rng(3)
    token_ids = rng.integers(0, 7, size=(500, 3))

    keys = ngram_keys(token_ids, n_ids=7)

    assert ngram_keys(np.array([[2, 0, 5]]), n_ids=7).tolist() == [2 * 49 + 0 * 7 + 5]
    assert len(np.unique(keys)) == len(np.unique(token_ids, axis=0))
    np.testing.assert_array_equal(ngram_token_ids(keys, 3, n_ids=7), token_ids)


def test_an_unsupported_graph_is_scored_by_onnxruntime(skip_gram_file, rules) -> None:
    model = load_model(*skip_gram_file, rules)
    texts = tricky_texts(80)

    labels, probabilities = model.predict(texts)
    expected_labels, expected_probabilities = onnxruntime_answers(skip_gram_file[0], texts)

    assert model.engine == "onnxruntime"
    assert model.fast_path_reason.startswith("unsupported graph: TfIdfVectorizer other than mode TF")
    assert list(labels) == list(expected_labels)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-6)


def test_fast_path_that_disagrees_with_onnxruntime_is_switched_off(model, caplog) -> None:
    plan = model._fast.plan
    skewed = dataclasses.replace(plan, intercepts=plan.intercepts + np.array([0.0, 0.0, 5.0]))

    assert not model.enable_fast_path(skewed)

    assert model.engine == "onnxruntime"
    assert "parity probe failed" in model.fast_path_reason
    assert "fast path off" in caplog.text


def test_empty_batch_gives_empty_answers(model) -> None:
    labels, probabilities = model.predict([])
    assert labels.shape == (0,)
    assert probabilities.shape == (0, 3)


def test_case_ambiguous_characters_are_exactly_those_lowercasing_to_ascii() -> None:
    computed = {
        chr(code)
        for code in range(0x80, sys.maxunicode + 1)
        if any(ord(char) < 0x80 for char in chr(code).lower())
    }
    assert computed == set(CASE_AMBIGUOUS_CHARACTERS)


def test_integer_lookup_finds_every_key_and_misses_absent_ones() -> None:
    rng = np.random.default_rng(0)
    keys = rng.choice(10**9, size=5000, replace=False).astype(np.int64)
    values = np.arange(len(keys), dtype=np.int64)
    lookup = IntegerLookup.build(keys, values)

    queries = np.concatenate([keys[::-1], np.array([10**9 + 1, 10**9 + 2], dtype=np.int64)])
    found = lookup.get(queries)

    np.testing.assert_array_equal(found[: len(keys)], values[::-1])
    np.testing.assert_array_equal(found[len(keys) :], [-1, -1])


# -- files -------------------------------------------------------------------------------------


def write_input(frame: pl.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def read_output(path: Path) -> pl.DataFrame:
    return pl.read_csv(path) if path.suffix == ".csv" else pl.read_parquet(path)


@pytest.mark.parametrize(
    ("input_suffix", "output_suffix"),
    [(".csv", ".csv"), (".csv", ".parquet"), (".parquet", ".csv"), (".parquet", ".parquet")],
)
def test_score_file_keeps_every_row_in_order(model, tmp_path, input_suffix, output_suffix) -> None:
    texts = tricky_texts(57, seed=11)
    source = write_input(pl.DataFrame({"text": texts}), tmp_path / f"in{input_suffix}")
    target = tmp_path / "out" / f"predictions{output_suffix}"
    progress: list[int] = []

    summary = score_file(source, target, model, "v7", chunk_rows=10, on_progress=progress.append)

    output = read_output(target)
    labels, probabilities = model.predict(texts)
    assert (summary.rows_in, summary.rows_out, summary.output_path) == (57, 57, target)
    assert tuple(output.columns) == OUTPUT_COLUMNS
    assert output["row_id"].to_list() == list(range(57))
    assert output["label"].to_list() == list(labels)
    np.testing.assert_allclose(
        output.select("p_negative", "p_neutral", "p_positive").to_numpy(), probabilities, atol=1e-6
    )
    assert output["model_version"].unique().to_list() == ["v7"]
    assert progress == [10, 20, 30, 40, 50, 57]
    assert sorted(path.name for path in target.parent.iterdir()) == [target.name]


def test_chunk_size_does_not_change_the_answers(model, tmp_path) -> None:
    source = write_input(pl.DataFrame({"text": tricky_texts(120, seed=5)}), tmp_path / "in.csv")
    one_chunk = score_file(source, tmp_path / "one.parquet", model, "v1", chunk_rows=1000)
    many_chunks = score_file(source, tmp_path / "many.parquet", model, "v1", chunk_rows=7)

    one, many = pl.read_parquet(one_chunk.output_path), pl.read_parquet(many_chunks.output_path)
    assert one_chunk.rows_out == many_chunks.rows_out == 120
    # Chunks under fast_path_min_rows go to onnxruntime: same labels, probabilities within parity.
    assert one.select("row_id", "label").equals(many.select("row_id", "label"))
    probabilities = ["p_negative", "p_neutral", "p_positive"]
    np.testing.assert_allclose(
        one.select(probabilities).to_numpy(), many.select(probabilities).to_numpy(), atol=1e-4
    )


def published_reviews() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "": [17, 4, 23001, 9],
            "Clothing ID": [767, 1080, 1077, 1049],
            "Age": [33, 34, 60, 50],
            "Title": [None, "Love it!", "Some major design flaws", "  "],
            "Review Text": ["Absolutely perfect and comfortable", "The  fit is great", None, None],
            "Rating": [5, 5, 3, 1],
        }
    )


def test_published_csv_is_scored_with_the_model_text_and_its_index(model, tmp_path) -> None:
    reviews = published_reviews()
    source = write_input(reviews, tmp_path / "reviews.csv")

    summary = score_file(source, tmp_path / "scored.csv", model, "v2")

    output = read_output(summary.output_path)
    texts = [
        model_text_values(title, body)
        for title, body in zip(reviews["Title"], reviews["Review Text"], strict=True)
    ]
    labels, _ = model.predict(texts)
    assert output["row_id"].to_list() == [17, 4, 23001, 9]
    assert output["label"].to_list() == list(labels)
    assert reviews.select(model_text(pl.col("Title"), pl.col("Review Text")))[:, 0].to_list() == texts


def test_an_id_column_is_used_as_row_id(model, tmp_path) -> None:
    frame = pl.DataFrame({"review_id": ["r-9", "r-1", "r-5"], "text": ["love it", "awful", None]})
    summary = score_file(write_input(frame, tmp_path / "in.parquet"), tmp_path / "out.csv", model, "v1")
    output = pl.read_csv(summary.output_path)
    assert output["row_id"].to_list() == ["r-9", "r-1", "r-5"]
    assert output["label"][2] == model.predict([""])[0][0]


def test_an_empty_input_gives_an_empty_output_with_the_columns(model, tmp_path) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("text\n")
    summary = score_file(source, tmp_path / "out.parquet", model, "v1")
    output = pl.read_parquet(summary.output_path)
    assert (summary.rows_in, summary.rows_out, output.height) == (0, 0, 0)
    assert tuple(output.columns) == OUTPUT_COLUMNS


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("no_text.csv", "id,comment\n1,hello\n", "has no text"),
        ("ragged.csv", 'text\n"unterminated quote\n', "cannot read"),
        ("model.json", '{"text": "hi"}', "must be .csv or .parquet"),
        ("broken.parquet", "not parquet at all", "cannot read"),
        ("absent.csv", None, "not a readable file"),
    ],
)
def test_bad_input_is_a_scoring_input_error_and_leaves_no_output(
    model, tmp_path, name, content, message
) -> None:
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    target = tmp_path / "out.csv"

    with pytest.raises(ScoringInputError, match=message) as caught:
        score_file(source, target, model, "v1")

    assert "\n" not in str(caught.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        {name} - ({name} if content is None else set())
    )


def test_unknown_output_extension_is_refused(model, tmp_path) -> None:
    source = write_input(pl.DataFrame({"text": ["fine"]}), tmp_path / "in.csv")
    with pytest.raises(ScoringInputError, match=r"must end in \.csv or \.parquet"):
        score_file(source, tmp_path / "out.xlsx", model, "v1")


def test_a_failure_mid_file_leaves_no_half_written_output(model, tmp_path, monkeypatch) -> None:
    source = write_input(pl.DataFrame({"text": tricky_texts(40)}), tmp_path / "in.csv")
    target = tmp_path / "out.csv"
    target.write_text("previous complete result\n")
    calls = {"count": 0}
    original = ScoringModel.predict

    def fail_on_third_chunk(self, texts):
        calls["count"] += 1
        if calls["count"] == 3:
            raise ScoringError("model crashed")
        return original(self, texts)

    monkeypatch.setattr(ScoringModel, "predict", fail_on_third_chunk)
    with pytest.raises(ScoringError, match="model crashed"):
        score_file(source, target, model, "v1", chunk_rows=10)

    assert target.read_text() == "previous complete result\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.csv", "out.csv"]


def test_a_file_where_the_fast_path_disagrees_is_scored_by_onnxruntime(model, model_file, tmp_path) -> None:
    texts = tricky_texts(90, seed=21)
    plan = model._fast.plan
    # A divergence the load-time probe could not see, only this file's texts.
    skewed = dataclasses.replace(plan, intercepts=plan.intercepts + np.array([0.0, 4.0, 0.0]))
    model._fast = dataclasses.replace(model._fast, plan=skewed)
    source = write_input(pl.DataFrame({"text": texts}), tmp_path / "in.parquet")

    summary = score_file(source, tmp_path / "out.parquet", model, "v1")

    expected_labels, expected_probabilities = onnxruntime_answers(model_file[0], texts)
    output = pl.read_parquet(summary.output_path)
    assert summary.engine == "onnxruntime"
    assert "parity check on the input failed" in model.fast_path_reason
    assert output["label"].to_list() == list(expected_labels)
    np.testing.assert_allclose(
        output.select("p_negative", "p_neutral", "p_positive").to_numpy(), expected_probabilities, atol=1e-4
    )


# -- real data ---------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_reviews_score_row_for_row_with_fast_path_parity(real_data_path, rules, tmp_path) -> None:
    reviews = pl.read_csv(real_data_path, infer_schema=False)
    texts = reviews.select(model_text(pl.col("Title"), pl.col("Review Text")))[:, 0].to_list()
    ratings = reviews["Rating"].cast(pl.Int64).to_numpy()
    targets = np.where(ratings <= 2, "negative", np.where(ratings == 3, "neutral", "positive"))
    vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=(1, 2))
    pipeline = Pipeline([("tfidf", vectorizer), ("clf", LogisticRegression(max_iter=200))])
    pipeline.fit(texts[:1500], targets[:1500])  # a small model: exporting a big vocabulary is slow
    path = tmp_path / "model.onnx"
    path.write_bytes(export(pipeline, LogisticRegression))
    model = load_model(path, hashlib.sha256(path.read_bytes()).hexdigest(), rules)

    summary = score_file(real_data_path, tmp_path / "scored.parquet", model, "v1")

    output = pl.read_parquet(summary.output_path)
    assert model.engine == "fast", model.fast_path_reason
    assert summary.rows_in == summary.rows_out == reviews.height
    assert output["row_id"].to_list() == reviews[""].cast(pl.Int64).to_list()
    sample = slice(4000, 4250)  # reviews the model did not see
    expected_labels, expected_probabilities = onnxruntime_answers(path, texts[sample])
    assert output["label"][sample].to_list() == list(expected_labels)
    scored = output.select("p_negative", "p_neutral", "p_positive").to_numpy()[sample]
    assert np.max(np.abs(scored - expected_probabilities)) <= 1e-4
    sklearn_probabilities = pipeline.predict_proba(texts[sample])
    assert np.max(np.abs(scored - sklearn_probabilities)) <= 1e-4


def test_rows_lost_between_reading_and_writing_fail_the_run(model, tmp_path, monkeypatch) -> None:
    from mlplatform.core.scoring import files as scoring

    source = write_input(pl.DataFrame({"text": tricky_texts(30)}), tmp_path / "in.parquet")
    reading = scoring._chunks

    def drop_last_chunk(frame, chunk_rows, input_path):
        chunks = list(reading(frame, chunk_rows, input_path))
        yield from chunks[:-1]

    monkeypatch.setattr(scoring, "_chunks", drop_last_chunk)
    with pytest.raises(ScoringError, match=r"rows in != rows out.*input has 30, read 20, wrote 20"):
        score_file(source, tmp_path / "out.parquet", model, "v1", chunk_rows=10)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.parquet"]


def test_output_may_not_overwrite_the_input(model, tmp_path) -> None:
    source = write_input(pl.DataFrame({"text": ["fine"]}), tmp_path / "in.csv")
    with pytest.raises(ScoringInputError, match="would overwrite the input"):
        score_file(source, source, model, "v1")
    assert pl.read_csv(source)["text"].to_list() == ["fine"]
