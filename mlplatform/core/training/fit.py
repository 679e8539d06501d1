"""Candidate model search: config, deterministic fitting, ONNX export with parity, and selection.

Every candidate is a TF-IDF word n-gram vectorizer + a linear classifier for the classes of the dataset
contract (2 to 10, in the contract's order: the order of the ONNX probability columns), fitted on the
train split and exported to ONNX right after fitting; the scikit-learn object is dropped once parity is
checked. The validation split only measures (it picks the candidate); the test split is never touched here.

Class offsets (added to the intercepts, so the model stays a plain linear model) are tuned by
cross-validation on the train split: the candidate is refitted on k stratified folds of the train rows,
each fold's held-out rows get decision scores from a model that never saw them, and the offsets are
the ones that maximise macro-F1 on those out-of-fold scores (`search_offsets`: a grid over every free
offset for up to three classes, coordinate ascent over the same grid beyond). They are kept only when
the search, judged on rows it did not tune on (each fold's rows, with offsets searched on the others'),
gains at least `[selection] min_offset_gain` macro-F1: on small or noisy data it usually does not, and
no offsets is then the honest choice. Tuning them on the validation rows that also choose the candidate
overfitted those rows: the validation figure then promised more than unseen data gave
(bench/model_quality.py measures both ways). Fold fits read pre-tokenised texts (the same n-grams the
vectorizer would read), so a fold costs its counting and its classifier fit only.

Logistic regression solves with newton-cg unless a grid names a solver: the same objective as lbfgs,
reached several times faster on these sparse matrices (the cross-validation's fits ride on the saving).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import polars as pl
import sklearn
from sklearn.base import clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline

from mlplatform.core.data.text import TOKEN_PATTERN, lowercase_for_tokens
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import ScoringRules, packaged_config_text
from mlplatform.core.scoring.model import GRAPH_KIND
from mlplatform.core.training.evaluation import classification_metrics, label_codes, macro_f1_from_codes
from mlplatform.core.training.export import ParityReport, check_parity, to_onnx

TRAINING_CONFIG_FILE = "training.toml"
SEARCH_SIZES = ("default", "wide")
VECTORIZER_KEYS = frozenset(
    {
        "ngram_range",
        "min_df",
        "max_df",
        "max_features",
        "binary",
        "norm",
        "use_idf",
        "smooth_idf",
        "sublinear_tf",
        "stop_words",
    }
)
# How text becomes tokens is fixed for every model (core/data/text.py), so that ONNX Runtime reads the
# same tokens as scikit-learn: these vectorizer keys would change it and are refused.
FORBIDDEN_KEYS = frozenset(
    {
        "analyzer",
        "strip_accents",
        "preprocessor",
        "tokenizer",
        "token_pattern",
        "lowercase",
        "vocabulary",
        "dtype",
    }
)
PROBABILITY_LOSSES = ("log_loss", "modified_huber")  # SGDClassifier losses with predict_proba
ESTIMATORS: Mapping[str, type] = {"logistic_regression": LogisticRegression, "sgd": SGDClassifier}
REQUIRED_COLUMNS = ("review_id", "text", "label", "split")


class TrainingConfigError(UserError, ValueError):
    """The training config (config/training.toml) is malformed."""


class TrainingDataError(UserError, ValueError):
    """The training frame does not satisfy the data contract."""


class NoEligibleCandidateError(UserError, RuntimeError):
    """No candidate passed ONNX parity, so none may be selected."""


@dataclass(frozen=True)
class SelectionConfig:
    metric: str
    tune_class_offsets: bool
    offset_folds: int
    min_offset_gain: float
    offset_range: float
    offset_step: float
    parity_tolerance: float

    def __post_init__(self) -> None:
        if self.offset_folds < 2:
            raise TrainingConfigError(f"[selection] offset_folds must be at least 2, got {self.offset_folds}")
        if self.min_offset_gain < 0:
            raise TrainingConfigError(f"[selection] min_offset_gain must be >= 0, got {self.min_offset_gain}")
        if self.offset_step <= 0 or self.offset_range < 0:
            raise TrainingConfigError("[selection] offset_step must be > 0 and offset_range >= 0")


@dataclass(frozen=True)
class FamilyConfig:
    name: str
    estimator: str
    grids: Mapping[str, Mapping[str, list[Any]]]


@dataclass(frozen=True)
class TrainingConfig:
    """The model search: families, their grids per search size, the seed and the selection settings."""

    seed: int
    search_size: str
    selection: SelectionConfig
    families: tuple[FamilyConfig, ...]
    raw: Mapping[str, Any] = field(repr=False)

    @classmethod
    def from_toml(cls, text: str) -> TrainingConfig:
        """Parse and validate a training config written in TOML."""
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TrainingConfigError(f"training config is not valid TOML: {exc}") from exc
        return cls.from_mapping(raw)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> TrainingConfig:
        """Build a config from already-parsed TOML data."""
        search_size = _require(raw, "search", "size")
        if search_size not in SEARCH_SIZES:
            raise TrainingConfigError(f"[search] size must be one of {SEARCH_SIZES}, got {search_size!r}")
        selection = raw.get("selection") or {}
        if selection.get("metric", "macro_f1") != "macro_f1":
            raise TrainingConfigError("[selection] metric: only 'macro_f1' is supported")
        families = tuple(
            _parse_family(name, spec) for name, spec in sorted((raw.get("families") or {}).items())
        )
        if not families:
            raise TrainingConfigError("training config declares no [families.*]")
        seed = raw.get("seed")
        if not isinstance(seed, int):
            raise TrainingConfigError(f"'seed' must be an integer, got {seed!r}")
        return cls(
            seed=seed,
            search_size=search_size,
            selection=SelectionConfig(
                metric="macro_f1",
                tune_class_offsets=bool(_require(raw, "selection", "tune_class_offsets")),
                offset_folds=int(_require(raw, "selection", "offset_folds")),
                min_offset_gain=float(_require(raw, "selection", "min_offset_gain")),
                offset_range=float(_require(raw, "selection", "offset_range")),
                offset_step=float(_require(raw, "selection", "offset_step")),
                parity_tolerance=float(_require(raw, "selection", "parity_tolerance")),
            ),
            families=families,
            raw=raw,
        )


def _require(raw: Mapping[str, Any], section: str, key: str) -> Any:
    try:
        return raw[section][key]
    except (KeyError, TypeError):
        raise TrainingConfigError(f"training config is missing [{section}] {key}") from None


def _parse_family(name: str, spec: Mapping[str, Any]) -> FamilyConfig:
    estimator = spec.get("estimator")
    if estimator not in ESTIMATORS:
        raise TrainingConfigError(
            f"family '{name}': estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}"
        )
    unknown = set(spec) - {"estimator", *SEARCH_SIZES}
    if unknown:
        raise TrainingConfigError(f"family '{name}' has unknown keys {sorted(unknown)}")
    grids = {size: spec[size] for size in SEARCH_SIZES if size in spec}
    if not grids:
        raise TrainingConfigError(f"family '{name}' has no grid for any search size {SEARCH_SIZES}")
    for size, grid in grids.items():
        for key, values in grid.items():
            if key in FORBIDDEN_KEYS:
                raise TrainingConfigError(
                    f"family '{name}' [{size}]: '{key}' is fixed by the platform (how text becomes tokens) "
                    "and is refused"
                )
            if not isinstance(values, list) or not values:
                raise TrainingConfigError(f"family '{name}' [{size}]: '{key}' must be a non-empty list")
            if estimator == "sgd" and key == "loss" and not set(values) <= set(PROBABILITY_LOSSES):
                raise TrainingConfigError(
                    f"family '{name}' [{size}]: loss must be one of {PROBABILITY_LOSSES} "
                    f"(the others give no probabilities), got {values}"
                )
    return FamilyConfig(name=name, estimator=estimator, grids=grids)


def load_training_config(path: Path | None = None) -> TrainingConfig:
    """The training config from `path`, or the packaged config/training.toml when no path is given."""
    if path is None:
        return TrainingConfig.from_toml(packaged_config_text(TRAINING_CONFIG_FILE))
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TrainingConfigError(f"cannot read training config {path}: {exc}") from exc
    return TrainingConfig.from_toml(text)


def config_fingerprint(config: TrainingConfig) -> str:
    """A stable hash of the config and of the library versions that shape the exported bytes."""
    payload = {
        "config": config.raw,
        "libraries": {
            "scikit-learn": sklearn.__version__,
            "export": GRAPH_KIND,
            "onnx": onnx.__version__,
        },
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class CandidateSpec:
    """One point of the search: a readable name, the family's estimator and its hyperparameters."""

    name: str
    family: str
    estimator: str
    params: Mapping[str, Any]


