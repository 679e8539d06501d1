"""Text-aware drift of live traffic against a model version's training baseline.

A version's `TrainingBaseline` is computed once, when the version is registered, from the train split
it was fitted on, and recorded in its model card under `BASELINE_CARD_KEY` (so new data landing later
never moves it). It holds:

- `classes`: the model's classes (its card's, in its probability order), which the shares are over;
- `predicted_class_shares`: the model's predicted-class shares on its test split (what a healthy live
  mix looks like; the true label mix would blame the model's known bias on the traffic);
- `length_counts`: how many training texts have each length in characters (after trimming) — the whole
  length distribution, so any quantile bins and an exact KS statistic can be derived later;
- `oov_rate` / `tokens`: the out-of-vocabulary token share of the training texts themselves, so the
  live check judges the increase over what the vocabulary already misses (min_df, max_features cuts).

A `DriftBaseline` adds the model's unigram vocabulary and its tokeniser (pattern, lowercasing, min
length), read from the version's ONNX graph with `ModelVocabulary.from_onnx` (not copied into the card).

`drift_report` compares the captured rows of ONE model version with it (`judge_drift` does so for every
version in the prediction log, each against its own baseline, and judges the one in production):

- predicted_class_psi / predicted_class_js: PSI and Jensen-Shannon divergence (nats) of the shares;
- length_psi: PSI over bins cut at the baseline's length quantiles; length_ks: the largest gap between
  the two length CDFs (two-sample Kolmogorov-Smirnov statistic);
- oov_rate_increase: live OOV token share minus the baseline's;
- short_text_share_increase: share of empty or very short texts, live minus baseline.

PSI = sum((live - base) * ln(live / base)) over bins; an empty bin's share is raised to
`psi_floor_share` first, so PSI stays finite.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import polars as pl

from mlplatform.core.data.features import js_divergence
from mlplatform.core.data.text import TOKEN_PATTERN
from mlplatform.core.monitoring.prediction_log import model_versions
from mlplatform.core.monitoring.rules import (
    DRIFT_METRICS,
    ERROR,
    WARN,
    MonitoringError,
    MonitorOutcome,
    not_enough_data,
    require_columns,
)
from mlplatform.core.platform.artifacts import ArtifactNotFound, ArtifactStore
from mlplatform.core.platform.settings import MonitoringRules
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.scoring.model import GRAPH_KIND
from mlplatform.core.training.rebuild import recorded_splits

_SHARE_TOLERANCE = 1e-6
BASELINE_CARD_KEY = "drift_baseline"  # where a model card records its version's TrainingBaseline
_BASELINE_KEYS = ("rows", "predicted_class_shares", "length_counts", "tokens", "oov_rate")
"""Keys every recorded baseline has; `classes` too since baselines record them (before, the shares named
every class of the model, so their keys are its classes)."""


@dataclass(frozen=True)
class ModelVocabulary:
    """A model's unigram vocabulary and the tokeniser that produces its tokens."""

    tokens: frozenset[str]
    token_pattern: str
    lowercase: bool
    min_token_chars: int

    @classmethod
    def from_onnx(cls, model: onnx.ModelProto) -> ModelVocabulary:
        """The unigram vocabulary a model reads: from the sparse text graph's metadata (core/training/
        export.py), or from the TfIdfVectorizer node of a model registered before it (skl2onnx)."""
        metadata = {prop.key: prop.value for prop in model.metadata_props}
        if metadata.get("graph") == GRAPH_KIND:
            terms = metadata["vocabulary"].split("\n")
            unigrams = [term for term in terms if " " not in term]
            words = unigrams or sorted({word for term in terms for word in term.split(" ")})
            return cls(frozenset(words), metadata["token_pattern"], True, 1)
        for node in model.graph.node:
            if node.op_type == "TfIdfVectorizer":
                attributes = {
                    attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute
                }
                pool = [value.decode() for value in attributes["pool_strings"]]
                counts = [*list(attributes["ngram_counts"]), len(pool)]
                # the pool lists the 1-grams first, then the words of longer n-grams (skl2onnx may list a
                # bigram among the 1-grams as "a b": not a word)
                unigrams = [word for word in pool[counts[0] : counts[1]] if " " not in word]
                return cls(frozenset(unigrams), TOKEN_PATTERN, True, 1)
        raise MonitoringError(
            "cannot read the model's vocabulary: neither a sparse text graph nor a TF-IDF node"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": sorted(self.tokens),
            "token_pattern": self.token_pattern,
            "lowercase": self.lowercase,
            "min_token_chars": self.min_token_chars,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelVocabulary:
        return cls(
            frozenset(data["tokens"]),
            str(data["token_pattern"]),
            bool(data["lowercase"]),
            int(data["min_token_chars"]),
        )

    def token_counts(self, texts: pl.Series) -> tuple[int, int]:
        """(tokens, out-of-vocabulary tokens) over `texts`, tokenised as the model does."""
        normalised = texts.cast(pl.String).fill_null("")
        if self.lowercase:
            normalised = normalised.str.to_lowercase()
        tokens = normalised.str.extract_all(self.token_pattern).explode().drop_nulls()
        if self.min_token_chars > 1:
            tokens = tokens.filter(tokens.str.len_chars() >= self.min_token_chars)
        known = pl.Series(sorted(self.tokens), dtype=pl.String)
        return tokens.len(), int((~tokens.is_in(known)).sum())


def text_lengths(texts: pl.Series) -> np.ndarray:
    """Characters of each text after trimming whitespace (a missing text has length 0)."""
    return texts.cast(pl.String).fill_null("").str.strip_chars().str.len_chars().to_numpy().astype(np.int64)


def _shares(values: Mapping[str, float], classes: Sequence[str]) -> list[float]:
    return [float(values.get(label, 0.0)) for label in classes]


def population_stability_index(expected: Sequence[float], actual: Sequence[float], floor: float) -> float:
    """PSI between two share vectors over the same bins; shares below `floor` are raised to it."""
    base = np.maximum(np.asarray(expected, dtype=np.float64), floor)
    live = np.maximum(np.asarray(actual, dtype=np.float64), floor)
    return float(np.sum((live - base) * np.log(live / base)))


def ks_statistic(sample_a: np.ndarray, sample_b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    a, b = np.sort(sample_a), np.sort(sample_b)
    grid = np.union1d(a, b)
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


class MissingBaseline(MonitoringError):
    """A model version has no training baseline: none recorded in its card, and its split version is gone."""


def predicted_class_shares(confusion_matrix: Mapping[str, Any]) -> dict[str, float]:
    """Predicted-class shares from a confusion matrix (`labels`, `matrix` with rows = true labels)."""
    labels, rows = confusion_matrix["labels"], confusion_matrix["matrix"]
    column_sums = [sum(row[index] for row in rows) for index in range(len(labels))]
    total = sum(column_sums)
    if total == 0:
        raise MonitoringError("the test confusion matrix is empty: no predicted-class shares")
    return {label: count / total for label, count in zip(labels, column_sums, strict=True)}


def _checked_shares(shares: Mapping[str, float], classes: Sequence[str]) -> dict[str, float]:
    """The shares over every class (a missing class has share 0); unknown labels or a sum off 1 raise."""
    unknown = set(shares) - set(classes)
    if unknown:
        raise MonitoringError(
            f"predicted-class shares name labels {sorted(unknown)} that are not the classes {list(classes)}"
        )
    total = sum(shares.values())
    if abs(total - 1.0) > _SHARE_TOLERANCE:
        raise MonitoringError(f"predicted-class shares must sum to 1, got {total}")
    return {label: float(shares.get(label, 0.0)) for label in classes}


@dataclass(frozen=True)
class TrainingBaseline:
    """What a model version's training texts and test predictions looked like, recorded in its model card
    (`BASELINE_CARD_KEY`) when the version is registered. The vocabulary is not part of it: it is read
    from the version's ONNX graph, which the registry already holds."""

    rows: int
    predicted_class_shares: dict[str, float]
    length_counts: dict[int, int]
    tokens: int
    oov_rate: float

    @property
    def classes(self) -> tuple[str, ...]:
        """The model's classes, in its probability order (the shares' keys)."""
        return tuple(self.predicted_class_shares)

    @classmethod
    def from_training(
        cls,
        train_texts: Sequence[str] | pl.Series,
        test_predicted_class_shares: Mapping[str, float],
        vocabulary: ModelVocabulary,
        classes: Sequence[str] | None = None,
    ) -> TrainingBaseline:
        """Summarise the training texts (tokenised by `vocabulary`) and the test predicted-class shares
        over `classes` (default: the classes the shares name, in their order)."""
        texts = pl.Series("text", train_texts, dtype=pl.String)
        if texts.len() == 0:
            raise MonitoringError("a drift baseline needs at least one training text")
        shares = _checked_shares(
            test_predicted_class_shares, list(test_predicted_class_shares) if classes is None else classes
        )
        values, counts = np.unique(text_lengths(texts), return_counts=True)
        tokens, oov = vocabulary.token_counts(texts)
        return cls(
            rows=texts.len(),
            predicted_class_shares=shares,
            length_counts={int(value): int(count) for value, count in zip(values, counts, strict=True)},
            tokens=tokens,
            oov_rate=oov / tokens if tokens else 0.0,
        )

    @classmethod
    def from_splits(
        cls, splits: pl.DataFrame, test_confusion_matrix: Mapping[str, Any], vocabulary: ModelVocabulary
    ) -> TrainingBaseline:
        """The baseline of a version fitted on the `train` rows of `splits` (a `review_splits` frame), whose
        test confusion matrix (as its model card records it) gives the classes and predicted-class shares."""
        require_columns(splits, ("split", "text"), "review_splits")
        train_texts = splits.filter(pl.col("split") == "train")["text"]
        shares = predicted_class_shares(test_confusion_matrix)
        return cls.from_training(train_texts, shares, vocabulary, test_confusion_matrix["labels"])

    def lengths(self) -> np.ndarray:
        """The training texts' lengths (sorted), rebuilt from the counts."""
        values = np.fromiter(self.length_counts.keys(), dtype=np.int64)
        counts = np.fromiter(self.length_counts.values(), dtype=np.int64)
        order = np.argsort(values)
        return np.repeat(values[order], counts[order])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (length keys become strings; `from_dict` reads them back)."""
        return {
            "rows": self.rows,
            "classes": list(self.classes),
            "predicted_class_shares": dict(self.predicted_class_shares),
            "length_counts": {str(length): count for length, count in sorted(self.length_counts.items())},
            "tokens": self.tokens,
            "oov_rate": self.oov_rate,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingBaseline:
        """The baseline `to_dict` wrote; missing keys, bad values or inconsistent counts raise MonitoringError."""
        if not isinstance(data, Mapping):
            raise MonitoringError(f"recorded drift baseline is a {type(data).__name__}, not a mapping")
        missing = sorted(set(_BASELINE_KEYS) - set(data))
        if missing:
            raise MonitoringError(f"recorded drift baseline lacks keys {missing}")
        try:
            shares = {str(label): float(share) for label, share in data["predicted_class_shares"].items()}
            baseline = cls(
                rows=int(data["rows"]),
                predicted_class_shares=_checked_shares(shares, data.get("classes") or list(shares)),
                length_counts={int(length): int(count) for length, count in data["length_counts"].items()},
                tokens=int(data["tokens"]),
                oov_rate=float(data["oov_rate"]),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise MonitoringError(f"recorded drift baseline is malformed: {exc}") from exc
        if baseline.rows < 1 or sum(baseline.length_counts.values()) != baseline.rows:
            raise MonitoringError(
                f"recorded drift baseline counts {sum(baseline.length_counts.values())} text lengths "
                f"for {baseline.rows} rows"
            )
        return baseline


def baseline_card_section(
    splits: pl.DataFrame, test_metrics: Mapping[str, Any], onnx_bytes: bytes
) -> dict[str, Any]:
    """The card section a version is registered with: the training baseline of the model `onnx_bytes`
    fitted on `splits`, under `BASELINE_CARD_KEY` (its drift is judged against it for good)."""
    vocabulary = ModelVocabulary.from_onnx(onnx.load_from_string(onnx_bytes))
    baseline = TrainingBaseline.from_splits(splits, test_metrics["confusion_matrix"], vocabulary)
    return {BASELINE_CARD_KEY: baseline.to_dict()}


@dataclass(frozen=True)
class DriftBaseline:
    """What a model version's live traffic is compared with: its training baseline and its vocabulary."""

    training: TrainingBaseline
    vocabulary: ModelVocabulary
    model_version: str | None = None


@dataclass(frozen=True)
class DriftReport:
    """Drift of one model version's traffic: the numbers and one outcome per drift metric."""

    model_version: str
    rows: int
    metrics: dict[str, float]
    outcomes: tuple[MonitorOutcome, ...]

    @property
    def worst_severity(self) -> str | None:
        """ERROR if any outcome failed with ERROR, else WARN if any failed, else None."""
        failed = {outcome.severity for outcome in self.outcomes if not outcome.passed}
        return ERROR if ERROR in failed else (WARN if failed else None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "rows": self.rows,
            "metrics": dict(self.metrics),
            "outcomes": [outcome.to_dict() for outcome in self.outcomes],
        }


def _one_version(log_rows: pl.DataFrame, baseline: DriftBaseline) -> str:
    versions = log_rows["model_version"].unique().drop_nulls().to_list()
    if len(versions) != 1:
        raise MonitoringError(
            f"drift_report takes the rows of exactly one model version, got {sorted(versions)}"
        )
    if baseline.model_version is not None and versions[0] != baseline.model_version:
        raise MonitoringError(
            f"rows of model version {versions[0]} compared with the baseline of {baseline.model_version}"
        )
    return str(versions[0])


def _live_class_shares(labels: pl.Series, classes: Sequence[str]) -> dict[str, float]:
    counts = dict(labels.value_counts().iter_rows())
    unknown = set(counts) - set(classes)
    if unknown:
        raise MonitoringError(
            f"captured labels hold values that are not the model's classes {list(classes)}: "
            f"{sorted(map(str, unknown))}"
        )
    return {label: counts.get(label, 0) / labels.len() for label in classes}


def _length_psi(base_lengths: np.ndarray, live_lengths: np.ndarray, rules: MonitoringRules) -> float:
    quantiles = np.linspace(0.0, 1.0, rules.length_bins + 1)[1:-1]
    edges = np.unique(np.quantile(base_lengths, quantiles))
    # A length equal to an edge falls in the bin below it: bins are (-inf, e1], (e1, e2], ..., (ek, inf).
    base_shares = np.bincount(np.searchsorted(edges, base_lengths), minlength=len(edges) + 1) / len(
        base_lengths
    )
    live_shares = np.bincount(np.searchsorted(edges, live_lengths), minlength=len(edges) + 1) / len(
        live_lengths
    )
    return population_stability_index(base_shares, live_shares, rules.psi_floor_share)


def drift_metrics(
    log_rows: pl.DataFrame, baseline: DriftBaseline, rules: MonitoringRules
) -> dict[str, float]:
    """Every drift number of `log_rows` (columns text, label) against the baseline."""
    training = baseline.training
    classes = training.classes
    live_shares = _live_class_shares(log_rows["label"], classes)
    base_lengths, live_lengths = training.lengths(), text_lengths(log_rows["text"])
    tokens, oov = baseline.vocabulary.token_counts(log_rows["text"])
    live_oov_rate = oov / tokens if tokens else 0.0
    live_short = float(np.mean(live_lengths < rules.short_text_chars))
    base_short = float(np.mean(base_lengths < rules.short_text_chars))
    base_class, live_class = _shares(training.predicted_class_shares, classes), _shares(live_shares, classes)
    return {
        "predicted_class_psi": population_stability_index(base_class, live_class, rules.psi_floor_share),
        "predicted_class_js": js_divergence(base_class, live_class),
        "length_psi": _length_psi(base_lengths, live_lengths, rules),
        "length_ks": ks_statistic(base_lengths, live_lengths),
        "oov_rate_increase": live_oov_rate - training.oov_rate,
        "short_text_share_increase": live_short - base_short,
        "live_oov_rate": live_oov_rate,
        "baseline_oov_rate": training.oov_rate,
        "baseline_rows": float(training.rows),
        "live_tokens": float(tokens),
        "live_short_text_share": live_short,
        "baseline_short_text_share": base_short,
        "live_median_length": float(np.median(live_lengths)),
        "baseline_median_length": float(np.median(base_lengths)),
        **{f"live_share_{label}": live_shares[label] for label in classes},
        **{f"baseline_share_{label}": training.predicted_class_shares[label] for label in classes},
    }


def _judge(metric: str, value: float, rules: MonitoringRules, rows: int) -> MonitorOutcome:
    warn, error = rules.drift_warn.bound(metric), rules.drift_error.bound(metric)
    metadata: dict[str, float | int | str] = {
        "value": value,
        "warn_bound": warn,
        "error_bound": error,
        "rows": rows,
    }
    if value > error:
        return MonitorOutcome(metric, False, ERROR, f"{metric} {value:.4f} > ERROR bound {error}", metadata)
    if value > warn:
        return MonitorOutcome(metric, False, WARN, f"{metric} {value:.4f} > WARN bound {warn}", metadata)
    return MonitorOutcome(metric, True, None, f"{metric} {value:.4f} <= WARN bound {warn}", metadata)


def drift_report(log_rows: pl.DataFrame, baseline: DriftBaseline, rules: MonitoringRules) -> DriftReport:
    """Drift of one model version's captured rows (columns model_version, text, label) vs its baseline.

    Fewer than `rules.min_rows` rows: every outcome is an explicit "not enough data" WARN and no numbers
    are reported (on a handful of rows they are noise).
    """
    require_columns(log_rows, ("model_version", "text", "label"), "prediction log")
    if log_rows.height == 0:
        raise MonitoringError("drift_report needs the rows of one model version, got none")
    version = _one_version(log_rows, baseline)
    rows = log_rows.height
    if rows < rules.min_rows:
        outcomes = tuple(
            not_enough_data(metric, rows, rules.min_rows, f"rows of {version}") for metric in DRIFT_METRICS
        )
        return DriftReport(version, rows, {}, outcomes)
    metrics = drift_metrics(log_rows, baseline, rules)
    if not all(math.isfinite(value) for value in metrics.values()):
        raise MonitoringError(f"drift metrics of {version} are not finite: {metrics}")
    outcomes = tuple(_judge(metric, metrics[metric], rules, rows) for metric in DRIFT_METRICS)
    return DriftReport(version, rows, metrics, outcomes)


def unjudged_report(version: str, rows: int, reason: str) -> DriftReport:
    """The report of a version without a training baseline: every outcome an explicit "not enough data"
    WARN naming `reason`, and no numbers (there is nothing to compare the traffic with)."""
    description = f"not enough data: {reason}; not evaluated"
    outcomes = tuple(
        MonitorOutcome(metric, False, WARN, description, {"evaluated": 0, "rows": rows})
        for metric in DRIFT_METRICS
    )
    return DriftReport(version, rows, {}, outcomes)


# --- every version of the log, each against its own baseline ---------------------------------------------


def training_baseline(
    store: ArtifactStore, card: Mapping[str, Any], vocabulary: ModelVocabulary
) -> TrainingBaseline:
    """The training baseline a model card records; for a version registered before baselines were
    recorded, the one derived from its recorded split version in `store` (never from the current splits).

    Raises MissingBaseline when the card records neither a baseline nor a split version still stored.
    """
    if BASELINE_CARD_KEY in card:
        return TrainingBaseline.from_dict(card[BASELINE_CARD_KEY])
    try:
        _, splits = recorded_splits(store, card)
    except ArtifactNotFound as exc:
        raise MissingBaseline(f"its recorded split version is gone ({exc})") from exc
    except (KeyError, TypeError):  # a version registered by hand: its card has no lineage
        raise MissingBaseline("its card records no split version") from None
    return TrainingBaseline.from_splits(splits, card["metrics"]["test"]["confusion_matrix"], vocabulary)


def drift_baseline(store: ArtifactStore, registry: ModelRegistry, version: str) -> DriftBaseline:
    """`version`'s baseline: its recorded training baseline and the vocabulary of its ONNX graph."""
    vocabulary = ModelVocabulary.from_onnx(onnx.load(str(registry.verify(version))))
    try:
        training = training_baseline(store, registry.get(version).card, vocabulary)
    except MissingBaseline as exc:
        raise MissingBaseline(f"no training baseline recorded for {version}: {exc}") from exc
    return DriftBaseline(training, vocabulary, model_version=version)


def version_drift(
    store: ArtifactStore,
    registry: ModelRegistry,
    log_rows: pl.DataFrame,
    version: str,
    rules: MonitoringRules,
) -> DriftReport:
    """The drift of `version`'s rows of the log; unjudged (not enough data) when it has no baseline."""
    rows = log_rows.filter(pl.col("model_version") == version)
    try:
        baseline = drift_baseline(store, registry, version)
    except MissingBaseline as exc:
        return unjudged_report(version, rows.height, str(exc))
    return drift_report(rows, baseline, rules)


@dataclass(frozen=True)
class DriftJudgement:
    """Every logged version's drift report, and the verdicts on the version in production now (the one
    whose behaviour can still be acted on)."""

    judged_version: str | None
    reports: Mapping[str, DriftReport]
    outcomes: tuple[MonitorOutcome, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "judged_version": self.judged_version,
            "by_version": {version: report.to_dict() for version, report in self.reports.items()},
        }

    def metadata(self) -> dict[str, float | int | str]:
        """Every version's numbers as `<version>/<metric>`; the judged version's also under plain keys."""
        metadata: dict[str, float | int | str] = {
            "judged_version": str(self.judged_version),
            "versions": len(self.reports),
        }
        for version, report in self.reports.items():
            metadata[f"{version}/rows"] = report.rows
            metadata.update({f"{version}/{name}": value for name, value in report.metrics.items()})
        if self.judged_version in self.reports:  # stable keys, so the UI plots the production numbers
            metadata.update(self.reports[self.judged_version].metrics)
        return metadata


def judge_drift(
    log: pl.DataFrame, store: ArtifactStore, registry: ModelRegistry, rules: MonitoringRules
) -> DriftJudgement:
    """Each model version in the log against its own baseline; the production version's verdicts (not
    enough data when it served nothing logged)."""
    reports = {
        version: version_drift(store, registry, log, version, rules) for version in model_versions(log)
    }
    production = registry.production()
    judged = None if production is None else production.version
    if judged is not None and judged in reports:
        outcomes = tuple(reports[judged].outcomes)
    else:
        what = f"rows of production version {judged}" if judged else "rows (no production version)"
        outcomes = tuple(not_enough_data(metric, 0, rules.min_rows, what) for metric in DRIFT_METRICS)
    return DriftJudgement(judged, reports, outcomes)
