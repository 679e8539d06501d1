"""Evaluation of a sentiment model: metrics, per-facet metrics and gaps, latency, gates and the model card."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from mlplatform.core.platform.errors import PlatformError
from mlplatform.core.platform.settings import Settings, SettingsError
from mlplatform.core.training.export import LABELS, OnnxSentimentModel

PREDICTION_COLUMN = "predicted_label"
MISSING_FACET_VALUE = "(missing)"
ERROR = "ERROR"
WARN = "WARN"
LINEAGE_KEYS = ("split_versions", "drop_hashes", "code_version", "run_id", "created_at")


class EvaluationError(PlatformError, ValueError):
    """Inputs to an evaluation are inconsistent (unknown labels, missing columns, empty data)."""


def label_codes(labels: Sequence[str] | np.ndarray, what: str) -> np.ndarray:
    """Labels as integer codes in LABELS order; an unknown label raises EvaluationError naming `what`."""
    index = {label: code for code, label in enumerate(LABELS)}
    try:
        return np.array([index[label] for label in labels], dtype=np.int64)
    except KeyError as exc:
        raise EvaluationError(f"{what} holds unknown label {exc.args[0]!r}; labels are {LABELS}") from None


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] of integer-coded labels."""
    return np.bincount(truth * n_classes + predicted, minlength=n_classes * n_classes).reshape(
        n_classes, n_classes
    )


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise division that gives 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    safe = np.where(denominator == 0, 1, denominator)
    return np.where(denominator == 0, 0.0, numerator / safe)