def candidate_specs(config: TrainingConfig) -> list[CandidateSpec]:
    """Every candidate of the configured search size, in a stable order with stable, unique names."""
    specs = []
    for family in config.families:
        if config.search_size not in family.grids:
            continue
        grid = family.grids[config.search_size]
        keys = sorted(grid)
        for values in itertools.product(*(grid[key] for key in keys)):
            params = dict(zip(keys, values, strict=True))
            specs.append(
                CandidateSpec(_candidate_name(family.name, params), family.name, family.estimator, params)
            )
    if not specs:
        raise TrainingConfigError(f"no family has a grid for search size '{config.search_size}'")
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise TrainingConfigError("training config produces duplicate candidates (a grid repeats a value)")
    return specs


def _candidate_name(family: str, params: Mapping[str, Any]) -> str:
    parts = [family]
    for key in sorted(params):
        value = params[key]
        text = "-".join(str(v) for v in value) if isinstance(value, list) else str(value)
        parts.append(f"{key}={text}")
    return ",".join(parts)


_PARAM_LABELS = {"C": "c", "min_df": "min", "ngram_range": "ngram", "use_idf": "idf"}
"""Short labels of numeric hyperparameters in asset names (others go by their own name)."""


def asset_names(specs: Sequence[CandidateSpec]) -> dict[str, str]:
    """A short asset name per candidate (by spec name): the family and the hyperparameters that vary
    within it, e.g. `logreg_c1_min2`; a family with one candidate is its family name alone.

    Names are deterministic for a search (a parameter that starts to vary joins the names of its
    family) and valid Dagster key parts; two candidates that would read the same (1 and 1.0) are told
    apart by a short hash of their hyperparameters.
    """
    by_family: dict[str, list[CandidateSpec]] = {}
    for spec in specs:
        by_family.setdefault(spec.family, []).append(spec)
    names: dict[str, str] = {}
    for family, members in by_family.items():
        varying = sorted(
            key
            for key in {key for spec in members for key in spec.params}
            if len({json.dumps(spec.params.get(key), sort_keys=True) for spec in members}) > 1
        )
        for spec in members:
            parts = [_name_part(key, spec.params.get(key)) for key in varying]
            names[spec.name] = "_".join([_identifier(family), *parts])
    counts: dict[str, int] = {}
    for name in names.values():
        counts[name] = counts.get(name, 0) + 1
    for spec in specs:
        if counts[names[spec.name]] > 1:
            digest = hashlib.sha256(json.dumps(spec.params, sort_keys=True).encode()).hexdigest()[:6]
            names[spec.name] = f"{names[spec.name]}_{digest}"
    return names


