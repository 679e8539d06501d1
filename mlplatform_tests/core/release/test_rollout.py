"""Rollout state: starting (and every refusal), stepping, promoting and aborting, each a registry event."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings, SettingsError
from mlplatform.core.release.deploy import DeployState, SmokeResult
from mlplatform.core.release.registry import PREVIOUS, PRODUCTION, ModelRegistry
from mlplatform.core.release.rollout import (
    ROLLOUT_POINTER,
    DeploymentStrategy,
    Rollout,
    RolloutAction,
    RolloutError,
    RolloutEvent,
    RolloutStrategy,
    abort_rollout,
    advance_rollout,
    answers_with_candidate,
    canary_schedule,
    conclude,
    current_rollout,
    deploy_by_strategy,
    promote_rollout,
    rollout_events,
    start_rollout,
)

THREE = ("negative", "neutral", "positive")


def fixed_classes(classes_by_content: dict[bytes, tuple[str, ...]]):
    """A `classes_of` that reads a model's classes from its (fake) bytes."""
    return lambda path: classes_by_content.get(Path(path).read_bytes(), THREE)


def register(registry: ModelRegistry, content: bytes, *, approve: bool = True) -> str:
    version = registry.register(content, card={}, metrics={"macro_f1": 0.7}).version
    if approve:
        registry.approve(version, by="test")
    return version


@pytest.fixture
def registry(home: PlatformHome) -> ModelRegistry:
    return ModelRegistry(home.registry)


@pytest.fixture
def versions(registry: ModelRegistry) -> dict[str, str]:
    """v1 in production, v2 approved, v3 pending, v4 rejected."""
    v1 = register(registry, b"model one")
    registry.promote(v1, by="test")
    v2 = register(registry, b"model two")
    v3 = register(registry, b"model three", approve=False)
    v4 = register(registry, b"model four", approve=False)
    registry.reject(v4, reason="bad", by="test")
    return {"production": v1, "approved": v2, "pending": v3, "rejected": v4}


def start(registry: ModelRegistry, strategy: str, version: str, **options) -> Rollout:
    return start_rollout(
        registry, RolloutStrategy(strategy), version, by="alice", classes_of=fixed_classes({}), **options
    )


def test_canary_schedule_starts_at_percent_and_keeps_the_steps_above_it_below_100():
    assert canary_schedule(None, [5, 25, 50, 100]) == (5, 25, 50)
    assert canary_schedule(10, [5, 25, 50, 100]) == (10, 25, 50)
    assert canary_schedule(60, [5, 25, 50, 100]) == (60,)
    assert canary_schedule(30, [100]) == (30,)


@pytest.mark.parametrize("percent", [0, 100, -5, 150, True, 2.5])
def test_a_percent_outside_1_to_99_is_refused(percent):
    with pytest.raises(RolloutError, match="--percent must be a whole percent from 1 to 99"):
        canary_schedule(percent, [5, 25, 100])


@pytest.mark.parametrize("steps", [[], [25, 5], [5, 5], [0, 10], [5, 101], "5,25"])
def test_steps_must_be_increasing_percents(steps):
    with pytest.raises(RolloutError, match="canary steps"):
        canary_schedule(None, steps)


def test_a_shadow_starts_for_a_pending_version_and_records_who_started_it(registry, versions):
    rollout = start(registry, "shadow", versions["pending"])

    assert current_rollout(registry) == rollout
    assert (rollout.candidate, rollout.production, rollout.percent) == (versions["pending"], "v1", 0)
    assert rollout.started_by == "alice" and rollout.steps == ()
    [event] = rollout_events(registry.events())
    assert event["event"] == RolloutEvent.STARTED and event["by"] == "alice"
    assert (event["version"], event["production"], event["strategy"]) == (versions["pending"], "v1", "shadow")
    assert registry.aliases() == {PRODUCTION: "v1"}  # the rollout is not an alias


def test_a_canary_starts_at_its_first_percent(registry, versions):
    rollout = start(registry, "canary", versions["approved"], percent=10, steps=[5, 25, 50, 100])

    assert (rollout.percent, rollout.steps, rollout.next_percent) == (10, (10, 25, 50), 25)
    assert rollout_events(registry.events())[-1]["percent"] == 10


