"""scikit-learn → ONNX: the platform's sparse text graph, and the parity check against scikit-learn.

The registered ONNX file is the one artifact every prediction runs on (ONNX Runtime, batch and real
time), so the export decides how fast and how faithful scoring is. skl2onnx's `TfIdfVectorizer` node
builds a dense rows × vocabulary matrix (five times slower than scikit-learn in batch); this module
writes its own graph from standard operators that never does:

    text [N] ─ StringNormalizer (lower case, C.UTF-8) ─ com.microsoft Tokenizer (the training token
    pattern) → tokens [N, T] ─ LabelEncoder → word ids [N, T] (0: a word no vocabulary n-gram holds;
    stop words dropped and each row closed up) ─ n-gram keys (the ids of n consecutive words as the
    digits of one integer) ─ LabelEncoder / Gather → vocabulary column ─ (row, column) keys of the
    known n-grams ─ TopK sort + run-length → each distinct (row, column) once with its count ─ term
    weight (count, 1 + log count, or 1) × idf ─ row norm (L2, L1 or none) ─ weight × coefficient row
    → per-term contributions, summed per row (ScatterElements) ─ + intercept ─ probabilities.

Rows × vocabulary never exists: the work is proportional to the tokens. The same weights give each
n-gram's exact contribution to each class score, so the graph also returns them (the explanation
of a prediction costs no second model).

Contract of an exported model (`GRAPH_KIND` in the metadata):
- input `text`: string [N], the prepared model text (core/data/text.py) of each review;
- `label`: string [N]; `probabilities`: float32 [N, C], columns in the declared class order;
- `text_norm`: float64 [N], the norm of the row's term weights: 0 exactly when the text holds no
  n-gram of the vocabulary (nothing the model reads: a `no_tokens` text);
- `term_rows` int64 [U], `term_columns` int64 [U], `term_contributions` float64 [U, C]: every
  distinct vocabulary n-gram of every row with its contribution to each class score (the scores are
  the per-row sums of these plus the intercept);
- metadata: `classes` (JSON list), `vocabulary` (the n-grams by column, one per line),
  `token_pattern`, `graph` (= GRAPH_KIND).

Tokens are runs of ASCII letters, digits and underscores (`TOKEN_PATTERN`): the one pattern that
re2 (ONNX Runtime) and Python's `re` read identically. Lower-casing happens before tokenising in
both: ONNX Runtime's StringNormalizer with the C.UTF-8 locale, and in scikit-learn
`lowercase_for_tokens`, which maps exactly the characters whose lower case the token pattern can
read (A-Z, and U+0130 and U+212A, whose lower case is ASCII) — so both read the same tokens from
any Unicode text. The export is deterministic: the same fitted pipeline always gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline

from mlplatform.core.data.text import TOKEN_PATTERN, lowercase_for_tokens
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import ScoringRules
from mlplatform.core.scoring.model import (
    GRAPH_KIND,
    INPUT_NAME,
    LABEL_OUTPUT,
    NORM_OUTPUT,
    PROBABILITIES_OUTPUT,
    TERM_COLUMNS_OUTPUT,
    TERM_CONTRIBUTIONS_OUTPUT,
    TERM_ROWS_OUTPUT,
    ScoringModel,
)

PRODUCER_NAME = "mlplatform"
EXPORT_LOCALE = "C.UTF-8"
OPSETS = {"": 20, "ai.onnx.ml": 4, "com.microsoft": 1}
IR_VERSION = 9
_PAD = " "  # the Tokenizer's padding: never a token, since tokens hold no space
_UNKNOWN = -(1 << 62)  # column of an n-gram outside the vocabulary: every key built on it stays negative
_INT64_MAX = np.iinfo(np.int64).max
_PROBABILITY_LOSSES = ("log_loss", "modified_huber")


class ExportError(UserError, ValueError):
    """A pipeline cannot be exported to the platform's ONNX contract."""


