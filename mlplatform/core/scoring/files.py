"""Batch scoring with the registered ONNX model: a verified model, streaming files in chunks.

ONNX Runtime's string operators (StringNormalizer, Tokenizer, TfIdfVectorizer) run row by row, so a
plain session scores a TF-IDF + linear model about five times slower than scikit-learn scores the
same model in batches. `ScoringModel` therefore has a vectorised fast path that runs the very same
ONNX graph from its own contents: it reads the vocabulary, n-gram range, token pattern, idf weights,
normalisation and linear weights out of the graph's nodes and computes the same arithmetic with
polars (tokenising) and scipy/numpy (sparse TF-IDF, linear scores). The registered ONNX file stays
the one artifact that is scored, and the fast path is parity-gated against ONNX Runtime itself:

- on load, a probe set built from the model's vocabulary (plus empty, punctuation-only, non-ASCII and
  very long texts) is scored both ways; any label difference or a probability difference above
  `parity_atol` disables the fast path (logged, with the reason);
- `score_file` repeats that check on a sample of each file's first chunk;
- rows whose two best class scores are within `tie_margin`, and rows containing the only non-ASCII
  characters whose lower case is ASCII (so lowercasing could differ between libraries), are scored
  by ONNX Runtime itself;
- a graph the fast path does not understand is scored by ONNX Runtime, chunks run in parallel.

Lists of texts under `fast_path_min_rows` (the endpoint's requests) take the fast path's per-text
engine (`lean_scoring`), the same arithmetic without the bulk set-up cost (a short polars Series, a
file's last chunk, goes to ONNX Runtime); the load-time probe checks both engines, and the same tie
and case rules hand rows to ONNX Runtime.

Supported graph shape (what skl2onnx emits for TfidfVectorizer/CountVectorizer + a linear classifier):
[Reshape/Flatten/Identity/Cast to float] -> [StringNormalizer LOWER|NONE, no stopwords] -> Tokenizer (a
regex that is one ASCII character class with a repeat, no separators, no marks) -> [Flatten] ->
TfIdfVectorizer (mode TF, string pool, no skips) -> [Mul by a constant] -> [Normalizer L1|L2] -> either
LinearClassifier (3+ string classes, post_transform NONE|SOFTMAX|LOGISTIC) -> [Normalizer L1]
(LogisticRegression), or MatMul + Add by constants followed by any numeric tail that reads only the
scores (SGDClassifier): the fast path computes the scores and onnxruntime runs that tail, cut out of
the same graph, on the [N, classes] scores.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import pyarrow.parquet as pq
from onnx import numpy_helper
from scipy import sparse

from mlplatform.core.data.text import LABELS, PROBABILITY_COLUMNS, model_text
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import verify_file
from mlplatform.core.scoring.lean import LeanTextScorer

log = logging.getLogger(__name__)

CLASS_LABELS = LABELS  # probability columns, in this order
OUTPUT_COLUMNS = ("row_id", "label", *PROBABILITY_COLUMNS, "model_version")
CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
# (title, review text) column names: as published, and as normalised by the lake.
TEXT_COLUMN_PAIRS = (("Title", "Review Text"), ("title", "review_text"))
ID_COLUMNS = ("id", "review_id")
# Non-ASCII characters whose lower case contains an ASCII letter (U+0130 -> "i", KELVIN SIGN -> "k"):
# the only ones where two lowercasing implementations could disagree about ASCII tokens.
CASE_AMBIGUOUS_CHARACTERS = "\u0130\u212a"
_SIMPLE_TOKEN_PATTERN = re.compile(
    r"^\[(?:[A-Za-z0-9_]-[A-Za-z0-9_]|[A-Za-z0-9_])+\](?:\{\d+,\d*\}|\{\d+\}|\+)$"
)
_SHAPE_ONLY_OPS = ("Identity", "Flatten", "Reshape", "Cast")
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)
_SUPPORTED_POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC")


class ScoringError(RuntimeError):
    """Scoring failed (one-line message)."""


class ScoringInputError(ScoringError):
    """The input file cannot be scored: unreadable, unknown format or no text column."""


class UnsupportedGraph(ValueError):
    """The ONNX graph has a shape the vectorised fast path does not implement."""


@dataclass(frozen=True)
class ScoringRules:
    """Scoring tunables from settings `[scoring]`."""

    chunk_rows: int
    fast_path: bool
    parity_atol: float
    parity_probe_rows: int
    fast_path_min_rows: int
    tie_margin: float
    onnx_threads: int
    onnx_run_bytes: int
    onnx_run_max_rows: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ScoringRules:
        section = settings.section("scoring")
        return cls(
            chunk_rows=int(section["chunk_rows"]),
            fast_path=bool(section["fast_path"]),
            parity_atol=float(section["parity_atol"]),
            parity_probe_rows=int(section["parity_probe_rows"]),
            fast_path_min_rows=int(section["fast_path_min_rows"]),
            tie_margin=float(section["tie_margin"]),
            onnx_threads=int(section["onnx_threads"]),
            onnx_run_bytes=int(section["onnx_run_bytes"]),
            onnx_run_max_rows=int(section["onnx_run_max_rows"]),
        )

    @property
    def parallel_runs(self) -> int:
        return self.onnx_threads if self.onnx_threads > 0 else (os.cpu_count() or 1)

    def rows_per_run(self, feature_width: int | None) -> int:
        """Rows per onnxruntime run: its TfIdfVectorizer output is dense [rows, width] float32, and
        the Mul and Normalizer after it hold two more copies, so the width bounds the batch."""
        if feature_width is None:
            return self.onnx_run_max_rows
        return max(1, min(self.onnx_run_max_rows, self.onnx_run_bytes // (3 * 4 * feature_width)))


@dataclass(frozen=True)
class ScoreSummary:
    """What one `score_file` run did."""

    rows_in: int
    rows_out: int
    seconds: float
    output_path: Path
    engine: str


# -- the fast path: the graph's own arithmetic, vectorised -------------------------------------------


_FIBONACCI_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)


@dataclass(frozen=True)
class IntegerLookup:
    """A vectorised open-addressing hash map from non-negative int64 keys to int64 values.

    n-gram keys over ~10^4 pool tokens span ~10^8 values, too many for a dense table; probing all
    queries at once in numpy is several times faster than a binary search per query.
    """

    slot_keys: np.ndarray
    slot_values: np.ndarray
    shift: np.uint64

    @classmethod
    def build(cls, keys: np.ndarray, values: np.ndarray) -> IntegerLookup:
        bits = max(3, int(np.ceil(np.log2(max(len(keys), 1) * 2))))
        slot_keys = np.full(1 << bits, -1, dtype=np.int64)
        slot_values = np.full(1 << bits, -1, dtype=np.int64)
        lookup = cls(slot_keys, slot_values, np.uint64(64 - bits))
        home, offsets = lookup._home(keys), np.zeros(len(keys), dtype=np.int64)
        pending = np.arange(len(keys))
        while len(pending):
            slots = (home[pending] + offsets[pending]) & (len(slot_keys) - 1)
            free = np.flatnonzero(slot_keys[slots] == -1)
            # Several keys may reach the same free slot this round: the first one takes it.
            _, first = np.unique(slots[free], return_index=True)
            winners = free[first]
            slot_keys[slots[winners]] = keys[pending[winners]]
            slot_values[slots[winners]] = values[pending[winners]]
            placed = np.zeros(len(pending), dtype=bool)
            placed[winners] = True
            pending = pending[~placed]
            offsets[pending] += 1
        return lookup

    def _home(self, keys: np.ndarray) -> np.ndarray:
        return (keys.astype(np.uint64) * _FIBONACCI_MULTIPLIER >> self.shift).astype(np.int64)

    def get(self, keys: np.ndarray) -> np.ndarray:
        """Values for `keys`, -1 where a key is absent."""
        found = np.full(len(keys), -1, dtype=np.int64)
        active, probe = np.arange(len(keys)), 0
        home = self._home(keys)
        mask = len(self.slot_keys) - 1
        while len(active):
            slots = (home[active] + probe) & mask
            stored = self.slot_keys[slots]
            hit = stored == keys[active]
            found[active[hit]] = self.slot_values[slots[hit]]
            active = active[~hit & (stored != -1)]
            probe += 1
        return found

    def entries(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys, values) of every stored entry, in slot order."""
        stored = self.slot_keys >= 0
        return self.slot_keys[stored], self.slot_values[stored]


