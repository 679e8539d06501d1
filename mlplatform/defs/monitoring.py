"""Group `monitoring`: what the endpoint saw and how it did.

- `capture`: an observable source downstream of `sentiment_endpoint`: the endpoint's capture segments
  (written by the endpoint, not by a run), observed at the start of every monitoring run with the
  capture's fingerprint as its data version, so lineage reads model -> endpoint -> captured predictions
  -> monitors, and a grown capture makes `prediction_log` stale.
- `prediction_log`: the capture store (`capture/`) as one table, deduplicated by (capture_id, row), with
  the model version of each row. Unpartitioned on purpose: the capture only grows (append-only segments),
  so each version of the log is the whole history and the monitors below always see all of it.
- `drift_report`: every model version in the log against its own training baseline, recorded in its
  model card when it was registered (`drift_baseline`: its train texts' lengths and OOV rate, its test
  predicted-class shares), with the vocabulary of its ONNX graph. A version registered before baselines
  were recorded gets one from the split version its card records; with that gone too its checks are a
  WARN "no training baseline recorded". Never the current `review_splits`: new data does not move an
  old version's baseline. Every version's numbers are metadata (`<version>/<metric>`); the checks
  judge the version in production now, the one whose behaviour can still be acted on.
- `live_model_quality`: the log joined with ground truth landed as CSV files under
  `lake/landing/labels/`, read by the dataset contract (`review_id` or its id columns; its label source
  column, or `label` with class names); the check fails when the production version's live macro-F1
  falls more than `[monitoring].max_macro_f1_drop` below its test one.
- `product_quality_report`: products (the contract's `product` column) drawing an unusual share of
  predictions of the watched class (product_report.watched_class), taxonomy from `reviews`, written as a
  Bundle of a formula-safe CSV and a Markdown table. A contract without a product column gets no
  report: the materialization says why (metadata `skipped`).
- `bias_drift`: predicted-class rates per facet value of the dataset contract on the production
  version's live traffic, by day, against its model card's test rates (core/monitoring/bias_drift.py):
  the check fails WARN / ERROR when a value's gap to all traffic moved past `[monitoring.bias_drift]`
  bounds. Facet values come with the request, or from the product's rows in `reviews` when the facet is
  a property of the product.
- `system_health`: the endpoint's `/metrics`: request and error rate, p50/p99 latency of the inference
  routes over the endpoint's recent window (`[serving].health_window_s`, metadata `window_s`), CPU share
  since the process started, memory now; with no endpoint configured its checks fail as a WARN "no
  endpoint configured", never a pretend pass.

Every check is non-blocking: monitoring reports, it never stops the pipeline. `mlplatform run` runs the
group when the capture or the labels changed (`monitoring_fingerprint`), and `monitoring_schedule` runs it on the daemon.

The monitors themselves are core's (core/monitoring/); each asset here hands one of them its inputs and
turns its verdicts into check results.
"""

import time

import dagster as dg
import polars as pl
from dagster import AssetExecutionContext

from mlplatform.core.monitoring import (
    bias_drift,
    capture,
    drift,
    health,
    inputs,
    live_quality,
    prediction_log,
    product_report,
)
from mlplatform.core.monitoring.drift import judge_drift
from mlplatform.core.monitoring.health import ERROR_RATE_CHECK, LATENCY_CHECK, judge_system_health
from mlplatform.core.monitoring.inputs import MonitoringInputs, read_prediction_log
from mlplatform.core.monitoring.live_quality import LIVE_QUALITY_CHECK, judge_live_quality
from mlplatform.core.monitoring.rules import DRIFT_METRICS
from mlplatform.core.platform.artifacts import ArtifactStore, Bundle
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.platform.storage import location_from_settings
from mlplatform.defs.checks import monitor_check
from mlplatform.defs.deployment import SENTIMENT_ENDPOINT
from mlplatform.defs.io_manager import versioned_output
from mlplatform.defs.resources import EndpointError, EndpointResource, PlatformResource
from mlplatform.defs.versions import code_version

MONITORING_GROUP = "monitoring"
CAPTURE = "capture"
PREDICTION_LOG = "prediction_log"
DRIFT_REPORT = "drift_report"
LIVE_MODEL_QUALITY = "live_model_quality"
PRODUCT_QUALITY_REPORT = "product_quality_report"
BIAS_DRIFT = "bias_drift"
SYSTEM_HEALTH = "system_health"
MONITORING_ASSETS: tuple[str, ...] = (
    PREDICTION_LOG,
    DRIFT_REPORT,
    LIVE_MODEL_QUALITY,
    PRODUCT_QUALITY_REPORT,
    BIAS_DRIFT,
    SYSTEM_HEALTH,
)