def to_onnx(pipeline: Pipeline, classes: Sequence[str]) -> bytes:
    """Export a fitted TF-IDF + linear classifier pipeline; probability columns in `classes` order."""
    vectorizer, classifier = _exportable_parts(pipeline, classes)
    model = _TextGraph(vectorizer, classifier, tuple(classes)).build()
    return model.SerializeToString(deterministic=True)


def _exportable_parts(pipeline: Pipeline, classes: Sequence[str]) -> tuple[TfidfVectorizer, Any]:
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise ExportError(
            f"expected a Pipeline of a TfidfVectorizer and a classifier, got {_describe(pipeline)}"
        )
    vectorizer, classifier = pipeline.steps[0][1], pipeline.steps[1][1]
    if not isinstance(vectorizer, TfidfVectorizer):
        raise ExportError(f"expected a TfidfVectorizer first, got {_describe(pipeline)}")
    if vectorizer.analyzer != "word" or vectorizer.token_pattern != TOKEN_PATTERN:
        raise ExportError(f"the vectorizer must read word tokens of the pattern {TOKEN_PATTERN!r}")
    if vectorizer.preprocessor is not lowercase_for_tokens or vectorizer.tokenizer is not None:
        raise ExportError(
            "the vectorizer must use the platform's preprocessor (lowercase_for_tokens) and no tokenizer"
        )
    if vectorizer.norm not in ("l1", "l2", None):
        raise ExportError(f"unsupported norm {vectorizer.norm!r}")
    if isinstance(classifier, SGDClassifier) and classifier.loss not in _PROBABILITY_LOSSES:
        raise ExportError(
            f"SGDClassifier loss {classifier.loss!r} has no probabilities; use one of {_PROBABILITY_LOSSES}"
        )
    if not isinstance(classifier, LogisticRegression | SGDClassifier):
        raise ExportError(f"unsupported classifier {type(classifier).__name__}")
    fitted = [str(label) for label in classifier.classes_]
    if sorted(fitted) != sorted(classes) or len(set(classes)) != len(classes):
        raise ExportError(f"the classifier's classes {fitted} are not the declared classes {list(classes)}")
    return vectorizer, classifier


def _describe(pipeline: object) -> str:
    if isinstance(pipeline, Pipeline):
        return "Pipeline(" + ", ".join(type(step).__name__ for _, step in pipeline.steps) + ")"
    return type(pipeline).__name__


def _class_scores(classifier: Any, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(weights [V, C], intercepts [C]) of the class scores, columns in `classes` order.

    A binary model has one decision function d; its two class scores are -d/2 and d/2, so that their
    softmax is scikit-learn's sigmoid and their difference is d (label: the second class iff d > 0).
    """
    coef = np.asarray(classifier.coef_, dtype=np.float64)
    intercept = np.asarray(classifier.intercept_, dtype=np.float64)
    if coef.shape[0] == 1:
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    order = [[str(label) for label in classifier.classes_].index(label) for label in classes]
    return coef[order].T.copy(), intercept[order].copy()


class _Nodes:
    """Appends nodes and de-duplicated constants to a graph under construction, with stable names."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._constants: dict[tuple[Any, ...], str] = {}

    def const(self, value: Any, dtype: Any = None) -> str:
        array = np.asarray(value, dtype=dtype)
        key = (
            array.dtype.str,
            array.shape,
            array.tobytes() if array.dtype != object else tuple(array.ravel()),
        )
        if key not in self._constants:
            name = f"const_{len(self._constants)}"
            self.initializers.append(numpy_helper.from_array(array, name))
            self._constants[key] = name
        return self._constants[key]

    def i64(self, value: Any) -> str:
        return self.const(value, np.int64)

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        name: str | None = None,
        domain: str = "",
        **attributes: Any,
    ) -> str:
        output = name or f"{op_type.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], domain=domain, **attributes))
        return output

    def first_output_of(
        self, op_type: str, inputs: Sequence[str], name: str, outputs: int, **attributes: Any
    ) -> str:
        names = [name, *(f"{name}_{k}" for k in range(1, outputs))]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attributes))
        return name

    def drop_last(self, tensor: str, count: int, axis: int = -1) -> str:
        return self.op("Slice", [tensor, self.i64([0]), self.i64([-count]), self.i64([axis])])

    def drop_first(self, tensor: str, count: int, axis: int = -1) -> str:
        return self.op("Slice", [tensor, self.i64([count]), self.i64([_INT64_MAX]), self.i64([axis])])

    def zeros(self, shape: str, dtype: int) -> str:
        return self.op("ConstantOfShape", [shape], value=helper.make_tensor("zero", dtype, [1], [0]))