def ngram_keys(token_ids: np.ndarray, n_ids: int) -> np.ndarray:
    """The key of each n-gram in `token_ids` [N, length] (pool token ids in text order).

    The one encoding of an n-gram's tokens in the lookup tables: the tokens' pool ids as the digits of
    a base-`n_ids` number, first token most significant, so (t1, ..., tn) has the key
    t1 * n_ids**(n-1) + ... + tn. Keys are unique within one length only, hence one table per length.
    `ngram_token_ids` is the inverse.
    """
    keys = np.zeros(len(token_ids), dtype=np.int64)
    for position in range(token_ids.shape[1]):
        keys = keys * n_ids + token_ids[:, position]
    return keys


def ngram_token_ids(keys: np.ndarray, length: int, n_ids: int) -> np.ndarray:
    """[N, length] pool token ids of `length`-token n-gram keys: the inverse of `ngram_keys`."""
    powers = n_ids ** np.arange(length - 1, -1, -1, dtype=np.int64)
    return keys[:, None] // powers % n_ids


@dataclass(frozen=True)
class LinearTextPlan:
    """Everything the fast path needs, read out of the ONNX graph."""

    lowercase: bool
    token_pattern: str
    min_token_chars: int
    pool_tokens: pl.Enum
    unigram_columns: np.ndarray | None
    ngram_tables: dict[int, IntegerLookup]
    n_features: int
    column_scale: np.ndarray | None
    feature_norm: str | None
    weights: np.ndarray
    intercepts: np.ndarray
    class_labels: tuple[str, ...]
    post_transform: str
    probability_norm: str | None
    # MatMul + Add graphs (e.g. SGDClassifier): the numeric tail after the scores, as its own ONNX
    # model that onnxruntime runs on the [N, classes] scores (cheap: no string operators).
    tail_model: bytes | None = None
    tail_input: str | None = None

    @property
    def gram_lengths(self) -> list[int]:
        """The n-gram lengths that have feature columns, ascending."""
        return ([1] if self.unigram_columns is not None else []) + sorted(self.ngram_tables)

    def pool_ngrams(self, length: int) -> tuple[np.ndarray, np.ndarray]:
        """(texts, feature columns) of the pool's `length`-token n-grams, the tokens joined by one space.

        Unigrams in pool-id order, longer n-grams in their table's slot order, decoded from the keys
        with `ngram_token_ids`. A unigram may itself hold a space (skl2onnx can list the vocabulary's
        "a b" among the 1-grams), so texts identify an n-gram only together with its length.
        """
        vocabulary = self.pool_tokens.categories.to_numpy()
        if length == 1:
            if self.unigram_columns is None:
                raise KeyError("the plan has no unigram features")
            token_ids = np.flatnonzero(self.unigram_columns >= 0)
            return vocabulary[token_ids], self.unigram_columns[token_ids]
        keys, columns = self.ngram_tables[length].entries()
        token_ids = ngram_token_ids(keys, length, len(vocabulary))
        words = (vocabulary[token_ids[:, position]] for position in range(length))
        return np.asarray(list(map(" ".join, zip(*words, strict=True))), dtype=object), columns


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    values = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [item.decode() for item in value]
        values[attribute.name] = value
    return values


