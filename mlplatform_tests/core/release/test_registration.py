"""Registration of the best candidate: the card and its lineage, extra card sections, the approval policy."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from mlplatform.core.platform.settings import RegistryRules, Settings
from mlplatform.core.release.registration import (
    GATES_ACTOR,
    Provenance,
    RegistrationRules,
    register_best,
)
from mlplatform.core.release.registry import APPROVED, PENDING, REJECTED, ModelRegistry
from mlplatform.core.scoring.model import ScoringModel
from mlplatform.core.training.fit import TrainingConfig, train_candidates
from mlplatform.core.training.selection import MODEL_CARD_FILE, MODEL_FILE, CandidateRecord, candidate_files
from mlplatform_tests.core.data.generated import TWO_CLASS
from mlplatform_tests.core.scoring.models import RULES
from mlplatform_tests.core.training.training_data import (
    CLASSES,
    TRAINING_SEARCH,
    contract_frame,
    review_frame,
)

PROVENANCE = Provenance(
    run_id="run-1",
    code_version="code-1",
    candidate_code_version="cand-1",
    training_config="config-1",
    created_at=datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
)


@pytest.fixture(scope="module")
def splits() -> pl.DataFrame:
    frame = review_frame(rows=300)
    return frame.with_columns(pl.Series("drop_hash", ["d1", "d2"] * (frame.height // 2)))


@pytest.fixture(scope="module")
def candidates(splits: pl.DataFrame) -> list[CandidateRecord]:
    trained = train_candidates(splits, TrainingConfig.from_toml(TRAINING_SEARCH), RULES, CLASSES)
    return [CandidateRecord.from_files(candidate_files(candidate)) for candidate in trained]


def rules(settings: Settings, *, approval: str = "auto", **gate_changes: float) -> RegistrationRules:
    gates = settings.gates.replace(
        max_p99_latency_ms=1e9, max_recall_gap=1.0, max_predicted_rate_gap=1.0, **gate_changes
    )
    features = settings.features.replace(min_facet_rows=1)
    return RegistrationRules(gates, features, RegistryRules(approval=approval), RULES, ("division_name",))


def test_the_best_candidate_is_registered_with_its_card_and_approved_by_the_gates(
    tmp_path: Path, settings: Settings, splits: pl.DataFrame, candidates: list[CandidateRecord]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    seen: list[tuple[int, bytes]] = []

    def sections(frame: pl.DataFrame, test: dict, onnx_bytes: bytes) -> dict:
        seen.append((frame.height, onnx_bytes))
        return {"extra": {"test_macro_f1": test["macro_f1"]}}

    result = register_best(registry, candidates, splits, rules(settings), PROVENANCE, card_sections=sections)

    best = max(candidates, key=lambda c: c.validation_metrics["macro_f1"])
    assert result.chosen.name == best.name
    assert seen == [(splits.height, best.onnx_bytes)]
    assert result.version.status == APPROVED
    assert result.version.status_history[-1]["by"] == GATES_ACTOR
    card = registry.get(result.version.version).card
    assert card["extra"] == {"test_macro_f1": result.judgement.test_metrics["macro_f1"]}
    assert card["lineage"]["run_id"] == "run-1"
    assert card["lineage"]["drop_hashes"] == ["d1", "d2"]
    assert card["lineage"]["created_at"] == "2024-05-01T12:00:00+00:00"
    assert card["lineage"]["production_compared"] is None
    assert card["model"]["classes"] == list(CLASSES)
    # the smoke cases: per class the test reviews the model labels right with most confidence
    cases = card["smoke_cases"]
    assert {case["expected"] for case in cases} == set(CLASSES) and len(cases) == 2 * len(CLASSES)
    model = ScoringModel.from_bytes(best.onnx_bytes, RULES)
    assert model.predict([case["text"] for case in cases]).labels.tolist() == [
        case["expected"] for case in cases
    ]
    test_texts = set(splits.filter(pl.col("split") == "test")["text"].to_list())
    assert all(case["text"] in test_texts for case in cases)
    files = result.files()
    assert files[MODEL_FILE] == best.onnx_bytes
    assert b'"run_id": "run-1"' in files[MODEL_CARD_FILE]
    assert result.summary()["registry_version"] == result.version.version
    assert result.summary()["test_macro_f1"] == result.judgement.test_metrics["macro_f1"]


def test_a_failed_blocking_gate_rejects_and_a_manual_policy_waits(
    tmp_path: Path, settings: Settings, splits: pl.DataFrame, candidates: list[CandidateRecord]
) -> None:
    rejected = register_best(
        ModelRegistry(tmp_path / "strict"),
        candidates,
        splits,
        rules(settings, max_model_size_bytes=1),
        PROVENANCE,
    )
    assert rejected.version.status == REJECTED
    assert rejected.version.status_history[-1]["reason"].startswith("model_size_budget: ")

    waiting = register_best(
        ModelRegistry(tmp_path / "manual"), candidates, splits, rules(settings, approval="manual"), PROVENANCE
    )
    assert waiting.version.status == PENDING


def test_a_second_model_is_compared_with_production(
    tmp_path: Path, settings: Settings, splits: pl.DataFrame, candidates: list[CandidateRecord]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    first = register_best(registry, candidates[:1], splits, rules(settings), PROVENANCE)
    registry.promote(first.version.version, by="test")
    second = register_best(registry, candidates[1:], splits, rules(settings), PROVENANCE)
    assert second.judgement.production_metrics is not None
    assert (
        registry.get(second.version.version).card["lineage"]["production_compared"] == first.version.version
    )


def test_a_model_of_other_classes_is_not_compared_with_production(
    tmp_path: Path, settings: Settings, splits: pl.DataFrame, candidates: list[CandidateRecord]
) -> None:
    registry = ModelRegistry(tmp_path / "registry")
    first = register_best(registry, candidates[:1], splits, rules(settings), PROVENANCE)
    registry.promote(first.version.version, by="test")
    two = contract_frame(TWO_CLASS, rows=300).with_columns(pl.lit("d3").alias("drop_hash"))
    trained = train_candidates(two, TrainingConfig.from_toml(TRAINING_SEARCH), RULES, TWO_CLASS.classes)
    others = [CandidateRecord.from_files(candidate_files(candidate)) for candidate in trained]
    no_facets = dataclasses.replace(rules(settings), facets=TWO_CLASS.facet_columns)
    second = register_best(registry, others, two, no_facets, PROVENANCE)
    assert second.judgement.production_metrics is None
    gate = next(gate for gate in second.gates if gate.name == "no_regression")
    assert gate.passed and gate.metadata == {"evaluated": False}
    assert "are not this model's ['negative', 'positive']: nothing to compare" in gate.description
    card = registry.get(second.version.version).card
    assert card["model"]["classes"] == ["negative", "positive"]
    assert list(card["metrics"]["test"]["per_class"]) == ["negative", "positive"]
    assert card["facets"] == {}