def _per_class(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    true_positive = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _ratio(true_positive, matrix.sum(axis=0))
    recall = _ratio(true_positive, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return precision, recall, f1, support


def macro_f1_from_codes(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> float:
    """Macro-F1 of integer-coded labels (fast path for threshold tuning)."""
    return float(np.mean(_per_class(confusion_matrix(truth, predicted, n_classes))[2]))


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str] | np.ndarray) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix."""
    truth, predicted = label_codes(y_true, "y_true"), label_codes(y_pred, "y_pred")
    if len(truth) != len(predicted):
        raise EvaluationError(f"y_true has {len(truth)} rows but y_pred has {len(predicted)}")
    if len(truth) == 0:
        raise EvaluationError("cannot compute metrics on zero rows")
    matrix = confusion_matrix(truth, predicted, len(LABELS))
    precision, recall, f1, support = _per_class(matrix)
    present = support > 0
    return {
        "rows": len(truth),
        "accuracy": float(np.trace(matrix) / len(truth)),
        "balanced_accuracy": float(np.mean(recall[present])),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(LABELS)
        },
        "confusion_matrix": {"labels": list(LABELS), "matrix": matrix.tolist()},
    }


def predict_frame(model: OnnxSentimentModel, frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with a `predicted_label` column from the ONNX model (all rows kept, in order)."""
    if "text" not in frame.columns:
        raise EvaluationError("frame to score lacks the 'text' column")
    labels, _ = model.predict(frame["text"].to_list())
    return frame.with_columns(pl.Series(PREDICTION_COLUMN, [str(label) for label in labels], dtype=pl.String))


def _group_rates(
    labels: np.ndarray, predicted: np.ndarray
) -> tuple[dict[str, float | None], dict[str, float]]:
    truth, guess = label_codes(labels, "label"), label_codes(predicted, PREDICTION_COLUMN)
    matrix = confusion_matrix(truth, guess, len(LABELS))
    support = matrix.sum(axis=1)
    recall = {
        label: (float(matrix[i, i] / support[i]) if support[i] else None) for i, label in enumerate(LABELS)
    }
    predicted_rate = {label: float(np.mean(guess == i)) for i, label in enumerate(LABELS)}
    return recall, predicted_rate


def _max_gap(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(max(known) - min(known)) if len(known) >= 2 else None


def facet_metrics(
    frame_with_predictions: pl.DataFrame, facets: Sequence[str], min_rows: int
) -> dict[str, Any]:
    """Per facet value: rows, accuracy, macro-F1, recall and predicted-class rate per class; per facet, the gaps.

    A gap is the largest difference between judged facet values (those with at least `min_rows` rows) in
    a class's recall or predicted rate. Missing facet values form their own group, so no row is dropped.
    """
    required = ["label", PREDICTION_COLUMN, *facets]
    missing = [column for column in required if column not in frame_with_predictions.columns]
    if missing:
        raise EvaluationError(f"frame lacks columns {missing} needed for facet metrics")
    result: dict[str, Any] = {}
    for facet in facets:
        values: dict[str, Any] = {}
        grouped = frame_with_predictions.with_columns(
            pl.col(facet).cast(pl.String).fill_null(MISSING_FACET_VALUE).alias("_facet")
        ).partition_by("_facet", as_dict=True, maintain_order=True)
        for (value,), group in sorted(grouped.items()):
            labels, predicted = group["label"].to_numpy(), group[PREDICTION_COLUMN].to_numpy()
            recall, predicted_rate = _group_rates(labels, predicted)
            metrics = classification_metrics(labels.tolist(), predicted.tolist())
            values[value] = {
                "rows": group.height,
                "judged": group.height >= min_rows,
                "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
                "recall": recall,
                "predicted_rate": predicted_rate,
            }
        result[facet] = {"values": values, "gaps": _facet_gaps(values)}
    return result


def _facet_gaps(values: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    judged = [entry for entry in values.values() if entry["judged"]]
    recall_gap = {label: _max_gap([entry["recall"][label] for entry in judged]) for label in LABELS}
    rate_gap = {label: _max_gap([entry["predicted_rate"][label] for entry in judged]) for label in LABELS}
    return {
        "judged_values": len(judged),
        "recall": recall_gap,
        "predicted_rate": rate_gap,
        "max_recall_gap": max((gap for gap in recall_gap.values() if gap is not None), default=None),
        "max_predicted_rate_gap": max((gap for gap in rate_gap.values() if gap is not None), default=None),
    }


def single_review_latency(model: OnnxSentimentModel, texts: Sequence[str], n: int = 200) -> dict[str, float]:
    """p50 / p99 milliseconds of predicting one review at a time, over n calls cycling through texts."""
    if not texts:
        raise EvaluationError("latency needs at least one text")
    for text in texts[:5]:  # warm-up: first calls allocate
        model.predict([text])
    timings = []
    for i in range(n):
        text = texts[i % len(texts)]
        started = time.perf_counter()
        model.predict([text])
        timings.append((time.perf_counter() - started) * 1000.0)
    return {
        "p50_ms": float(np.percentile(timings, 50)),
        "p99_ms": float(np.percentile(timings, 99)),
        "calls": n,
    }


@dataclass(frozen=True)
class GateRules:
    """Thresholds of the best_model gates, from the [gates] section of the settings."""

    min_macro_f1: float
    min_class_recall: Mapping[str, float]
    max_macro_f1_drop: float
    max_p99_latency_ms: float
    max_model_size_bytes: int
    max_recall_gap: float
    max_predicted_rate_gap: float

    @classmethod
    def from_settings(cls, settings: Settings) -> GateRules:
        """Read the [gates] section."""
        gates = settings.section("gates")
        floors = dict(gates["min_class_recall"])
        if set(floors) != set(LABELS):
            raise SettingsError(f"[gates.min_class_recall] must name exactly {LABELS}, got {sorted(floors)}")
        return cls(
            min_macro_f1=float(gates["min_macro_f1"]),
            min_class_recall={label: float(floors[label]) for label in LABELS},
            max_macro_f1_drop=float(gates["max_macro_f1_drop"]),
            max_p99_latency_ms=float(gates["max_p99_latency_ms"]),
            max_model_size_bytes=int(gates["max_model_size_bytes"]),
            max_recall_gap=float(gates["max_recall_gap"]),
            max_predicted_rate_gap=float(gates["max_predicted_rate_gap"]),
        )


@dataclass(frozen=True)
class GateOutcome:
    """The verdict of one gate; severity ERROR blocks promotion, WARN does not."""

    name: str
    passed: bool
    severity: str
    description: str
    metadata: Mapping[str, Any] = field(default_factory=dict)


def blocking_failures(outcomes: Sequence[GateOutcome]) -> list[GateOutcome]:
    """The failed gates that block promotion (severity ERROR)."""
    return [outcome for outcome in outcomes if not outcome.passed and outcome.severity == ERROR]


def _quality_bar(metrics: Mapping[str, Any], rules: GateRules) -> GateOutcome:
    recalls = {label: metrics["per_class"][label]["recall"] for label in LABELS}
    failures = [f"macro-F1 {metrics['macro_f1']:.4f} < {rules.min_macro_f1}"] * (
        metrics["macro_f1"] < rules.min_macro_f1
    )
    failures += [
        f"{label} recall {recalls[label]:.4f} < {rules.min_class_recall[label]}"
        for label in LABELS
        if recalls[label] < rules.min_class_recall[label]
    ]
    description = "; ".join(failures) or (
        f"macro-F1 {metrics['macro_f1']:.4f} >= {rules.min_macro_f1} and every class recall above its floor"
    )
    return GateOutcome(
        "quality_bar",
        not failures,
        ERROR,
        description,
        {
            "macro_f1": metrics["macro_f1"],
            "min_macro_f1": rules.min_macro_f1,
            "recall": recalls,
            "min_class_recall": dict(rules.min_class_recall),
        },
    )


def _no_regression(
    metrics: Mapping[str, Any], production_metrics: Mapping[str, Any] | None, rules: GateRules
) -> GateOutcome:
    if production_metrics is None:
        return GateOutcome(
            "no_regression", True, ERROR, "not evaluated: no model in production", {"evaluated": False}
        )
    drop = production_metrics["macro_f1"] - metrics["macro_f1"]
    passed = drop <= rules.max_macro_f1_drop
    description = (
        f"macro-F1 {metrics['macro_f1']:.4f} vs production {production_metrics['macro_f1']:.4f} on the same test "
        f"split: drop {drop:+.4f} {'<=' if passed else '>'} allowed {rules.max_macro_f1_drop}"
    )
    return GateOutcome(
        "no_regression",
        passed,
        ERROR,
        description,
        {
            "evaluated": True,
            "macro_f1": metrics["macro_f1"],
            "production_macro_f1": production_metrics["macro_f1"],
            "drop": drop,
            "max_macro_f1_drop": rules.max_macro_f1_drop,
        },
    )


def _latency_budget(latency: Mapping[str, float], rules: GateRules) -> GateOutcome:
    p99 = latency["p99_ms"]
    passed = p99 <= rules.max_p99_latency_ms
    return GateOutcome(
        "latency_budget",
        passed,
        ERROR,
        f"single-review p99 {p99:.2f} ms {'<=' if passed else '>'} budget {rules.max_p99_latency_ms} ms",
        {"p50_ms": latency["p50_ms"], "p99_ms": p99, "max_p99_latency_ms": rules.max_p99_latency_ms},
    )


def _model_size_budget(model_size_bytes: int, rules: GateRules) -> GateOutcome:
    passed = model_size_bytes <= rules.max_model_size_bytes
    return GateOutcome(
        "model_size_budget",
        passed,
        ERROR,
        f"ONNX size {model_size_bytes} bytes {'<=' if passed else '>'} budget {rules.max_model_size_bytes}",
        {"model_size_bytes": model_size_bytes, "max_model_size_bytes": rules.max_model_size_bytes},
    )


def _fairness_gap(fairness: Mapping[str, Any], rules: GateRules) -> GateOutcome:
    breaches = []
    gaps = {}
    for facet, entry in fairness.items():
        recall_gap, rate_gap = entry["gaps"]["max_recall_gap"], entry["gaps"]["max_predicted_rate_gap"]
        gaps[facet] = {"max_recall_gap": recall_gap, "max_predicted_rate_gap": rate_gap}
        if recall_gap is not None and recall_gap > rules.max_recall_gap:
            breaches.append(f"{facet}: recall gap {recall_gap:.3f} > {rules.max_recall_gap}")
        if rate_gap is not None and rate_gap > rules.max_predicted_rate_gap:
            breaches.append(f"{facet}: predicted-rate gap {rate_gap:.3f} > {rules.max_predicted_rate_gap}")
    description = "; ".join(breaches) or (
        f"every facet within recall gap {rules.max_recall_gap} and predicted-rate gap {rules.max_predicted_rate_gap}"
    )
    metadata = {
        "gaps": gaps,
        "max_recall_gap": rules.max_recall_gap,
        "max_predicted_rate_gap": rules.max_predicted_rate_gap,
    }
    return GateOutcome("fairness_gap", not breaches, WARN, description, metadata)


def evaluate_gates(
    metrics: Mapping[str, Any],
    model_size_bytes: int,
    latency: Mapping[str, float],
    fairness: Mapping[str, Any],
    production_metrics: Mapping[str, Any] | None,
    rules: GateRules,
) -> list[GateOutcome]:
    """All best_model gates. `production_metrics` must come from the production model on the SAME test split;
    None (nothing in production) leaves no_regression unevaluated, so a first model faces value thresholds alone."""
    return [
        _quality_bar(metrics, rules),
        _no_regression(metrics, production_metrics, rules),
        _latency_budget(latency, rules),
        _model_size_budget(model_size_bytes, rules),
        _fairness_gap(fairness, rules),
    ]


def model_card(
    *,
    model_name: str,
    family: str,
    hyperparameters: Mapping[str, Any],
    test_metrics: Mapping[str, Any],
    validation_metrics: Mapping[str, Any],
    facets: Mapping[str, Any],
    gates: Sequence[GateOutcome],
    latency: Mapping[str, float],
    model_size_bytes: int,
    onnx_sha256: str,
    lineage: Mapping[str, Any],
) -> dict[str, Any]:
    """The model card as a JSON-ready dict; `lineage` must hold split_versions, drop_hashes, code_version,
    run_id and created_at."""
    missing = [key for key in LINEAGE_KEYS if key not in lineage]
    if missing:
        raise EvaluationError(f"model card lineage lacks {missing}")
    return {
        "model": {"name": model_name, "family": family, "labels": list(LABELS), "format": "onnx"},
        "onnx": {"sha256": onnx_sha256, "size_bytes": model_size_bytes},
        "hyperparameters": dict(hyperparameters),
        "metrics": {"test": dict(test_metrics), "validation": dict(validation_metrics)},
        "latency": dict(latency),
        "facets": dict(facets),
        "gates": [
            {
                "name": gate.name,
                "passed": gate.passed,
                "severity": gate.severity,
                "description": gate.description,
                "metadata": dict(gate.metadata),
            }
            for gate in gates
        ],
        "lineage": dict(lineage),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def render_model_card_markdown(card: Mapping[str, Any]) -> str:
    """A human-readable Markdown rendering of a model card."""
    test = card["metrics"]["test"]
    lines = [
        f"# Model card: {card['model']['name']}",
        "",
        f"- family: {card['model']['family']}",
        f"- ONNX sha256: `{card['onnx']['sha256']}` ({card['onnx']['size_bytes']} bytes)",
        f"- code version: {card['lineage']['code_version']}; run id: {card['lineage']['run_id']}; "
        f"created: {card['lineage']['created_at']}",
        "",
        "## Test metrics (ONNX Runtime)",
        "",
        f"accuracy {_fmt(test['accuracy'])} · balanced accuracy {_fmt(test['balanced_accuracy'])} · "
        f"macro-F1 {_fmt(test['macro_f1'])} · rows {test['rows']} · "
        f"validation macro-F1 {_fmt(card['metrics']['validation']['macro_f1'])}",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for label, entry in test["per_class"].items():
        lines.append(
            f"| {label} | {_fmt(entry['precision'])} | {_fmt(entry['recall'])} | {_fmt(entry['f1'])} | "
            f"{entry['support']} |"
        )
    labels = test["confusion_matrix"]["labels"]
    lines += ["", "Confusion matrix (rows true, columns predicted):", "", "| | " + " | ".join(labels) + " |"]
    lines.append("|---" * (len(labels) + 1) + "|")
    for label, row in zip(labels, test["confusion_matrix"]["matrix"], strict=True):
        lines.append(f"| {label} | " + " | ".join(str(count) for count in row) + " |")
    lines += ["", "## Gates", "", "| gate | severity | result | detail |", "|---|---|---|---|"]
    for gate in card["gates"]:
        result = "pass" if gate["passed"] else "FAIL"
        lines.append(f"| {gate['name']} | {gate['severity']} | {result} | {gate['description']} |")
    lines += ["", "## Facets", "", "| facet | judged values | max recall gap | max predicted-rate gap |"]
    lines.append("|---|---|---|---|")
    for facet, entry in card["facets"].items():
        gaps = entry["gaps"]
        lines.append(
            f"| {facet} | {gaps['judged_values']} | {_fmt(gaps['max_recall_gap'])} | "
            f"{_fmt(gaps['max_predicted_rate_gap'])} |"
        )
    latency = card["latency"]
    lines += [
        "",
        f"Single-review latency: p50 {latency['p50_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms",
        "",
        "## Hyperparameters",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in sorted(card["hyperparameters"].items())]
    lines += ["", "## Lineage", ""]
    lines += [f"- {key}: {value}" for key, value in sorted(card["lineage"].items())]
    return "\n".join(lines) + "\n"