class _GraphWalk:
    """Follows the one chain of nodes from the text input, recording the nodes it understood."""

    def __init__(self, model: onnx.ModelProto) -> None:
        graph = model.graph
        self.constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        self.outputs = {output.name for output in graph.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.node_count = len(graph.node)
        self.used: set[int] = set()
        self.float_type = onnx.TensorProto.FLOAT  # of the numeric tensors, changed by a Cast
        inputs = [value.name for value in graph.input if value.name not in self.constants]
        if inputs != ["text"]:
            raise UnsupportedGraph(f"graph inputs are {inputs}, expected exactly ['text']")

    def next_node(self, tensor: str) -> onnx.NodeProto:
        """The single node consuming `tensor`, after skipping row-preserving shape-only nodes."""
        while True:
            nodes = self.consumers.get(tensor, [])
            if len(nodes) != 1:
                raise UnsupportedGraph(f"tensor {tensor!r} feeds {len(nodes)} nodes, expected one")
            node = nodes[0]
            if node.op_type not in _SHAPE_ONLY_OPS:
                return node
            self._check_row_preserving(node)
            self.take(node)
            tensor = node.output[0]

    def end_at_output(self, tensor: str, name: str) -> None:
        """Require `tensor` to reach the graph output `name`, through shape-only nodes at most."""
        while tensor != name:
            nodes = self.consumers.get(tensor, [])
            if len(nodes) != 1 or nodes[0].op_type != "Identity":
                raise UnsupportedGraph(f"tensor {tensor!r} does not lead straight to the output {name!r}")
            self.take(nodes[0])
            tensor = nodes[0].output[0]

    def _check_row_preserving(self, node: onnx.NodeProto) -> None:
        if node.op_type == "Cast":
            if _attributes(node).get("to") not in _FLOAT_TYPES:
                raise UnsupportedGraph("Cast to a type other than float or double")
            self.float_type = _attributes(node)["to"]
        if node.op_type == "Flatten" and _attributes(node).get("axis", 1) != 1:
            raise UnsupportedGraph("Flatten with axis other than 1 would merge rows")
        if node.op_type == "Reshape":
            shape = self.constants.get(node.input[1])
            if shape is None or shape.tolist() not in ([-1], [-1, 1]):
                raise UnsupportedGraph("Reshape to a shape other than [-1] or [-1, 1]")

    def take(self, node: onnx.NodeProto) -> None:
        self.used.add(id(node))

    def constant(self, node: onnx.NodeProto, tensor: str) -> np.ndarray:
        others = [name for name in node.input if name != tensor]
        if len(others) != 1 or others[0] not in self.constants:
            raise UnsupportedGraph(f"{node.op_type} node is not a multiplication by a constant")
        return self.constants[others[0]]


def _token_stage(walk: _GraphWalk, node: onnx.NodeProto) -> tuple[bool, str, int, onnx.NodeProto]:
    """StringNormalizer (optional) and Tokenizer -> (lowercase, pattern, min chars, next node)."""
    lowercase = False
    if node.op_type == "StringNormalizer":
        attrs = _attributes(node)
        if attrs.get("stopwords"):
            raise UnsupportedGraph("StringNormalizer with stopwords")
        action = attrs.get("case_change_action", "NONE")
        if action not in ("LOWER", "NONE"):
            raise UnsupportedGraph(f"StringNormalizer case_change_action {action}")
        lowercase = action == "LOWER"
        walk.take(node)
        node = walk.next_node(node.output[0])
    if node.op_type != "Tokenizer":
        raise UnsupportedGraph(f"expected a Tokenizer, found {node.op_type}")
    attrs = _attributes(node)
    pattern = attrs.get("tokenexp", "")
    if attrs.get("separators") or attrs.get("mark", 0) != 0:
        raise UnsupportedGraph("Tokenizer with separators or marks")
    if not _SIMPLE_TOKEN_PATTERN.match(pattern):
        raise UnsupportedGraph(f"token pattern {pattern!r} is not one ASCII character class with a repeat")
    if re.fullmatch(pattern, attrs.get("pad_value", "#")):
        raise UnsupportedGraph("the Tokenizer's pad value is itself a token")
    walk.take(node)
    return lowercase, pattern, int(attrs.get("mincharnum", 1)), walk.next_node(node.output[0])


def _ngram_stage(walk: _GraphWalk, node: onnx.NodeProto) -> dict[str, Any]:
    """TfIdfVectorizer -> pool tokens, per-length n-gram tables and feature count."""
    if node.op_type != "TfIdfVectorizer":
        raise UnsupportedGraph(f"expected a TfIdfVectorizer, found {node.op_type}")
    attrs = _attributes(node)
    if attrs.get("mode") != "TF" or attrs.get("max_skip_count", 0) != 0 or attrs.get("pool_int64s"):
        raise UnsupportedGraph("TfIdfVectorizer other than mode TF over a string pool without skips")
    pool, starts, indexes = (
        attrs["pool_strings"],
        list(attrs["ngram_counts"]),
        np.asarray(attrs["ngram_indexes"]),
    )
    pool_tokens = sorted(set(pool))
    if not pool_tokens:
        raise UnsupportedGraph("TfIdfVectorizer with an empty vocabulary")
    token_id = {token: index for index, token in enumerate(pool_tokens)}
    n_ids = max(len(pool_tokens), 1)
    max_gram = int(attrs["max_gram_length"])
    if n_ids**max_gram >= 2**62:
        raise UnsupportedGraph("n-gram keys would overflow 64-bit integers")
    bounds = [*starts, len(pool)]
    tables: dict[int, IntegerLookup] = {}
    unigram_columns = None
    ngram_offset = 0
    for length in range(1, len(starts) + 1):
        grams = np.asarray(
            [token_id[token] for token in pool[bounds[length - 1] : bounds[length]]], dtype=np.int64
        )
        grams = grams.reshape(-1, length)
        columns = indexes[ngram_offset : ngram_offset + len(grams)].astype(np.int64)
        ngram_offset += len(grams)
        if not int(attrs["min_gram_length"]) <= length <= max_gram:
            continue
        if length == 1:
            unigram_columns = np.full(n_ids, -1, dtype=np.int64)
            unigram_columns[grams[:, 0]] = columns
            continue
        tables[length] = IntegerLookup.build(ngram_keys(grams, n_ids), columns)
    walk.take(node)
    return {
        "pool_tokens": pl.Enum(pool_tokens),
        "unigram_columns": unigram_columns,
        "ngram_tables": tables,
        "n_features": int(indexes.max()) + 1 if len(indexes) else 0,
        "output": node.output[0],
    }


def _feature_stage(walk: _GraphWalk, tensor: str, n_features: int) -> tuple[Any, Any, onnx.NodeProto]:
    """Optional Mul by a constant (idf) and Normalizer -> (column scale, norm, classifier node)."""
    scale, norm = None, None
    node = walk.next_node(tensor)
    if node.op_type == "Mul":
        scale = np.broadcast_to(walk.constant(node, tensor).astype(np.float64).ravel(), (n_features,)).copy()
        walk.take(node)
        node = walk.next_node(node.output[0])
    if node.op_type == "Normalizer":
        norm = _attributes(node).get("norm", "MAX")
        if norm not in ("L1", "L2"):
            raise UnsupportedGraph(f"feature Normalizer with norm {norm}")
        walk.take(node)
        node = walk.next_node(node.output[0])
    return scale, norm, node


def _classifier_stage(walk: _GraphWalk, node: onnx.NodeProto, n_features: int) -> dict[str, Any]:
    """LinearClassifier and the optional L1 Normalizer of its scores."""
    if node.op_type != "LinearClassifier":
        raise UnsupportedGraph(f"expected a LinearClassifier, found {node.op_type}")
    attrs = _attributes(node)
    labels = tuple(attrs.get("classlabels_strings", ()))
    post = attrs.get("post_transform", "NONE")
    coefficients = np.asarray(attrs["coefficients"], dtype=np.float64)
    if len(labels) < 3 or coefficients.size != len(labels) * n_features:
        raise UnsupportedGraph("LinearClassifier is not a string-labelled classifier over 3+ classes")
    if post not in _SUPPORTED_POST_TRANSFORMS:
        raise UnsupportedGraph(f"LinearClassifier post_transform {post}")
    intercepts = np.asarray(attrs.get("intercepts") or [0.0] * len(labels), dtype=np.float64)
    walk.take(node)
    walk.end_at_output(node.output[0], "label")
    probability_norm = None
    scores = node.output[1]
    if scores != "probabilities":
        follower = walk.next_node(scores)
        if follower.op_type != "Normalizer" or _attributes(follower).get("norm") != "L1":
            raise UnsupportedGraph(f"unexpected {follower.op_type} node after the classifier scores")
        probability_norm = "L1"
        walk.take(follower)
        walk.end_at_output(follower.output[0], "probabilities")
    return {
        "weights": np.ascontiguousarray(coefficients.reshape(len(labels), n_features).T),
        "intercepts": intercepts,
        "class_labels": labels,
        "post_transform": post,
        "probability_norm": probability_norm,
    }


def _tail_model(walk: _GraphWalk, model: onnx.ModelProto, scores: str, classes: int) -> onnx.ModelProto:
    """The nodes not yet understood, as a model from the [N, classes] scores to label/probabilities."""
    nodes = [node for node in model.graph.node if id(node) not in walk.used]
    available = {scores} | set(walk.constants)
    for node in nodes:  # graph nodes are topologically sorted
        missing = [name for name in node.input if name and name not in available]
        if missing:
            raise UnsupportedGraph(f"the graph after the scores also reads {missing}")
        available.update(node.output)
        walk.take(node)
    needed = {name for node in nodes for name in node.input}
    graph = onnx.helper.make_graph(
        nodes,
        "scores_to_outputs",
        [onnx.helper.make_tensor_value_info(scores, walk.float_type, [None, classes])],
        list(model.graph.output),
        initializer=[init for init in model.graph.initializer if init.name in needed],
    )
    tail = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        onnx.checker.check_model(tail)
    except onnx.checker.ValidationError as exc:
        raise UnsupportedGraph(
            f"the graph after the scores is not a valid model: {_first_line(exc)}"
        ) from exc
    return tail


def _matmul_stage(
    walk: _GraphWalk, node: onnx.NodeProto, n_features: int, model: onnx.ModelProto
) -> dict[str, Any]:
    """MatMul by [features, K] and Add of [K]; everything after the scores becomes the tail model."""
    weights = walk.constant(node, node.input[0]).astype(np.float64)
    walk.take(node)
    add = walk.next_node(node.output[0])
    if add.op_type != "Add":
        raise UnsupportedGraph(f"expected an Add after the MatMul, found {add.op_type}")
    bias = walk.constant(add, node.output[0]).astype(np.float64).ravel()
    if (
        weights.ndim != 2
        or weights.shape[0] != n_features
        or weights.shape[1] < 3
        or bias.shape != (weights.shape[1],)
    ):
        raise UnsupportedGraph("MatMul/Add is not a linear model over 3+ classes")
    walk.take(add)
    tail = _tail_model(walk, model, add.output[0], weights.shape[1])
    return {
        "weights": np.ascontiguousarray(weights),
        "intercepts": bias,
        "class_labels": (),
        "post_transform": "NONE",
        "probability_norm": None,
        "tail_model": tail.SerializeToString(),
        "tail_input": add.output[0],
    }


def linear_text_plan(model: onnx.ModelProto) -> LinearTextPlan:
    """Read a TF-IDF + linear classifier graph into a LinearTextPlan; UnsupportedGraph says why not."""
    walk = _GraphWalk(model)
    lowercase, pattern, min_chars, node = _token_stage(walk, walk.next_node("text"))
    ngrams = _ngram_stage(walk, node)
    features = ngrams.pop("output")
    scale, norm, node = _feature_stage(walk, features, ngrams["n_features"])
    if node.op_type == "MatMul":
        classifier = _matmul_stage(walk, node, ngrams["n_features"], model)
    else:
        classifier = _classifier_stage(walk, node, ngrams["n_features"])
    unused = walk.node_count - len(walk.used)
    if unused:
        raise UnsupportedGraph(f"{unused} graph node(s) outside the text -> linear classifier chain")
    return LinearTextPlan(
        lowercase=lowercase,
        token_pattern=pattern,
        min_token_chars=min_chars,
        column_scale=scale,
        feature_norm=norm,
        **ngrams,
        **classifier,
    )


def _token_ids(plan: LinearTextPlan, texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(row index, pool token id or -1) for every token, in text order."""
    normalised = texts.fill_null("")
    if plan.lowercase:
        normalised = normalised.str.to_lowercase()
    frame = pl.DataFrame(
        {
            "row": np.arange(len(texts), dtype=np.int64),
            "token": normalised.str.extract_all(plan.token_pattern),
        }
    )
    tokens = frame.explode("token").drop_nulls("token")
    if plan.min_token_chars > 1:
        tokens = tokens.filter(pl.col("token").str.len_chars() >= plan.min_token_chars)
    # Casting to an Enum of the pool maps each token to its pool index (null when not in the pool).
    ids = tokens["token"].cast(plan.pool_tokens, strict=False).to_physical().cast(pl.Int64).fill_null(-1)
    return tokens["row"].to_numpy(), ids.to_numpy()


def _ngram_columns(plan: LinearTextPlan, rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """[tokens, n-gram lengths]: feature column of the n-gram starting at each token, -1 if none."""
    n_ids = len(plan.pool_tokens.categories)
    lengths = plan.gram_lengths
    columns = np.full((len(ids), len(lengths)), -1, dtype=np.int64)
    for slot, length in enumerate(lengths):
        if length == 1:
            columns[:, slot] = np.where(ids >= 0, plan.unigram_columns[np.maximum(ids, 0)], -1)
            continue
        starts = len(ids) - length + 1
        if starts <= 0:
            continue
        # Rows are sorted, so the first and last token of a window in one row means one row.
        valid = rows[:starts] == rows[length - 1 :]
        for position in range(length):  # one slice at a time: faster than .all(axis=1) on the windows
            valid &= ids[position : position + starts] >= 0
        # Keys of all windows (meaningless where a token is outside the pool), then only valid ones
        # looked up: cheaper than gathering the valid windows first.
        keys = ngram_keys(np.lib.stride_tricks.sliding_window_view(ids, length), n_ids)
        where = np.flatnonzero(valid)
        columns[where, slot] = plan.ngram_tables[length].get(keys[where])
    return columns


def _term_counts(plan: LinearTextPlan, texts: pl.Series) -> sparse.csr_matrix:
    """Sparse [N, features] n-gram counts: the graph's TfIdfVectorizer output (mode TF)."""
    rows, ids = _token_ids(plan, texts)
    columns = _ngram_columns(plan, rows, ids)
    # Entries in token order are already grouped by row, so the CSR arrays can be built directly.
    present = columns >= 0
    entry_columns = columns[present]
    per_row = np.bincount(rows, weights=present.sum(axis=1), minlength=len(texts)).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(per_row)])
    counts = sparse.csr_matrix(
        (np.ones(len(entry_columns)), entry_columns, indptr), shape=(len(texts), plan.n_features)
    )
    counts.sum_duplicates()
    return counts


