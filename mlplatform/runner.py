"""`mlplatform run`: process everything pending once, synchronously, through Dagster.

New drops become partitions of `raw_reviews` and are validated one run each; then every downstream
asset that is missing or stale (Dagster's own data- and code-version staleness) is materialized in
one run, in dependency order, honouring blocking checks; last, every new file of lake/batch becomes a
partition of `batch_predictions` and is scored, one run each. Then, when the endpoint captured
something new or labels landed since the last prediction_log (or a monitoring asset is missing or stale), the monitoring
group runs once. When a rollout runs, one round judges it (the `rollout` asset: advance, promote, abort or
wait). Runs are recorded in the home's instance; last, their failed checks, failed runs, any model
rollback and any aborted rollout become alerts (defs/alerting.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import dagster as dg

from mlplatform.core.data.lake import Lake
from mlplatform.core.monitoring.prediction_log import INPUT_FINGERPRINT
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.platform.signals import sigterm_kept
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.release.rollout import current_rollout
from mlplatform.definitions import BATCH_JOB, INGEST_JOB, MONITORING_JOB, PIPELINE_JOB, build_definitions
from mlplatform.defs.alerting import record_run_alerts
from mlplatform.defs.deployment import BATCH_PREDICTIONS, BATCHES, batch_files
from mlplatform.defs.execution import execute
from mlplatform.defs.ingest import DROPS
from mlplatform.defs.monitoring import (
    MONITORING_GROUP,
    PREDICTION_LOG,
    monitoring_fingerprint,
)
from mlplatform.defs.progress import StepProgress, watch_steps
from mlplatform.defs.rollout import ROLLOUT, ROLLOUT_JOB
from mlplatform.instance import open_instance

RAW_REVIEWS = dg.AssetKey("raw_reviews")
DEPLOYMENT_GROUP = "deployment"
# The instance's event log keeps every event for the UI; the terminal only needs warnings and errors.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class Blocked:
    asset: str
    reason: str


@dataclass
class RunReport:
    accepted: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    materialized: list[str] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 1 if self.blocked else 0


def _stale_or_missing(instance: dg.DagsterInstance, defs: dg.Definitions, keys) -> list[dg.AssetKey]:
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
    from dagster._time import get_current_datetime

    asset_graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=asset_graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=asset_graph, loading_context=view)
    return [key for key in keys if resolver.get_status(key) in (StaleStatus.STALE, StaleStatus.MISSING)]


def _failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[Blocked]:
    blocked = []
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not evaluation.passed and evaluation.blocking:
            blocked.append(
                Blocked(
                    f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}",
                    evaluation.description or "check failed",
                )
            )
    return blocked


def _held_back_by_failed_gates(
    instance: dg.DagsterInstance, defs: dg.Definitions, due: list[dg.AssetKey]
) -> tuple[list[dg.AssetKey], list[Blocked]]:
    """Drop from `due` what sits downstream of an up-to-date asset whose latest blocking check failed.

    Within one run Dagster stops downstream steps itself; across runs this keeps a later `run` from
    building on a version that failed its gate. Partitioned parents (raw_reviews) are skipped: a drop
    that fails is quarantined and its partition removed, so it never reaches downstream.
    """
    graph = defs.resolve_asset_graph()
    due_set = set(due)
    check_keys = [key for key in graph.asset_check_keys if graph.get(key).blocking]
    latest = instance.event_log_storage.get_latest_asset_check_execution_by_key(check_keys)
    failed_assets: dict[dg.AssetKey, str] = {}
    for check_key, record in latest.items():
        data = record.event.dagster_event.event_specific_data if record and record.event else None
        if isinstance(data, dg.AssetCheckEvaluation) and not data.passed:
            failed_assets[check_key.asset_key] = f"{check_key.name}: {data.description or 'failed'}"
    kept, blocked = [], []
    held: set[dg.AssetKey] = set()
    for key in graph.toposorted_asset_keys:
        if key not in due_set:
            continue
        parents = graph.get(key).parent_keys
        reasons = [
            f"upstream {parent.to_user_string()} failed {failed_assets[parent]}"
            for parent in parents
            if parent not in due_set and parent in failed_assets and not graph.get(parent).is_partitioned
        ]
        if reasons or parents & held:
            held.add(key)
            if reasons:
                blocked.append(Blocked(key.to_user_string(), "; ".join(reasons)))
        else:
            kept.append(key)
    return kept, blocked


def _root_cause(error) -> str:
    """The innermost error of a step failure: the user's own exception, not Dagster's wrapper."""
    while error is not None and error.cause is not None:
        error = error.cause
    if error is None:
        return "step failed"
    first = error.message.strip().splitlines()[0] if error.message.strip() else error.cls_name or "error"
    return first


def _step_failures(result: dg.ExecuteInProcessResult | dg.ExecutionResult) -> list[Blocked]:
    return [
        Blocked(event.step_key or "?", _root_cause(event.step_failure_data.error))
        for event in result.all_events
        if event.event_type == dg.DagsterEventType.STEP_FAILURE
        and event.step_failure_data.error is not None
        and event.step_failure_data.error.cls_name != "DagsterAssetCheckFailedError"
    ]


def _logged_fingerprint(instance: dg.DagsterInstance) -> str | None:
    """The input fingerprint (capture and labels) the latest prediction_log saw (None: never built)."""
    event = instance.get_latest_materialization_event(dg.AssetKey(PREDICTION_LOG))
    if event is None or event.asset_materialization is None:
        return None
    value = event.asset_materialization.metadata.get(INPUT_FINGERPRINT)
    return None if value is None else str(value.value)


def run_pending(
    home: PlatformHome,
    say: Callable[[str], None] = print,
    groups: Sequence[str] | None = None,
    on_step: Callable[[StepProgress], None] | None = None,
    settings: Settings | None = None,
) -> RunReport:
    """Ingest pending drops, then bring every downstream asset (of `groups`, default all) up to date.

    `say` gets a line per stage; `on_step`, when given, each step of each run (defs/progress.py).
    `settings` are the home's, loaded here when the caller (the command line) has not.
    """
    settings = Settings.load(home.settings_file) if settings is None else settings
    with open_instance(home) as instance:
        session = RunSession(
            home, settings, instance, build_definitions(home, settings), say, on_step=on_step
        )
        session.ingest_drops()
        session.run_downstream(groups)
        if groups is None or DEPLOYMENT_GROUP in groups:
            session.run_batches()
        if groups is None or MONITORING_GROUP in groups:
            session.run_monitoring()
        if groups is None or DEPLOYMENT_GROUP in groups:
            session.judge_rollout()
        record_run_alerts(home, settings, instance, session.report.run_ids)
        return session.report


def _register_partitions(instance: dg.DagsterInstance, partitions: str, keys: Iterable[str]) -> None:
    """Add the dynamic partitions among `keys` that the instance does not know yet."""
    known = set(instance.get_dynamic_partitions(partitions))
    new = [key for key in keys if key not in known]
    if new:
        instance.add_dynamic_partitions(partitions, new)


@dataclass
class RunSession:
    """One `mlplatform run`: the home, its open instance and definitions, where progress goes, and the
    report every stage adds its runs, materializations and blocks to."""

    home: PlatformHome
    settings: Settings
    instance: dg.DagsterInstance
    defs: dg.Definitions
    say: Callable[[str], None]
    report: RunReport = field(default_factory=RunReport)
    on_step: Callable[[StepProgress], None] | None = None

    def ingest_drops(self) -> None:
        """Register pending drops as partitions of raw_reviews and validate each unvalidated one, one run each."""
        lake = Lake.from_settings(self.home, self.settings)
        _register_partitions(self.instance, DROPS.name, (drop.hash for drop in lake.pending()))
        materialized = self.instance.get_materialized_partitions(RAW_REVIEWS)
        todo = [key for key in self.instance.get_dynamic_partitions(DROPS.name) if key not in materialized]

        ingest_job = self.defs.resolve_job_def(INGEST_JOB)
        for index, drop_hash in enumerate(todo, start=1):
            self.say(f"[{index}/{len(todo)}] validating drop {drop_hash[:12]}")
            result = self._run_partition(ingest_job, drop_hash, "mlplatform/drop")
            state = lake.drop(drop_hash)
            blocked_asset = f"raw_reviews[{drop_hash[:12]}]"
            if result.success:
                self.report.accepted.append(drop_hash)
                self.say(f"  accepted ({', '.join(state.names)})")
            elif state.state == "quarantined":
                self.report.quarantined.append(drop_hash)
                self.report.blocked.append(Blocked(blocked_asset, f"{state.check}: {state.reason}"))
                self.say(f"  quarantined: {state.check}: {state.reason}")
            else:
                for failure in _step_failures(result):
                    self.report.blocked.append(Blocked(blocked_asset, failure.reason))

    def run_downstream(self, groups: Sequence[str] | None) -> None:
        """Materialize the missing or stale unpartitioned assets (of `groups`), pass after pass.

        Dagster calls an asset stale only once one of its inputs was re-materialized: the splits of a
        `reviews` about to change look current until `reviews` has run. So each pass runs what is stale
        now and the next one what that run made stale, until nothing is left; an asset runs at most
        once, and a failed run ends the passes (its report says why).
        """
        if not self.instance.get_materialized_partitions(RAW_REVIEWS):
            self.say("no accepted drops yet: nothing downstream to do")
            return

        pipeline_job = self.defs.resolve_job_def(PIPELINE_JOB)
        graph = self.defs.resolve_asset_graph()
        downstream = [
            key
            for key in pipeline_job.asset_layer.executable_asset_keys
            if groups is None or graph.get(key).group_name in groups
        ]
        already_run: set[dg.AssetKey] = set()
        while True:
            stale = _stale_or_missing(self.instance, self.defs, downstream)
            due, held_back = _held_back_by_failed_gates(self.instance, self.defs, stale)
            self.report.blocked.extend(blocked for blocked in held_back if blocked not in self.report.blocked)
            due = [key for key in due if key not in already_run]
            if not due:
                if not already_run:
                    self.say("everything downstream is up to date")
                return
            already_run.update(due)
            self.say(f"materializing {', '.join(key.to_user_string() for key in due)}")
            if not self._execute(pipeline_job, asset_selection=due):
                return

    def run_batches(self) -> None:
        """Register new files of lake/batch as partitions and score every unscored one, one run per file.

        A file that fails stays in place and unscored, so it is retried (and reported) on every run.
        """
        settled_before = time.time() - self.settings.lake.settle_seconds
        files = {
            sha: path
            for sha, path in batch_files(self.home.batch).items()
            if path.stat().st_mtime <= settled_before
        }
        _register_partitions(self.instance, BATCHES.name, files)
        scored = self.instance.get_materialized_partitions(dg.AssetKey(BATCH_PREDICTIONS))
        todo = [sha for sha in files if sha not in scored]
        batch_job = self.defs.resolve_job_def(BATCH_JOB)
        for index, sha in enumerate(todo, start=1):
            name = files[sha].name
            self.say(f"[{index}/{len(todo)}] scoring batch {name} ({sha[:12]})")
            result = self._run_partition(batch_job, sha, "mlplatform/batch")
            failures = [*_failed_checks(self.instance, result.run_id), *_step_failures(result)]
            for failure in failures:
                self.report.blocked.append(Blocked(f"{BATCH_PREDICTIONS}[{name}]", failure.reason))
                self.say(f"  failed: {failure.reason}")
            if not failures and result.success:
                self.report.materialized.append(f"{BATCH_PREDICTIONS}[{name}]")

    def run_monitoring(self) -> None:
        """Run the monitoring group when capture or labels changed, or a monitoring asset is missing or stale.

        Nothing captured yet: nothing to monitor (the schedule still reports system health).
        """
        fingerprint = monitoring_fingerprint(self.home, self.settings)
        if fingerprint is None:
            self.say("nothing captured yet: monitoring skipped")
            return
        monitoring_job = self.defs.resolve_job_def(MONITORING_JOB)
        keys = list(monitoring_job.asset_layer.executable_asset_keys)
        if fingerprint == _logged_fingerprint(self.instance) and not _stale_or_missing(
            self.instance, self.defs, keys
        ):
            self.say("monitoring is up to date with the capture")
            return
        self.say("monitoring the captured predictions")
        self._execute(monitoring_job)

    def judge_rollout(self) -> None:
        """One round of the running rollout (nothing when none runs); says what the round did."""
        rollout = current_rollout(ModelRegistry.for_home(self.home.ensure(), self.settings.storage))
        if rollout is None:
            return
        self.say(f"judging the {rollout.describe()}")
        self._execute(self.defs.resolve_job_def(ROLLOUT_JOB))
        event = self.instance.get_latest_materialization_event(dg.AssetKey(ROLLOUT))
        if event is not None and event.asset_materialization is not None:
            metadata = event.asset_materialization.metadata
            if "action" in metadata:
                self.say(f"  rollout: {metadata['action'].value}: {metadata['reason'].value}")

    def _run_partition(self, job: dg.JobDefinition, key: str, tag: str) -> dg.ExecuteInProcessResult:
        """One run of `job` for one partition, recorded in the instance and in the report."""
        with sigterm_kept(), watch_steps(self.instance, self.on_step) as progress_tags:
            result = job.execute_in_process(
                instance=self.instance,
                partition_key=key,
                raise_on_error=False,
                run_config=QUIET_CONSOLE,
                tags={tag: key, **progress_tags},
            )
        self.report.run_ids.append(result.run_id)
        return result

    def _execute(self, job: dg.JobDefinition, asset_selection: list[dg.AssetKey] | None = None) -> bool:
        """One run of `job` with its own executor ([execution] for the pipeline job); its materializations,
        failed blocking checks and failed steps go into the report. True when the run succeeded."""
        with watch_steps(self.instance, self.on_step) as progress_tags:
            result = execute(
                job,
                str(self.home.root),
                self.instance,
                run_config=QUIET_CONSOLE,
                tags=progress_tags,
                asset_selection=asset_selection,
            )
        self.report.run_ids.append(result.run_id)
        for event in result.all_events:
            if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
                self.report.materialized.append(event.asset_key.to_user_string())
        failed_checks = _failed_checks(self.instance, result.run_id)
        self.report.blocked.extend(failed_checks)
        self.report.blocked.extend(_step_failures(result))
        return result.success and not failed_checks