@pytest.mark.parametrize(
    ("strategy", "which", "message"),
    [
        ("canary", "pending", "needs an Approved version"),
        ("shadow", "rejected", "is Rejected"),
        ("canary", "rejected", "is Rejected"),
        ("shadow", "production", "already serves production"),
    ],
)
def test_refusals_change_nothing(registry, versions, strategy, which, message):
    before = (registry.events(), registry.pointer_state()[0])
    options = {"percent": 5, "steps": [5, 100]} if strategy == "canary" else {}
    with pytest.raises(RolloutError, match=message):
        start(registry, strategy, versions[which], **options)
    assert (registry.events(), registry.pointer_state()[0]) == before


def test_an_unknown_version_is_refused_in_one_line(registry, versions):
    with pytest.raises(
        RolloutError, match="cannot start a shadow of v99: model version v99 is not registered"
    ):
        start(registry, "shadow", "v99")


def test_a_second_rollout_is_refused_while_one_runs(registry, versions):
    start(registry, "shadow", versions["pending"])
    with pytest.raises(RolloutError, match=r"a shadow of v3 against production v1 .* runs; stop it first"):
        start(registry, "canary", versions["approved"], percent=5, steps=[5, 100])
    assert current_rollout(registry).candidate == versions["pending"]


def test_a_candidate_with_other_classes_than_production_is_refused(registry, versions):
    classes = fixed_classes({b"model two": ("negative", "positive")})
    with pytest.raises(RolloutError, match=r"answers the classes \['negative', 'positive'\], production v1"):
        start_rollout(registry, RolloutStrategy.SHADOW, versions["approved"], by="a", classes_of=classes)
    assert current_rollout(registry) is None


def test_no_production_means_nothing_to_compare_with(home: PlatformHome):
    registry = ModelRegistry(home.registry)
    version = register(registry, b"only model")
    with pytest.raises(RolloutError, match="no version serves production"):
        start(registry, "shadow", version)


def test_percent_and_steps_are_refused_for_a_shadow(registry, versions):
    with pytest.raises(RolloutError, match="a shadow answers no request"):
        start(registry, "shadow", versions["approved"], percent=5)


def test_a_canary_advances_step_by_step_then_promotes(registry, versions):
    rollout = start(registry, "canary", versions["approved"], percent=5, steps=[5, 50, 100])
    advanced = advance_rollout(registry, rollout.id, by="rollout", reason="step fit")

    assert advanced.percent == 50 and advanced.next_percent is None
    assert current_rollout(registry) == advanced
    with pytest.raises(RolloutError, match="its next move is promotion"):
        advance_rollout(registry, rollout.id, by="rollout", reason="again")

    promote_rollout(registry, rollout.id, by="rollout", reason="every step fit")
    assert current_rollout(registry) is None
    assert registry.aliases() == {PRODUCTION: versions["approved"], PREVIOUS: "v1"}
    kinds = [event["event"] for event in registry.events() if event.get("rollout") == rollout.id]
    assert kinds == ["rollout_started", "rollout_stepped", "promoted", "rollout_promoted"]
    stepped = rollout_events(registry.events(), rollout.id)[1]
    assert (stepped["from_percent"], stepped["to_percent"], stepped["by"]) == (5, 50, "rollout")
    assert registry.in_production_since() is not None


def test_a_shadow_of_a_pending_version_is_not_promoted(registry, versions):
    rollout = start(registry, "shadow", versions["pending"])
    with pytest.raises(RolloutError, match="it is PendingManualApproval, only Approved can be promoted"):
        promote_rollout(registry, rollout.id, by="bob", reason="looks fine")
    assert current_rollout(registry) == rollout and registry.aliases()[PRODUCTION] == "v1"


def test_promotion_is_refused_when_production_moved_during_the_rollout(registry, versions):
    rollout = start(registry, "shadow", versions["approved"])
    v5 = register(registry, b"model five")
    registry.promote(v5, by="someone")
    with pytest.raises(RolloutError, match="production moved from v1 to v5"):
        promote_rollout(registry, rollout.id, by="rollout", reason="fit")


def test_an_abort_leaves_production_and_the_candidate_as_they_were(registry, versions):
    rollout = start(registry, "canary", versions["approved"], percent=25, steps=[100])
    ended = abort_rollout(registry, rollout.id, by="rollout", reason="error rate 0.2 > 0.01", automatic=True)

    assert ended == rollout and current_rollout(registry) is None
    assert registry.aliases() == {PRODUCTION: "v1"}
    assert registry.get(versions["approved"]).status == "Approved"
    event = registry.events()[-1]
    assert event["event"] == "rollout_aborted" and event["automatic"] is True
    assert (event["reason"], event["by"], event["percent"]) == ("error rate 0.2 > 0.01", "rollout", 25)
    # idempotent: a second endpoint refusing the same candidate changes nothing
    assert abort_rollout(registry, rollout.id, by="endpoint", reason="again", automatic=True) is None
    assert len(rollout_events(registry.events(), rollout.id)) == 2