def _name_part(key: str, value: Any) -> str:
    if value == "none":  # class_weight = "none" reads as "noclassweight"
        return "no" + _identifier(key)
    if isinstance(value, str):
        return _identifier(value)
    if isinstance(value, list):
        text = "to".join(_number(v) for v in value)
    elif isinstance(value, bool) or value is None:
        text = str(value).lower()
    else:
        text = _number(value)
    return _PARAM_LABELS.get(key, _identifier(key)) + text


def _number(value: Any) -> str:
    """1.0 -> "1", 0.5 -> "0p5", 1e-05 -> "1em5": a number in the characters a key part may hold."""
    text = f"{value:g}" if isinstance(value, float) else str(value)
    mantissa, _, exponent = text.partition("e")
    text = mantissa + (f"e{int(exponent)}" if exponent else "")
    return text.replace(".", "p").replace("-", "m").replace("+", "")


def _identifier(text: str) -> str:
    return "".join(character for character in text.lower() if character.isalnum())


def build_pipeline(spec: CandidateSpec, seed: int) -> Pipeline:
    """The unfitted TF-IDF + classifier pipeline a spec describes."""
    vectorizer_params = {k: v for k, v in spec.params.items() if k in VECTORIZER_KEYS}
    if "ngram_range" in vectorizer_params:
        vectorizer_params["ngram_range"] = tuple(vectorizer_params["ngram_range"])
    classifier_params = {k: v for k, v in spec.params.items() if k not in VECTORIZER_KEYS}
    if classifier_params.get("class_weight") == "none":
        classifier_params["class_weight"] = None
    estimator_class = ESTIMATORS[spec.estimator]
    if spec.estimator == "logistic_regression":
        classifier_params.setdefault("max_iter", 3000)
        classifier_params.setdefault("solver", "newton-cg")
    else:
        classifier_params.setdefault("random_state", seed)
    try:
        vectorizer = TfidfVectorizer(
            token_pattern=TOKEN_PATTERN,
            lowercase=False,
            preprocessor=lowercase_for_tokens,
            **vectorizer_params,
        )
        classifier = estimator_class(**classifier_params)
    except TypeError as exc:
        raise TrainingConfigError(f"candidate '{spec.name}': {exc}") from exc
    return Pipeline([("tfidf", vectorizer), ("clf", classifier)])


