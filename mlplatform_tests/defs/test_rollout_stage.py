"""The rollout stage through Dagster: a round of the `rollout` asset from `mlplatform run`, its checks, the
registry and the alerts it leaves, and the sensor that drives rounds on the daemon (over every state)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from mlplatform.core.monitoring.alerts import AlertStore
from mlplatform.core.monitoring.capture import CaptureRole, encode_capture_rows
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.registry import PREVIOUS, PRODUCTION, ModelRegistry
from mlplatform.core.release.rollout import RolloutStrategy, current_rollout, start_rollout
from mlplatform.defs.resources import PlatformResource
from mlplatform.defs.rollout import ROLLOUT_JOB, ROLLOUT_TAG, build_rollout_sensor
from mlplatform.instance import open_instance
from mlplatform.runner import run_pending
from mlplatform_tests.serving.conftest import deploy, register, tiny_model_bytes

pytestmark = pytest.mark.filterwarnings("ignore")
CLASSES = ("negative", "neutral", "positive")
SETTINGS = "[rollout]\nmin_rows = 30\nmin_step_s = 0.0\n"


@pytest.fixture(scope="module")
def tiny_models() -> dict[int, bytes]:
    return {variant: tiny_model_bytes(variant) for variant in range(2)}


@pytest.fixture
def home(tmp_path: Path, tiny_models: dict[int, bytes]) -> PlatformHome:
    """v1 in production, v2 approved: two tiny real models."""
    home = PlatformHome(tmp_path / "home").ensure()
    home.settings_file.write_text(SETTINGS)
    registry = ModelRegistry(home.registry)
    deploy(registry, tiny_models[0])
    register(registry, tiny_models[1])
    return home


def capture(
    home: PlatformHome, count: int, *, strategy: str, agree: bool = True, candidate: str = "v2"
) -> None:
    """What an endpoint would have captured during the rollout: `count` requests of one review each."""
    lines = []
    probabilities = np.array([[0.1, 0.1, 0.8]], dtype=np.float32)
    for index in range(count):
        label = CLASSES[index % 3]
        fields = {
            "request_id": f"req-{index}",
            "capture_id": uuid.uuid4().hex,
            "received_at": time.time(),
            "route": "/predict",
            "texts": ["a fine dress"],
            "product_ids": [str(index)],
            "review_ids": [f"review-{index}"],
            "probabilities": probabilities,
            "latency_ms": 3.0,
            "classes": CLASSES,
        }
        if strategy == "canary" and index % 4 == 0:
            lines.append(encode_capture_rows(model_version=candidate, labels=[label], **fields))
            continue
        lines.append(encode_capture_rows(model_version="v1", labels=[label], **fields))
        if strategy == "shadow":
            shadow_label = label if agree else CLASSES[(index + 1) % 3]
            lines.append(
                encode_capture_rows(
                    model_version=candidate, labels=[shadow_label], role=CaptureRole.SHADOW, **fields
                )
            )
    segment = home.capture / f"20260301T000000000000Z-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
    segment.write_bytes(b"".join(lines))


def start(home: PlatformHome, strategy: str, **options):
    return start_rollout(ModelRegistry(home.registry), RolloutStrategy(strategy), "v2", by="alice", **options)


def one_round(home: PlatformHome):
    """`mlplatform run` of the deployment group (a round of the running rollout): its report and lines."""
    lines: list[str] = []
    return run_pending(home, say=lines.append, groups=["deployment"]), lines


def latest_round(home: PlatformHome) -> dict:
    store = ArtifactStore(home.artifacts)
    return store.load(store.latest("rollout"))


def check(home: PlatformHome, name: str) -> dg.AssetCheckEvaluation:
    key = dg.AssetCheckKey(dg.AssetKey("rollout"), name)
    record = open_instance(home).event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    return record.event.dagster_event.event_specific_data


def test_a_fit_shadow_is_promoted_by_one_run(home):
    start(home, "shadow")
    capture(home, 40, strategy="shadow")

    report, lines = one_round(home)

    assert report.exit_code == 0, report.blocked
    registry = ModelRegistry(home.registry)
    assert registry.aliases() == {PRODUCTION: "v2", PREVIOUS: "v1"} and current_rollout(registry) is None
    ended = registry.events()[-1]
    assert (ended["event"], ended["by"]) == ("rollout_promoted", "rollout")
    assert any(line.startswith("  rollout: promote: every check fit on 40 predictions") for line in lines)
    stored = latest_round(home)
    assert stored["action"] == "promote" and stored["numbers"]["agreement"] == 1.0
    assert stored["after"]["rollout"] is None
    assert check(home, "agreement").passed and check(home, "error_rate").passed


def test_a_disagreeing_shadow_is_aborted_with_an_alert_and_the_run_says_a_gate_blocked(home):
    rollout = start(home, "shadow")
    capture(home, 40, strategy="shadow", agree=False)

    report, _ = one_round(home)

    assert report.exit_code == 1
    assert [blocked.asset for blocked in report.blocked] == ["rollout:agreement"]
    registry = ModelRegistry(home.registry)
    assert registry.aliases() == {PRODUCTION: "v1"} and current_rollout(registry) is None
    assert registry.get("v2").status == "Approved"  # the candidate stays registered as it was
    aborted = AlertStore(home.alerts).firing(f"rollout:{rollout.id}:aborted")
    assert aborted is not None and aborted.severity == "ERROR"
    assert "shadow of v2 aborted by rollout: agreement: 40 shadowed requests" in aborted.message
    agreement = check(home, "agreement")
    assert not agreement.passed and agreement.severity == dg.AssetCheckSeverity.ERROR


def test_a_round_with_too_little_traffic_waits(home):
    start(home, "shadow")
    capture(home, 5, strategy="shadow")

    report, lines = one_round(home)

    assert report.exit_code == 0, report.blocked
    assert current_rollout(ModelRegistry(home.registry)) is not None
    assert "  rollout: wait: 5 of 30 candidate predictions in this step" in lines
    evaluation = check(home, "agreement")
    assert evaluation.passed and evaluation.metadata["evaluated"].value == 0


def test_a_fit_canary_step_advances(home):
    start(home, "canary", percent=25, steps=[25, 50, 100])
    capture(home, 160, strategy="canary")  # 40 answered by the candidate

    one_round(home)

    rollout = current_rollout(ModelRegistry(home.registry))
    assert rollout is not None and rollout.percent == 50
    assert latest_round(home)["numbers"]["candidate_answer_share"] == 0.25


def test_a_candidate_whose_file_fails_its_hash_check_is_aborted(home):
    start(home, "shadow")
    path = ModelRegistry(home.registry).get("v2").onnx_path
    path.chmod(0o644)
    path.write_bytes(path.read_bytes() + b"tampered")

    report, _ = one_round(home)

    assert report.exit_code == 1
    registry = ModelRegistry(home.registry)
    assert current_rollout(registry) is None and registry.aliases()[PRODUCTION] == "v1"
    assert "candidate v2 refused: model v2: sha256" in registry.events()[-1]["reason"]


def test_without_a_rollout_a_run_judges_nothing(home):
    report, _ = one_round(home)
    assert report.exit_code == 0 and "rollout" not in report.materialized


# --- the sensor, in every state ----------------------------------------------------------------------


def evaluate(home: PlatformHome, instance: dg.DagsterInstance):
    sensor = build_rollout_sensor(60)
    context = dg.build_sensor_context(
        instance=instance, resources={"platform": PlatformResource(home=str(home.root))}
    )
    return sensor.evaluate_tick(context)


def test_the_sensor_skips_without_a_rollout_asks_for_a_round_while_one_runs_and_never_piles_up(home):
    sensor = build_rollout_sensor(60)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and sensor.job_name == ROLLOUT_JOB
    with dg.instance_for_test() as instance:
        idle = evaluate(home, instance)
        assert idle.run_requests == [] and idle.skip_message == "no rollout is running"

        rollout = start(home, "canary", percent=5, steps=[5, 50])
        (request,) = evaluate(home, instance).run_requests
        assert request.tags[ROLLOUT_TAG] == rollout.id and request.run_key.startswith(f"{rollout.id}:0:")

        instance.add_run(
            dg.DagsterRun(job_name=ROLLOUT_JOB, run_id=uuid.uuid4().hex, status=dg.DagsterRunStatus.STARTED)
        )
        busy = evaluate(home, instance)
        assert busy.run_requests == [] and "still being judged" in busy.skip_message