def _normalise_rows(matrix: sparse.csr_matrix, norm: str) -> None:
    """In-place L1/L2 row normalisation; all-zero rows stay zero (as in ONNX Runtime's Normalizer)."""
    values = np.abs(matrix.data) if norm == "L1" else matrix.data**2
    per_row = np.diff(matrix.indptr)
    totals = np.bincount(
        np.repeat(np.arange(matrix.shape[0]), per_row), weights=values, minlength=matrix.shape[0]
    )
    if norm == "L2":
        totals = np.sqrt(totals)
    totals[totals == 0] = 1.0
    matrix.data /= np.repeat(totals, per_row)


def linear_scores(plan: LinearTextPlan, texts: pl.Series) -> np.ndarray:
    """Raw class scores [N, K] of the graph's LinearClassifier, computed in bulk."""
    counts = _term_counts(plan, texts)
    if plan.column_scale is not None:
        counts.data *= plan.column_scale[counts.indices]
    if plan.feature_norm is not None:
        _normalise_rows(counts, plan.feature_norm)
    return np.asarray(counts @ plan.weights) + plan.intercepts


def _post_transform(plan: LinearTextPlan, scores: np.ndarray) -> np.ndarray:
    if plan.post_transform == "SOFTMAX":
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    elif plan.post_transform == "LOGISTIC":
        probabilities = 1.0 / (1.0 + np.exp(-scores))
    else:
        probabilities = scores
    if plan.probability_norm == "L1":
        totals = np.abs(probabilities).sum(axis=1, keepdims=True)
        probabilities = probabilities / np.where(totals == 0, 1.0, totals)
    return probabilities.astype(np.float32)


