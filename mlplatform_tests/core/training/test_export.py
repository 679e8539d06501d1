"""ONNX export: the contract, determinism, parity (and its failure), and loading on a bare locale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlplatform.core.training.export import (
    LABELS,
    TOKEN_PATTERN,
    ExportError,
    OnnxModelError,
    OnnxSentimentModel,
    check_parity,
    compare_predictions,
    to_onnx,
)
from mlplatform_tests.core.training.training_data import review_frame

# Upper case, accents and punctuation: what the locale-dependent lowercasing must handle alike everywhere.
PROBE_TEXTS = ["LOVE this Dress!", "Awful. Returned it", "Okay, average FIT", "Café déjà vu, NAÏVE", "x", ""]


def fitted_pipeline(C: float = 1.0, frame: pl.DataFrame | None = None, min_df: int = 1) -> Pipeline:
    frame = review_frame() if frame is None else frame
    pipeline = Pipeline(
        [
            ("tfidf", TfidfVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=(1, 2), min_df=min_df)),
            ("clf", LogisticRegression(C=C, max_iter=1000)),
        ]
    )
    return pipeline.fit(frame["text"].to_list(), frame["label"].to_list())


def test_export_follows_the_contract() -> None:
    model = onnx.load_from_string(to_onnx(fitted_pipeline()))
    assert [i.name for i in model.graph.input] == ["text"]
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[1].dim_value == 1
    assert model.producer_name == "mlplatform"
    assert {p.key: p.value for p in model.metadata_props} == {"labels": ",".join(LABELS)}
    normalizers = [n for n in model.graph.node if n.op_type == "StringNormalizer"]
    assert [a.s for n in normalizers for a in n.attribute if a.name == "locale"] == [b"C.UTF-8"]


def test_export_is_byte_identical_for_the_same_model() -> None:
    assert to_onnx(fitted_pipeline()) == to_onnx(fitted_pipeline())
    assert to_onnx(fitted_pipeline(C=1.0)) != to_onnx(fitted_pipeline(C=2.0))


def test_model_predicts_labels_and_probabilities_in_label_order() -> None:
    model = OnnxSentimentModel.from_bytes(to_onnx(fitted_pipeline()))
    labels, probabilities = model.predict(["love gorgeous perfect", "awful terrible returned"])
    assert labels.tolist() == ["positive", "negative"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert probabilities[0].argmax() == LABELS.index("positive")
    empty_labels, empty_probabilities = model.predict([])
    assert empty_labels.shape == (0,) and empty_probabilities.shape == (0, 3)


def test_parity_passes_on_the_real_export() -> None:
    pipeline = fitted_pipeline()
    report = check_parity(pipeline, to_onnx(pipeline), review_frame(seed=99)["text"].to_list() + PROBE_TEXTS)
    assert report.passed, report.description
    assert report.label_mismatches == 0 and report.max_abs_prob_diff < 1e-5


def test_parity_fails_against_a_different_model() -> None:
    texts = review_frame(seed=99)["text"].to_list()
    weak = fitted_pipeline(C=0.01)
    other = OnnxSentimentModel.from_bytes(to_onnx(fitted_pipeline(C=100.0)))
    report = compare_predictions(weak.predict(texts), weak.predict_proba(texts), other, texts)
    assert not report.passed
    assert report.max_abs_prob_diff > 1e-2
    assert report.description.startswith("NO parity")


def test_parity_counts_label_mismatches() -> None:
    texts = ["love gorgeous perfect", "awful terrible returned"]
    model = OnnxSentimentModel.from_bytes(to_onnx(fitted_pipeline()))
    _, probabilities = model.predict(texts)
    report = compare_predictions(
        np.array(["negative", "negative"], dtype=object), probabilities, model, texts
    )
    assert report.label_mismatches == 1 and not report.passed


def test_unexportable_pipelines_are_refused() -> None:
    frame = review_frame()
    default_pattern = Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression())])
    default_pattern.fit(frame["text"].to_list(), frame["label"].to_list())
    with pytest.raises(ExportError, match="token_pattern"):
        to_onnx(default_pattern)
    with pytest.raises(ExportError, match="Pipeline starting with a TfidfVectorizer"):
        to_onnx(LogisticRegression())


def test_bytes_that_are_not_a_model_are_refused() -> None:
    with pytest.raises(OnnxModelError, match="cannot load"):
        OnnxSentimentModel.from_bytes(b"not an onnx model")


BARE_LOCALE_SCRIPT = """
import json, sys
from mlplatform.core.training.export import OnnxSentimentModel
model = OnnxSentimentModel.from_bytes(open(sys.argv[1], "rb").read())
labels, probabilities = model.predict(json.loads(open(sys.argv[2]).read()))
print(json.dumps({"labels": labels.tolist(), "probabilities": probabilities.tolist()}))
"""


def assert_bare_locale_parity(pipeline: Pipeline, texts: list[str], tmp_path: Path) -> None:
    """Load the export in a fresh process with LANG=C LC_ALL=C and compare with scikit-learn."""
    model_path, texts_path = tmp_path / "model.onnx", tmp_path / "texts.json"
    model_path.write_bytes(to_onnx(pipeline))
    texts_path.write_text(json.dumps(texts), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    env.update(LANG="C", LC_ALL="C")
    result = subprocess.run(
        [sys.executable, "-c", BARE_LOCALE_SCRIPT, str(model_path), str(texts_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["labels"] == pipeline.predict(texts).tolist()
    assert np.max(np.abs(np.array(answer["probabilities"]) - pipeline.predict_proba(texts))) < 1e-4


def test_model_loads_and_agrees_on_a_bare_locale(tmp_path: Path) -> None:
    texts = review_frame(seed=5, rows=60)["text"].to_list() + PROBE_TEXTS
    assert_bare_locale_parity(fitted_pipeline(), texts, tmp_path)


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
    pipeline = fitted_pipeline(frame=train, min_df=2)
    texts = held_out["text"].to_list()
    report = check_parity(pipeline, to_onnx(pipeline), texts)
    assert report.passed, report.description
    assert_bare_locale_parity(pipeline, texts, tmp_path)
