"""`mlplatform rollout shadow|canary|status|stop`: starting, every refusal (one line, exit 1, nothing
changed), the status with the latest judgement, stopping and promoting."""

from __future__ import annotations

import json

import pytest

from mlplatform.cli import main
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.registry import ModelRegistry
from mlplatform_tests.defs.test_rollout_stage import capture
from mlplatform_tests.serving.conftest import deploy, register, tiny_model_bytes

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def models() -> dict[int, bytes]:
    return {variant: tiny_model_bytes(variant) for variant in range(3)}


@pytest.fixture
def home(home: PlatformHome, models) -> PlatformHome:
    """v1 in production, v2 approved, v3 waiting for a person."""
    home.settings_file.write_text("[rollout]\nmin_rows = 30\nmin_step_s = 0.0\n")
    registry = ModelRegistry(home.registry)
    deploy(registry, models[0])
    register(registry, models[1])
    registry.register(models[2], card={}, metrics={"macro_f1": 0.5})
    return home


def run(home: PlatformHome, *argv: str) -> int:
    return main(["--home", str(home.root), *argv])


def state(home: PlatformHome) -> tuple:
    registry = ModelRegistry(home.registry)
    return registry.events(), registry.pointer_state()[0]


def test_a_shadow_starts_and_status_shows_it(capsys, home):
    assert run(home, "rollout", "shadow", "v3", "--by", "alice") == 0
    assert capsys.readouterr().out.startswith("started: shadow of v3 against production v1")

    assert run(home, "rollout", "status") == 0
    out = capsys.readouterr().out
    assert "candidate   v3 (PendingManualApproval)" in out and "production  v1" in out
    assert "0% to v3: production answers every request" in out and "by alice" in out
    assert "judgement   none yet" in out

    assert run(home, "rollout", "status", "--json") == 0
    status = json.loads(capsys.readouterr().out)
    assert status["rollout"]["strategy"] == "shadow" and status["judgement"] is None
    assert [event["event"] for event in status["events"]] == ["rollout_started"]


def test_a_canary_takes_the_settings_steps_unless_given(capsys, home):
    assert run(home, "rollout", "canary", "v2") == 0
    assert "at 5% (step 1 of 3)" in capsys.readouterr().out
    assert run(home, "rollout", "stop") == 0
    assert run(home, "rollout", "canary", "v2", "--percent", "10", "--steps", "10,50,100") == 0
    assert "at 10% (step 1 of 2)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["canary", "v2", "--percent", "0"], "--percent must be a whole percent from 1 to 99, got 0"),
        (["canary", "v2", "--percent", "100"], "--percent must be a whole percent from 1 to 99, got 100"),
        (["canary", "v3", "--percent", "5"], "needs an Approved version: v3 is PendingManualApproval"),
        (["shadow", "v1"], "v1 already serves production"),
        (["shadow", "v9"], "model version v9 is not registered"),
        (["canary", "v2", "--steps", "50,25"], "canary steps must increase step by step"),
    ],
)
def test_refusals_are_one_line_exit_1_and_change_nothing(capsys, home, argv, message):
    before = state(home)
    assert run(home, "rollout", *argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert state(home) == before


def test_a_second_rollout_and_a_rejected_version_are_refused(capsys, home):
    ModelRegistry(home.registry).reject("v3", reason="no", by="test")
    assert run(home, "rollout", "shadow", "v3") == 1
    assert "v3 is Rejected" in capsys.readouterr().err
    assert run(home, "rollout", "shadow", "v2") == 0
    assert run(home, "rollout", "canary", "v2", "--percent", "5") == 1
    assert "a shadow of v2 against production v1" in capsys.readouterr().err


def test_steps_that_are_not_numbers_are_a_usage_error(home):
    assert run(home, "rollout", "canary", "v2", "--steps", "5,x") == 2


def test_stop_sends_traffic_back_and_a_second_stop_says_nothing_runs(capsys, home):
    run(home, "rollout", "shadow", "v2")
    assert run(home, "rollout", "stop", "--reason", "enough", "--by", "bob") == 0
    assert "every request answered by production v1; v2 stays registered" in capsys.readouterr().out
    event = ModelRegistry(home.registry).events()[-1]
    assert (event["event"], event["by"], event["reason"], event["automatic"]) == (
        "rollout_aborted",
        "bob",
        "enough",
        False,
    )
    assert run(home, "rollout", "status") == 0
    out = capsys.readouterr().out
    assert (
        out.startswith("no rollout is running") and "last: rollout_aborted of v2" in out and "by bob" in out
    )
    assert run(home, "rollout", "stop") == 1
    assert "no rollout is running" in capsys.readouterr().err


def test_stop_promote_moves_production_only_for_an_approved_candidate(capsys, home):
    run(home, "rollout", "shadow", "v3")
    assert run(home, "rollout", "stop", "--promote") == 1
    assert "cannot promote v3: it is PendingManualApproval" in capsys.readouterr().err
    run(home, "rollout", "stop")
    run(home, "rollout", "canary", "v2", "--percent", "20")
    assert run(home, "rollout", "stop", "--promote") == 0
    assert "promoted v2: production v1 -> v2" in capsys.readouterr().out
    assert ModelRegistry(home.registry).aliases() == {"production": "v2", "previous": "v1"}


def test_status_shows_the_latest_judgement_with_its_numbers(capsys, home):
    from mlplatform.runner import run_pending

    run(home, "rollout", "shadow", "v3")
    capture(home, 40, strategy="shadow", candidate="v3")
    run_pending(home, say=lambda _: None, groups=["deployment"])
    capsys.readouterr()

    assert run(home, "rollout", "status") == 0
    out = capsys.readouterr().out
    assert "wait: fit on 40 predictions, but v3 is PendingManualApproval" in out
    assert "agreement     pass" in out and "candidate_rows" in out and "agreement   1.0000" not in out
    assert run(home, "rollout", "status", "--json") == 0
    judgement = json.loads(capsys.readouterr().out)["judgement"]
    assert judgement["numbers"]["agreement"] == 1.0 and judgement["after"]["action"] == "wait"
