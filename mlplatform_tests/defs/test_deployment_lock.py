"""sentiment_endpoint deploys one run at a time under the deployment lock, whatever Dagster's storage.

The runs are real: the real sentiment_endpoint asset, fed by a stand-in best_model and a fake live
endpoint that serves whatever the production alias names and answers slowly, executed on the home's
own Dagster instance by two processes released together by a barrier, several deployments each. The
fake endpoint writes a line when a deployment starts waiting for its version (right after promoting)
and when its smoke test ends. The home's `deployment` pool is widened to 2, so only the lock can keep
the runs apart (the pool alone is not strict on SQLite; without the lock both steps run at once).

This module imports little on purpose: each spawned process imports it again.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from mlplatform.core.data.contract import load_contract
from mlplatform.core.platform.artifacts import Bundle
from mlplatform.core.platform.fsio import sha256_bytes
from mlplatform.core.platform.home import PG_URL_ENV, PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.deploy import SMOKE_CASES, deployment_lock
from mlplatform.core.release.registry import PRODUCTION, ModelRegistry, ModelVersion
from mlplatform.defs.deployment import ASSET_KEY, SENTIMENT_ENDPOINT, build_deployment_assets
from mlplatform.defs.resources import EndpointAnswer, EndpointResource, PlatformResource
from mlplatform.instance import open_instance, prepare_instance

pytestmark = pytest.mark.filterwarnings("ignore")

ANSWER_SECONDS = 0.3  # the fake endpoint's smoke answer: long enough for two deployments to collide
DEPLOYMENTS_PER_PROCESS = 2
MODELS = {"v1": b"onnx bytes of model one", "v2": b"onnx bytes of model two"}
# A small wait for the version: a run whose promotion another run overwrote fails fast instead of hanging.
SETTINGS = """[deployment]
lock_timeout_s = {lock_timeout_s}
wait_timeout_s = 2.0
poll_interval_s = 0.05

