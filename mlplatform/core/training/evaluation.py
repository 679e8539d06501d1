"""Evaluation of a text classifier: metrics, per-facet metrics and gaps, latency, gates and the model card.

Every function takes the classes it judges (a model's `ScoringModel.classes`, the dataset contract's
`labels.classes`: 2 to 10 of them, in the model's probability order); nothing assumes three. The model
card records them (`model.classes`), so later stages compare a version only with versions of the same
classes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from mlplatform.core.platform.errors import PlatformError
from mlplatform.core.platform.settings import GateRules
from mlplatform.core.scoring.model import ScoringModel, probability_columns

PREDICTION_COLUMN = "predicted_label"
MISSING_FACET_VALUE = "(missing)"
ERROR = "ERROR"
WARN = "WARN"
LINEAGE_KEYS = ("split_versions", "drop_hashes", "code_version", "run_id", "created_at")


class EvaluationError(PlatformError, ValueError):
    """Inputs to an evaluation are inconsistent (unknown labels, missing columns, empty data)."""


def label_codes(labels: Sequence[str] | np.ndarray, what: str, classes: Sequence[str]) -> np.ndarray:
    """Labels as integer codes in `classes` order; an unknown label raises EvaluationError naming `what`."""
    index = {label: code for code, label in enumerate(classes)}
    try:
        return np.array([index[label] for label in labels], dtype=np.int64)
    except KeyError as exc:
        raise EvaluationError(
            f"{what} holds unknown label {exc.args[0]!r}; the classes are {list(classes)}"
        ) from None


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


def classification_metrics(
    y_true: Sequence[str], y_pred: Sequence[str] | np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1 (over every class), per-class precision/recall/F1/support
    and the confusion matrix, for `classes` in their order."""
    truth, predicted = label_codes(y_true, "y_true", classes), label_codes(y_pred, "y_pred", classes)
    if len(truth) != len(predicted):
        raise EvaluationError(f"y_true has {len(truth)} rows but y_pred has {len(predicted)}")
    if len(truth) == 0:
        raise EvaluationError("cannot compute metrics on zero rows")
    matrix = confusion_matrix(truth, predicted, len(classes))
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
            for i, label in enumerate(classes)
        },
        "confusion_matrix": {"labels": list(classes), "matrix": matrix.tolist()},
    }


def predict_frame(model: ScoringModel, frame: pl.DataFrame) -> pl.DataFrame:
    """The frame with a `predicted_label` column and a `p_<class>` column per class of the ONNX model
    (all rows kept, in order)."""
    if "text" not in frame.columns:
        raise EvaluationError("frame to score lacks the 'text' column")
    prediction = model.predict(frame["text"].to_list())
    labels = pl.Series(PREDICTION_COLUMN, [str(label) for label in prediction.labels], dtype=pl.String)
    probabilities = [
        pl.Series(name, prediction.probabilities[:, index], dtype=pl.Float64)
        for index, name in enumerate(probability_columns(model.classes))
    ]
    return frame.with_columns(labels, *probabilities)


def _group_rates(
    labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]
) -> tuple[dict[str, float | None], dict[str, float]]:
    truth, guess = label_codes(labels, "label", classes), label_codes(predicted, PREDICTION_COLUMN, classes)
    matrix = confusion_matrix(truth, guess, len(classes))
    support = matrix.sum(axis=1)
    recall = {
        label: (float(matrix[i, i] / support[i]) if support[i] else None) for i, label in enumerate(classes)
    }
    predicted_rate = {label: float(np.mean(guess == i)) for i, label in enumerate(classes)}
    return recall, predicted_rate


