"""What starts the pipeline by itself: the landing sensor and the platform's automation condition.

- `landing_sensor` (running by default) turns each new drop in lake/landing/reviews into a partition of
  `raw_reviews` and one run, with run key = the drop's content hash: Dagster never launches two runs
  with the same run key for a sensor, so a drop is processed exactly once — also when the sensor or
  the daemon restarts mid-tick, when the same bytes land twice (the lake makes them one drop) or when
  many files land at once. Files still being written are not pending yet (the lake's settle time).
- `PLATFORM_CONDITION`, applied once at the root to every downstream asset: materialize when missing,
  when an input's *data version* changed (a re-materialization with the same content does not count),
  or when the asset's code version changed (a change of code or hyperparameters retrains) — never while
  an input is missing or in progress, and only after every input's blocking checks passed.
"""

import json

import dagster as dg

from mlplatform.defs.ingest import DROPS
from mlplatform.defs.resources import PlatformResource

AC = dg.AutomationCondition

_INPUT_DATA_CHANGED = AC.any_deps_match(AC.data_version_changed() | AC.will_be_requested()).with_label(
    "an input's data version changed"
)

PLATFORM_CONDITION = (
    AC.in_latest_time_window()
    & (AC.newly_missing() | _INPUT_DATA_CHANGED | AC.code_version_changed()).since(
        AC.newly_requested() | AC.newly_updated() | AC.initial_evaluation()
    )
    & ~AC.any_deps_missing()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
    & AC.all_deps_blocking_checks_passed()
).with_label("mlplatform: missing, input data changed or code changed; inputs' gates passed")


def build_landing_sensor(target: str, interval_seconds: int) -> dg.SensorDefinition:
    """The sensor on lake/landing/reviews; `target` is the job that ingests one drop partition."""

    @dg.sensor(
        name="landing_sensor",
        job_name=target,
        minimum_interval_seconds=interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="One run per new drop in lake/landing/reviews (run key = content hash).",
    )
    def landing_sensor(context: dg.SensorEvaluationContext, platform: PlatformResource):
        pending = platform.lake().pending()
        requested = set(json.loads(context.cursor)) if context.cursor else set()
        new = [drop for drop in pending if drop.hash not in requested]
        # The cursor only remembers drops still waiting in landing, so it stays small; the run key is
        # what guarantees exactly-once if the cursor is lost.
        still_pending = {drop.hash for drop in pending}
        cursor = json.dumps(sorted((requested & still_pending) | {drop.hash for drop in new}))
        if not new:
            return dg.SensorResult(skip_reason="no new drops in landing", cursor=cursor)
        known = set(context.instance.get_dynamic_partitions(DROPS.name))
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(run_key=drop.hash, partition_key=drop.hash, tags={"mlplatform/drop": drop.hash})
                for drop in new
            ],
            dynamic_partitions_requests=[
                DROPS.build_add_request([drop.hash for drop in new if drop.hash not in known])
            ],
            cursor=cursor,
        )

    return landing_sensor


def with_platform_policy(defs: dg.Definitions, driven_elsewhere: dg.AssetSelection) -> dg.Definitions:
    """Apply `PLATFORM_CONDITION` to every asset but those driven by sensors or schedules."""
    return defs.map_resolved_asset_specs(
        selection=dg.AssetSelection.all() - driven_elsewhere,
        func=lambda spec: spec.replace_attributes(automation_condition=PLATFORM_CONDITION),
    )


def build_automation_sensor(target: dg.AssetSelection, interval_seconds: int) -> dg.SensorDefinition:
    """Evaluates `PLATFORM_CONDITION` on `target`; running by default (Dagster's own default sensor is off)."""
    return dg.AutomationConditionSensorDefinition(
        "platform_automation",
        target=target,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=interval_seconds,
        description="Materializes downstream assets when inputs' data or code versions change.",
    )
