"""ONNX Runtime scoring: a registered model file, its sessions, and what one call of `predict` answers.

ONNX Runtime runs every prediction, batch and real time, on the exact bytes that were registered; this
module only loads them, sizes the runs and reads the outputs. Two graph generations load:

- the platform's sparse text graph (`GRAPH_KIND` in the metadata, see core/training/export.py): input
  `text` [N]; outputs the labels, the probabilities, each text's term norm (0: the text holds no
  n-gram of the vocabulary, `no_tokens`) and each n-gram's contribution to each class score, which
  make the explanation of a prediction;
- models registered before it (skl2onnx's graph, input [N, 1], labels and probabilities only): they
  score as they always did; `no_tokens` is then "no token at all" (their graph does not report what it
  matched) and they have no explanations (`ExplanationUnavailable`).

Runs: ONNX Runtime's Tokenizer pads every text of a run to the longest one's token count, so a run is
bounded by rows × longest text (`[scoring] run_max_chars`) as well as by `run_max_rows`: one 1 MB text
among short reviews runs on its own instead of padding twenty thousand rows to its length. Several
runs of one call execute side by side on a thread pool (`[scoring] threads`; ONNX Runtime releases
the GIL), each session run on one intra-op thread: single-review latency stays minimal and a batch
uses every core.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import numpy as np
import onnx
import onnxruntime

from mlplatform.core.data.text import TOKEN_PATTERN
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.fsio import sha256_bytes
from mlplatform.core.platform.settings import ScoringRules

# The graph contract (written by core/training/export.py, read here).
GRAPH_KIND = "mlplatform-sparse-text-1"
INPUT_NAME = "text"
LABEL_OUTPUT = "label"
PROBABILITIES_OUTPUT = "probabilities"
NORM_OUTPUT = "text_norm"
TERM_ROWS_OUTPUT = "term_rows"
TERM_COLUMNS_OUTPUT = "term_columns"
TERM_CONTRIBUTIONS_OUTPUT = "term_contributions"
PROBABILITY_PREFIX = "p_"


def probability_columns(classes: tuple[str, ...]) -> tuple[str, ...]:
    """The name of each class's probability column in predictions and the capture: `p_<class>`."""
    return tuple(f"{PROBABILITY_PREFIX}{label}" for label in classes)


class ScoringError(UserError, RuntimeError):
    """A model cannot be loaded or run (one-line message)."""


class ModelIntegrityError(ScoringError):
    """A model file's bytes are not the registered ones (sha256 mismatch)."""


class ExplanationUnavailable(ScoringError):
    """The model's graph does not report n-gram contributions (registered before explanations)."""


class GraphKind(StrEnum):
    SPARSE_TEXT = "sparse-text"
    LEGACY = "skl2onnx"  # registered before the sparse text graph


@dataclass(frozen=True)
class Contribution:
    """One n-gram's exact contribution to the predicted class's score."""

    ngram: str
    weight: float


@dataclass(frozen=True)
class Prediction:
    """What the model says about N texts, row for row."""

    labels: np.ndarray  # str [N]
    probabilities: np.ndarray  # float32 [N, C], in the model's class order
    no_tokens: np.ndarray  # bool [N]: the text holds nothing the model reads
    explanations: tuple[tuple[Contribution, ...], ...] | None = None  # top-k per row when asked for

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class _RunOutput:
    labels: np.ndarray
    probabilities: np.ndarray
    norms: np.ndarray | None
    term_rows: np.ndarray | None
    term_columns: np.ndarray | None
    contributions: np.ndarray | None


