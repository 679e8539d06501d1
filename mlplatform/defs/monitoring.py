"""Group `monitoring`: what the endpoint saw and how it did.

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
  `lake/landing/labels/` (columns `review_id` and `label` or `rating`); the check fails when the
  production version's live macro-F1 falls more than `[monitoring].max_macro_f1_drop` below its test one.
- `product_quality_report`: products drawing an unusual share of negative predictions (taxonomy from
  `reviews`), written as a Bundle of a formula-safe CSV and a Markdown table.
- `system_health`: the endpoint's `/metrics`: request and error rate, p50/p99 latency of the inference
  routes over the endpoint's recent window (`[serving].health_window_s`, metadata `window_s`), CPU share
  since the process started, memory now; with no endpoint configured its checks fail as a WARN "no
  endpoint configured", never a pretend pass.

Every check is non-blocking: monitoring reports, it never stops the pipeline. `mlplatform run` runs the
group when the capture or the labels changed (`monitoring_fingerprint`), and `monitoring_schedule` runs it on the daemon.
"""

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import onnx
import polars as pl
from dagster import AssetExecutionContext

from mlplatform.core import drift, live_quality, monitoring, product_report
from mlplatform.core.artifacts import ArtifactNotFound, Bundle
from mlplatform.core.drift import (
    BASELINE_CARD_KEY,
    DriftBaseline,
    DriftReport,
    MissingBaseline,
    ModelVocabulary,
    TrainingBaseline,
)
from mlplatform.core.home import PlatformHome
from mlplatform.core.live_quality import LIVE_QUALITY_CHECK, ground_truth
from mlplatform.core.monitoring import (
    DRIFT_METRICS,
    ERROR,
    ERROR_RATE_CHECK,
    LATENCY_CHECK,
    WARN,
    MonitoringRules,
    MonitorOutcome,
    health_outcomes,
    not_enough_data,
    system_health_numbers,
)
from mlplatform.core.rebuild import recorded_splits
from mlplatform.core.registry import ModelRegistry
from mlplatform.core.settings import Settings
from mlplatform.core.storage import StorageLocation, location_from_settings
from mlplatform.defs.checks import check_result
from mlplatform.defs.io_manager import versioned_output
from mlplatform.defs.resources import EndpointError, EndpointResource, PlatformResource
from mlplatform.defs.versions import code_version
from mlplatform.serving import capture

MONITORING_GROUP = "monitoring"
PREDICTION_LOG = "prediction_log"
DRIFT_REPORT = "drift_report"
LIVE_MODEL_QUALITY = "live_model_quality"
PRODUCT_QUALITY_REPORT = "product_quality_report"
SYSTEM_HEALTH = "system_health"
MONITORING_ASSETS: tuple[str, ...] = (
    PREDICTION_LOG,
    DRIFT_REPORT,
    LIVE_MODEL_QUALITY,
    PRODUCT_QUALITY_REPORT,
    SYSTEM_HEALTH,
)
INPUT_FINGERPRINT = "input_fingerprint"
REPORT_CSV = "product_quality_report.csv"
REPORT_MARKDOWN = "product_quality_report.md"
NO_ENDPOINT = "no endpoint configured: system health is not observed"


# ---- inputs outside the asset graph ----------------------------------------------------------------


def labels_dir(home: PlatformHome) -> Path:
    """Where ground truth lands: CSV files keyed by `review_id` with a `label` or a `rating` column."""
    return home.lake / "landing" / "labels"


def _label_files(home: PlatformHome) -> list[Path]:
    directory = labels_dir(home)
    return sorted(directory.glob("*.csv")) if directory.is_dir() else []


def capture_location(home: PlatformHome) -> StorageLocation:
    """Where the endpoint publishes sealed capture segments (`[storage] capture`)."""
    return location_from_settings(home, Settings.load(home.settings_file), "capture")


