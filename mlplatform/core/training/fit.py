"""Candidate model search: config, deterministic fitting, ONNX export with parity, and selection.

Every candidate is a TF-IDF word n-gram vectorizer + a linear classifier, fitted on the train split,
tuned on the validation split (per-class intercept offsets that maximise validation macro-F1) and
exported to ONNX right after fitting; the scikit-learn object is dropped once parity is checked. The test
split is never touched here.
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
import skl2onnx
import sklearn
from sklearn.base import clone
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, SGDClassifier
from sklearn.pipeline import Pipeline

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import packaged_config_text
from mlplatform.core.training.evaluation import classification_metrics, label_codes, macro_f1_from_codes
from mlplatform.core.training.export import LABELS, TOKEN_PATTERN, ParityReport, check_parity, to_onnx

TRAINING_CONFIG_FILE = "training.toml"
SEARCH_SIZES = ("default", "wide")
VECTORIZER_KEYS = frozenset({"ngram_range", "min_df", "binary", "norm", "use_idf"})
# Measured to break ONNX conversion or parity with skl2onnx 1.20 / onnxruntime 1.32 (see issue 3).
# max_df and max_features can keep a bigram while dropping one of its words, and ONNX Runtime then
# never counts that bigram; min_df cannot (a word is at least as frequent as any bigram holding it).
FORBIDDEN_KEYS = frozenset(
    {
        "sublinear_tf",
        "stop_words",
        "max_df",
        "max_features",
        "analyzer",
        "strip_accents",
        "preprocessor",
        "tokenizer",
        "token_pattern",
    }
)
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
    offset_range: float
    offset_step: float
    parity_tolerance: float


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
                    f"family '{name}' [{size}]: '{key}' breaks ONNX parity and is refused"
                )
            if not isinstance(values, list) or not values:
                raise TrainingConfigError(f"family '{name}' [{size}]: '{key}' must be a non-empty list")
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
            "skl2onnx": skl2onnx.__version__,
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
    else:
        classifier_params.setdefault("random_state", seed)
    try:
        vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN, **vectorizer_params)
        classifier = estimator_class(**classifier_params)
    except TypeError as exc:
        raise TrainingConfigError(f"candidate '{spec.name}': {exc}") from exc
    return Pipeline([("tfidf", vectorizer), ("clf", classifier)])


def fit_candidate(spec: CandidateSpec, train_frame: pl.DataFrame, seed: int) -> Pipeline:
    """Fit a candidate on the train rows (sorted by review_id so upstream row order cannot matter)."""
    ordered = train_frame.sort("review_id")
    labels = ordered["label"].to_list()
    missing = set(LABELS) - set(labels)
    if missing:
        raise TrainingDataError(f"train split lacks labels {sorted(missing)}; every class is needed")
    pipeline = clone(build_pipeline(spec, seed))
    pipeline.fit(ordered["text"].to_list(), labels)
    return pipeline


def tune_class_offsets(
    pipeline: Pipeline, texts: Sequence[str], labels: Sequence[str], offset_range: float, offset_step: float
) -> tuple[float, ...]:
    """Add the per-class intercept offsets that maximise macro-F1 on (texts, labels); return them.

    The model stays a plain linear model (only `intercept_` changes), so it exports to ONNX unchanged in
    structure. Positive is the reference class (offset 0); ties go to the smallest total shift.
    """
    classifier = pipeline.steps[-1][1]
    scores = np.asarray(pipeline.decision_function(list(texts)), dtype=np.float64)
    truth = label_codes(labels, "validation labels")
    steps = round(offset_range / offset_step)
    grid = np.round(np.arange(-steps, steps + 1) * offset_step, 10)
    best_key: tuple[float, float] | None = None
    best_offsets = (0.0, 0.0, 0.0)
    for negative, neutral in itertools.product(grid, grid):
        offsets = np.array([negative, neutral, 0.0])
        f1 = macro_f1_from_codes(truth, np.argmax(scores + offsets, axis=1), len(LABELS))
        key = (round(f1, 12), -float(abs(negative) + abs(neutral)))
        if best_key is None or key > best_key:
            best_key, best_offsets = key, (float(negative), float(neutral), 0.0)
    classifier.intercept_ = (classifier.intercept_ + np.array(best_offsets)).astype(
        classifier.intercept_.dtype
    )
    return best_offsets


@dataclass(frozen=True)
class TrainedCandidate:
    """A fitted-and-exported candidate: its ONNX bytes and what we measured on train and validation."""

    spec: CandidateSpec
    onnx_bytes: bytes
    train_metrics: Mapping[str, Any]
    validation_metrics: Mapping[str, Any]
    fit_seconds: float
    parity: ParityReport
    class_offsets: tuple[float, ...]

    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The spec's parameters plus the tuned class offsets, as recorded in the model card."""
        return {**self.spec.params, "class_offsets": dict(zip(LABELS, self.class_offsets, strict=True))}


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
    spec: CandidateSpec, parts: Mapping[str, pl.DataFrame], config: TrainingConfig
) -> TrainedCandidate:
    """Fit one candidate, tune its offsets on validation, export it to ONNX and check parity."""
    train, validation = parts["train"], parts["validation"].sort("review_id")
    validation_texts, validation_labels = validation["text"].to_list(), validation["label"].to_list()
    started = time.perf_counter()
    pipeline = fit_candidate(spec, train, config.seed)
    offsets = (0.0,) * len(LABELS)
    if config.selection.tune_class_offsets:
        offsets = tune_class_offsets(
            pipeline,
            validation_texts,
            validation_labels,
            config.selection.offset_range,
            config.selection.offset_step,
        )
    fit_seconds = time.perf_counter() - started
    onnx_bytes = to_onnx(pipeline)
    parity = check_parity(pipeline, onnx_bytes, validation_texts, config.selection.parity_tolerance)
    train_predictions = pipeline.predict(train["text"].to_list())
    validation_predictions = pipeline.predict(validation_texts)
    return TrainedCandidate(
        spec=spec,
        onnx_bytes=onnx_bytes,
        train_metrics=classification_metrics(train["label"].to_list(), train_predictions),
        validation_metrics=classification_metrics(validation_labels, validation_predictions),
        fit_seconds=round(fit_seconds, 3),
        parity=parity,
        class_offsets=offsets,
    )


def train_candidates(
    frame: pl.DataFrame,
    config: TrainingConfig,
    on_progress: Callable[[int, int, TrainedCandidate], None] | None = None,
) -> list[TrainedCandidate]:
    """Train, tune and export every candidate of the search; `on_progress(done, total, candidate)` after each."""
    parts = split_frames(frame)
    specs = candidate_specs(config)
    trained = []
    for done, spec in enumerate(specs, start=1):
        candidate = train_candidate(spec, parts, config)
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