def _train_rows(train_frame: pl.DataFrame, classes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Train texts and labels sorted by review_id (so upstream row order cannot matter); every class needed."""
    ordered = train_frame.sort("review_id")
    labels = ordered["label"].to_list()
    unknown = set(labels) - set(classes)
    if unknown:
        raise TrainingDataError(
            f"train split holds labels {sorted(unknown)} that are not the classes {list(classes)}"
        )
    missing = [label for label in classes if label not in set(labels)]
    if missing:
        raise TrainingDataError(f"train split lacks labels {missing}; every class is needed")
    return ordered["text"].to_list(), labels


def fit_candidate(
    spec: CandidateSpec, train_frame: pl.DataFrame, seed: int, classes: Sequence[str]
) -> Pipeline:
    """Fit a candidate on the train rows (sorted by review_id so upstream row order cannot matter)."""
    texts, labels = _train_rows(train_frame, classes)
    pipeline = clone(build_pipeline(spec, seed))
    pipeline.fit(texts, labels)
    return pipeline


# --- class offsets --------------------------------------------------------------------------------


def decision_scores(pipeline: Pipeline, texts: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """Class scores [rows, classes] in `classes` order (a binary model's one score d as -d/2, d/2, as
    the ONNX export writes it), so argmax is the predicted class."""
    scores = np.asarray(pipeline.decision_function(list(texts)), dtype=np.float64)
    fitted = [str(label) for label in pipeline.classes_]
    if scores.ndim == 1:
        scores = np.column_stack([-scores / 2, scores / 2])
    return scores[:, [fitted.index(label) for label in classes]]


def search_offsets(
    scores: np.ndarray, truth: np.ndarray, offset_range: float, offset_step: float
) -> tuple[np.ndarray, float]:
    """The per-class offsets (added to `scores`, columns in class order) that maximise macro-F1 of
    `truth` (class codes), and that macro-F1. The last class is the reference (offset 0); every other
    offset takes values of the grid -range..+range by step. Up to two free offsets the whole grid is
    searched; beyond, coordinate ascent over it (one offset at a time, until a sweep changes nothing).
    Ties go to the smallest total shift."""
    n_classes = scores.shape[1]
    steps = round(offset_range / offset_step)
    grid = np.round(np.arange(-steps, steps + 1) * offset_step, 10)

    def macro_f1(offsets: np.ndarray) -> float:
        return macro_f1_from_codes(truth, np.argmax(scores + offsets, axis=1), n_classes)

    def key(offsets: np.ndarray) -> tuple[float, float]:
        return round(macro_f1(offsets), 12), -float(np.abs(offsets).sum())

    free = n_classes - 1
    best = np.zeros(n_classes)
    best_key = key(best)
    if free <= 2:
        for values in itertools.product(grid, repeat=free):
            offsets = np.array([*values, 0.0])
            candidate_key = key(offsets)
            if candidate_key > best_key:
                best, best_key = offsets, candidate_key
        return best, macro_f1(best)
    for _sweep in range(100):
        changed = False
        for index in range(free):
            for value in grid:
                if value == best[index]:
                    continue
                offsets = best.copy()
                offsets[index] = value
                candidate_key = key(offsets)
                if candidate_key > best_key:
                    best, best_key, changed = offsets, candidate_key, True
        if not changed:
            break
    return best, macro_f1(best)


def apply_offsets(pipeline: Pipeline, offsets: Sequence[float], classes: Sequence[str]) -> None:
    """Add per-class offsets (in `classes` order) to the classifier's intercepts (a binary model's one
    intercept moves by the second class's offset minus the first's)."""
    classifier = pipeline.steps[-1][1]
    by_class = dict(zip(classes, offsets, strict=True))
    fitted = [str(label) for label in classifier.classes_]
    shift = np.array([by_class[label] for label in fitted])
    if classifier.intercept_.shape[0] == 1:
        shift = np.array([shift[1] - shift[0]])
    classifier.intercept_ = (classifier.intercept_ + shift).astype(classifier.intercept_.dtype)


def _already_analysed(doc: list[str]) -> list[str]:
    """The analyzer of fold fits: their documents are the n-grams the candidate's vectorizer reads."""
    return doc