def monitoring_fingerprint(home: PlatformHome) -> str | None:
    """A hash of what the monitors read from outside the graph (None: nothing captured yet).

    The capture segments' names and sizes (append-only, so a new or grown segment changes it) and the
    labels files' names, sizes and modification times: the runner's cue that monitoring is behind.
    """
    segments = capture.list_segments(home.capture, capture_location(home))
    if not segments:
        return None
    digest = hashlib.sha256()
    for name, size in segments:
        digest.update(f"capture\0{name}\0{size}\n".encode())
    for path in _label_files(home):
        stat = path.stat()
        digest.update(f"labels\0{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def read_labels(home: PlatformHome) -> pl.DataFrame:
    """Every labels file of the home as one (review_id, label) frame (empty when none landed)."""
    frames = []
    for path in _label_files(home):
        frame = pl.read_csv(path, infer_schema=False)
        if "rating" in frame.columns:
            frame = frame.with_columns(pl.col("rating").cast(pl.Int64))
        try:
            frames.append(ground_truth(frame).rename({"true_label": "label"}))
        except (monitoring.MonitoringError, pl.exceptions.PolarsError) as exc:
            raise monitoring.MonitoringError(f"labels file {path}: {exc}") from exc
    if not frames:
        return pl.DataFrame(schema={"review_id": pl.String, "label": pl.String})
    return pl.concat(frames)


def _production_version(platform: PlatformResource) -> str | None:
    production = platform.registry().production()
    return None if production is None else production.version


def _versions_in(log: pl.DataFrame) -> list[str]:
    return sorted(log["model_version"].unique().to_list())


def _check(outcome: MonitorOutcome, asset: str, name: str | None = None) -> dg.AssetCheckResult:
    """A core outcome as a non-blocking check result (a passed check is reported with ERROR severity)."""
    return check_result(
        name or outcome.name,
        outcome.passed,
        outcome.description,
        outcome.metadata,
        warn_only=outcome.severity == WARN,
        asset_key=dg.AssetKey(asset),
    )


# ---- prediction_log ---------------------------------------------------------------------------------


def _prediction_log_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=PREDICTION_LOG,
        group_name=MONITORING_GROUP,
        kinds={"polars"},
        code_version=code_version([monitoring, capture]),
        description="Every captured prediction (one row per request row, first capture kept) with its "
        "model version; unpartitioned because the capture only grows.",
    )
    def prediction_log(platform: PlatformResource):
        home = platform.platform_home()
        fingerprint = monitoring_fingerprint(home)
        # A home that never served has no capture directory yet: its log is empty, not an error.
        log, stats = monitoring.prediction_log(
            capture.read_capture(home.ensure().capture, capture_location(home))
        )
        metadata: dict[str, Any] = {
            key: value for key, value in stats.to_dict().items() if isinstance(value, int)
        }
        metadata.update({f"rows/{version}": rows for version, rows in stats.rows_by_version.items()})
        metadata[INPUT_FINGERPRINT] = fingerprint or "nothing captured"
        if log.height:
            metadata["first_time"] = str(log["time"].min())
            metadata["last_time"] = str(log["time"].max())
        return versioned_output(log, metadata=metadata)

    return prediction_log


# ---- drift_report -----------------------------------------------------------------------------------


def training_baseline(
    home: PlatformHome, card: Mapping[str, Any], vocabulary: ModelVocabulary
) -> TrainingBaseline:
    """The training baseline a model card records; for a version registered before baselines were
    recorded, the one derived from its recorded split version (never from the current splits).

    Raises MissingBaseline when the card records neither a baseline nor a split version still stored.
    """
    if BASELINE_CARD_KEY in card:
        return TrainingBaseline.from_dict(card[BASELINE_CARD_KEY])
    try:
        _, splits = recorded_splits(home, card)
    except ArtifactNotFound as exc:
        raise MissingBaseline(f"its recorded split version is gone ({exc})") from exc
    return TrainingBaseline.from_splits(splits, card["metrics"]["test"]["confusion_matrix"], vocabulary)


def drift_baseline(home: PlatformHome, registry: ModelRegistry, version: str) -> DriftBaseline:
    """`version`'s baseline: its recorded training baseline and the vocabulary of its ONNX graph."""
    vocabulary = ModelVocabulary.from_onnx(onnx.load(str(registry.verify(version))))
    try:
        training = training_baseline(home, registry.get(version).card, vocabulary)
    except MissingBaseline as exc:
        raise MissingBaseline(f"no training baseline recorded for {version}: {exc}") from exc
    return DriftBaseline(training, vocabulary, model_version=version)


