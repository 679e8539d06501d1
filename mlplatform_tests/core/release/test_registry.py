"""Model registry: versioning, status transitions, aliases (promote/rollback/restore), integrity.

Behavioural tests run on both records backends: files, and PostgreSQL (a private server, see
mlplatform_tests/postgres.py). Tests of the files themselves use `file_registry`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest

from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings, SettingsError
from mlplatform.core.release.registry import (
    APPROVED,
    PENDING,
    REJECTED,
    IntegrityError,
    ModelRegistry,
    RegistryError,
)

METRICS = {"macro_f1": 0.7, "accuracy": 0.8}


def model_bytes(tag: str) -> bytes:
    return f"onnx-model-{tag}".encode()


@pytest.fixture(params=["files", pytest.param("postgres", marks=pytest.mark.postgres)])
def registry_home(request, tmp_path: Path) -> PlatformHome:
    pg_url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return PlatformHome(tmp_path / "home", pg_url=pg_url)


@pytest.fixture
def registry(registry_home: PlatformHome) -> ModelRegistry:
    return ModelRegistry.for_home(registry_home, Settings.load(registry_home.settings_file).storage)


@pytest.fixture
def file_registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def approved(registry: ModelRegistry, tag: str) -> str:
    version = registry.register(model_bytes(tag), {"name": tag}, METRICS).version
    registry.approve(version, by="tester")
    return version


# -- registration ------------------------------------------------------------------------------


def test_register_numbers_versions_sequentially_and_stores_immutable_files(registry: ModelRegistry) -> None:
    first = registry.register(model_bytes("a"), {"name": "a", "markdown": "# Model a"}, METRICS)
    second = registry.register(model_bytes("b"), {"name": "b"}, METRICS, card_markdown="# Model b")

    assert (first.version, second.version) == ("v1", "v2")
    assert first.status == PENDING
    assert first.onnx_path.read_bytes() == model_bytes("a")
    assert not first.onnx_path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert first.card == {"name": "a"}
    assert (first.onnx_path.parent / "card.md").read_text() == "# Model a"
    assert (second.onnx_path.parent / "card.md").read_text() == "# Model b"
    assert first.size_bytes == len(model_bytes("a"))
    assert [version.version for version in registry.list()] == ["v2", "v1"]


def test_register_is_idempotent_by_content_hash(registry: ModelRegistry) -> None:
    first = registry.register(model_bytes("a"), {"name": "a"}, METRICS)
    again = registry.register(model_bytes("a"), {"name": "other card"}, {"macro_f1": 0.1})

    assert again.version == first.version
    assert again.card == {"name": "a"}
    assert [version.version for version in registry.list()] == ["v1"]
    assert [event["event"] for event in registry.events()] == ["registered"]


def test_the_registered_event_records_the_models_sha256(registry: ModelRegistry) -> None:
    version = registry.register(model_bytes("a"), {}, METRICS)
    (event,) = registry.events()
    assert (event["event"], event["version"], event["sha256"]) == ("registered", "v1", version.sha256)


def test_duplicates_are_found_in_registries_whose_events_lack_the_sha256(
    file_registry: ModelRegistry,
) -> None:
    registry = file_registry
    first = registry.register(model_bytes("a"), {}, METRICS)
    registry.register(model_bytes("b"), {}, METRICS)
    older_events = [{k: v for k, v in event.items() if k != "sha256"} for event in registry.events()]
    registry.events_path.write_text("".join(json.dumps(event) + "\n" for event in older_events))

    assert registry.register(model_bytes("a"), {}, METRICS).version == first.version
    assert registry.register(model_bytes("c"), {}, METRICS).version == "v3"
    assert [(event["version"], "sha256" in event) for event in registry.events()] == [
        ("v1", False),
        ("v2", False),
        ("v3", True),
    ]


@pytest.mark.parametrize(
    ("card", "metrics", "message"),
    [
        ({"name": "a"}, {"accuracy": 0.9}, "macro_f1"),
        ({"when": object()}, METRICS, "not JSON-serialisable"),
    ],
)
def test_register_refuses_bad_card_or_metrics(registry: ModelRegistry, card, metrics, message) -> None:
    with pytest.raises(RegistryError, match=message):
        registry.register(model_bytes("a"), card, metrics)
    assert registry.list() == []


def _register_many(root: str, pg_url: str | None, tags: list[str], barrier, results) -> None:
    registry = ModelRegistry.for_home(PlatformHome(Path(root), pg_url=pg_url), Settings.packaged().storage)
    barrier.wait()
    for tag in tags:
        results.put((tag, registry.register(model_bytes(tag), {"name": tag}, METRICS).version))


def test_two_processes_never_get_the_same_version_number(
    registry: ModelRegistry, registry_home: PlatformHome
) -> None:
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    batches = [
        [f"p0-{index}" for index in range(4)] + ["shared"],
        [f"p1-{index}" for index in range(4)] + ["shared"],
    ]
    workers = [
        context.Process(
            target=_register_many,
            args=(str(registry_home.root), registry_home.pg_url, tags, barrier, results),
        )
        for tags in batches
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    outcomes = [results.get(timeout=5) for _ in range(10)]

    by_tag: dict[str, set[str]] = {}
    for tag, version in outcomes:
        by_tag.setdefault(tag, set()).add(version)
    assert len(by_tag["shared"]) == 1, "the same bytes registered twice must map to one version"
    distinct = {next(iter(versions)) for versions in by_tag.values()}
    assert distinct == {f"v{number}" for number in range(1, 10)}
    for version in registry.list():
        assert version.onnx_path.read_bytes() == model_bytes(version.card["name"])


# -- status transitions ------------------------------------------------------------------------


def test_approve_and_reject_from_pending(registry: ModelRegistry) -> None:
    first = registry.register(model_bytes("a"), {}, METRICS).version
    second = registry.register(model_bytes("b"), {}, METRICS).version

    approved_version = registry.approve(first, by="alice", note="looks good")
    rejected_version = registry.reject(second, reason="too slow", by="bob")

    assert approved_version.status == APPROVED
    assert rejected_version.status == REJECTED
    assert [entry["status"] for entry in approved_version.status_history] == [PENDING, APPROVED]
    assert approved_version.status_history[-1]["by"] == "alice"
    assert rejected_version.status_history[-1]["reason"] == "too slow"
    assert [event["event"] for event in registry.events()] == [
        "registered",
        "registered",
        "approved",
        "rejected",
    ]


def test_approved_version_can_be_rejected_when_not_in_production(registry: ModelRegistry) -> None:
    version = approved(registry, "a")
    assert registry.reject(version, reason="bias found", by="carol").status == REJECTED


@pytest.mark.parametrize(
    ("setup", "action", "message"),
    [
        ("approved", "approve", "only PendingManualApproval can be approved"),
        ("rejected", "approve", "only PendingManualApproval can be approved"),
        ("rejected", "reject", "already Rejected"),
        ("production", "reject", "serves production"),
    ],
)
def test_refused_transitions_name_the_reason(registry: ModelRegistry, setup, action, message) -> None:
    version = registry.register(model_bytes("a"), {}, METRICS).version
    if setup in ("approved", "production"):
        registry.approve(version, by="tester")
    if setup == "rejected":
        registry.reject(version, reason="bad", by="tester")
    if setup == "production":
        registry.promote(version, by="tester")
    before = registry.get(version).status

    with pytest.raises(RegistryError, match=message):
        if action == "approve":
            registry.approve(version, by="tester")
        else:
            registry.reject(version, reason="again", by="tester")
    assert registry.get(version).status == before


def test_reject_needs_a_reason_and_unknown_versions_are_refused(registry: ModelRegistry) -> None:
    version = registry.register(model_bytes("a"), {}, METRICS).version
    with pytest.raises(RegistryError, match="needs a reason"):
        registry.reject(version, reason="  ", by="tester")
    with pytest.raises(RegistryError, match="not registered"):
        registry.approve("v9", by="tester")
    with pytest.raises(RegistryError, match="not a model version name"):
        registry.get("../v1")


# -- aliases -----------------------------------------------------------------------------------


def test_promote_requires_approved(registry: ModelRegistry) -> None:
    pending = registry.register(model_bytes("a"), {}, METRICS).version
    with pytest.raises(RegistryError, match="only Approved can be promoted"):
        registry.promote(pending, by="tester")
    registry.reject(pending, reason="no", by="tester")
    with pytest.raises(RegistryError, match="it is Rejected"):
        registry.promote(pending, by="tester")
    assert registry.production() is None
    assert registry.aliases() == {}


def test_promote_moves_production_and_keeps_previous(registry: ModelRegistry) -> None:
    first, second = approved(registry, "a"), approved(registry, "b")

    assert registry.promote(first, by="tester") == (None, first)
    assert registry.aliases() == {"production": first}
    assert registry.promote(second, by="tester") == (first, second)
    assert registry.aliases() == {"production": second, "previous": first}
    assert registry.get(second).aliases == ("production",)
    assert registry.get(first).aliases == ("previous",)
    assert registry.production().version == second
    # Promoting what already serves changes nothing.
    assert registry.promote(second, by="tester") == (second, second)
    assert registry.aliases() == {"production": second, "previous": first}


def test_rollback_walks_back_through_promotion_history(registry: ModelRegistry) -> None:
    first, second, third = approved(registry, "a"), approved(registry, "b"), approved(registry, "c")
    for version in (first, second, third):
        registry.promote(version, by="tester")

    assert registry.rollback(by="oncall", reason="errors up") == (third, second)
    assert registry.aliases() == {"production": second, "previous": first}
    assert registry.rollback(by="oncall", reason="still bad") == (second, first)
    assert registry.aliases() == {"production": first}
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(by="oncall", reason="again")
    rolled = [event for event in registry.events() if event["event"] == "rolled_back"]
    assert [(event["from"], event["to"], event["by"]) for event in rolled] == [
        (third, second, "oncall"),
        (second, first, "oncall"),
    ]


def test_rollback_skips_versions_rejected_since_their_promotion(registry: ModelRegistry) -> None:
    first, second, third = approved(registry, "a"), approved(registry, "b"), approved(registry, "c")
    for version in (first, second, third):
        registry.promote(version, by="tester")
    registry.rollback(by="oncall", reason="bad")  # production second, previous first
    registry.promote(third, by="tester")  # production third, previous second
    registry.reject(first, reason="leak", by="audit")

    assert registry.rollback(by="oncall", reason="bad again") == (third, second)
    assert registry.aliases() == {"production": second}


def test_rejecting_the_previous_version_removes_it_as_rollback_target(registry: ModelRegistry) -> None:
    first, second = approved(registry, "a"), approved(registry, "b")
    registry.promote(first, by="tester")
    registry.promote(second, by="tester")

    registry.reject(first, reason="found a bug", by="tester")

    assert registry.aliases() == {"production": second}
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(by="oncall", reason="bad")


def test_rollback_refuses_a_previous_model_whose_file_fails_verification(registry: ModelRegistry) -> None:
    first, second = approved(registry, "a"), approved(registry, "b")
    registry.promote(first, by="tester")
    registry.promote(second, by="tester")
    _overwrite(registry.get(first).onnx_path, b"tampered")

    with pytest.raises(IntegrityError, match="expected"):
        registry.rollback(by="oncall", reason="bad")
    assert registry.aliases() == {"production": second, "previous": first}


def test_restore_aliases_puts_both_back_exactly(registry: ModelRegistry) -> None:
    first, second, third = approved(registry, "a"), approved(registry, "b"), approved(registry, "c")
    registry.promote(first, by="tester")
    registry.promote(second, by="tester")
    before = registry.aliases()
    registry.promote(third, by="deploy")

    registry.restore_aliases(
        before.get("production"), before.get("previous"), by="deploy", reason="smoke failed"
    )

    assert registry.aliases() == before
    last = registry.events()[-1]
    assert (last["event"], last["from"], last["to"], last["automatic"]) == (
        "rolled_back",
        third,
        second,
        True,
    )
    with pytest.raises(RegistryError, match="not registered"):
        registry.restore_aliases("v42", None, by="deploy", reason="x")


def test_in_production_since_and_pointer_follow_the_alias(registry: ModelRegistry) -> None:
    assert registry.production_pointer() == (None, 0)
    assert registry.in_production_since() is None
    first, second = approved(registry, "a"), approved(registry, "b")
    registry.promote(first, by="tester")
    pointer = registry.production_pointer()
    promoted_at = registry.events()[-1]["time"]

    assert pointer[0] == first
    assert registry.in_production_since() == promoted_at
    registry.promote(second, by="tester")
    assert registry.production_pointer()[0] == second
    assert registry.production_pointer()[1] >= pointer[1]
    assert registry.in_production_since() == registry.events()[-1]["time"]


def test_alias_file_is_unchanged_when_the_rename_fails(file_registry: ModelRegistry, monkeypatch) -> None:
    registry = file_registry
    first, second = approved(registry, "a"), approved(registry, "b")
    registry.promote(first, by="tester")
    before = registry.aliases_path.read_bytes()

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        registry.promote(second, by="tester")
    monkeypatch.undo()

    assert registry.aliases_path.read_bytes() == before
    assert sorted(path.name for path in registry.root.iterdir() if path.name.startswith(".aliases")) == []
    assert [event["event"] for event in registry.events()].count("promoted") == 1


def test_readers_never_see_a_partial_alias_file(file_registry: ModelRegistry) -> None:
    registry = file_registry
    first, second = approved(registry, "a"), approved(registry, "b")
    registry.promote(first, by="tester")
    stop, seen, errors = threading.Event(), set(), []

    def read_continuously() -> None:
        while not stop.is_set():
            try:
                seen.add(json.loads(registry.aliases_path.read_text())["production"])
            except (ValueError, KeyError) as exc:
                errors.append(exc)

    reader = threading.Thread(target=read_continuously)
    reader.start()
    try:
        for _ in range(40):
            registry.promote(second, by="tester")
            registry.promote(first, by="tester")
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert seen <= {first, second}


# -- integrity ---------------------------------------------------------------------------------


def _overwrite(path: Path, content: bytes) -> None:
    path.chmod(0o644)
    path.write_bytes(content)


def test_verify_returns_the_path_of_an_intact_model(registry: ModelRegistry) -> None:
    version = registry.register(model_bytes("a"), {}, METRICS)
    assert registry.verify(version.version) == version.onnx_path


@pytest.mark.parametrize("damage", ["corrupted", "truncated", "missing"])
def test_verify_catches_a_damaged_model_file(registry: ModelRegistry, damage: str) -> None:
    version = registry.register(model_bytes("a") * 100, {}, METRICS)
    original = version.onnx_path.read_bytes()
    if damage == "corrupted":
        _overwrite(version.onnx_path, bytes([original[0] ^ 0xFF]) + original[1:])
    elif damage == "truncated":
        _overwrite(version.onnx_path, original[: len(original) // 2])
    else:
        version.onnx_path.unlink()

    with pytest.raises(IntegrityError, match=f"model {version.version}") as caught:
        registry.verify(version.version)
    if damage != "missing":
        assert version.sha256 in str(caught.value)


# -- reading -----------------------------------------------------------------------------------


def test_to_dict_is_the_models_list_json_shape(registry: ModelRegistry) -> None:
    version = approved(registry, "a")
    registry.promote(version, by="tester")

    payload = json.loads(json.dumps(registry.get(version).to_dict()))

    assert payload["version"] == "v1"
    assert payload["status"] == APPROVED
    assert payload["aliases"] == ["production"]
    assert payload["metrics"]["macro_f1"] == 0.7
    assert Path(payload["onnx_path"]).read_bytes() == model_bytes("a")
    assert len(payload["sha256"]) == 64
    assert payload["created_at"].endswith("+00:00")


def test_a_torn_event_line_is_skipped_and_closed_off(file_registry: ModelRegistry) -> None:
    registry = file_registry
    version = registry.register(model_bytes("a"), {}, METRICS).version
    with registry.events_path.open("a") as handle:
        handle.write('{"event": "approved", "vers')

    registry.approve(version, by="tester")

    assert [event["event"] for event in registry.events()] == ["registered", "approved"]
    assert registry.get(version).status == APPROVED


def test_registry_rules_come_from_settings(settings: Settings) -> None:
    assert settings.registry.auto_approve
    manual = settings.with_overrides({"registry": {"approval": "manual"}})
    assert not manual.registry.auto_approve
    with pytest.raises(SettingsError, match=r"^\[registry\] approval: must be one of 'auto' or 'manual'"):
        settings.with_overrides({"registry": {"approval": "sometimes"}})