[execution]
deployment_pool_limit = 2
"""


class SlowFollowingEndpoint(EndpointResource):
    """A live endpoint stand-in: serves the production alias, answers after `answer_s`, logs each smoke test."""

    home: str
    log_path: str
    answer_s: float
    labels_right: bool = True

    @property
    def live(self) -> bool:
        return True

    def location(self) -> str | None:
        return "fake://slow-endpoint"

    def reported_version(self) -> str | None:
        return (
            ModelRegistry.for_home(PlatformHome.at(Path(self.home)), Settings.packaged().storage)
            .aliases()
            .get(PRODUCTION)
        )

    def _log(self, event: str, version: str) -> None:
        with open(self.log_path, "a") as log:  # one short O_APPEND write per line: lines never interleave
            log.write(f"{os.getpid()} {event} {version} {time.time()!r}\n")

    def wait_for_version(self, version: str, timeout_s: float, poll_interval_s: float) -> str | None:
        self._log("enter", version)
        return super().wait_for_version(version, timeout_s, poll_interval_s)

    def predict(self, request: dict[str, Any], model: ModelVersion) -> EndpointAnswer:
        time.sleep(self.answer_s)
        # Asked at the end of the answer, as a real endpoint following the alias would show it: a
        # promotion by another deployment meanwhile makes this answer name the other version.
        served = self.reported_version()
        labels = [case.expected if self.labels_right else "neutral" for case in SMOKE_CASES]
        self._log("exit", model.version)
        return EndpointAnswer({"model_version": served, "predictions": [{"label": x} for x in labels]}, 1.0)


def _deploy_job(
    home_root: str, version: str, log_path: str, *, labels_right: bool = True
) -> dg.JobDefinition:
    """best_model (a stand-in that outputs `version`'s files) -> the real sentiment_endpoint."""
    onnx = MODELS[version]
    card = json.dumps({"onnx": {"sha256": sha256_bytes(onnx)}}).encode()

    @dg.asset(name="best_model")
    def best_model() -> Bundle:
        return Bundle({"model.onnx": onnx, "model_card.json": card})

    settings = Settings.load(PlatformHome.at(Path(home_root)).settings_file)
    (endpoint_asset,) = [
        asset for asset in build_deployment_assets(settings, load_contract()) if asset.key == ASSET_KEY
    ]
    endpoint = SlowFollowingEndpoint(
        home=home_root, log_path=log_path, answer_s=ANSWER_SECONDS, labels_right=labels_right
    )
    definitions = dg.Definitions(
        assets=[best_model, endpoint_asset],
        jobs=[dg.define_asset_job("deploy_job")],
        resources={
            "io_manager": dg.mem_io_manager,
            "platform": PlatformResource(home=home_root),
            "endpoint": endpoint,
        },
    )
    return definitions.resolve_job_def("deploy_job")


def _deploy_repeatedly(home_root: str, version: str, log_path: str, barrier) -> None:
    job = _deploy_job(home_root, version, log_path)
    with open_instance(PlatformHome.at(Path(home_root))) as instance:
        barrier.wait(timeout=60)
        for _ in range(DEPLOYMENTS_PER_PROCESS):
            if not job.execute_in_process(instance=instance, raise_on_error=False).success:
                raise SystemExit(1)


def _home_with_two_approved_versions(home: PlatformHome, lock_timeout_s: float) -> ModelRegistry:
    home.settings_file.write_text(SETTINGS.format(lock_timeout_s=lock_timeout_s))
    registry = ModelRegistry.for_home(home, Settings.load(home.settings_file).storage)
    for name, onnx in MODELS.items():
        assert registry.register(onnx, {}, {"macro_f1": 0.7}).version == name
        registry.approve(name, by="test")
    return registry


def _logged(log_path: Path) -> list[tuple[int, str, str, float]]:
    """(pid, enter|exit, version, time) per line, in the order written."""
    if not log_path.exists():
        return []
    lines = [line.split() for line in log_path.read_text().splitlines()]
    return [(int(pid), event, version, float(at)) for pid, event, version, at in lines]


def _race_two_deploying_processes(home: PlatformHome, tmp_path: Path) -> ModelRegistry:
    """Two processes deploy v1 and v2 (several times each) at once; assert they never overlapped."""
    registry = _home_with_two_approved_versions(home, lock_timeout_s=60.0)
    prepare_instance(home)  # created once, before the two runs race to open it
    log_path = tmp_path / "smoke.log"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    runs = [
        context.Process(target=_deploy_repeatedly, args=(str(home.root), version, str(log_path), barrier))
        for version in MODELS
    ]
    for run in runs:
        run.start()
    for run in runs:
        run.join(timeout=180)
    assert [run.exitcode for run in runs] == [0, 0], _logged(log_path)

    logged = _logged(log_path)
    assert len(logged) == 2 * 2 * DEPLOYMENTS_PER_PROCESS
    assert len({pid for pid, *_ in logged}) == 2
    sections = list(zip(logged[::2], logged[1::2], strict=True))
    for (pid, event, version, entered), (exit_pid, exit_event, exit_version, left) in sections:
        # Every section entered is left by the same deployment before any other enters.
        assert (event, exit_event) == ("enter", "exit")
        assert (exit_pid, exit_version) == (pid, version) and left - entered >= ANSWER_SECONDS
    for (_, (*_, left)), ((*_, entered), _) in itertools.pairwise(sections):
        assert entered >= left
    events = registry.events()
    assert not [event for event in events if event["event"] == "rolled_back"]
    assert {event["to"] for event in events if event["event"] == "promoted"} == set(MODELS)
    return registry


def test_two_processes_deploying_at_once_on_sqlite_take_turns(home, tmp_path):
    assert home.pg_url is None  # the default: SQLite instance storage, file records
    _race_two_deploying_processes(home, tmp_path)


@pytest.mark.postgres
def test_two_processes_deploying_at_once_on_postgresql_take_turns(home, tmp_path, postgres_url, monkeypatch):
    monkeypatch.setenv(PG_URL_ENV, postgres_url)  # the spawned runs inherit it
    home = PlatformHome.at(home.root)
    _race_two_deploying_processes(home, tmp_path)
    assert not (home.registry / ".deployment.lock").exists()  # the advisory lock, not a file, kept them apart


def _step_failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    """The innermost error message of every failed step (the user's exception, not Dagster's wrapper)."""
    messages = []
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            messages.append(error.message)
    return messages


def test_a_deployment_that_cannot_take_the_lock_in_time_fails_with_one_line_and_moves_nothing(home, tmp_path):
    registry = _home_with_two_approved_versions(home, lock_timeout_s=0.3)
    registry.promote("v1", by="test")
    events_before = registry.events()
    log_path = tmp_path / "smoke.log"
    job = _deploy_job(str(home.root), "v2", str(log_path))

    # Another deployment holds the lock. An in-memory instance: the lock, not Dagster's storage, is under test.
    with dg.DagsterInstance.ephemeral() as instance, deployment_lock(home, timeout_s=1.0):
        result = job.execute_in_process(instance=instance, raise_on_error=False)

    assert not result.success
    (message,) = _step_failure_messages(result)
    assert len(message.strip().splitlines()) == 1
    assert "DeploymentLockTimeout: another deployment held the deployment lock" in message
    assert "for more than 0.3 s ([deployment] lock_timeout_s): nothing was deployed" in message
    assert registry.aliases() == {"production": "v1"} and registry.events() == events_before
    assert _logged(log_path) == []  # the endpoint was never asked


def test_the_lock_is_released_after_a_failed_smoke_test_and_its_rollback(home, tmp_path):
    registry = _home_with_two_approved_versions(home, lock_timeout_s=0.5)
    registry.promote("v1", by="test")
    log_path = tmp_path / "smoke.log"

    with dg.DagsterInstance.ephemeral() as instance:
        failed = _deploy_job(str(home.root), "v2", str(log_path), labels_right=False).execute_in_process(
            instance=instance, raise_on_error=False
        )
        assert registry.aliases() == {"production": "v1"}
        assert registry.events()[-1]["event"] == "rolled_back"
        assert "4 of 4 smoke reviews wrong" in registry.events()[-1]["reason"]
        # A lock left behind by the failed run would make this one time out after 0.5 s.
        deployed = _deploy_job(str(home.root), "v2", str(log_path)).execute_in_process(
            instance=instance, raise_on_error=False
        )

    assert not failed.success and deployed.success
    assert registry.aliases() == {"production": "v2", "previous": "v1"}
    (materialization,) = deployed.asset_materializations_for_node(SENTIMENT_ENDPOINT)
    assert materialization.metadata["state"].value == "deployed"