# -- the model --------------------------------------------------------------------------------------


def _session(model: Path | bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # One thread per run: the string operators are sequential anyway, and parallelism comes from
    # running slices of a batch side by side (see ScoringModel._predict_onnxruntime).
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def parity_probe_texts(plan: LinearTextPlan, count: int, seed: int = 0) -> list[str]:
    """Deterministic texts that exercise the model's vocabulary and the tokenizer's edge cases."""
    rng = np.random.default_rng(seed)
    vocabulary = plan.pool_tokens.categories.to_numpy()
    edge_cases = [
        "",
        "   ",
        "!!! ... ???",
        "a b c",
        "ÀÉÎÕÜ ünïcödé naïve café crème",
        "emoji 😀 and ☃ between words",
        "UPPER Case MiXeD",
        "tabs\tand\nnewlines\r\nhere",
        "x" * 5000,
    ]
    separators = [" ", ", ", "! ", ". ", " - ", "\n", "é", " ’ "]
    # Every pool token (even one without a unigram column) and the multi-token n-grams ("fits perfectly").
    phrases = np.concatenate([vocabulary, *(plan.pool_ngrams(length)[0] for length in plan.ngram_tables)])
    texts = list(edge_cases)
    while len(texts) < count:
        words = rng.choice(phrases, size=int(rng.integers(1, 40)))
        words = [word.upper() if rng.random() < 0.1 else word for word in words]
        gaps = rng.choice(separators, size=len(words))
        texts.append("".join(f"{word}{gap}" for word, gap in zip(words, gaps, strict=True)))
    return texts[:count]


def _session_feed(texts: Sequence[str | None]) -> np.ndarray:
    """Texts as ONNX Runtime's [N, 1] string input (None as the empty text)."""
    return np.array(["" if text is None else text for text in texts], dtype=object).reshape(-1, 1)


@dataclass(frozen=True)
class _FastPath:
    """Everything the fast path reads per call, built once per model."""

    plan: LinearTextPlan
    lean: LeanTextScorer
    labels: np.ndarray  # the classifier's class labels, indexed by argmax of the scores
    tail: ort.InferenceSession | None = None
    tail_dtype: type = np.float32

    @classmethod
    def build(cls, plan: LinearTextPlan) -> _FastPath:
        labels = np.asarray(plan.class_labels, dtype=object)
        if plan.tail_model is None:
            return cls(plan, LeanTextScorer.from_plan(plan), labels)
        tail = _session(plan.tail_model)
        dtype = np.float64 if tail.get_inputs()[0].type == "tensor(double)" else np.float32
        return cls(plan, LeanTextScorer.from_plan(plan), labels, tail, dtype)


class ScoringModel:
    """A verified ONNX sentiment model: `predict` returns (labels, probabilities [N, 3])."""

    def __init__(
        self,
        path: Path,
        sha256: str,
        session: ort.InferenceSession,
        rules: ScoringRules,
        feature_width: int | None,
    ) -> None:
        self.path = path
        self.sha256 = sha256
        self.rules = rules
        self._session = session
        self._rows_per_run = rules.rows_per_run(feature_width)
        # Swapped as one reference: the plan, the session of its numeric tail (or None) and the
        # per-text engine for small batches.
        self._fast: _FastPath | None = None
        self.fast_path_reason = "disabled in settings"

    @property
    def engine(self) -> str:
        """ "fast" when the parity-checked vectorised path is on, else "onnxruntime"."""
        return "fast" if self._fast is not None else "onnxruntime"

    def enable_fast_path(self, plan: LinearTextPlan) -> bool:
        """Switch the fast path on when it agrees with ONNX Runtime on the probe texts."""
        self._fast = _FastPath.build(plan)
        mismatch = self.check_parity(parity_probe_texts(plan, self.rules.parity_probe_rows))
        if mismatch is not None:
            self.disable_fast_path(f"parity probe failed: {mismatch}")
            return False
        self.fast_path_reason = ""
        return True

    def disable_fast_path(self, reason: str) -> None:
        """Score with ONNX Runtime from now on, and log why."""
        if self._fast is not None or self.fast_path_reason != reason:
            log.warning("model %s: fast path off, scoring with onnxruntime: %s", self.path, reason)
        self._fast = None
        self.fast_path_reason = reason

    def check_parity(self, texts: Sequence[str], *, per_text: bool = True) -> str | None:
        """None when the fast path matches ONNX Runtime on `texts`, else what differed.

        The bulk engine is always checked; the per-text engine (small batches) too unless `per_text`
        is False (a batch file's chunks never use it)."""
        if self._fast is None or not texts:
            return None
        series = pl.Series("text", list(texts), dtype=pl.String)
        labels, probabilities = self._predict_onnxruntime(series)
        # Both engines of the fast path answer for themselves: the bulk one and the per-text one.
        engines = [("bulk", self._predict_fast)]
        if per_text:
            engines.append(("per-text", lambda _: self._predict_lean(list(texts))))
        for engine, predict in engines:
            fast_labels, fast_probabilities = predict(series)
            differing = int(np.sum(fast_labels != labels))
            if differing:
                return f"{engine}: {differing} of {len(texts)} labels differ"
            gap = float(np.max(np.abs(fast_probabilities - probabilities)))
            if gap > self.rules.parity_atol:
                return (
                    f"{engine}: probabilities differ by up to {gap:.2e} "
                    f"(allowed {self.rules.parity_atol:.0e})"
                )
        return None

    def predict(self, texts: Sequence[str] | pl.Series) -> tuple[np.ndarray, np.ndarray]:
        """Labels (object array of str) and probabilities (float32 [N, 3], negative/neutral/positive).

        A None text is scored as the empty text.
        """
        if len(texts) == 0:
            return np.empty(0, dtype=object), np.empty((0, len(CLASS_LABELS)), dtype=np.float32)
        if not isinstance(texts, pl.Series) and len(texts) < self.rules.fast_path_min_rows:
            # The serving hot path: a handful of texts, scored text by text (or in one onnxruntime run).
            if self._fast is not None:
                labels, probabilities = self._predict_lean(list(texts))
            else:
                labels, probabilities = self._run_session(_session_feed(texts))
        else:
            series = (
                texts if isinstance(texts, pl.Series) else pl.Series("text", list(texts), dtype=pl.String)
            )
            if self._fast is None or len(series) < self.rules.fast_path_min_rows:
                labels, probabilities = self._predict_onnxruntime(series)
            else:
                labels, probabilities = self._predict_fast(series)
        if probabilities.shape != (len(texts), len(CLASS_LABELS)) or len(labels) != len(texts):
            raise ScoringError(f"model {self.path} answered {probabilities.shape} for {len(texts)} texts")
        return labels, probabilities

    def _predict_fast(self, series: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        fast = self._fast
        assert fast is not None
        scores = linear_scores(fast.plan, series)
        case_ambiguous = None
        if fast.plan.lowercase:
            case_ambiguous = series.fill_null("").str.contains(f"[{CASE_AMBIGUOUS_CHARACTERS}]").to_numpy()
        return self._from_scores(
            fast, scores, case_ambiguous, lambda rows: self._predict_onnxruntime(series.gather(rows))
        )

    def _predict_lean(self, texts: list[str | None]) -> tuple[np.ndarray, np.ndarray]:
        fast = self._fast
        assert fast is not None
        scores = fast.lean.scores(texts)
        case_ambiguous = None
        if fast.plan.lowercase:
            case_ambiguous = np.array(
                [text is not None and any(c in text for c in CASE_AMBIGUOUS_CHARACTERS) for text in texts]
            )
        return self._from_scores(
            fast,
            scores,
            case_ambiguous,
            lambda rows: self._run_session(_session_feed([texts[i] for i in rows])),
        )

    def _from_scores(
        self,
        fast: _FastPath,
        scores: np.ndarray,
        case_ambiguous: np.ndarray | None,
        onnxruntime_rows: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Labels and probabilities from raw class scores; near-ties and case-ambiguous rows are
        scored by `onnxruntime_rows(row indexes)` instead."""
        plan = fast.plan
        if fast.tail is not None:
            labels, probabilities = self._run_tail(fast, scores)
        else:
            labels = fast.labels[np.argmax(scores, axis=1)]
            probabilities = _post_transform(plan, scores)
        top_two = np.sort(scores, axis=1)[:, -2:]
        delegated = (top_two[:, 1] - top_two[:, 0]) < self.rules.tie_margin
        if case_ambiguous is not None:
            delegated |= case_ambiguous
        if delegated.any():
            rows = np.flatnonzero(delegated)
            labels[rows], probabilities[rows] = onnxruntime_rows(rows)
        return labels, probabilities

    @staticmethod
    def _run_tail(fast: _FastPath, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph's own numeric tail (probabilities, label) run by onnxruntime on the scores."""
        assert fast.tail is not None
        labels, probabilities = fast.tail.run(
            ["label", "probabilities"], {fast.plan.tail_input: scores.astype(fast.tail_dtype)}
        )
        return np.asarray(labels, dtype=object).ravel(), np.asarray(probabilities, dtype=np.float32)

    def _predict_onnxruntime(self, series: pl.Series) -> tuple[np.ndarray, np.ndarray]:
        texts = series.fill_null("").to_numpy().astype(object).reshape(-1, 1)
        runs = [
            texts[start : start + self._rows_per_run] for start in range(0, len(texts), self._rows_per_run)
        ]
        workers = min(self.rules.parallel_runs, len(runs))
        if workers <= 1:
            parts = [self._run_session(run) for run in runs]
        else:
            # onnxruntime releases the GIL while it runs, so threads use every core.
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts = list(pool.map(self._run_session, runs))
        return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])

    def _run_session(self, texts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        try:
            labels, probabilities = self._session.run(["label", "probabilities"], {"text": texts})
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ScoringError(f"onnxruntime failed on {self.path}: {_first_line(exc)}") from exc
        return np.asarray(labels, dtype=object), np.asarray(probabilities, dtype=np.float32)


def _dense_feature_width(model: onnx.ModelProto) -> int | None:
    """Width of the graph's dense TF-IDF matrix (None when it has no TfIdfVectorizer)."""
    widths = [
        max(attribute.ints, default=0) + 1
        for node in model.graph.node
        if node.op_type == "TfIdfVectorizer"
        for attribute in node.attribute
        if attribute.name == "ngram_indexes"
    ]
    return max(widths, default=None)


def _check_class_order(model: onnx.ModelProto, path: Path) -> None:
    """The probability columns are written as negative, neutral, positive: the model must agree."""
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings":
                labels = tuple(value.decode() for value in attribute.strings)
                if labels != CLASS_LABELS:
                    raise ScoringError(
                        f"model {path} has classes {list(labels)}, expected {list(CLASS_LABELS)}"
                    )


def load_model(path: Path, expected_sha256: str, rules: ScoringRules | None = None) -> ScoringModel:
    """Verify the file's SHA-256 (IntegrityError), open it in ONNX Runtime and set up the fast path.

    `rules` default to the packaged `[scoring]` settings. The fast path is used only when the graph
    has a supported shape and passes the parity probe; `model.fast_path_reason` says why not.
    """
    rules = rules or ScoringRules.from_settings(Settings.load())
    path = Path(path)
    verify_file(path, expected_sha256, "model file")
    try:
        session = _session(path)
    except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
        raise ScoringError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from exc
    output_names = [output.name for output in session.get_outputs()]
    if [value.name for value in session.get_inputs()] != ["text"] or not {"label", "probabilities"} <= set(
        output_names
    ):
        raise ScoringError(f"model {path} does not take 'text' and answer 'label' and 'probabilities'")
    graph = onnx.load(str(path))
    _check_class_order(graph, path)
    model = ScoringModel(path, expected_sha256, session, rules, _dense_feature_width(graph))
    if rules.fast_path:
        try:
            plan = linear_text_plan(graph)
        except UnsupportedGraph as exc:
            model.disable_fast_path(f"unsupported graph: {exc}")
        else:
            model.enable_fast_path(plan)
    return model


# -- files ------------------------------------------------------------------------------------------


def _read_schema(input_path: Path) -> tuple[pl.LazyFrame, list[str]]:
    suffix = input_path.suffix.lower()
    if not input_path.is_file():
        raise ScoringInputError(f"input {input_path} is not a readable file")
    try:
        if suffix in CSV_SUFFIXES:
            names = pl.scan_csv(input_path, infer_schema=False).collect_schema().names()
            # The published CSV's unnamed first column is the review's integer index.
            overrides = {"": pl.Int64} if names and names[0] == "" else None
            return pl.scan_csv(input_path, infer_schema=False, schema_overrides=overrides), names
        if suffix in PARQUET_SUFFIXES:
            frame = pl.scan_parquet(input_path)
            return frame, frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise ScoringInputError(f"cannot read {input_path}: {_first_line(exc)}") from exc
    raise ScoringInputError(f"input {input_path} must be .csv or .parquet")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _id_column(names: list[str]) -> str | None:
    if names and names[0] == "":
        return ""
    return next((name for name in ID_COLUMNS if name in names), None)


def scoring_frame(input_path: Path) -> pl.LazyFrame:
    """The input as a lazy frame of `row_id` and `text` (the model's text), in input order."""
    frame, names = _read_schema(input_path)
    text_pair = next((pair for pair in TEXT_COLUMN_PAIRS if set(pair) <= set(names)), None)
    if "text" in names:
        text = pl.col("text").cast(pl.String).fill_null("")
    elif text_pair is not None:
        text = model_text(pl.col(text_pair[0]), pl.col(text_pair[1]))
    else:
        raise ScoringInputError(
            f"input {input_path} has no text: expected a 'text' column or 'Title' and 'Review Text' (found {names})"
        )
    id_column = _id_column(names)
    if id_column is None:
        id_column = "__row_number"
        frame = frame.with_row_index(id_column)
    return frame.select(pl.col(id_column).alias("row_id"), text.alias("text"))


class _ChunkWriter:
    """Appends prediction chunks to a temp file (CSV or Parquet) that is renamed into place at the end."""

    def __init__(self, output_path: Path) -> None:
        suffix = output_path.suffix.lower()
        if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
            raise ScoringInputError(f"output {output_path} must end in .csv or .parquet")
        self.output_path = output_path
        self.parquet = suffix in PARQUET_SUFFIXES
        self.temp_path = output_path.with_name(f".{output_path.name}.{os.getpid()}.partial")
        self.rows = 0
        self._csv = None
        self._parquet: pq.ParquetWriter | None = None

    def write(self, chunk: pl.DataFrame) -> None:
        if self.parquet:
            table = chunk.to_arrow()
            if self._parquet is None:
                self._parquet = pq.ParquetWriter(self.temp_path, table.schema)
            self._parquet.write_table(table)
        else:
            if self._csv is None:
                self._csv = self.temp_path.open("wb")
                chunk.write_csv(self._csv, include_header=True)
            else:
                chunk.write_csv(self._csv, include_header=False)
        self.rows += chunk.height

    def finish(self) -> int:
        """Close the temp file and make it durable; returns the rows it holds."""
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None
            written = pq.ParquetFile(self.temp_path).metadata.num_rows
        else:
            assert self._csv is not None
            self._csv.close()
            self._csv = None
            written = self.rows
        with self.temp_path.open("rb+") as handle:
            os.fsync(handle.fileno())
        return written

    def publish(self) -> None:
        os.replace(self.temp_path, self.output_path)

    def abandon(self) -> None:
        if self._parquet is not None:
            self._parquet.close()
        if self._csv is not None:
            self._csv.close()
        self.temp_path.unlink(missing_ok=True)


def _prediction_frame(
    chunk: pl.DataFrame, labels: np.ndarray, probabilities: np.ndarray, version: str
) -> pl.DataFrame:
    columns: dict[str, Any] = {
        "row_id": chunk["row_id"],
        "label": pl.Series("label", labels, dtype=pl.String),
    }
    for index, name in enumerate(PROBABILITY_COLUMNS):
        columns[name] = pl.Series(name, probabilities[:, index], dtype=pl.Float32)
    columns["model_version"] = pl.repeat(version, chunk.height, dtype=pl.String, eager=True)
    return pl.DataFrame(columns)


def score_file(
    input_path: Path,
    output_path: Path,
    model: ScoringModel,
    model_version: str,
    chunk_rows: int | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score a CSV/Parquet file in chunks into a CSV/Parquet file (by extension), rows in = rows out.

    Input: the published reviews CSV (unnamed index, "Title", "Review Text", ...), normalised
    title/review_text columns, or a plain `text` column; ids from the index, `id` or `review_id`,
    else the 0-based row number. The output appears only when the whole file has been scored.
    """
    started = time.perf_counter()
    input_path, output_path = Path(input_path), Path(output_path)
    frame = scoring_frame(input_path)
    writer = _ChunkWriter(output_path)
    if output_path.resolve() == input_path.resolve():
        raise ScoringInputError(f"output {output_path} would overwrite the input")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    rows_in = 0
    try:
        for chunk in _chunks(frame, chunk_rows or model.rules.chunk_rows, input_path):
            if rows_in == 0 and model.engine == "fast":
                _check_file_parity(model, chunk["text"])
            labels, probabilities = model.predict(chunk["text"])
            writer.write(_prediction_frame(chunk, labels, probabilities, model_version))
            rows_in += chunk.height
            if on_progress is not None:
                on_progress(rows_in)
        if rows_in == 0:
            writer.write(_empty_predictions(frame))
        # Rows in counted by an independent pass over the input, rows out from the written file.
        expected, rows_out = count_input_rows(input_path), writer.finish()
        if not expected == rows_in == rows_out:
            raise ScoringError(
                f"rows in != rows out for {input_path}: input has {expected}, read {rows_in}, wrote {rows_out}"
            )
        writer.publish()
    except BaseException:
        writer.abandon()
        raise
    return ScoreSummary(expected, rows_out, time.perf_counter() - started, output_path, model.engine)


def count_input_rows(input_path: Path) -> int:
    """Rows of a CSV/Parquet input, counted without scoring (Parquet: from its metadata)."""
    try:
        if input_path.suffix.lower() in PARQUET_SUFFIXES:
            return pq.ParquetFile(input_path).metadata.num_rows
        return int(pl.scan_csv(input_path, infer_schema=False).select(pl.len()).collect().item())
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        raise ScoringInputError(f"cannot read {input_path}: {_first_line(exc)}") from exc


def _chunks(frame: pl.LazyFrame, chunk_rows: int, input_path: Path):
    batches = frame.collect_batches(chunk_size=chunk_rows, maintain_order=True)
    while True:
        try:
            chunk = next(batches)
        except StopIteration:
            return
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise ScoringInputError(f"cannot read {input_path}: {_first_line(exc)}") from exc
        if chunk.height:
            yield chunk


def _check_file_parity(model: ScoringModel, texts: pl.Series) -> None:
    sample = texts.head(model.rules.parity_probe_rows).to_list()
    mismatch = model.check_parity(sample, per_text=False)
    if mismatch is not None:
        model.disable_fast_path(f"parity check on the input failed: {mismatch}")


def _empty_predictions(frame: pl.LazyFrame) -> pl.DataFrame:
    row_id_type = frame.collect_schema()["row_id"]
    schema = {"row_id": row_id_type, "label": pl.String}
    schema.update(dict.fromkeys(PROBABILITY_COLUMNS, pl.Float32))
    schema["model_version"] = pl.String
    return pl.DataFrame(schema=schema)
