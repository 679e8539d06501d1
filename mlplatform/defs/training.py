"""Group `training`: one `candidate_models/<name>` asset per point of the search, and `best_model`.

Each candidate is its own asset (and its own step, so an executor can train them in parallel), stored
as ONNX + metrics. `best_model` picks the best parity-passing candidate by validation macro-F1,
evaluates the exact ONNX file on the test split, registers it, and gates it with blocking checks;
approval follows the `[registry] approval` policy.
"""

from datetime import UTC, datetime

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from mlplatform.core.monitoring.drift import baseline_card_section
from mlplatform.core.platform.artifacts import Bundle
from mlplatform.core.platform.settings import (
    ScoringRules,
    Settings,
)
from mlplatform.core.release import registration
from mlplatform.core.release.registration import Provenance, RegistrationRules, register_best
from mlplatform.core.training import evaluation, export, fit, selection
from mlplatform.core.training.fit import (
    CandidateSpec,
    TrainingConfig,
    asset_names,
    config_fingerprint,
    split_frames,
)
from mlplatform.core.training.selection import CANDIDATES_GROUP_PREFIX, CandidateRecord, candidate_files
from mlplatform.defs.checks import check_result
from mlplatform.defs.execution import TRAINING_OP_TAGS, step_retry_policy
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


def candidate_key(asset_name: str) -> dg.AssetKey:
    """`candidate_models/<asset name>`: the family and the hyperparameters that vary (fit.asset_names)."""
    return dg.AssetKey([CANDIDATES_GROUP_PREFIX, asset_name])


def _candidate_asset(
    spec: CandidateSpec,
    key: dg.AssetKey,
    config: TrainingConfig,
    scoring: ScoringRules,
    version: str,
    retry_policy: dg.RetryPolicy | None,
) -> dg.AssetsDefinition:

    @dg.asset(
        key=key,
        group_name="training",
        kinds={"sklearn", "onnx"},
        code_version=version,
        description=f"Candidate {spec.name}: fitted on train for the dataset contract's classes, class "
        "offsets tuned by cross-validation on train, exported to ONNX.",
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
    def candidate(review_splits: pl.DataFrame, platform: PlatformResource):
        classes = platform.contract().classes
        trained = fit.train_candidate(spec, split_frames(review_splits), config, scoring, classes)
        validation = trained.validation_metrics
        yield versioned_output(
            Bundle(candidate_files(trained)),
            metadata={
                "candidate": spec.name,
                "validation_macro_f1": validation["macro_f1"],
                "validation_balanced_accuracy": validation["balanced_accuracy"],
                "train_macro_f1": trained.train_metrics["macro_f1"],
                "fit_seconds": trained.fit_seconds,
                "classes": ", ".join(trained.classes),
                "class_offsets_kept": trained.offset_tuning.kept,
                "onnx_size_bytes": len(trained.onnx_bytes),
                "hyperparameters": dg.MetadataValue.json(trained.hyperparameters),
            },
        )
        parity = trained.parity
        yield check_result(
            "onnx_parity",
            parity.passed,
            parity.description,
            {
                "rows": parity.rows,
                "label_mismatches": parity.label_mismatches,
                "max_abs_prob_diff": parity.max_abs_prob_diff,
                "prob_tolerance": parity.prob_tolerance,
            },
        )

    return candidate


def build_training_assets(settings: Settings, config: TrainingConfig) -> list[dg.AssetsDefinition]:
    specs = fit.candidate_specs(config)
    candidate_version = code_version([fit, export], {"training": config_fingerprint(config)})
    # Training and registering are idempotent (content-addressed), so a step that raised may run again.
    retry_policy = step_retry_policy(settings.execution)
    keys = {name: candidate_key(asset_name) for name, asset_name in asset_names(specs).items()}
    scoring = settings.scoring
    candidates = [
        _candidate_asset(spec, keys[spec.name], config, scoring, candidate_version, retry_policy)
        for spec in specs
    ]
    inputs = {f"candidate_{index}": dg.AssetIn(key=keys[spec.name]) for index, spec in enumerate(specs)}

    @dg.asset(
        name="best_model",
        group_name="training",
        kinds={"onnx"},
        ins={"review_splits": dg.AssetIn(), **inputs},
        code_version=code_version(
            [selection, evaluation, registration],
            {"gates": settings.gates, "registry": settings.registry, "features": settings.features},
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
        settings_now, contract = platform.settings(), platform.contract()
        registration = register_best(
            platform.registry(),
            [CandidateRecord.from_files(bundle.files) for bundle in candidates.values()],
            review_splits,
            RegistrationRules(
                settings_now.gates,
                settings_now.features,
                settings_now.registry,
                settings_now.scoring,
                contract.facet_columns,
            ),
            Provenance(
                run_id=context.run_id,
                code_version=context.assets_def.code_versions_by_key[context.asset_key],
                candidate_code_version=candidate_version,
                training_config=config_fingerprint(config),
                created_at=datetime.now(UTC),
            ),
            card_sections=baseline_card_section,
        )
        registered = registration.version
        context.log.info(
            f"registered {registered.version} ({registered.status}) from {registration.chosen.name}"
        )
        yield versioned_output(
            Bundle(registration.files()),
            metadata={
                **registration.summary(),
                "model_card": dg.MetadataValue.md(registration.card_markdown),
            },
        )
        for gate in registration.gates:
            yield check_result(
                gate.name, gate.passed, gate.description, gate.metadata, warn_only=gate.severity == "WARN"
            )

    return [*candidates, best_model]