class _TextGraph:
    """The graph of one fitted vectorizer + classifier (see the module docstring for its shape)."""

    def __init__(self, vectorizer: TfidfVectorizer, classifier: Any, classes: tuple[str, ...]) -> None:
        self.vectorizer = vectorizer
        self.classifier = classifier
        self.classes = classes
        self.terms = sorted(vectorizer.vocabulary_, key=vectorizer.vocabulary_.__getitem__)
        self.size = len(self.terms)
        words = sorted({word for term in self.terms for word in term.split(" ")})
        self.word_ids = {word: position + 1 for position, word in enumerate(words)}
        self.base = len(words) + 1  # word ids are the digits of an n-gram key in this base
        longest = max(len(term.split(" ")) for term in self.terms)
        if self.base**longest >= 2**62:
            raise ExportError(f"{longest}-grams over {len(words)} words overflow 64-bit n-gram keys")
        self.g = _Nodes()

    def build(self) -> onnx.ModelProto:
        g = self.g
        lowered = g.op(
            "StringNormalizer", [INPUT_NAME], "lowered", case_change_action="LOWER", locale=EXPORT_LOCALE
        )
        tokens = g.op(
            "Tokenizer",
            [lowered],
            "tokens",
            domain="com.microsoft",
            mark=0,
            mincharnum=1,
            pad_value=_PAD,
            tokenexp=TOKEN_PATTERN,
        )
        shape = g.op("Shape", [tokens], "tokens_shape")
        rows = g.op("Slice", [shape, g.i64([0]), g.i64([1])], "rows")
        ids = self._word_ids(tokens, shape, rows)
        keys = self._term_keys(ids, rows)
        term_rows, term_columns, counts = self._distinct_terms(keys)
        weights = self._term_weights(term_columns, counts)
        norm = self._row_norms(term_rows, weights, rows)
        class_weights, intercepts = _class_scores(self.classifier, self.classes)
        unit = weights if norm is None else g.op("Div", [weights, g.op("Gather", [norm, term_rows], axis=0)])
        contributions = g.op(
            "Mul",
            [
                g.op("Gather", [g.const(class_weights), term_columns], axis=0),
                g.op("Unsqueeze", [unit, g.i64([1])]),
            ],
            TERM_CONTRIBUTIONS_OUTPUT,
        )
        index = g.op("Expand", [g.op("Unsqueeze", [term_rows, g.i64([1])]), g.op("Shape", [contributions])])
        totals = g.zeros(g.op("Concat", [rows, g.i64([len(self.classes)])], axis=0), TensorProto.DOUBLE)
        summed = g.op("ScatterElements", [totals, index, contributions], axis=0, reduction="add")
        scores = g.op("Add", [summed, g.const(intercepts)], "scores")
        g.op("Cast", [self._probabilities(scores)], PROBABILITIES_OUTPUT, to=TensorProto.FLOAT)
        argmax = g.op("ArgMax", [scores], axis=1, keepdims=0)
        g.op("Gather", [g.const(np.array(self.classes, dtype=object)), argmax], LABEL_OUTPUT, axis=0)
        if norm is None:  # the contract's text_norm even when the model does not normalise: the L1 mass
            norm = g.op(
                "ScatterElements",
                [g.zeros(rows, TensorProto.DOUBLE), term_rows, weights],
                axis=0,
                reduction="add",
            )
        g.op("Identity", [norm], NORM_OUTPUT)
        g.op("Identity", [term_rows], TERM_ROWS_OUTPUT)
        g.op("Identity", [term_columns], TERM_COLUMNS_OUTPUT)
        return self._model()

    def _word_ids(self, tokens: str, shape: str, rows: str) -> str:
        """[N, T] word ids: 1.. for words of the vocabulary's n-grams, 0 for any other token and the padding.

        Stop words are dropped before n-grams are formed (as scikit-learn does): they map to -1, and
        each row's remaining ids move left to close the gaps (the dropped ones land in a spare column
        that is cut off)."""
        g = self.g
        stop_words = sorted(self.vectorizer.get_stop_words() or ())
        keys = [*self.word_ids, *stop_words]
        values = [*self.word_ids.values(), *([-1] * len(stop_words))]
        ids = g.op(
            "LabelEncoder",
            [tokens],
            "word_ids",
            domain="ai.onnx.ml",
            keys_strings=keys,
            values_int64s=values,
            default_int64=0,
        )
        if not stop_words:
            return ids
        kept = g.op("Not", [g.op("Equal", [ids, g.i64(-1)])])
        position = g.op(
            "Sub", [g.op("CumSum", [g.op("Cast", [kept], to=TensorProto.INT64), g.i64(1)]), g.i64(1)]
        )
        width = g.op("Gather", [shape, g.i64(1)], axis=0)
        target = g.op("Where", [kept, position, width])
        spare = g.op(
            "Concat", [rows, g.op("Add", [g.op("Reshape", [width, g.i64([1])]), g.i64([1])])], axis=0
        )
        packed = g.op("ScatterElements", [g.zeros(spare, TensorProto.INT64), target, ids], axis=1)
        return g.drop_last(packed, 1, axis=1)

    def _term_keys(self, ids: str, rows: str) -> str:
        """[K] row * vocabulary size + column of every vocabulary n-gram occurrence (row-major)."""
        g = self.g
        tables: dict[int, tuple[list[int], list[int]]] = {}
        for column, term in enumerate(self.terms):
            key = 0
            for word in term.split(" "):
                key = key * self.base + self.word_ids[word]
            keys, columns = tables.setdefault(len(term.split(" ")), ([], []))
            keys.append(key)
            columns.append(column)
        row_index = g.op("Range", [g.i64(0), g.op("Squeeze", [rows]), g.i64(1)])
        offsets = g.op("Unsqueeze", [g.op("Mul", [row_index, g.i64(self.size)]), g.i64([1])], "row_offsets")
        per_length = []
        for length in sorted(tables):
            keys, columns = tables[length]
            if length == 1:
                lookup = np.full(self.base, _UNKNOWN, dtype=np.int64)
                lookup[np.asarray(keys)] = columns
                found = g.op("Gather", [g.const(lookup), ids], axis=0)
            else:
                key = g.drop_last(ids, length - 1)
                for k in range(1, length):
                    part = (
                        g.drop_first(ids, k)
                        if k == length - 1
                        else g.op("Slice", [ids, g.i64([k]), g.i64([k - length + 1]), g.i64([-1])])
                    )
                    key = g.op("Add", [g.op("Mul", [key, g.i64(self.base)]), part])
                found = g.op(
                    "LabelEncoder",
                    [key],
                    domain="ai.onnx.ml",
                    keys_int64s=keys,
                    values_int64s=columns,
                    default_int64=_UNKNOWN,
                )
            per_length.append(g.op("Reshape", [g.op("Add", [found, offsets]), g.i64([-1])]))
        every = per_length[0] if len(per_length) == 1 else g.op("Concat", per_length, axis=0)
        return g.op("Compress", [every, g.op("GreaterOrEqual", [every, g.i64(0)])], "term_keys", axis=0)

    def _distinct_terms(self, keys: str) -> tuple[str, str, str]:
        """(rows, columns, counts as float64) of each distinct key: sorted (TopK), then run-length coded.
        (ONNX's Unique does the same several times slower.)"""
        g = self.g
        ordered = g.first_output_of(
            "TopK", [keys, g.op("Shape", [keys])], "sorted_keys", 2, largest=0, sorted=1
        )
        previous = g.op("Concat", [g.i64([-1]), g.drop_last(ordered, 1)], axis=0)
        starts = g.op(
            "Reshape", [g.op("NonZero", [g.op("Not", [g.op("Equal", [ordered, previous])])]), g.i64([-1])]
        )
        ends = g.op("Concat", [g.drop_first(starts, 1), g.op("Shape", [ordered])], axis=0)
        counts = g.op("Cast", [g.op("Sub", [ends, starts])], "term_counts", to=TensorProto.DOUBLE)
        distinct = g.op("Gather", [ordered, starts], axis=0)
        rows = g.op("Div", [distinct, g.i64(self.size)], "rows_of_terms")
        columns = g.op("Mod", [distinct, g.i64(self.size)], "columns_of_terms")
        return rows, columns, counts

    def _term_weights(self, columns: str, counts: str) -> str:
        g = self.g
        vectorizer = self.vectorizer
        if vectorizer.binary:
            frequency = g.op("Div", [counts, counts])
        elif vectorizer.sublinear_tf:
            frequency = g.op("Add", [g.op("Log", [counts]), g.const(1.0, np.float64)])
        else:
            frequency = counts
        if not vectorizer.use_idf:
            return frequency
        idf = np.asarray(vectorizer.idf_, dtype=np.float64)
        return g.op("Mul", [frequency, g.op("Gather", [g.const(idf), columns], axis=0)], "term_weights")

    def _row_norms(self, term_rows: str, weights: str, rows: str) -> str | None:
        g = self.g
        norm = self.vectorizer.norm
        if norm is None:
            return None
        mass = g.op("Mul", [weights, weights]) if norm == "l2" else weights
        total = g.op(
            "ScatterElements", [g.zeros(rows, TensorProto.DOUBLE), term_rows, mass], axis=0, reduction="add"
        )
        return g.op("Sqrt", [total]) if norm == "l2" else total

    def _probabilities(self, scores: str) -> str:
        """scikit-learn's predict_proba from the class scores."""
        g = self.g
        classifier = self.classifier
        binary = len(self.classes) == 2
        if isinstance(classifier, LogisticRegression) or (binary and classifier.loss == "log_loss"):
            return g.op("Softmax", [scores], axis=1)
        if classifier.loss == "log_loss":  # one-vs-rest: each class's sigmoid, rescaled to sum to one
            sigmoid = g.op("Sigmoid", [scores])
            return g.op("Div", [sigmoid, g.op("ReduceSum", [sigmoid, g.i64([1])], keepdims=1)])
        if binary:  # modified_huber, two classes: p = (clip(d, -1, 1) + 1) / 2 for the second class
            second = g.op("Sub", [g.drop_first(scores, 1, axis=1), g.drop_last(scores, 1, axis=1)])
            p = g.op(
                "Div",
                [
                    g.op(
                        "Add",
                        [
                            g.op("Clip", [second, g.const(-1.0, np.float64), g.const(1.0, np.float64)]),
                            g.const(1.0, np.float64),
                        ],
                    ),
                    g.const(2.0, np.float64),
                ],
            )
            return g.op("Concat", [g.op("Sub", [g.const(1.0, np.float64), p]), p], axis=1)
        # modified_huber, several classes: the clipped scores rescaled to sum to one; all zero -> uniform
        clipped = g.op(
            "Div",
            [
                g.op(
                    "Add",
                    [
                        g.op("Clip", [scores, g.const(-1.0, np.float64), g.const(1.0, np.float64)]),
                        g.const(1.0, np.float64),
                    ],
                ),
                g.const(2.0, np.float64),
            ],
        )
        total = g.op("ReduceSum", [clipped, g.i64([1])], keepdims=1)
        empty = g.op("Equal", [total, g.const(0.0, np.float64)])
        uniform = g.const(1.0 / len(self.classes), np.float64)
        safe_total = g.op("Where", [empty, g.const(1.0, np.float64), total])
        return g.op("Where", [empty, uniform, g.op("Div", [clipped, safe_total])])

    def _model(self) -> onnx.ModelProto:
        g = self.g
        n_classes = len(self.classes)
        outputs = [
            helper.make_tensor_value_info(LABEL_OUTPUT, TensorProto.STRING, [None]),
            helper.make_tensor_value_info(PROBABILITIES_OUTPUT, TensorProto.FLOAT, [None, n_classes]),
            helper.make_tensor_value_info(NORM_OUTPUT, TensorProto.DOUBLE, [None]),
            helper.make_tensor_value_info(TERM_ROWS_OUTPUT, TensorProto.INT64, [None]),
            helper.make_tensor_value_info(TERM_COLUMNS_OUTPUT, TensorProto.INT64, [None]),
            helper.make_tensor_value_info(TERM_CONTRIBUTIONS_OUTPUT, TensorProto.DOUBLE, [None, n_classes]),
        ]
        graph = helper.make_graph(
            g.nodes,
            "sentiment",
            [helper.make_tensor_value_info(INPUT_NAME, TensorProto.STRING, [None])],
            outputs,
            initializer=g.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid(domain, version) for domain, version in OPSETS.items()],
            producer_name=PRODUCER_NAME,
            producer_version="",
            model_version=1,
        )
        model.ir_version = IR_VERSION
        for key, value in (
            ("graph", GRAPH_KIND),
            ("classes", json.dumps(list(self.classes))),
            ("token_pattern", TOKEN_PATTERN),
            ("vocabulary", "\n".join(self.terms)),
        ):
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        return model


