"""Group `deployment`: `sentiment_endpoint` (the production alias and what serves it) and `batch_predictions`.

sentiment_endpoint deploys the version best_model registered, found in the registry by the ONNX sha256
of best_model's own output (never "the newest in storage"):

- Approved, live endpoint configured (`[deployment] endpoint_url`): promote (atomic alias move), wait
  until the endpoint reports the version, smoke-test it over HTTP; on any failure restore both aliases
  exactly as they were (automatic rollback, a registry event with the reason).
- Approved, no endpoint: smoke-test the version's ONNX file in-process first and promote only when it
  passes; a failing model is rejected in the registry with the reason, so it is never promoted.
- Approved, with `[deployment] strategy` "shadow" or "canary" and a version in production already:
  smoke-test the version in-process and start its rollout instead of promoting it (the `rollout` asset,
  defs/rollout.py, judges it on live traffic and promotes or aborts it); a failing version is rejected.
  A newer version supersedes a rollout still running; a direct deployment ends one too.
- Pending manual approval, or rejected: nothing moves, the non-blocking `approval` check fails with the
  reason and the asset is not materialized, so every `mlplatform run` retries until a person decides.

Both approved cases run under the platform's deployment lock (core/release/deploy.py): a second run deploying
at the same time waits for the first to end (at most `[deployment] lock_timeout_s`, then the step fails
with the reason), on any Dagster storage; the `deployment` pool queues the step in the UI too.

batch_predictions scores one file of `lake/batch/` (partition key: its sha256) with the production
version at run time, read in the home's dataset contract's layout (or with a plain `text` column); the
file is never moved or deleted.
"""

import tempfile
from pathlib import Path

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from mlplatform.core.data.contract import DatasetContract
from mlplatform.core.platform.artifacts import Bundle
from mlplatform.core.platform.fsio import sha256_file
from mlplatform.core.platform.settings import DeploymentRules, Settings
from mlplatform.core.release import deploy, rollout
from mlplatform.core.release.deploy import DeployAction, SmokeResult
from mlplatform.core.release.registry import ModelVersion
from mlplatform.core.scoring import files as scoring_files
from mlplatform.core.scoring import model as scoring_model
from mlplatform.core.scoring.model import ScoringError
from mlplatform.defs.checks import check_result
from mlplatform.defs.execution import DEPLOYMENT_POOL, step_retry_policy
from mlplatform.defs.io_manager import versioned_output
from mlplatform.defs.resources import (
    EndpointError,
    EndpointResource,
    OfflineEndpointResource,
    PlatformResource,
)
from mlplatform.defs.versions import code_version

BATCHES = dg.DynamicPartitionsDefinition(name="batches")
SENTIMENT_ENDPOINT = "sentiment_endpoint"
BATCH_PREDICTIONS = "batch_predictions"
DEPLOYED_BY = "sentiment_endpoint"
ASSET_KEY = dg.AssetKey(SENTIMENT_ENDPOINT)


def batch_files(directory: Path) -> dict[str, Path]:
    """Every batch input under `directory` (hidden files skipped) by content sha256, in name order."""
    if not directory.is_dir():
        return {}
    files = sorted(path for path in directory.iterdir() if path.is_file() and not path.name.startswith("."))
    found: dict[str, Path] = {}
    for path in files:
        found.setdefault(sha256_file(path), path)
    return found


def _smoke(endpoint: EndpointResource, target: ModelVersion, rules: DeploymentRules) -> SmokeResult:
    """Ask the endpoint the version's smoke reviews and judge the answer (never raises for endpoint trouble)."""
    if endpoint.live:
        problem = endpoint.wait_for_version(target.version, rules.wait_timeout_s, rules.poll_interval_s)
        if problem is not None:
            return deploy.failed_smoke(problem)
    cases = deploy.smoke_cases(target.card)
    try:
        answer = endpoint.predict(deploy.smoke_request(cases), target)
    except EndpointError as exc:
        return deploy.failed_smoke(str(exc))
    return deploy.judge_smoke(
        answer.body, answer.latency_ms, target.version, rules.smoke_max_latency_ms, cases
    )