def monitoring_inputs(home: PlatformHome, settings: Settings) -> MonitoringInputs:
    """The home's capture (local directory and `[storage] capture` location) and labels landing."""
    return MonitoringInputs(
        home.capture, location_from_settings(home, settings.storage, "capture"), home.labels
    )


def monitoring_fingerprint(home: PlatformHome, settings: Settings) -> str | None:
    """What the monitors read from outside the graph, hashed (None: nothing captured yet): the runner's
    and the schedule's cue that monitoring is behind."""
    return monitoring_inputs(home, settings).fingerprint()


# ---- capture ----------------------------------------------------------------------------------------


def _capture_asset() -> dg.AssetsDefinition:
    @dg.multi_observable_source_asset(
        name=CAPTURE,
        specs=[
            dg.AssetSpec(
                CAPTURE,
                deps=[SENTIMENT_ENDPOINT],
                group_name=MONITORING_GROUP,
                kinds={"jsonl"},
                description="The endpoint's request/response capture (append-only segments under capture/ "
                "and the [storage] capture location); data version: its segment names and sizes.",
            )
        ],
    )
    def capture_observation(platform: PlatformResource):
        summary = monitoring_inputs(platform.platform_home(), platform.settings()).capture_summary()
        yield dg.ObserveResult(
            asset_key=CAPTURE,
            data_version=dg.DataVersion(summary.data_version),
            metadata={"segments": summary.segments, "size_bytes": summary.size_bytes},
        )

    return capture_observation


# ---- prediction_log ---------------------------------------------------------------------------------


def _prediction_log_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=PREDICTION_LOG,
        group_name=MONITORING_GROUP,
        deps=[CAPTURE],
        kinds={"polars"},
        code_version=code_version([prediction_log, inputs, capture]),
        description="Every captured prediction (one row per request row, first capture kept) with its "
        "model version; unpartitioned because the capture only grows.",
    )
    def prediction_log_asset(platform: PlatformResource):
        # A home that never served has no capture directory yet: its log is empty, not an error.
        log = read_prediction_log(monitoring_inputs(platform.platform_home().ensure(), platform.settings()))
        return versioned_output(log.frame, metadata=log.metadata())

    return prediction_log_asset


# ---- drift_report -----------------------------------------------------------------------------------


def _drift_report_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=DRIFT_REPORT,
        group_name=MONITORING_GROUP,
        ins={PREDICTION_LOG: dg.AssetIn()},
        kinds={"polars"},
        code_version=code_version([drift, prediction_log], settings.monitoring),
        check_specs=[
            dg.AssetCheckSpec(
                metric,
                asset=DRIFT_REPORT,
                description=f"{metric} of the production version's traffic under its [monitoring] bounds "
                "(WARN / ERROR); too few rows is a WARN.",
            )
            for metric in DRIFT_METRICS
        ],
        description="Text-aware drift of each model version's live traffic against its training baseline.",
    )
    def drift_report(prediction_log: pl.DataFrame, platform: PlatformResource):
        settings_now = platform.settings()
        judgement = judge_drift(
            prediction_log,
            ArtifactStore.from_settings(platform.platform_home(), settings_now.storage),
            platform.registry(),
            settings_now.monitoring,
        )
        yield versioned_output(judgement.to_dict(), metadata=judgement.metadata())
        for outcome in judgement.outcomes:
            yield monitor_check(outcome, DRIFT_REPORT)

    return drift_report


# ---- live_model_quality -----------------------------------------------------------------------------


def _live_model_quality_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=LIVE_MODEL_QUALITY,
        group_name=MONITORING_GROUP,
        ins={PREDICTION_LOG: dg.AssetIn()},
        kinds={"polars"},
        code_version=code_version([live_quality, inputs], settings.monitoring),
        check_specs=[
            dg.AssetCheckSpec(
                LIVE_QUALITY_CHECK,
                asset=LIVE_MODEL_QUALITY,
                description="The production version's live macro-F1 at most [monitoring].max_macro_f1_drop "
                "below its test macro-F1 (ERROR); too few labelled rows is a WARN.",
            )
        ],
        description="Predictions joined with ground truth from lake/landing/labels/*.csv (review_id or "
        "the contract's id columns; its label source, or label): macro-F1, per-class recall and confusion "
        "matrix per version and day.",
    )
    def live_model_quality(prediction_log: pl.DataFrame, platform: PlatformResource):
        home, settings_now = platform.platform_home(), platform.settings()
        judgement = judge_live_quality(
            prediction_log,
            monitoring_inputs(home, settings_now).labels(platform.contract()),
            platform.registry(),
            settings_now.monitoring,
        )
        yield versioned_output(judgement.quality.to_dict(), metadata=judgement.metadata())
        yield monitor_check(judgement.outcome, LIVE_MODEL_QUALITY)

    return live_model_quality


