"""Deploy decisions, smoke-test judging on canned answers, and the deploy section under its lock."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings, SettingsError
from mlplatform.core.release.deploy import (
    SMOKE_CASES,
    DeployAction,
    DeployError,
    DeploymentLockTimeout,
    DeployState,
    SmokeResult,
    best_model_sha256,
    deploy_decision,
    deploy_exclusively,
    deploy_live,
    deploy_offline,
    deployment_lock,
    failed_smoke,
    judge_smoke,
    smoke_request,
    version_with_sha256,
)
from mlplatform.core.release.registry import APPROVED, PENDING, REJECTED, ModelRegistry, ModelVersion


def _answer(labels: list[str], version: str = "v2") -> dict:
    return {"id": "r1", "model_version": version, "predictions": [{"label": label} for label in labels]}


def _version(name: str, status: str, sha256: str = "0" * 64) -> ModelVersion:
    return ModelVersion(
        name, status, (), {"macro_f1": 0.7}, Path(f"/{name}.onnx"), sha256, 10, "2025-01-01", {}
    )


EXPECTED = [case.expected for case in SMOKE_CASES]


def test_the_canned_cases_are_unambiguous_negative_and_positive_reviews():
    assert {case.expected for case in SMOKE_CASES} == {"negative", "positive"}
    request = smoke_request()
    assert [review["text"] for review in request["reviews"]] == [case.text for case in SMOKE_CASES]
    assert len({review["review_id"] for review in request["reviews"]}) == len(SMOKE_CASES)


def test_right_labels_from_the_new_version_within_budget_pass():
    result = judge_smoke(_answer(EXPECTED), latency_ms=12.0, expected_version="v2", max_latency_ms=100)
    assert result.passed and result.reason == ""
    assert result.labels == tuple(EXPECTED) and result.served_version == "v2"


def test_a_wrong_label_fails_naming_the_review():
    labels = ["positive", *EXPECTED[1:]]
    result = judge_smoke(_answer(labels), latency_ms=1.0, expected_version="v2", max_latency_ms=100)
    assert not result.passed
    assert result.reason == "1 of 4 smoke reviews wrong: review 0 (negative) labelled 'positive'"


def test_an_answer_from_the_old_version_fails():
    result = judge_smoke(_answer(EXPECTED, "v1"), latency_ms=1.0, expected_version="v2", max_latency_ms=100)
    assert not result.passed and "answered by model version 'v1', expected 'v2'" in result.reason


def test_slow_answers_and_malformed_bodies_fail_with_every_reason():
    slow = judge_smoke(_answer(EXPECTED), latency_ms=250.0, expected_version="v2", max_latency_ms=100)
    assert not slow.passed and slow.reason == "latency 250.0 ms over the 100 ms budget"
    short = judge_smoke(_answer(EXPECTED[:2]), latency_ms=1.0, expected_version="v2", max_latency_ms=100)
    assert short.reason == "2 predictions for 4 reviews"
    empty = judge_smoke({"error": "boom"}, latency_ms=1.0, expected_version="v2", max_latency_ms=100)
    assert (
        empty.reason == "answered by model version None, expected 'v2'; the answer has no 'predictions' list"
    )


def test_only_approved_versions_deploy():
    assert deploy_decision(_version("v3", APPROVED)).action == DeployAction.DEPLOY
    waiting = deploy_decision(_version("v3", PENDING))
    assert waiting.action == DeployAction.WAIT_FOR_APPROVAL
    assert "mlplatform models approve v3" in waiting.reason
    assert deploy_decision(_version("v3", REJECTED)).action == DeployAction.REFUSE


def test_the_version_is_found_by_the_sha256_of_best_models_own_file():
    onnx_bytes = b"model bytes"
    sha = hashlib.sha256(onnx_bytes).hexdigest()
    files = {"model.onnx": onnx_bytes, "model_card.json": json.dumps({"onnx": {"sha256": sha}}).encode()}
    assert best_model_sha256(files) == sha
    versions = [_version("v2", APPROVED, "1" * 64), _version("v1", APPROVED, sha)]
    assert version_with_sha256(versions, sha).version == "v1"
    with pytest.raises(DeployError, match="no registered model version"):
        version_with_sha256(versions[:1], sha)
    files["model_card.json"] = json.dumps({"onnx": {"sha256": "2" * 64}}).encode()
    with pytest.raises(DeployError, match="model card records"):
        best_model_sha256(files)


def test_deployment_rules_read_settings_and_refuse_a_bad_url(tmp_path):
    rules = Settings.load().deployment
    assert rules.endpoint_url is None and rules.wait_timeout_s > 0
    override = tmp_path / "platform.toml"
    override.write_text('[deployment]\nendpoint_url = "http://127.0.0.1:9/"\n')
    assert Settings.load(override).deployment.endpoint_url == "http://127.0.0.1:9"
    override.write_text('[deployment]\nendpoint_url = "localhost:9"\n')
    with pytest.raises(SettingsError, match=r"^\[deployment\] endpoint_url: must start with http"):
        Settings.load(override)

    override.write_text("[deployment]\nlock_timeout_s = 0\n")
    with pytest.raises(SettingsError, match=r"^\[deployment\] lock_timeout_s: must be positive, got 0"):
        Settings.load(override)


# ---------------------------------------------------------------------------- the deploy section

BY = "sentiment_endpoint"
PASSED = SmokeResult(True, "", "v2", 1.0, tuple(EXPECTED))


def _registry_with_v1_in_production_and_v2_approved(home: PlatformHome) -> ModelRegistry:
    registry = ModelRegistry.for_home(home, Settings.load(home.settings_file).storage)
    for name in ("v1", "v2"):
        version = registry.register(f"onnx bytes of {name}".encode(), {}, {"macro_f1": 0.7})
        assert version.version == name
        registry.approve(name, by="test")
    registry.promote("v1", by="test")
    return registry


def test_a_live_deployment_that_passes_moves_production(home):
    registry = _registry_with_v1_in_production_and_v2_approved(home)
    seen = []

    def smoke(version: ModelVersion) -> SmokeResult:
        seen.append((version.version, registry.aliases()))
        return PASSED

    outcome = deploy_live(registry, registry.get("v2"), smoke, BY)

    assert outcome.state == DeployState.DEPLOYED and outcome.smoke is PASSED
    # The smoke test ran after the promotion: the live endpoint follows the production alias.
    assert seen == [("v2", {"production": "v2", "previous": "v1"})]
    assert registry.aliases() == {"production": "v2", "previous": "v1"}


def test_a_failed_or_crashed_live_smoke_test_restores_both_aliases(home):
    registry = _registry_with_v1_in_production_and_v2_approved(home)
    failed = deploy_live(registry, registry.get("v2"), lambda _: failed_smoke("answered by 'v1'"), BY)
    assert failed.state == DeployState.ROLLED_BACK
    assert registry.aliases() == {"production": "v1"}
    assert registry.events()[-1]["reason"] == "smoke_test: answered by 'v1'"

    def crash(_: ModelVersion) -> SmokeResult:
        raise ValueError("endpoint client bug")

    with pytest.raises(ValueError, match="endpoint client bug"):
        deploy_live(registry, registry.get("v2"), crash, BY)
    assert registry.aliases() == {"production": "v1"}
    assert registry.events()[-1]["reason"] == "smoke_test crashed: endpoint client bug"


def test_an_offline_deployment_that_fails_rejects_the_version_without_promoting(home):
    registry = _registry_with_v1_in_production_and_v2_approved(home)
    outcome = deploy_offline(registry, registry.get("v2"), lambda _: failed_smoke("2 of 4 wrong"), BY)
    assert outcome.state == DeployState.REFUSED
    assert registry.aliases() == {"production": "v1"}
    assert registry.get("v2").status == REJECTED


def test_the_deployment_lock_waits_then_fails_with_one_line_and_is_released_on_error(home):
    with deployment_lock(home, timeout_s=1.0):
        started = time.monotonic()
        with pytest.raises(DeploymentLockTimeout) as raised, deployment_lock(home, timeout_s=0.3):
            pytest.fail("a second holder entered the deployment lock")
        assert 0.3 <= time.monotonic() - started < 2.0
    message = str(raised.value)
    assert "\n" not in message and "more than 0.3 s ([deployment] lock_timeout_s)" in message
    assert str(home.registry / ".deployment.lock") in message

    with pytest.raises(RuntimeError, match="deployment failed"), deployment_lock(home, timeout_s=1.0):
        raise RuntimeError("deployment failed")
    with deployment_lock(home, timeout_s=0.1) as waited_s:  # released by the failure above
        assert waited_s < 0.1


def test_a_deployment_that_cannot_take_the_lock_changes_nothing(home):
    registry = _registry_with_v1_in_production_and_v2_approved(home)
    events_before = registry.events()
    asked = []
    with deployment_lock(home, timeout_s=1.0), pytest.raises(DeploymentLockTimeout):
        deploy_exclusively(
            home, registry, registry.get("v2"), asked.append, live=True, lock_timeout_s=0.2, by=BY
        )
    assert asked == [] and registry.aliases() == {"production": "v1"} and registry.events() == events_before


def test_a_deployment_reads_the_version_again_once_it_holds_the_lock(home):
    registry = _registry_with_v1_in_production_and_v2_approved(home)
    stale = registry.get("v1")
    registry.promote("v2", by="another deployment")  # after `stale` was read, before the lock
    seen = []

    def smoke(version: ModelVersion) -> SmokeResult:
        seen.append(version.aliases)
        return failed_smoke("wrong labels")

    outcome = deploy_exclusively(home, registry, stale, smoke, live=False, lock_timeout_s=1.0, by=BY)

    assert outcome.state == DeployState.REFUSED and seen == [("previous",)]
    # v1 no longer serves production, so the failed smoke test rejects it (stale aliases would not).
    assert registry.get("v1").status == REJECTED and registry.aliases() == {"production": "v2"}


@pytest.mark.postgres
def test_the_deployment_lock_on_postgresql_waits_then_fails_and_is_released(tmp_path, postgres_url):
    home = PlatformHome(tmp_path / "home", pg_url=postgres_url)
    with deployment_lock(home, timeout_s=1.0):
        with pytest.raises(DeploymentLockTimeout) as raised, deployment_lock(home, timeout_s=0.3):
            pytest.fail("a second session entered the deployment lock")
        assert not (home.registry / ".deployment.lock").exists()
    message = str(raised.value)
    assert "\n" not in message and "PostgreSQL advisory lock 'mlplatform:deployment'" in message
    assert "postgres@" not in message  # where, never the credentials

    with pytest.raises(RuntimeError, match="deployment failed"), deployment_lock(home, timeout_s=1.0):
        raise RuntimeError("deployment failed")
    with deployment_lock(home, timeout_s=0.5) as waited_s:
        assert waited_s < 0.5