def _max_gap(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return float(max(known) - min(known)) if len(known) >= 2 else None


def facet_metrics(
    frame_with_predictions: pl.DataFrame, facets: Sequence[str], min_rows: int, classes: Sequence[str]
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
            recall, predicted_rate = _group_rates(labels, predicted, classes)
            metrics = classification_metrics(labels.tolist(), predicted.tolist(), classes)
            values[value] = {
                "rows": group.height,
                "judged": group.height >= min_rows,
                "accuracy": metrics["accuracy"],
                "macro_f1": metrics["macro_f1"],
                "recall": recall,
                "predicted_rate": predicted_rate,
            }
        result[facet] = {"values": values, "gaps": _facet_gaps(values, classes)}
    return result


def _facet_gaps(values: Mapping[str, Mapping[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    judged = [entry for entry in values.values() if entry["judged"]]
    recall_gap = {label: _max_gap([entry["recall"][label] for entry in judged]) for label in classes}
    rate_gap = {label: _max_gap([entry["predicted_rate"][label] for entry in judged]) for label in classes}
    return {
        "judged_values": len(judged),
        "recall": recall_gap,
        "predicted_rate": rate_gap,
        "max_recall_gap": max((gap for gap in recall_gap.values() if gap is not None), default=None),
        "max_predicted_rate_gap": max((gap for gap in rate_gap.values() if gap is not None), default=None),
    }


def single_review_latency(model: ScoringModel, texts: Sequence[str], n: int = 200) -> dict[str, float]:
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
    classes = list(metrics["per_class"])
    recalls = {label: metrics["per_class"][label]["recall"] for label in classes}
    floors = rules.min_class_recall.for_classes(classes)
    failures = [f"macro-F1 {metrics['macro_f1']:.4f} < {rules.min_macro_f1}"] * (
        metrics["macro_f1"] < rules.min_macro_f1
    )
    failures += [
        f"{label} recall {recalls[label]:.4f} < {floors[label]}"
        for label in classes
        if recalls[label] < floors[label]
    ]
    description = "; ".join(failures) or (
        f"macro-F1 {metrics['macro_f1']:.4f} >= {rules.min_macro_f1} and the recall of each of "
        f"{len(classes)} classes at or above its floor"
    )
    unused = rules.min_class_recall.unused(classes)
    if unused:
        description += f" (floors for classes this model does not have, not used: {', '.join(unused)})"
    return GateOutcome(
        "quality_bar",
        not failures,
        ERROR,
        description,
        {
            "macro_f1": metrics["macro_f1"],
            "min_macro_f1": rules.min_macro_f1,
            "recall": recalls,
            "min_class_recall": floors,
            "unused_floors": unused,
        },
    )


def _no_regression(
    metrics: Mapping[str, Any],
    production_metrics: Mapping[str, Any] | None,
    rules: GateRules,
    not_compared: str | None = None,
) -> GateOutcome:
    if production_metrics is None:
        reason = not_compared or "no model in production"
        return GateOutcome("no_regression", True, ERROR, f"not evaluated: {reason}", {"evaluated": False})
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
    if not fairness:
        description = "no facet to compare: the dataset contract declares none"
    else:
        description = "; ".join(breaches) or (
            f"every facet within recall gap {rules.max_recall_gap} and predicted-rate gap "
            f"{rules.max_predicted_rate_gap}"
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
    not_compared: str | None = None,
) -> list[GateOutcome]:
    """All best_model gates, for the classes `metrics` holds. `production_metrics` must come from the
    production model on the SAME test split, with the same classes; None leaves no_regression unevaluated
    for the reason `not_compared` (default: nothing in production), so the model faces value thresholds
    alone."""
    return [
        _quality_bar(metrics, rules),
        _no_regression(metrics, production_metrics, rules, not_compared),
        _latency_budget(latency, rules),
        _model_size_budget(model_size_bytes, rules),
        _fairness_gap(fairness, rules),
    ]


def model_card(
    *,
    model_name: str,
    family: str,
    classes: Sequence[str],
    hyperparameters: Mapping[str, Any],
    test_metrics: Mapping[str, Any],
    validation_metrics: Mapping[str, Any],
    facets: Mapping[str, Any],
    gates: Sequence[GateOutcome],
    latency: Mapping[str, float],
    model_size_bytes: int,
    onnx_sha256: str,
    lineage: Mapping[str, Any],
    smoke_cases: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """The model card as a JSON-ready dict; `classes` are the model's, in its probability order
    (`model.classes`); `lineage` must hold split_versions, drop_hashes, code_version, run_id and created_at;
    `smoke_cases` ({"text", "expected"}) are what a deployment's smoke test asks the endpoint."""
    missing = [key for key in LINEAGE_KEYS if key not in lineage]
    if missing:
        raise EvaluationError(f"model card lineage lacks {missing}")
    return {
        "model": {"name": model_name, "family": family, "classes": list(classes), "format": "onnx"},
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
        "smoke_cases": [dict(case) for case in smoke_cases],
    }


def card_classes(card: Mapping[str, Any]) -> tuple[str, ...]:
    """The classes a model card records, in the model's probability order (a card written before cards
    recorded them: its test confusion matrix's labels, which are the same)."""
    recorded = card.get("model", {}).get("classes")
    if recorded is None:
        recorded = card["metrics"]["test"]["confusion_matrix"]["labels"]
    return tuple(str(label) for label in recorded)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def render_model_card_markdown(card: Mapping[str, Any]) -> str:
    """A human-readable Markdown rendering of a model card."""
    test = card["metrics"]["test"]
    lines = [
        f"# Model card: {card['model']['name']}",
        "",
        f"- family: {card['model']['family']}",
        f"- classes: {', '.join(card_classes(card))}",
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