def stratified_folds(labels: Sequence[str], folds: int) -> np.ndarray:
    """Fold of each row: the rows of each class, in order, dealt round-robin into `folds` folds."""
    assignment = np.zeros(len(labels), dtype=np.int64)
    seen: dict[str, int] = {}
    for index, label in enumerate(labels):
        assignment[index] = seen.get(label, 0) % folds
        seen[label] = seen.get(label, 0) + 1
    return assignment


def out_of_fold_scores(
    spec: CandidateSpec,
    texts: Sequence[str],
    labels: Sequence[str],
    seed: int,
    classes: Sequence[str],
    folds: int,
) -> np.ndarray:
    """Each train row's class scores from the candidate fitted on the other folds (it never saw the row)."""
    template = build_pipeline(spec, seed)
    documents = [template.steps[0][1].build_analyzer()(text) for text in texts]
    fold_of = stratified_folds(labels, folds)
    scores = np.zeros((len(texts), len(classes)))
    for fold in range(folds):
        held_out = np.flatnonzero(fold_of == fold)
        fitted_on = np.flatnonzero(fold_of != fold)
        pipeline = clone(template).set_params(
            tfidf__analyzer=_already_analysed,
            tfidf__preprocessor=None,
            tfidf__token_pattern=None,
            tfidf__ngram_range=(1, 1),
            tfidf__stop_words=None,
        )
        pipeline.fit([documents[i] for i in fitted_on], [labels[i] for i in fitted_on])
        scores[held_out] = decision_scores(pipeline, [documents[i] for i in held_out], classes)
    return scores


