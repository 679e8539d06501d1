"""Deploy decisions and smoke-test judging on canned answers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mlplatform.core.deploy import (
    SMOKE_CASES,
    DeployAction,
    DeployError,
    DeploymentRules,
    best_model_sha256,
    deploy_decision,
    judge_smoke,
    smoke_request,
    version_with_sha256,
)
from mlplatform.core.registry import APPROVED, PENDING, REJECTED, ModelVersion
from mlplatform.core.settings import Settings, SettingsError


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
    assert result.reason == "1 of 4 canned reviews wrong: review 0 (negative) labelled 'positive'"


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
    rules = DeploymentRules.from_settings(Settings.load())
    assert rules.endpoint_url is None and rules.wait_timeout_s > 0
    override = tmp_path / "platform.toml"
    override.write_text('[deployment]\nendpoint_url = "http://127.0.0.1:9/"\n')
    assert DeploymentRules.from_settings(Settings.load(override)).endpoint_url == "http://127.0.0.1:9"
    override.write_text('[deployment]\nendpoint_url = "localhost:9"\n')
    with pytest.raises(SettingsError, match="endpoint_url"):
        DeploymentRules.from_settings(Settings.load(override))
