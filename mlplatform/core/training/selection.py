"""From candidates to the best model: pick by validation, judge on test with ONNX Runtime, gate it.

Candidates travel between assets as files (model.onnx + candidate.json), never as pickles. The chosen
model is evaluated with the exact ONNX bytes that would be deployed, over the classes its graph names;
the production model, when there is one with the same classes, is evaluated on the same test rows so
the regression gate compares like with like. A production model with other classes (the dataset
contract changed) has nothing comparable: the gate says so rather than compare them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from mlplatform.core.platform.errors import PlatformError
from mlplatform.core.platform.settings import GateRules, ScoringRules
from mlplatform.core.scoring.model import ScoringModel, probability_columns
from mlplatform.core.training.evaluation import (
    PREDICTION_COLUMN,
    GateOutcome,
    classification_metrics,
    evaluate_gates,
    facet_metrics,
    predict_frame,
    single_review_latency,
)
from mlplatform.core.training.fit import NoEligibleCandidateError, TrainedCandidate

CANDIDATES_GROUP_PREFIX = "candidate_models"  # asset keys candidate_models/<family>_<varying params>
MODEL_FILE = "model.onnx"
MODEL_CARD_FILE = "model_card.json"  # in a best_model bundle, beside MODEL_FILE
MODEL_CARD_MARKDOWN_FILE = "model_card.md"
CANDIDATE_FILE = "candidate.json"
LATENCY_SAMPLE_TEXTS = 200
SMOKE_CASES_PER_CLASS = 2


class SelectionError(PlatformError, ValueError):
    """Candidates or test data cannot be judged."""


@dataclass(frozen=True)
class CandidateRecord:
    """A stored candidate: what candidate_models wrote, read back by best_model."""

    name: str
    family: str
    hyperparameters: Mapping[str, Any]
    train_metrics: Mapping[str, Any]
    validation_metrics: Mapping[str, Any]
    parity_passed: bool
    parity: Mapping[str, Any]
    onnx_bytes: bytes

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> CandidateRecord:
        missing = {MODEL_FILE, CANDIDATE_FILE} - set(files)
        if missing:
            raise SelectionError(f"candidate artifact lacks {sorted(missing)}")
        meta = json.loads(files[CANDIDATE_FILE])
        return cls(
            name=meta["name"],
            family=meta["family"],
            hyperparameters=meta["hyperparameters"],
            train_metrics=meta["train_metrics"],
            validation_metrics=meta["validation_metrics"],
            parity_passed=bool(meta["parity"]["passed"]),
            parity=meta["parity"],
            onnx_bytes=files[MODEL_FILE],
        )


def candidate_files(trained: TrainedCandidate) -> dict[str, bytes]:
    """The files that store a trained candidate (deterministic: no timings, so equal models hash equal)."""
    meta = {
        "name": trained.spec.name,
        "family": trained.spec.family,
        "hyperparameters": trained.hyperparameters,
        "train_metrics": trained.train_metrics,
        "validation_metrics": trained.validation_metrics,
        "parity": {
            "passed": trained.parity.passed,
            "rows": trained.parity.rows,
            "label_mismatches": trained.parity.label_mismatches,
            "max_abs_prob_diff": trained.parity.max_abs_prob_diff,
            "tolerance": trained.parity.prob_tolerance,
            "description": trained.parity.description,
        },
    }
    text = json.dumps(meta, sort_keys=True, indent=2, allow_nan=False)
    return {MODEL_FILE: trained.onnx_bytes, CANDIDATE_FILE: text.encode("utf-8")}


def choose(candidates: Sequence[CandidateRecord]) -> CandidateRecord:
    """The parity-passing candidate with the best validation macro-F1 (ties: the first name)."""
    eligible = [candidate for candidate in candidates if candidate.parity_passed]
    if not eligible:
        raise NoEligibleCandidateError(f"none of {len(candidates)} candidates passed ONNX parity")
    return min(eligible, key=lambda c: (-c.validation_metrics["macro_f1"], c.name))


def test_rows(splits: pl.DataFrame) -> pl.DataFrame:
    """The test split, in a stable order."""
    rows = splits.filter(pl.col("split") == "test").sort("review_id")
    if rows.height == 0:
        raise SelectionError("the splits hold no test rows")
    return rows


@dataclass(frozen=True)
class Judgement:
    """The chosen model measured on test, the production model on the same rows, and the gate verdicts."""

    chosen: CandidateRecord
    classes: tuple[str, ...]
    test_metrics: Mapping[str, Any]
    facets: Mapping[str, Any]
    latency: Mapping[str, float]
    production_metrics: Mapping[str, Any] | None
    gates: Sequence[GateOutcome]
    smoke_cases: tuple[Mapping[str, str], ...] = ()

    @property
    def blocking_failures(self) -> list[GateOutcome]:
        return [gate for gate in self.gates if not gate.passed and gate.severity == "ERROR"]


def judge(
    chosen: CandidateRecord,
    test: pl.DataFrame,
    production_onnx: bytes | None,
    rules: GateRules,
    facets: Sequence[str],
    min_facet_rows: int,
    scoring: ScoringRules,
) -> Judgement:
    """Evaluate `chosen` on the test rows with ONNX Runtime, over the classes of its graph, and decide
    every gate (`facets`: the dataset contract's facet columns)."""
    model = ScoringModel.from_bytes(chosen.onnx_bytes, scoring, f"candidate {chosen.name}")
    classes = model.classes
    scored = predict_frame(model, test)
    metrics = classification_metrics(scored["label"].to_list(), scored["predicted_label"].to_list(), classes)
    by_facet = facet_metrics(scored, facets, min_facet_rows, classes)
    latency = single_review_latency(model, test["text"].head(LATENCY_SAMPLE_TEXTS).to_list())
    production_metrics, not_compared = None, None
    if production_onnx is not None:
        production_model = ScoringModel.from_bytes(production_onnx, scoring, "the production model")
        if production_model.classes != classes:
            not_compared = (
                f"the production model's classes {list(production_model.classes)} are not this model's "
                f"{list(classes)}: nothing to compare"
            )
        else:
            production = predict_frame(production_model, test)
            production_metrics = classification_metrics(
                production["label"].to_list(), production["predicted_label"].to_list(), classes
            )
    gates = evaluate_gates(
        metrics, len(chosen.onnx_bytes), latency, by_facet, production_metrics, rules, not_compared
    )
    cases = smoke_cases(scored, classes)
    return Judgement(chosen, classes, metrics, by_facet, latency, production_metrics, gates, cases)


def smoke_cases(scored: pl.DataFrame, classes: Sequence[str]) -> tuple[dict[str, str], ...]:
    """What a deployment's smoke test asks the endpoint (recorded in the model card): for each class, the
    test reviews of that class the model labels right with the most confidence, up to
    `SMOKE_CASES_PER_CLASS` (ties by review id). Answers the model gives with certainty offline, so a
    wrong one from the endpoint means it is not serving this model as registered."""
    cases: list[dict[str, str]] = []
    for label, probability in zip(classes, probability_columns(tuple(classes)), strict=True):
        confident = (
            scored.filter((pl.col("label") == label) & (pl.col(PREDICTION_COLUMN) == label))
            .sort([probability, "review_id"], descending=[True, False])
            .head(SMOKE_CASES_PER_CLASS)
        )
        cases += [{"text": text, "expected": label} for text in confident["text"].to_list()]
    return tuple(cases)