@dataclass(frozen=True)
class OffsetTuning:
    """How a candidate's class offsets were chosen: recorded beside them in its hyperparameters.

    `macro_f1_without` / `macro_f1_with`: out-of-fold macro-F1 of the train rows without offsets and with
    the offsets searched on them (in-sample for the search: it always gains); `held_out_gain`: what the
    search gains on rows it did not tune on (the mean, over folds, of the gain on one fold's rows of the
    offsets searched on the others' rows) — the figure that decides whether the offsets are kept.
    """

    method: str
    folds: int
    rows: int
    macro_f1_without: float | None
    macro_f1_with: float | None
    held_out_gain: float | None
    kept: bool
    reason: str
    searched: Mapping[str, float] = field(default_factory=dict)
    """The offsets the search found on all out-of-fold scores (kept or not)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "folds": self.folds,
            "rows": self.rows,
            "out_of_fold_macro_f1_without": self.macro_f1_without,
            "out_of_fold_macro_f1_with": self.macro_f1_with,
            "held_out_gain": self.held_out_gain,
            "searched_offsets": dict(self.searched),
            "kept": self.kept,
            "reason": self.reason,
        }


NO_TUNING = OffsetTuning("none", 0, 0, None, None, None, False, "[selection] tune_class_offsets = false")


def held_out_offset_gain(
    scores: np.ndarray, truth: np.ndarray, fold_of: np.ndarray, offset_range: float, offset_step: float
) -> float:
    """What tuning offsets gains on rows it did not see: for each fold, the offsets searched on the
    other folds' rows, judged on this fold's rows (macro-F1 with minus without), averaged over folds."""
    n_classes, gains = scores.shape[1], []
    for fold in np.unique(fold_of):
        tune, judge = fold_of != fold, fold_of == fold
        offsets, _ = search_offsets(scores[tune], truth[tune], offset_range, offset_step)
        with_offsets = macro_f1_from_codes(
            truth[judge], np.argmax(scores[judge] + offsets, axis=1), n_classes
        )
        without = macro_f1_from_codes(truth[judge], np.argmax(scores[judge], axis=1), n_classes)
        gains.append(with_offsets - without)
    return float(np.mean(gains))


def cross_validated_offsets(
    spec: CandidateSpec,
    train_frame: pl.DataFrame,
    seed: int,
    classes: Sequence[str],
    selection: SelectionConfig,
) -> tuple[tuple[float, ...], OffsetTuning]:
    """Class offsets searched on out-of-fold scores of the train rows (see the module docstring), kept
    only when the search gains at least `min_offset_gain` macro-F1 on rows it did not tune on
    (`held_out_offset_gain`); zero offsets otherwise, or when a class has fewer train rows than folds."""
    texts, labels = _train_rows(train_frame, classes)
    folds, zeros = selection.offset_folds, (0.0,) * len(classes)
    counts = {label: labels.count(label) for label in classes}
    scarce = [label for label, count in counts.items() if count < folds]
    if scarce:
        reason = f"class {scarce[0]!r} has {counts[scarce[0]]} train rows, fewer than the {folds} folds"
        return zeros, OffsetTuning("cross_validation", folds, len(labels), None, None, None, False, reason)
    scores = out_of_fold_scores(spec, texts, labels, seed, classes, folds)
    truth = label_codes(labels, "train labels", classes)
    without = macro_f1_from_codes(truth, np.argmax(scores, axis=1), len(classes))
    offsets, with_offsets = search_offsets(scores, truth, selection.offset_range, selection.offset_step)
    gain = held_out_offset_gain(
        scores, truth, stratified_folds(labels, folds), selection.offset_range, selection.offset_step
    )
    kept = gain >= selection.min_offset_gain and gain > 0 and with_offsets > without
    reason = (
        f"offsets searched on out-of-fold scores gain {gain:+.4f} macro-F1 on the rows they were not "
        f"searched on (mean of {folds} folds) {'>=' if kept else '<'} min_offset_gain {selection.min_offset_gain}"
    )
    searched = {label: float(value) for label, value in zip(classes, offsets, strict=True)}
    tuning = OffsetTuning(
        "cross_validation", folds, len(labels), without, with_offsets, gain, kept, reason, searched
    )
    return (tuple(float(value) for value in offsets) if kept else zeros), tuning


@dataclass(frozen=True)
class TrainedCandidate:
    """A fitted-and-exported candidate: its ONNX bytes and what we measured on train and validation."""

    spec: CandidateSpec
    classes: tuple[str, ...]
    onnx_bytes: bytes
    train_metrics: Mapping[str, Any]
    validation_metrics: Mapping[str, Any]
    fit_seconds: float
    parity: ParityReport
    class_offsets: tuple[float, ...]
    offset_tuning: OffsetTuning = NO_TUNING

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The spec's parameters plus the class offsets and how they were tuned, as recorded in the card."""
        return {
            **self.spec.params,
            "class_offsets": dict(zip(self.classes, self.class_offsets, strict=True)),
            "class_offset_tuning": self.offset_tuning.to_dict(),
        }


