"""Group `training`: one `candidate_models/<name>` asset per point of the search, and `best_model`.

Each candidate is its own asset (and its own step, so an executor can train them in parallel), stored
as ONNX + metrics. `best_model` picks the best parity-passing candidate by validation macro-F1,
evaluates the exact ONNX file on the test split, registers it, and gates it with blocking checks;
approval follows the `[registry] approval` policy.
"""

import hashlib
import json
from datetime import UTC, datetime

import dagster as dg
import onnx
import polars as pl
from dagster import AssetExecutionContext

from mlplatform.core.data.features import FeatureRules
from mlplatform.core.monitoring.drift import BASELINE_CARD_KEY, ModelVocabulary, TrainingBaseline
from mlplatform.core.platform.artifacts import Bundle, encode
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import RegistryRules
from mlplatform.core.scoring.model import ScoringRules
from mlplatform.core.training import evaluation, export, selection
from mlplatform.core.training import fit as training
from mlplatform.core.training.evaluation import GateRules, render_model_card_markdown
from mlplatform.core.training.fit import CandidateSpec, TrainingConfig, config_fingerprint, split_frames
from mlplatform.core.training.selection import (
    CANDIDATES_GROUP_PREFIX,
    MODEL_CARD_FILE,
    MODEL_CARD_MARKDOWN_FILE,
    MODEL_FILE,
    CandidateRecord,
    candidate_files,
    choose,
    judge,
    test_rows,
)
from mlplatform.defs.checks import check_result
from mlplatform.defs.execution import TRAINING_OP_TAGS, ExecutionRules, step_retry_policy
from mlplatform.defs.io_manager import versioned_output
from mlplatform.defs.resources import PlatformResource
from mlplatform.defs.versions import code_version

BEST_MODEL_GATES = {
    "quality_bar": "Test macro-F1 and every class's recall at or above their floors ([gates]).",
    "no_regression": "No macro-F1 drop beyond [gates].max_macro_f1_drop vs production, on the same test split.",
    "latency_budget": "Single-review ONNX Runtime p99 latency within [gates].max_p99_latency_ms.",
    "model_size_budget": "ONNX file size within [gates].max_model_size_bytes.",
}
FAIRNESS_GATE = "fairness_gap"


def candidate_key(spec: CandidateSpec) -> dg.AssetKey:
    """A short, stable asset key per search point (the readable spec name is its description)."""
    digest = hashlib.sha256(json.dumps(spec.params, sort_keys=True).encode()).hexdigest()[:8]
    return dg.AssetKey([CANDIDATES_GROUP_PREFIX, f"{spec.family}_{digest}"])


def _candidate_asset(
    spec: CandidateSpec,
    config: TrainingConfig,
    scoring: ScoringRules,
    version: str,
    retry_policy: dg.RetryPolicy | None,
) -> dg.AssetsDefinition:
    key = candidate_key(spec)

    @dg.asset(
        key=key,
        group_name="training",
        kinds={"sklearn", "onnx"},
        code_version=version,
        description=f"Candidate {spec.name}: fitted on train, offsets tuned on validation, exported to ONNX.",
        op_tags=TRAINING_OP_TAGS,
        retry_policy=retry_policy,
        check_specs=[
            dg.AssetCheckSpec(
                "onnx_parity",
                asset=key,
                description="ONNX Runtime agrees with scikit-learn on the validation split: same label on "
                "every row, probabilities within the tolerance. A candidate without parity is never selected.",
            )
        ],
    )
    def candidate(review_splits: pl.DataFrame):
        trained = training.train_candidate(spec, split_frames(review_splits), config, scoring)
        validation = trained.validation_metrics
        yield versioned_output(
            Bundle(candidate_files(trained)),
            metadata={
                "candidate": spec.name,
                "validation_macro_f1": validation["macro_f1"],
                "validation_balanced_accuracy": validation["balanced_accuracy"],
                "train_macro_f1": trained.train_metrics["macro_f1"],
                "fit_seconds": trained.fit_seconds,
                "onnx_size_bytes": len(trained.onnx_bytes),
                "hyperparameters": dg.MetadataValue.json(trained.hyperparameters),
            },
        )
        parity = trained.parity
        yield check_result(
            "onnx_parity",
            parity.passed,
            parity.description,
            {"label_mismatches": parity.label_mismatches, "max_abs_prob_diff": parity.max_abs_prob_diff},
        )

    return candidate


