"""API keys: a key list that names no key refuses to start; with keys, the open routes reveal no internals."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fastapi.testclient import TestClient

from mlplatform.cli import main
from mlplatform.core.platform.home import API_KEYS_ENV, ApiKeysError, PlatformHome, api_keys_from_env
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.serving.app import create_app
from mlplatform_tests.serving.conftest import damage_model_file, deploy

KEY = "k-3f9a"


@pytest.mark.parametrize("value", [" , ", "", ",", " "])
def test_a_key_list_that_names_no_key_is_refused(value: str) -> None:
    with pytest.raises(ApiKeysError, match="names no key"):
        api_keys_from_env({API_KEYS_ENV: value})


def test_keys_are_parsed_once_each_in_order() -> None:
    assert api_keys_from_env({API_KEYS_ENV: "b, a ,b"}) == ("b", "a")
    assert api_keys_from_env({}) == ()


def test_serve_refuses_to_start_with_one_line(
    home: PlatformHome, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(API_KEYS_ENV, " , ")
    assert main(["--home", str(home.root), "serve", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: MLPLATFORM_API_KEYS is set but names no key")


def test_the_server_module_refuses_to_start_with_one_line(home: PlatformHome) -> None:
    env = {**os.environ, "MLPLATFORM_HOME": str(home.root), API_KEYS_ENV: " , "}
    done = subprocess.run(
        [sys.executable, "-m", "mlplatform.serving.server", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: MLPLATFORM_API_KEYS is set but names no key: list keys separated by commas, or unset it to "
        "serve without authentication"
    ]


def test_with_keys_the_open_routes_name_a_state_and_the_reason_is_behind_the_key(
    home: PlatformHome, fast_settings: Settings, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> None:
    version = deploy(registry, tiny_models[0])
    damage_model_file(registry, version, "truncate")
    with TestClient(create_app(home, fast_settings, api_keys=(KEY,))) as http:
        for path in ("/v2/health/ready", "/v2/models/sentiment/ready"):
            ready = http.get(path)
            assert ready.status_code == 503
            assert ready.json() == {
                "ready": False,
                "state": "model_refused",
                "error": "the production model was refused",
            }
            assert str(home.root) not in ready.text
        assert http.get("/v2/models/sentiment").status_code == 401
        metadata = http.get("/v2/models/sentiment", headers={"X-API-Key": KEY}).json()
        assert metadata["state"] == "model_refused"
        assert f"{version} refused" in metadata["reason"] and str(home.root) in metadata["reason"]
    with TestClient(create_app(home, fast_settings)) as http:  # no keys: every route is open anyway
        assert str(home.root) in http.get("/v2/health/ready").json()["error"]