def test_a_judgement_of_an_older_rollout_never_moves_a_newer_one(registry, versions):
    old = start(registry, "shadow", versions["pending"])
    abort_rollout(registry, None, by="bob", reason="stop", automatic=False)
    new = start(registry, "canary", versions["approved"], percent=5, steps=[5, 50])

    assert abort_rollout(registry, old.id, by="rollout", reason="late", automatic=True) is None
    with pytest.raises(RolloutError, match=f"rollout {old.id} is over"):
        advance_rollout(registry, old.id, by="rollout", reason="late")
    assert current_rollout(registry) == new


def test_other_registry_changes_keep_the_rollout(registry, versions):
    rollout = start(registry, "shadow", versions["pending"])
    registry.approve(versions["pending"], by="bob")
    register(registry, b"model six")
    assert current_rollout(registry) == rollout


def test_conclude_waits_advances_promotes_and_aborts(home: PlatformHome, registry, versions):
    rollout = start(registry, "canary", versions["approved"], percent=5, steps=[5, 50])

    def act(action: RolloutAction, on: Rollout):
        return conclude(home, registry, on, action, reason="judged", by="rollout", lock_timeout_s=5)

    assert act(RolloutAction.WAIT, rollout).rollout == rollout
    advanced = act(RolloutAction.ADVANCE, rollout).rollout
    assert advanced.percent == 50
    assert act(RolloutAction.PROMOTE, advanced).rollout is None
    assert registry.aliases()[PRODUCTION] == versions["approved"]

    again = start(registry, "shadow", "v1")
    assert act(RolloutAction.ABORT, again).rollout is None
    assert registry.events()[-1]["event"] == "rollout_aborted"


def test_the_record_round_trips_and_a_damaged_one_is_one_line(registry, versions):
    rollout = start(registry, "canary", versions["approved"], percent=5, steps=[5, 50])
    assert Rollout.from_dict(registry.pointer(ROLLOUT_POINTER)) == rollout
    with pytest.raises(RolloutError, match="unreadable"):
        Rollout.from_dict({"id": "x"})


def test_rules_read_the_settings_and_refuse_bad_ones():
    rules = Settings.packaged().deployment
    assert rules.strategy is DeploymentStrategy.DIRECT and rules.canary_steps == (5, 25, 50, 100)

    def with_deployment(**values) -> Settings:
        return Settings.packaged().with_overrides({"deployment": values})

    assert with_deployment(strategy="canary").deployment.strategy is DeploymentStrategy.CANARY
    with pytest.raises(SettingsError, match=r"\[deployment\] strategy: .*direct.*shadow.*canary"):
        with_deployment(strategy="blue-green")
    with pytest.raises(SettingsError, match=r"\[deployment\] canary_steps: must increase step by step"):
        with_deployment(canary_steps=[50, 5])
    with pytest.raises(SettingsError, match=r"\[deployment\] canary_steps: must be whole percents"):
        with_deployment(canary_steps=[5, 150])
    with pytest.raises(SettingsError, match=r"\[rollout\] shadow_nice"):
        Settings.packaged().with_overrides({"rollout": {"shadow_nice": 40}})


# --- sentiment_endpoint's one call: deploy by the strategy ----------------------------------------------


@pytest.fixture(scope="module")
def real_models() -> dict[int, bytes]:
    from mlplatform_tests.serving.conftest import tiny_model_bytes

    return {variant: tiny_model_bytes(variant) for variant in range(3)}


def smoke(passed: bool, calls: list[str]):
    def test(version) -> SmokeResult:
        calls.append(version.version)
        return SmokeResult(passed, "" if passed else "labels wrong", version.version, 1.0, ())

    return test