def _sentiment_endpoint_asset(settings: Settings) -> dg.AssetsDefinition:
    # A multi_asset only for can_subset: it makes the check outputs optional, so a version that waits for
    # approval reports `approval` and leaves the asset (and its smoke test) unmaterialized.
    @dg.multi_asset(
        name=SENTIMENT_ENDPOINT,
        outs={
            SENTIMENT_ENDPOINT: dg.AssetOut(
                group_name="deployment",
                kinds={"onnx"},
                is_required=False,
                code_version=code_version([deploy, rollout], settings.deployment),
                description="The production alias and what serves it: the approved best model, deployed "
                "and smoke-tested.",
            )
        },
        ins={"best_model": dg.AssetIn("best_model")},
        can_subset=True,
        # One deployment at a time across all runs: the pool queues the step (its limit is in the
        # instance's dagster.yaml) and the deployment lock makes it strict on any storage.
        # No retry policy: a half-done deployment is rolled back and reported, never run again blindly.
        pool=DEPLOYMENT_POOL,
        check_specs=[
            dg.AssetCheckSpec(
                "smoke_test",
                asset=SENTIMENT_ENDPOINT,
                blocking=True,
                description="Reviews with known answers (the model card's smoke cases): labels right, the "
                "answer names the deployed version, latency within [deployment].smoke_max_latency_ms. A "
                "failure rolls the alias back.",
            ),
            dg.AssetCheckSpec(
                "approval",
                asset=SENTIMENT_ENDPOINT,
                description="best_model's version is Approved; fails (warning) while it waits for a person.",
            ),
        ],
    )
    def sentiment_endpoint(
        context: AssetExecutionContext,
        best_model: Bundle,
        platform: PlatformResource,
        endpoint: EndpointResource,
    ):
        registry = platform.registry()
        sha256 = deploy.best_model_sha256(best_model.files)
        target = deploy.version_with_sha256(registry.list(), sha256)
        decision = deploy.deploy_decision(target)
        yield check_result(
            "approval",
            decision.action == DeployAction.DEPLOY,
            decision.reason,
            warn_only=True,
            asset_key=ASSET_KEY,
        )
        if decision.action != DeployAction.DEPLOY:
            context.log.warning(f"not deploying: {decision.reason}")
            return

        home = platform.platform_home()
        rules = platform.settings().deployment
        in_process = OfflineEndpointResource(home=str(home.root))
        deployment = rollout.deploy_by_strategy(
            home,
            registry,
            target,
            live_smoke_test=lambda version: _smoke(endpoint, version, rules),
            offline_smoke_test=lambda version: _smoke(in_process, version, rules),
            rules=rules,
            live=endpoint.live,
            endpoint_url=endpoint.location(),
            by=DEPLOYED_BY,
        )
        context.log.info(
            f"{deployment.outcome.state.value} {target.version} after {deployment.outcome.lock_wait_s:.1f} s "
            f"waiting for the deployment lock; production is {deployment.production}"
        )
        yield versioned_output(
            deployment.record(), output_name=SENTIMENT_ENDPOINT, metadata=deployment.metadata()
        )
        smoke = deployment.outcome.smoke
        yield check_result(
            "smoke_test",
            smoke.passed,
            deployment.smoke_description,
            {
                "latency_ms": smoke.latency_ms,
                "max_latency_ms": rules.smoke_max_latency_ms,
                "state": deployment.outcome.state.value,
            },
            asset_key=ASSET_KEY,
        )

    return sentiment_endpoint


def _batch_predictions_asset(settings: Settings, contract: DatasetContract) -> dg.AssetsDefinition:
    @dg.asset(
        name=BATCH_PREDICTIONS,
        group_name="deployment",
        partitions_def=BATCHES,
        # A plain dependency: the scoring version is read from the production alias at run time, so the
        # sentiment_endpoint record need not be loaded (and a partitioned asset never waits on it).
        deps=[SENTIMENT_ENDPOINT],
        output_required=False,
        kinds={"onnx", "polars"},
        code_version=code_version([scoring_files, scoring_model], settings.scoring, contract),
        check_specs=[
            dg.AssetCheckSpec(
                "row_count",
                asset=BATCH_PREDICTIONS,
                blocking=True,
                description="Rows in = rows out; an input that cannot be scored fails with the reason.",
            )
        ],
        description="One file of lake/batch scored by the production model (row_id, label, p_*, model_version).",
        # Scoring one file again is harmless: only transient trouble (I/O) makes a retry worth it.
        retry_policy=step_retry_policy(settings.execution),
    )
    def batch_predictions(context: AssetExecutionContext, platform: PlatformResource):
        home = platform.platform_home()
        path = batch_files(home.batch).get(context.partition_key)
        if path is None:
            yield check_result(
                "row_count", False, f"no file under {home.batch} has sha256 {context.partition_key}"
            )
            return
        production = platform.registry().production()
        if production is None:
            raise deploy.DeployError(
                "no production model: deploy one (sentiment_endpoint) before batch scoring"
            )
        rules = platform.settings().scoring
        model = scoring_model.load_model(production.onnx_path, production.sha256, rules)
        with tempfile.TemporaryDirectory(dir=home.root) as scratch:
            try:
                summary = scoring_files.score_file(
                    path,
                    Path(scratch) / "predictions.parquet",
                    model,
                    production.version,
                    rules.chunk_rows,
                    contract=platform.contract(),
                )
            except ScoringError as exc:  # bad input (ScoringInputError) or rows in != rows out
                yield check_result("row_count", False, f"{path.name}: {exc}", {"file": path.name})
                return
            predictions = pl.read_parquet(summary.output_path)
        yield versioned_output(
            predictions,
            metadata={
                "file": path.name,
                "model_version": production.version,
                "rows_in": summary.rows_in,
                "no_tokens": summary.no_tokens,
                "seconds": summary.seconds,
            },
            extra={
                "input_file": path.name,
                "input_sha256": context.partition_key,
                "model_version": production.version,
            },
        )
        passed = summary.rows_in == predictions.height
        yield check_result(
            "row_count",
            passed,
            f"{summary.rows_in} rows in, {predictions.height} rows out",
            {"rows_in": summary.rows_in, "rows_out": predictions.height},
        )

    return batch_predictions


def build_deployment_assets(settings: Settings, contract: DatasetContract) -> list[dg.AssetsDefinition]:
    return [_sentiment_endpoint_asset(settings), _batch_predictions_asset(settings, contract)]
