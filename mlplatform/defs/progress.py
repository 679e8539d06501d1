"""Progress of a run, step by step, as its event log records it: for `mlplatform run` to show.

`watch_steps(instance, on_step)` yields the tags to give a run; while the block runs, a thread finds the
run by those tags and reads its new step events every `POLL_S`, and calls `on_step` with a
`StepProgress` for each: a step started, succeeded, failed or is up for a retry, with its elapsed time
(from the events' own timestamps) and how many of the run's planned steps are done. Steps still
running are reported RUNNING on every poll, so a terminal can keep their elapsed time ticking. When the
block ends, what is left in the log is reported before `watch_steps` returns: every step exactly once,
in order.

Reading the event log rather than listening to the instance covers every executor: with
multiprocess or Dask steps, only the step's own process sees its events, and they reach the
orchestrating process only through storage. Dagster is imported when a run is watched: the CLI
imports the types here for every command.
"""

from __future__ import annotations

import enum
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg

PROGRESS_TAG = "mlplatform/progress"
POLL_S = 0.5


class StepState(enum.Enum):
    STARTED = "started"
    RUNNING = "running"
    SUCCEEDED = "ok"
    FAILED = "failed"
    RETRYING = "retrying"

    @property
    def finished(self) -> bool:
        return self in (StepState.SUCCEEDED, StepState.FAILED)


@dataclass(frozen=True)
class StepProgress:
    step: str  # the asset the step materializes (its step key when it is not one asset)
    state: StepState
    elapsed_s: float  # since the step started
    done: int  # steps of the run finished so far
    total: int  # steps the run plans (0 until known)


@dataclass
class _RunLog:
    """What has been read of one run's event log so far."""

    names: dict[str, str] = field(default_factory=dict)  # step key -> asset name
    started: dict[str, float] = field(default_factory=dict)  # running steps: step key -> start time
    done: int = 0


def _events() -> set[dg.DagsterEventType]:
    import dagster as dg

    return {
        dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
        dg.DagsterEventType.STEP_UP_FOR_RETRY,
    }


@contextmanager
def watch_steps(
    instance: dg.DagsterInstance, on_step: Callable[[StepProgress], None] | None
) -> Iterator[dict[str, str]]:
    """Report the steps of the run started in the block with the yielded tags ({} when not watching)."""
    if on_step is None:
        yield {}
        return
    token = uuid.uuid4().hex
    watcher = _Watcher(instance, token, on_step)
    thread = threading.Thread(target=watcher.loop, name="mlplatform-progress", daemon=True)
    thread.start()
    try:
        yield {PROGRESS_TAG: token}
    finally:
        watcher.stop.set()
        thread.join()
        watcher.poll()  # what the run logged after the last poll


@dataclass
class _Watcher:
    instance: dg.DagsterInstance
    token: str
    on_step: Callable[[StepProgress], None]
    stop: threading.Event = field(default_factory=threading.Event)
    run_id: str | None = None
    cursor: str | None = None
    log: _RunLog = field(default_factory=_RunLog)

    def loop(self) -> None:
        while not self.stop.wait(POLL_S):
            self.poll()
            now = time.time()
            for step, started in self.log.started.items():
                self._report(step, StepState.RUNNING, now - started)

    def poll(self) -> None:
        import dagster as dg

        if self.run_id is None:
            ids = self.instance.get_run_ids(dg.RunsFilter(tags={PROGRESS_TAG: self.token}), limit=1)
            if not ids:
                return
            self.run_id = ids[0]
        while True:
            page = self.instance.get_records_for_run(self.run_id, cursor=self.cursor, of_type=_events())
            for record in page.records:
                self._read(record.event_log_entry)
            self.cursor = page.cursor
            if not page.has_more:
                return

    def _read(self, entry: Any) -> None:
        import dagster as dg

        event, step = entry.dagster_event, entry.step_key
        if event is None or step is None:
            return
        kind = event.event_type
        if kind == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED:
            asset = event.asset_key.to_user_string() if event.asset_key is not None else step
            self.log.names[step] = asset if step not in self.log.names else step
        elif kind == dg.DagsterEventType.STEP_START:
            self.log.started[step] = entry.timestamp
            self._report(step, StepState.STARTED, 0.0)
        elif kind == dg.DagsterEventType.STEP_UP_FOR_RETRY:
            self._report(
                step, StepState.RETRYING, entry.timestamp - self.log.started.pop(step, entry.timestamp)
            )
        else:
            state = StepState.SUCCEEDED if kind == dg.DagsterEventType.STEP_SUCCESS else StepState.FAILED
            self.log.done += 1
            self._report(step, state, entry.timestamp - self.log.started.pop(step, entry.timestamp))

    def _report(self, step: str, state: StepState, elapsed_s: float) -> None:
        name = self.log.names.get(step, step)
        total = max(len(self.log.names), self.log.done + len(self.log.started))
        self.on_step(StepProgress(name, state, max(0.0, elapsed_s), self.log.done, total))