def version_drift(
    home: PlatformHome, registry: ModelRegistry, log_rows: pl.DataFrame, version: str, rules: MonitoringRules
) -> DriftReport:
    """The drift of `version`'s rows of the log; unjudged (not enough data) when it has no baseline."""
    rows = log_rows.filter(pl.col("model_version") == version)
    try:
        baseline = drift_baseline(home, registry, version)
    except MissingBaseline as exc:
        return drift.unjudged_report(version, rows.height, str(exc))
    return drift.drift_report(rows, baseline, rules)


def _drift_outcomes(
    reports: Mapping[str, DriftReport], judged: str | None, rows_min: int
) -> list[MonitorOutcome]:
    """The judged (production) version's outcomes; not enough data when it served nothing logged."""
    if judged is not None and judged in reports:
        return list(reports[judged].outcomes)
    what = f"rows of production version {judged}" if judged else "rows (no production version)"
    return [not_enough_data(metric, 0, rows_min, what) for metric in DRIFT_METRICS]


def _drift_report_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=DRIFT_REPORT,
        group_name=MONITORING_GROUP,
        ins={PREDICTION_LOG: dg.AssetIn()},
        kinds={"polars"},
        code_version=code_version([drift, monitoring], settings.section("monitoring")),
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
        rules = MonitoringRules.from_settings(platform.settings())
        home, registry = platform.platform_home(), platform.registry()
        reports = {
            version: version_drift(home, registry, prediction_log, version, rules)
            for version in _versions_in(prediction_log)
        }
        judged = _production_version(platform)
        metadata: dict[str, Any] = {"judged_version": str(judged), "versions": len(reports)}
        for version, report in reports.items():
            metadata[f"{version}/rows"] = report.rows
            metadata.update({f"{version}/{name}": value for name, value in report.metrics.items()})
        if judged in reports:  # the production version's numbers under stable keys, so the UI plots them
            metadata.update(reports[judged].metrics)
        yield versioned_output(
            {"judged_version": judged, "by_version": {v: r.to_dict() for v, r in reports.items()}},
            metadata=metadata,
        )
        for outcome in _drift_outcomes(reports, judged, rules.min_rows):
            yield _check(outcome, DRIFT_REPORT)

    return drift_report


# ---- live_model_quality -----------------------------------------------------------------------------


def _live_model_quality_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=LIVE_MODEL_QUALITY,
        group_name=MONITORING_GROUP,
        ins={PREDICTION_LOG: dg.AssetIn()},
        kinds={"polars"},
        code_version=code_version([live_quality, monitoring], settings.section("monitoring")),
        check_specs=[
            dg.AssetCheckSpec(
                LIVE_QUALITY_CHECK,
                asset=LIVE_MODEL_QUALITY,
                description="The production version's live macro-F1 at most [monitoring].max_macro_f1_drop "
                "below its test macro-F1 (ERROR); too few labelled rows is a WARN.",
            )
        ],
        description="Predictions joined with ground truth from lake/landing/labels/*.csv (review_id, "
        "label or rating): macro-F1, per-class recall and confusion matrix per version and day.",
    )
    def live_model_quality(prediction_log: pl.DataFrame, platform: PlatformResource):
        rules = MonitoringRules.from_settings(platform.settings())
        registry = platform.registry()
        labels = read_labels(platform.platform_home())
        cards = {v: registry.get(v).card["metrics"]["test"] for v in _versions_in(prediction_log)}
        quality = live_quality.live_quality(prediction_log, labels, cards, rules)
        judged = _production_version(platform)
        metadata: dict[str, Any] = {
            "judged_version": str(judged),
            "labelled_reviews": quality.labelled_reviews,
            "rows_joined": quality.rows_joined,
        }
        for version, entry in quality.by_version.items():
            metadata[f"{version}/rows_joined"] = entry.rows_joined
            if entry.metrics is not None:
                metadata[f"{version}/macro_f1"] = entry.metrics["macro_f1"]
        if judged in quality.by_version and quality.by_version[judged].metrics is not None:
            metadata["macro_f1"] = quality.by_version[judged].metrics["macro_f1"]
            metadata["test_macro_f1"] = quality.by_version[judged].test_macro_f1
        yield versioned_output(quality.to_dict(), metadata=metadata)
        if judged in quality.by_version:
            outcome = quality.by_version[judged].outcome
        else:
            what = f"labelled rows of production version {judged}"
            outcome = not_enough_data(LIVE_QUALITY_CHECK, 0, rules.min_labelled_rows, what)
        yield _check(outcome, LIVE_MODEL_QUALITY)

    return live_model_quality