@dataclass(frozen=True)
class ParityReport:
    """How ONNX Runtime's answers compare with scikit-learn's on the same texts."""

    rows: int
    label_mismatches: int
    max_abs_prob_diff: float
    prob_tolerance: float
    passed: bool
    description: str


def parity_report(
    expected_labels: Sequence[str],
    expected_probabilities: np.ndarray,
    labels: Sequence[str],
    probabilities: np.ndarray,
    prob_tolerance: float,
) -> ParityReport:
    """Compare reference answers (scikit-learn's) with the ONNX model's on the same rows."""
    expected = np.asarray(expected_probabilities, dtype=np.float64)
    actual = np.asarray(probabilities, dtype=np.float64)
    if expected.shape != actual.shape:
        raise ValueError(
            f"reference probabilities have shape {expected.shape}, the ONNX model gives {actual.shape}"
        )
    rows = len(labels)
    mismatches = int(np.sum(np.asarray(labels, dtype=object) != np.asarray(expected_labels, dtype=object)))
    max_diff = float(np.max(np.abs(actual - expected))) if rows else 0.0
    passed = rows > 0 and mismatches == 0 and max_diff <= prob_tolerance
    description = (
        f"{'parity' if passed else 'NO parity'} on {rows} rows: {mismatches} label mismatches, "
        f"max |prob diff| {max_diff:.2e} (tolerance {prob_tolerance:.0e})"
    )
    return ParityReport(rows, mismatches, max_diff, prob_tolerance, passed, description)


def check_parity(
    pipeline: Pipeline,
    onnx_bytes: bytes,
    texts: Sequence[str],
    classes: Sequence[str],
    prob_tolerance: float,
    rules: ScoringRules,
) -> ParityReport:
    """ONNX Runtime on the exported bytes against scikit-learn on the same texts: the same label on every
    row, probabilities within `prob_tolerance`."""
    if len(texts) == 0:
        raise ValueError("parity needs at least one text")
    expected_labels, expected_probabilities = sklearn_answers(pipeline, texts, classes)
    prediction = ScoringModel.from_bytes(onnx_bytes, rules, "the exported candidate").predict(list(texts))
    return parity_report(
        expected_labels, expected_probabilities, prediction.labels, prediction.probabilities, prob_tolerance
    )


def sklearn_answers(
    pipeline: Pipeline, texts: Sequence[str], classes: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's labels and probabilities (columns in `classes` order) for texts."""
    fitted = [str(label) for label in pipeline.classes_]
    order = [fitted.index(label) for label in classes]
    probabilities = np.asarray(pipeline.predict_proba(list(texts)), dtype=np.float64)[:, order]
    labels = np.asarray([str(label) for label in pipeline.predict(list(texts))], dtype=object)
    return labels, probabilities