def by_strategy(home: PlatformHome, version: str, strategy: str, *, offline_passes: bool = True):
    registry = ModelRegistry(home.registry)
    live_calls: list[str] = []
    offline_calls: list[str] = []
    rules = Settings.packaged().deployment.replace(strategy=strategy)
    deployment = deploy_by_strategy(
        home,
        registry,
        registry.get(version),
        live_smoke_test=smoke(True, live_calls),
        offline_smoke_test=smoke(offline_passes, offline_calls),
        rules=rules,
        live=False,
        endpoint_url=None,
        by="sentiment_endpoint",
    )
    return deployment, live_calls, offline_calls


@pytest.fixture
def real_registry(home: PlatformHome, real_models) -> ModelRegistry:
    """v1 in production, v2 and v3 approved: real models (their classes are read from their files)."""
    registry = ModelRegistry(home.registry)
    for variant in range(3):
        register(registry, real_models[variant])
    registry.promote("v1", by="test")
    return registry


def test_a_shadow_strategy_starts_a_rollout_instead_of_promoting(home, real_registry):
    deployment, live_calls, offline_calls = by_strategy(home, "v2", "shadow")

    assert deployment.outcome.state is DeployState.ROLLOUT_STARTED
    assert (live_calls, offline_calls) == ([], ["v2"])  # smoke-tested in-process: production answers live
    assert real_registry.aliases() == {PRODUCTION: "v1"}
    rollout = current_rollout(real_registry)
    assert (rollout.strategy, rollout.candidate, rollout.started_by) == ("shadow", "v2", "sentiment_endpoint")
    assert (
        deployment.record()["rollout"]["id"] == rollout.id
        and deployment.record()["state"] == "rollout_started"
    )

    again, _, offline_calls = by_strategy(home, "v2", "shadow")  # the same version's next run
    assert again.outcome.state is DeployState.IN_ROLLOUT and offline_calls == []
    assert current_rollout(real_registry) == rollout


def test_a_canary_strategy_starts_at_the_first_of_canary_steps(home, real_registry):
    by_strategy(home, "v2", "canary")
    assert current_rollout(real_registry).steps == (5, 25, 50)


def test_a_newer_version_supersedes_the_running_rollout(home, real_registry):
    by_strategy(home, "v2", "shadow")
    by_strategy(home, "v3", "canary")
    assert current_rollout(real_registry).candidate == "v3"
    aborted = [event for event in real_registry.events() if event["event"] == "rollout_aborted"]
    assert [(event["version"], event["automatic"]) for event in aborted] == [("v2", False)]
    assert aborted[0]["reason"] == "superseded by a canary of v3"


def test_a_version_failing_its_smoke_test_is_rejected_and_never_rolled_out(home, real_registry):
    deployment, _, _ = by_strategy(home, "v2", "shadow", offline_passes=False)
    assert deployment.outcome.state is DeployState.REFUSED
    assert current_rollout(real_registry) is None and real_registry.get("v2").status == "Rejected"


def test_a_direct_deployment_ends_a_running_rollout_and_promotes(home, real_registry):
    by_strategy(home, "v2", "shadow")
    deployment, live_calls, _ = by_strategy(home, "v3", "direct")
    assert deployment.outcome.state is DeployState.DEPLOYED and live_calls == ["v3"]
    assert current_rollout(real_registry) is None and real_registry.aliases()[PRODUCTION] == "v3"
    aborted = next(event for event in real_registry.events() if event["event"] == "rollout_aborted")
    assert aborted["reason"] == "superseded: v3 deployed directly"


def test_without_production_a_strategy_deploys_directly(home: PlatformHome, real_models):
    registry = ModelRegistry(home.registry)
    register(registry, real_models[0])
    deployment, _, _ = by_strategy(home, "v1", "canary")
    assert deployment.outcome.state is DeployState.DEPLOYED and registry.aliases() == {PRODUCTION: "v1"}


def test_canary_keys_split_by_percent_stay_put_within_a_rollout_and_keep_their_version_as_it_grows():
    keys = [f"product-{index}" for index in range(20_000)]
    at_25 = {key for key in keys if answers_with_candidate(key, "r1", 25)}
    at_50 = {key for key in keys if answers_with_candidate(key, "r1", 50)}
    assert abs(len(at_25) / len(keys) - 0.25) < 0.01 and abs(len(at_50) / len(keys) - 0.50) < 0.01
    assert at_25 <= at_50  # a product on the candidate stays on it when the step grows
    assert at_25 == {key for key in keys if answers_with_candidate(key, "r1", 25)}  # deterministic
    assert at_25 != {
        key for key in keys if answers_with_candidate(key, "r2", 25)
    }  # another rollout, another draw