class ScoringModel:
    """One loaded model: an ONNX Runtime session over the registered bytes, thread-safe."""

    def __init__(self, model: onnx.ModelProto, onnx_bytes: bytes, rules: ScoringRules, source: str) -> None:
        self.rules = rules
        self.source = source
        metadata = {prop.key: prop.value for prop in model.metadata_props}
        self.kind = GraphKind.SPARSE_TEXT if metadata.get("graph") == GRAPH_KIND else GraphKind.LEGACY
        self.classes = _classes(model, metadata, source)
        self._vocabulary = (
            np.asarray(metadata["vocabulary"].split("\n"), dtype=object)
            if self.kind is GraphKind.SPARSE_TEXT
            else None
        )
        self._session = _session(onnx_bytes, source)
        inputs = self._session.get_inputs()
        if [value.name for value in inputs] != [INPUT_NAME] or inputs[0].type != "tensor(string)":
            raise ScoringError(f"model {source} does not take one string input '{INPUT_NAME}'")
        outputs = {value.name for value in self._session.get_outputs()}
        wanted = [LABEL_OUTPUT, PROBABILITIES_OUTPUT]
        if self.kind is GraphKind.SPARSE_TEXT:
            wanted += [NORM_OUTPUT]
        explaining = [TERM_ROWS_OUTPUT, TERM_COLUMNS_OUTPUT, TERM_CONTRIBUTIONS_OUTPUT]
        if self.kind is GraphKind.SPARSE_TEXT and not set(explaining) <= outputs:
            raise ScoringError(f"model {source} lacks the outputs {sorted(set(explaining) - outputs)}")
        if not set(wanted) <= outputs:
            raise ScoringError(f"model {source} lacks the outputs {sorted(set(wanted) - outputs)}")
        # Only what a run needs is fetched: ONNX Runtime copies every output asked for, and a plain
        # prediction needs none of the per-term arrays the explanation is made of.
        self._outputs = wanted
        self._explaining_outputs = wanted + explaining
        self._column_input = len(inputs[0].shape) == 2  # skl2onnx's [N, 1]
        self._token = re.compile(TOKEN_PATTERN)
        self._pool: ThreadPoolExecutor | None = None

    @classmethod
    def from_bytes(cls, onnx_bytes: bytes, rules: ScoringRules, source: str = "model") -> ScoringModel:
        try:
            model = onnx.load_from_string(onnx_bytes)
        except Exception as exc:  # protobuf raises its own DecodeError
            raise ScoringError(f"{source} is not an ONNX model: {_first_line(exc)}") from exc
        return cls(model, onnx_bytes, rules, source)

    @property
    def explains(self) -> bool:
        return self._vocabulary is not None

    def require_explanations(self) -> None:
        """Raise ExplanationUnavailable (with the reason) unless the graph reports n-gram contributions."""
        if not self.explains:
            raise ExplanationUnavailable(
                f"model {self.source} was exported before explanations (skl2onnx graph): retrain it to explain"
            )

    def predict(self, texts: Sequence[str], explain_top_k: int = 0) -> Prediction:
        """Labels, probabilities and `no_tokens` of prepared model texts (core/data/text.py); with
        `explain_top_k`, each row's strongest n-grams for its predicted class too."""
        if explain_top_k:
            self.require_explanations()
        if len(texts) == 0:
            empty = np.zeros((0, len(self.classes)), dtype=np.float32)
            return Prediction(
                np.array([], dtype=object), empty, np.zeros(0, dtype=bool), () if explain_top_k else None
            )
        explain = explain_top_k > 0
        runs = [(0, len(texts))] if len(texts) == 1 else list(self._runs(texts))
        if len(runs) == 1:
            parts = [self._run(texts, explain)]
        else:
            parts = list(
                self._executor().map(lambda bounds: self._run(texts[bounds[0] : bounds[1]], explain), runs)
            )
        if len(parts) == 1:
            labels, probabilities, norms = parts[0].labels, parts[0].probabilities, parts[0].norms
        else:
            labels = np.concatenate([part.labels for part in parts])
            probabilities = np.concatenate([part.probabilities for part in parts])
            norms = None if self.kind is GraphKind.LEGACY else np.concatenate([part.norms for part in parts])
        if norms is not None:
            no_tokens = norms == 0.0
        else:
            no_tokens = np.array([self._token.search(text) is None for text in texts], dtype=bool)
        explanations = None
        if explain_top_k:
            explanations = tuple(row for part in parts for row in self._explain(part, explain_top_k))
        return Prediction(labels, probabilities, no_tokens, explanations)

    def _runs(self, texts: Sequence[str]):
        """(start, end) bounds of the runs: rows × longest text within budget, rows within the cap."""
        if self.kind is GraphKind.LEGACY:  # its TF-IDF output is dense: rows x vocabulary
            step = self.rules.legacy_run_rows
            yield from ((start, min(start + step, len(texts))) for start in range(0, len(texts), step))
            return
        max_rows = self.rules.run_max_rows
        if len(texts) > 1 and self.rules.parallel_runs > 1:  # at least one run per thread
            max_rows = max(1, min(max_rows, -(-len(texts) // self.rules.parallel_runs)))
        start, longest = 0, 0
        for index, text in enumerate(texts):
            length = len(text) + 1
            rows = index - start
            if rows and (rows >= max_rows or (rows + 1) * max(longest, length) > self.rules.run_max_chars):
                yield start, index
                start, longest = index, 0
            longest = max(longest, length)
        yield start, len(texts)

    def _run(self, texts: Sequence[str], explain: bool = False) -> _RunOutput:
        feed = np.asarray(texts, dtype=object)
        if self._column_input:
            feed = feed.reshape(-1, 1)
        try:
            values = self._session.run(
                self._explaining_outputs if explain else self._outputs, {INPUT_NAME: feed}
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ScoringError(f"onnxruntime failed on {self.source}: {_first_line(exc)}") from exc
        labels = np.asarray(values[0], dtype=object).reshape(-1)
        probabilities = np.asarray(values[1], dtype=np.float32)
        if self.kind is GraphKind.LEGACY:
            return _RunOutput(labels, probabilities, None, None, None, None)
        if not explain:
            return _RunOutput(labels, probabilities, values[2], None, None, None)
        return _RunOutput(labels, probabilities, *values[2:])

    def _explain(self, part: _RunOutput, top_k: int) -> list[tuple[Contribution, ...]]:
        """Each row's `top_k` n-grams by contribution to its predicted class, strongest first."""
        assert part.term_rows is not None and part.contributions is not None and self._vocabulary is not None
        position = {label: index for index, label in enumerate(self.classes)}
        predicted = np.fromiter(
            (position[label] for label in part.labels), dtype=np.int64, count=len(part.labels)
        )
        weights = part.contributions[np.arange(len(part.term_rows)), predicted[part.term_rows]]
        order = np.lexsort((-weights, part.term_rows))  # by row, then strongest first
        rows, columns, weights = part.term_rows[order], part.term_columns[order], weights[order]
        starts = np.searchsorted(rows, np.arange(len(part.labels)), side="left")
        ends = np.searchsorted(rows, np.arange(len(part.labels)), side="right")
        explained = []
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            stop = min(end, start + top_k)
            explained.append(
                tuple(
                    Contribution(str(term), float(weight))
                    for term, weight in zip(
                        self._vocabulary[columns[start:stop]], weights[start:stop].tolist(), strict=True
                    )
                )
            )
        return explained

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.rules.parallel_runs, thread_name_prefix="onnxruntime"
            )
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _session(onnx_bytes: bytes, source: str) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    # One thread per run: single-review latency is what we measure; batches run several runs at once.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    try:
        return onnxruntime.InferenceSession(
            onnx_bytes, sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ScoringError(f"onnxruntime cannot load {source}: {_first_line(exc)}") from exc


def _classes(model: onnx.ModelProto, metadata: dict[str, str], source: str) -> tuple[str, ...]:
    """The probability columns' classes: the metadata of the sparse graph; skl2onnx's classifier node."""
    if "classes" in metadata:
        return tuple(json.loads(metadata["classes"]))
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings":
                return tuple(value.decode() for value in attribute.strings)
    raise ScoringError(f"model {source} does not name its classes")


def model_classes(path: Path) -> tuple[str, ...]:
    """The classes a model file answers, in its probability columns' order, read from the graph alone
    (no session is built): what a rollout compares between candidate and production."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises its own decode errors
        raise ScoringError(f"cannot read model file {path}: {_first_line(exc)}") from exc
    return _classes(model, {prop.key: prop.value for prop in model.metadata_props}, str(path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_model(path: Path, expected_sha256: str, rules: ScoringRules) -> ScoringModel:
    """Open a model file whose bytes must hash to `expected_sha256` (IntegrityError otherwise)."""
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise ScoringError(f"cannot read model file {path}: {exc.strerror or exc}") from exc
    actual = sha256_bytes(content)
    if actual != expected_sha256:
        raise ModelIntegrityError(f"model file: sha256 of {path} is {actual}, expected {expected_sha256}")
    return ScoringModel.from_bytes(content, rules, str(path))
