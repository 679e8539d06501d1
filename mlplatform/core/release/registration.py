"""From the trained candidates to a registered model version: choose, judge, write the card, register,
apply the approval policy. What the `best_model` asset does, as one call.

`register_best` picks the parity-passing candidate with the best validation macro-F1, evaluates its exact
ONNX bytes on the test split with ONNX Runtime (and the production model on the same rows), builds the
model card with its lineage, registers the version and applies `[registry] approval`: a version that
fails a blocking gate is rejected by "gates"; one that passes every blocking gate is approved by "gates"
under the `auto` policy, else it waits for a person (PendingManualApproval). Registration is
content-addressed, so calling it again with the same inputs finds the same version.

The caller hands in where the run stands (`Provenance`) and, as `card_sections`, whatever later stages
want recorded in the card at registration: the monitoring stage's drift baseline (computed from the
texts this version is fitted on, so new data never moves it). Release comes before monitoring, so this
module never imports it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from mlplatform.core.platform.artifacts import encode
from mlplatform.core.platform.settings import FeatureRules, GateRules, RegistryRules, ScoringRules
from mlplatform.core.release.registry import PENDING, ModelRegistry, ModelVersion
from mlplatform.core.training.evaluation import GateOutcome, model_card, render_model_card_markdown
from mlplatform.core.training.selection import (
    MODEL_CARD_FILE,
    MODEL_CARD_MARKDOWN_FILE,
    MODEL_FILE,
    CandidateRecord,
    Judgement,
    choose,
    judge,
    test_rows,
)

GATES_ACTOR = "gates"
"""Who approves or rejects a version by the gates' verdict (the registry's event log names it)."""

CardSections = Callable[[pl.DataFrame, Mapping[str, Any], bytes], Mapping[str, Any]]
"""Extra model card sections from (the splits, the test metrics, the ONNX bytes)."""


@dataclass(frozen=True)
class RegistrationRules:
    """What registration reads: the gates, the facets they judge (the dataset contract's facet columns)
    and their row floor, the approval policy, the scoring rules."""

    gates: GateRules
    features: FeatureRules
    registry: RegistryRules
    scoring: ScoringRules
    facets: tuple[str, ...]


@dataclass(frozen=True)
class Provenance:
    """Where a registration comes from, recorded in the card's lineage."""

    run_id: str
    code_version: str
    candidate_code_version: str
    training_config: str
    created_at: datetime


@dataclass(frozen=True)
class Registration:
    """The registered version, the judgement that gated it and the card it was registered with."""

    judgement: Judgement
    card: Mapping[str, Any]
    card_markdown: str
    version: ModelVersion

    @property
    def chosen(self) -> CandidateRecord:
        return self.judgement.chosen

    @property
    def gates(self) -> Sequence[GateOutcome]:
        return self.judgement.gates

    def files(self) -> dict[str, bytes]:
        """The files of a `best_model` bundle: the ONNX model and its card as JSON and Markdown."""
        return {
            MODEL_FILE: self.chosen.onnx_bytes,
            MODEL_CARD_FILE: json.dumps(self.card, indent=2, sort_keys=True).encode(),
            MODEL_CARD_MARKDOWN_FILE: self.card_markdown.encode(),
        }

    def summary(self) -> dict[str, str | float]:
        """The registration's numbers and names, flat (the asset's metadata)."""
        test = self.judgement.test_metrics
        return {
            "registry_version": self.version.version,
            "registry_status": self.version.status,
            "candidate": self.chosen.name,
            "test_macro_f1": test["macro_f1"],
            "test_accuracy": test["accuracy"],
            "test_balanced_accuracy": test["balanced_accuracy"],
            **{f"test_f1/{label}": entry["f1"] for label, entry in test["per_class"].items()},
            "latency_p99_ms": self.judgement.latency["p99_ms"],
            "onnx_sha256": self.version.sha256,
        }


def registry_metrics(test: Mapping[str, Any]) -> dict[str, float]:
    """The test numbers the registry lists beside a version."""
    return {
        "macro_f1": test["macro_f1"],
        "accuracy": test["accuracy"],
        "balanced_accuracy": test["balanced_accuracy"],
        **{f"recall_{label}": entry["recall"] for label, entry in test["per_class"].items()},
    }


def register_best(
    registry: ModelRegistry,
    candidates: Sequence[CandidateRecord],
    splits: pl.DataFrame,
    rules: RegistrationRules,
    provenance: Provenance,
    card_sections: CardSections | None = None,
) -> Registration:
    """Choose the best candidate, judge it on the test split, register it with its card, apply approval."""
    chosen = choose(candidates)
    production = registry.production()
    production_onnx = registry.verify(production.version).read_bytes() if production else None
    judgement = judge(
        chosen,
        test_rows(splits),
        production_onnx,
        rules.gates,
        rules.facets,
        rules.features.min_facet_rows,
        rules.scoring,
    )
    card = model_card(
        model_name=chosen.name,
        family=chosen.family,
        classes=judgement.classes,
        hyperparameters=chosen.hyperparameters,
        test_metrics=judgement.test_metrics,
        validation_metrics=chosen.validation_metrics,
        facets=judgement.facets,
        gates=judgement.gates,
        latency=judgement.latency,
        model_size_bytes=len(chosen.onnx_bytes),
        onnx_sha256=hashlib.sha256(chosen.onnx_bytes).hexdigest(),
        lineage={
            "split_versions": {"review_splits": encode(splits).sha256},
            "drop_hashes": sorted(splits["drop_hash"].unique().to_list()),
            "code_version": provenance.code_version,
            "candidate_code_version": provenance.candidate_code_version,
            "training_config": provenance.training_config,
            "run_id": provenance.run_id,
            "created_at": provenance.created_at.isoformat(),
            "production_compared": production.version if production else None,
        },
        smoke_cases=judgement.smoke_cases,
    )
    if card_sections is not None:
        card.update(card_sections(splits, judgement.test_metrics, chosen.onnx_bytes))
    markdown = render_model_card_markdown(card)
    registered = registry.register(
        chosen.onnx_bytes, card, registry_metrics(judgement.test_metrics), card_markdown=markdown
    )
    return Registration(
        judgement, card, markdown, apply_approval(registry, registered, judgement, rules.registry)
    )


def apply_approval(
    registry: ModelRegistry, registered: ModelVersion, judgement: Judgement, rules: RegistryRules
) -> ModelVersion:
    """A pending version is rejected when a blocking gate failed, approved when all passed under the
    `auto` policy; anything else (manual policy, or already decided) is left as it is."""
    if registered.status != PENDING:
        return registered
    failures = judgement.blocking_failures
    if failures:
        reason = "; ".join(f"{gate.name}: {gate.description}" for gate in failures)
        return registry.reject(registered.version, reason=reason, by=GATES_ACTOR)
    if rules.auto_approve:
        return registry.approve(registered.version, by=GATES_ACTOR, note="every blocking gate passed")
    return registered