def build_training_assets(settings: Settings, config: TrainingConfig) -> list[dg.AssetsDefinition]:
    specs = training.candidate_specs(config)
    candidate_version = code_version([training, export], {"training": config_fingerprint(config)})
    # Training and registering are idempotent (content-addressed), so a step that raised may run again.
    retry_policy = step_retry_policy(ExecutionRules.from_settings(settings))
    scoring = ScoringRules.from_settings(settings)
    candidates = [_candidate_asset(spec, config, scoring, candidate_version, retry_policy) for spec in specs]
    inputs = {f"candidate_{index}": dg.AssetIn(key=candidate_key(spec)) for index, spec in enumerate(specs)}

    @dg.asset(
        name="best_model",
        group_name="training",
        kinds={"onnx"},
        ins={"review_splits": dg.AssetIn(), **inputs},
        code_version=code_version(
            [selection, evaluation],
            {name: settings.section(name) for name in ("gates", "registry", "features")},
        ),
        check_specs=[
            *(
                dg.AssetCheckSpec(name, asset="best_model", blocking=True, description=text)
                for name, text in BEST_MODEL_GATES.items()
            ),
            dg.AssetCheckSpec(
                FAIRNESS_GATE,
                asset="best_model",
                description="Recall and predicted-class-rate gaps between facet values under their bounds (WARN).",
            ),
        ],
        description="The best candidate, evaluated with ONNX Runtime on the test split, registered, gated.",
        retry_policy=retry_policy,
    )
    def best_model(
        context: AssetExecutionContext, review_splits: pl.DataFrame, platform: PlatformResource, **candidates
    ):
        settings_now = platform.settings()
        feature_rules = FeatureRules.from_settings(settings_now)
        registry = platform.registry()
        chosen = choose([CandidateRecord.from_files(bundle.files) for bundle in candidates.values()])
        production = registry.production()
        production_onnx = registry.verify(production.version).read_bytes() if production else None
        judgement = judge(
            chosen,
            test_rows(review_splits),
            production_onnx,
            GateRules.from_settings(settings_now),
            feature_rules.facets,
            feature_rules.min_facet_rows,
            ScoringRules.from_settings(settings_now),
        )
        card = evaluation.model_card(
            model_name=chosen.name,
            family=chosen.family,
            hyperparameters=chosen.hyperparameters,
            test_metrics=judgement.test_metrics,
            validation_metrics=chosen.validation_metrics,
            facets=judgement.facets,
            gates=judgement.gates,
            latency=judgement.latency,
            model_size_bytes=len(chosen.onnx_bytes),
            onnx_sha256=hashlib.sha256(chosen.onnx_bytes).hexdigest(),
            lineage={
                "split_versions": {"review_splits": encode(review_splits).sha256},
                "drop_hashes": sorted(review_splits["drop_hash"].unique().to_list()),
                "code_version": context.assets_def.code_versions_by_key[context.asset_key],
                "candidate_code_version": candidate_version,
                "training_config": config_fingerprint(config),
                "run_id": context.run_id,
                "created_at": datetime.now(UTC).isoformat(),
                "production_compared": production.version if production else None,
            },
        )
        # Recorded now, from the texts this version is fitted on: its drift is judged against them for good.
        card[BASELINE_CARD_KEY] = TrainingBaseline.from_splits(
            review_splits,
            judgement.test_metrics["confusion_matrix"],
            ModelVocabulary.from_onnx(onnx.load_from_string(chosen.onnx_bytes)),
        ).to_dict()
        markdown = render_model_card_markdown(card)
        test = judgement.test_metrics
        registered = registry.register(
            chosen.onnx_bytes,
            card,
            {
                "macro_f1": test["macro_f1"],
                "accuracy": test["accuracy"],
                "balanced_accuracy": test["balanced_accuracy"],
                **{f"recall_{label}": entry["recall"] for label, entry in test["per_class"].items()},
            },
            card_markdown=markdown,
        )
        failures = judgement.blocking_failures
        if registered.status == "PendingManualApproval":
            if failures:
                reason = "; ".join(f"{gate.name}: {gate.description}" for gate in failures)
                registered = registry.reject(registered.version, reason=reason, by="gates")
            elif RegistryRules.from_settings(settings_now).auto_approve:
                registered = registry.approve(
                    registered.version, by="gates", note="every blocking gate passed"
                )
        context.log.info(f"registered {registered.version} ({registered.status}) from {chosen.name}")

        yield versioned_output(
            Bundle(
                {
                    MODEL_FILE: chosen.onnx_bytes,
                    MODEL_CARD_FILE: json.dumps(card, indent=2, sort_keys=True).encode(),
                    MODEL_CARD_MARKDOWN_FILE: markdown.encode(),
                }
            ),
            metadata={
                "registry_version": registered.version,
                "registry_status": registered.status,
                "candidate": chosen.name,
                "test_macro_f1": test["macro_f1"],
                "test_accuracy": test["accuracy"],
                "test_balanced_accuracy": test["balanced_accuracy"],
                **{f"test_f1/{label}": entry["f1"] for label, entry in test["per_class"].items()},
                "latency_p99_ms": judgement.latency["p99_ms"],
                "onnx_sha256": registered.sha256,
                "model_card": dg.MetadataValue.md(markdown),
            },
        )
        for gate in judgement.gates:
            yield check_result(
                gate.name,
                gate.passed,
                gate.description,
                {key: value for key, value in gate.metadata.items() if isinstance(value, int | float | str)},
                warn_only=gate.severity == "WARN",
            )

    return [*candidates, best_model]