# ---- product_quality_report -------------------------------------------------------------------------


def _product_quality_report_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=PRODUCT_QUALITY_REPORT,
        group_name=MONITORING_GROUP,
        ins={PREDICTION_LOG: dg.AssetIn(), "reviews": dg.AssetIn()},
        kinds={"csv", "markdown"},
        code_version=code_version([product_report], settings.section("monitoring")),
        description="Products with an unusual share of negative predictions (Wilson lower bound above the "
        "overall rate), as a formula-safe CSV and Markdown.",
    )
    def product_quality_report(
        prediction_log: pl.DataFrame, reviews: pl.DataFrame, platform: PlatformResource
    ):
        rules = MonitoringRules.from_settings(platform.settings())
        with_product = prediction_log.filter(pl.col("product_id").is_not_null())
        if with_product.height == 0:
            report = pl.DataFrame(schema=dict.fromkeys(product_report.REPORT_COLUMNS, pl.String))
            note = "no captured prediction names a product: nothing to report on"
        else:
            report = product_report.product_quality_report(prediction_log, reviews, rules)
            note = f"{report.height} product(s) flagged of {with_product['product_id'].n_unique()}"
        markdown = product_report.to_markdown(report, rules.report_top_n)
        bundle = Bundle(
            {REPORT_CSV: product_report.to_safe_csv(report), REPORT_MARKDOWN: markdown.encode("utf-8")}
        )
        return versioned_output(
            bundle,
            metadata={
                "flagged": report.height,
                "predictions_with_product": with_product.height,
                "summary": note,
                "top_products": dg.MetadataValue.md(markdown),
                "top_product_ids": ", ".join(report["product_id"].head(rules.report_top_n).to_list()),
            },
        )

    return product_quality_report


# ---- system_health ----------------------------------------------------------------------------------


def _unobserved(reason: str, severity: str) -> list[MonitorOutcome]:
    return [
        MonitorOutcome(name, False, severity, reason, {"evaluated": 0})
        for name in (ERROR_RATE_CHECK, LATENCY_CHECK)
    ]


def _system_health_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name=SYSTEM_HEALTH,
        group_name=MONITORING_GROUP,
        kinds={"prometheus"},
        code_version=code_version([], settings.section("monitoring")),
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
        section = platform.settings().section("monitoring")
        record: dict[str, Any] = {"endpoint_url": endpoint.location()}
        try:
            text = endpoint.metrics_text()
        except EndpointError as exc:
            text, outcomes = None, _unobserved(f"endpoint unreachable: {exc}", ERROR)
            record["error"] = str(exc)
        else:
            outcomes = _unobserved(NO_ENDPOINT, WARN) if text is None else []
        if text is not None:
            numbers = system_health_numbers(text, time.time())
            record.update(numbers)
            outcomes = health_outcomes(numbers, section)
        context.log.info(f"system health: {record}")
        metadata = {key: value for key, value in record.items() if isinstance(value, int | float)}
        metadata["endpoint_url"] = str(record["endpoint_url"] or "none configured")
        yield versioned_output(record, metadata=metadata)
        for outcome in outcomes:
            yield _check(outcome, SYSTEM_HEALTH)

    return system_health


def build_monitoring_assets(settings: Settings) -> list[dg.AssetsDefinition]:
    return [
        _prediction_log_asset(settings),
        _drift_report_asset(settings),
        _live_model_quality_asset(settings),
        _product_quality_report_asset(settings),
        _system_health_asset(settings),
    ]