def split_frames(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The train and validation rows of a training frame (the test rows are left alone)."""
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise TrainingDataError(f"training frame lacks columns {missing}")
    parts = {name: frame.filter(pl.col("split") == name) for name in ("train", "validation")}
    for name, part in parts.items():
        if part.height == 0:
            raise TrainingDataError(f"training frame has no '{name}' rows")
    return parts


def train_candidate(
    spec: CandidateSpec,
    parts: Mapping[str, pl.DataFrame],
    config: TrainingConfig,
    scoring: ScoringRules,
    classes: Sequence[str],
) -> TrainedCandidate:
    """Fit one candidate for `classes`, tune its offsets by cross-validation on train, export it to ONNX
    and check parity on validation."""
    classes = tuple(classes)
    train, validation = parts["train"], parts["validation"].sort("review_id")
    validation_texts, validation_labels = validation["text"].to_list(), validation["label"].to_list()
    started = time.perf_counter()
    pipeline = fit_candidate(spec, train, config.seed, classes)
    offsets, tuning = (0.0,) * len(classes), NO_TUNING
    if config.selection.tune_class_offsets:
        offsets, tuning = cross_validated_offsets(spec, train, config.seed, classes, config.selection)
        apply_offsets(pipeline, offsets, classes)
    fit_seconds = time.perf_counter() - started
    onnx_bytes = to_onnx(pipeline, classes)
    parity = check_parity(
        pipeline, onnx_bytes, validation_texts, classes, config.selection.parity_tolerance, scoring
    )
    train_predictions = pipeline.predict(train["text"].to_list())
    validation_predictions = pipeline.predict(validation_texts)
    return TrainedCandidate(
        spec=spec,
        classes=classes,
        onnx_bytes=onnx_bytes,
        train_metrics=classification_metrics(train["label"].to_list(), train_predictions, classes),
        validation_metrics=classification_metrics(validation_labels, validation_predictions, classes),
        fit_seconds=round(fit_seconds, 3),
        parity=parity,
        class_offsets=offsets,
        offset_tuning=tuning,
    )


def train_candidates(
    frame: pl.DataFrame,
    config: TrainingConfig,
    scoring: ScoringRules,
    classes: Sequence[str],
    on_progress: Callable[[int, int, TrainedCandidate], None] | None = None,
) -> list[TrainedCandidate]:
    """Train, tune and export every candidate of the search; `on_progress(done, total, candidate)` after each."""
    parts = split_frames(frame)
    specs = candidate_specs(config)
    trained = []
    for done, spec in enumerate(specs, start=1):
        candidate = train_candidate(spec, parts, config, scoring, classes)
        trained.append(candidate)
        if on_progress is not None:
            on_progress(done, len(specs), candidate)
    return trained


def select_best(candidates: Sequence[TrainedCandidate]) -> TrainedCandidate:
    """The parity-passing candidate with the best validation macro-F1 (ties: the first name)."""
    eligible = [candidate for candidate in candidates if candidate.parity.passed]
    if not eligible:
        raise NoEligibleCandidateError(f"none of {len(candidates)} candidates passed ONNX parity")
    return min(eligible, key=lambda c: (-c.validation_metrics["macro_f1"], c.spec.name))
