"""`mlplatform run`: process everything pending once, synchronously, through Dagster.

New drops become partitions of `raw_reviews` and are validated one run each; then every downstream
asset that is missing or stale (Dagster's own data- and code-version staleness) is materialized in
one run, in dependency order, honouring blocking checks. Runs are recorded in the home's instance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from mlplatform.core.home import PlatformHome
from mlplatform.core.lake import Lake
from mlplatform.core.settings import Settings
from mlplatform.definitions import INGEST_JOB, PIPELINE_JOB, build_definitions
from mlplatform.defs.ingest import DROPS
from mlplatform.instance import open_instance

RAW_REVIEWS = dg.AssetKey("raw_reviews")
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
        if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
            blocked.append(
                Blocked(
                    f"{evaluation.asset_key.to_user_string()}:{evaluation.check_name}",
                    evaluation.description or "check failed",
                )
            )
    return blocked


def _step_failures(result: dg.ExecuteInProcessResult) -> list[Blocked]:
    failures = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            message = error.message.strip().splitlines()[0] if error else "step failed"
            failures.append(Blocked(event.step_key or "?", message))
    return failures


def run_pending(home: PlatformHome, say: Callable[[str], None] = print) -> RunReport:
    report = RunReport()
    instance = open_instance(home)
    defs = build_definitions(home)
    lake = Lake.from_settings(home, Settings.load(home.settings_file))

    pending = lake.pending()
    known = set(instance.get_dynamic_partitions(DROPS.name))
    new = [drop.hash for drop in pending if drop.hash not in known]
    if new:
        instance.add_dynamic_partitions(DROPS.name, new)
    materialized = instance.get_materialized_partitions(RAW_REVIEWS)
    todo = [key for key in instance.get_dynamic_partitions(DROPS.name) if key not in materialized]

    ingest_job = defs.resolve_job_def(INGEST_JOB)
    for index, drop_hash in enumerate(todo, start=1):
        say(f"[{index}/{len(todo)}] validating drop {drop_hash[:12]}")
        result = ingest_job.execute_in_process(
            instance=instance,
            partition_key=drop_hash,
            raise_on_error=False,
            run_config=QUIET_CONSOLE,
            tags={"mlplatform/drop": drop_hash},
        )
        report.run_ids.append(result.run_id)
        state = lake.drop(drop_hash)
        if result.success:
            report.accepted.append(drop_hash)
            say(f"  accepted ({', '.join(state.names)})")
        elif state.state == "quarantined":
            report.quarantined.append(drop_hash)
            report.blocked.append(Blocked(f"raw_reviews[{drop_hash[:12]}]", f"{state.check}: {state.reason}"))
            say(f"  quarantined: {state.check}: {state.reason}")
        else:
            for failure in _step_failures(result):
                report.blocked.append(Blocked(f"raw_reviews[{drop_hash[:12]}]", failure.reason))

    if not instance.get_materialized_partitions(RAW_REVIEWS):
        say("no accepted drops yet: nothing downstream to do")
        return report

    pipeline_job = defs.resolve_job_def(PIPELINE_JOB)
    downstream = [key for key in pipeline_job.asset_layer.executable_asset_keys]
    due = _stale_or_missing(instance, defs, downstream)
    if not due:
        say("everything downstream is up to date")
        return report
    say(f"materializing {', '.join(key.to_user_string() for key in due)}")
    result = pipeline_job.execute_in_process(
        instance=instance, asset_selection=due, raise_on_error=False, run_config=QUIET_CONSOLE
    )
    report.run_ids.append(result.run_id)
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION:
            report.materialized.append(event.asset_key.to_user_string())
    report.blocked.extend(_failed_checks(instance, result.run_id))
    if not result.success and not report.blocked:
        report.blocked.extend(_step_failures(result))
    return report