# ---- product_quality_report -------------------------------------------------------------------------


def _product_quality_report_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=PRODUCT_QUALITY_REPORT,
        group_name=MONITORING_GROUP,
        ins={PREDICTION_LOG: dg.AssetIn(), "reviews": dg.AssetIn()},
        kinds={"csv", "markdown"},
        code_version=code_version([product_report], settings.monitoring),
        description="Products with an unusual share of predictions of the watched class (Wilson lower "
        "bound above the overall rate), as a formula-safe CSV and Markdown; skipped, with the reason in its "
        "metadata, when the dataset contract has no product column.",
    )
    def product_quality_report(
        context: AssetExecutionContext,
        prediction_log: pl.DataFrame,
        reviews: pl.DataFrame,
        platform: PlatformResource,
    ):
        report = product_report.product_report(
            prediction_log,
            reviews,
            platform.settings().monitoring,
            platform.contract(),
            platform.explainer(),
        )
        if report.skipped:
            context.log.info(f"product_quality_report skipped: {report.note}")
        return versioned_output(
            Bundle(report.files()),
            metadata={**report.metadata(), "top_products": dg.MetadataValue.md(report.markdown)},
        )

    return product_quality_report


# ---- bias_drift -------------------------------------------------------------------------------------


def _bias_drift_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=BIAS_DRIFT,
        group_name=MONITORING_GROUP,
        ins={PREDICTION_LOG: dg.AssetIn(), "reviews": dg.AssetIn()},
        kinds={"polars"},
        code_version=code_version([bias_drift], settings.monitoring.bias_drift),
        check_specs=[
            dg.AssetCheckSpec(
                bias_drift.BIAS_DRIFT_CHECK,
                asset=BIAS_DRIFT,
                description="No facet value's predicted-class gap to all traffic moved past "
                "[monitoring.bias_drift] bounds from the production version's test split (WARN / ERROR); "
                "too few live predictions per value is a WARN.",
            )
        ],
        description="Predicted-class rates per facet value of the dataset contract on live traffic, by day, "
        "against the production version's model card (its test split).",
    )
    def bias_drift_asset(prediction_log: pl.DataFrame, reviews: pl.DataFrame, platform: PlatformResource):
        report = bias_drift.judge_bias_drift(
            prediction_log,
            reviews,
            platform.registry(),
            platform.contract(),
            platform.settings().monitoring.bias_drift,
        )
        yield versioned_output(report.to_dict(), metadata=report.metadata())
        yield monitor_check(report.outcome, BIAS_DRIFT)

    return bias_drift_asset


# ---- system_health ----------------------------------------------------------------------------------


def _system_health_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=SYSTEM_HEALTH,
        group_name=MONITORING_GROUP,
        kinds={"prometheus"},
        code_version=code_version([health], settings.monitoring),
        check_specs=[
            dg.AssetCheckSpec(
                ERROR_RATE_CHECK,
                asset=SYSTEM_HEALTH,
                description="5xx share of recent inference requests under [monitoring].max_error_rate.",
            ),
            dg.AssetCheckSpec(
                LATENCY_CHECK,
                asset=SYSTEM_HEALTH,
                description="p99 latency of recent inference requests under [monitoring].max_p99_latency_ms.",
            ),
        ],
        description=(
            "The endpoint's request rate, error rate and p50/p99 latency over its recent window "
            "([serving].health_window_s), CPU share since it started and memory, from /metrics."
        ),
    )
    def system_health(context: AssetExecutionContext, platform: PlatformResource, endpoint: EndpointResource):
        try:
            text, unreachable = endpoint.metrics_text(), None
        except EndpointError as exc:
            text, unreachable = None, str(exc)
        judgement = judge_system_health(
            endpoint.location(), text, unreachable, platform.settings().monitoring, time.time()
        )
        context.log.info(f"system health: {judgement.record}")
        yield versioned_output(judgement.record, metadata=judgement.metadata())
        for outcome in judgement.outcomes:
            yield monitor_check(outcome, SYSTEM_HEALTH)

    return system_health


def build_monitoring_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return [
        _capture_asset(),
        _prediction_log_asset(settings),
        _drift_report_asset(settings),
        _live_model_quality_asset(settings),
        _product_quality_report_asset(settings),
        _bias_drift_asset(settings),
        _system_health_asset(settings),
    ]
