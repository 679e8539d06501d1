"""Small real models for the scoring tests: the platform's sparse graph, and a skl2onnx graph of the kind
registered before it (still loaded and scored)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import StringTensorType
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline

from mlplatform.core.data.text import TOKEN_PATTERN, lowercase_for_tokens
from mlplatform.core.platform.settings import ScoringRules
from mlplatform.core.training.export import to_onnx

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
"""The classes of these models (the clothing contract's), in their probability order."""
WORDS = {
    "negative": ["awful", "terrible", "ripped", "returned", "cheap", "itchy", "disappointed", "worst"],
    "neutral": ["okay", "average", "fine", "decent", "expected", "ordinary", "alright", "so"],
    "positive": ["love", "perfect", "beautiful", "gorgeous", "great", "comfortable", "flattering", "best"],
}
COMMON = ["the", "dress", "fit", "fabric", "color", "size", "top", "is", "was", "very", "not", "really"]
RULES = ScoringRules(chunk_rows=1000, threads=2, run_max_rows=64, run_max_chars=20_000, legacy_run_rows=16)


def training_corpus(rows: int, seed: int) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    labels = list(WORDS)
    texts, targets = [], []
    for _ in range(rows):
        label = labels[int(rng.integers(3))]
        words = [*rng.choice(WORDS[label], size=3), *rng.choice(COMMON, size=4)]
        words += list(rng.choice(WORDS[labels[int(rng.integers(3))]], size=1))  # not all extreme
        rng.shuffle(words)
        texts.append(" ".join(words))
        targets.append(label)
    return texts, targets


def fitted_pipeline(classifier=None, platform: bool = True) -> Pipeline:
    texts, targets = training_corpus(600, seed=1)
    if platform:
        vectorizer = TfidfVectorizer(
            token_pattern=TOKEN_PATTERN,
            lowercase=False,
            preprocessor=lowercase_for_tokens,
            ngram_range=(1, 2),
        )
    else:  # how models were fitted before the sparse graph
        vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=(1, 2))
    classifier = classifier if classifier is not None else LogisticRegression(max_iter=500)
    return Pipeline([("tfidf", vectorizer), ("clf", classifier)]).fit(texts, targets)


def sparse_model_bytes(pipeline: Pipeline | None = None) -> bytes:
    return to_onnx(pipeline or fitted_pipeline(), LABELS)


def legacy_model_bytes(pipeline: Pipeline | None = None) -> bytes:
    """A skl2onnx export as the platform registered them before the sparse graph (input [N, 1])."""
    pipeline = pipeline or fitted_pipeline(platform=False)
    options = {TfidfVectorizer: {"locale": "C.UTF-8"}, LogisticRegression: {"zipmap": False}}
    model = convert_sklearn(
        pipeline, initial_types=[("text", StringTensorType([None, 1]))], options=options, target_opset=17
    )
    renames = {model.graph.output[0].name: "label", model.graph.output[1].name: "probabilities"}
    for node in model.graph.node:
        node.output[:] = [renames.get(name, name) for name in node.output]
    for output in model.graph.output:
        output.name = renames[output.name]
    return model.SerializeToString()


def write_model(content: bytes, directory: Path) -> tuple[Path, str]:
    path = directory / "model.onnx"
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def tricky_texts(count: int, seed: int = 7) -> list[str]:
    rng = np.random.default_rng(seed)
    vocabulary = [word for words in WORDS.values() for word in words] + COMMON
    fixed = [
        "I LOVE THIS DRESS",
        "Love,the-dress;perfect!fit",
        "naïve café — crème brûlée, très “beautiful”",
        "ÀWFUL ünïcode Ωmega 😀 love 😀",
        "İtchy fabric, \u212aind of awful",  # characters whose lower case is ASCII
        "tabs\tand\nnewlines\r\nperfect",
        "x" * 3000 + " love",
        " ".join(rng.choice(vocabulary, size=2000)),
        "12 34 size_4 top_5 great",
    ]
    texts = list(fixed)
    while len(texts) < count:
        words = list(rng.choice(vocabulary, size=int(rng.integers(1, 25))))
        words = [word.upper() if rng.random() < 0.2 else word for word in words]
        texts.append(rng.choice([" ", ", ", "! ", "é", "\n"]).join(words))
    return texts
