"""The training stage in-process: candidates, best_model, its gates, registration and approval."""

from __future__ import annotations

import json

import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.instance import open_instance
from mlplatform.runner import run_pending

pytestmark = pytest.mark.filterwarnings("ignore")

# A search whose only candidate sees only words in 40% of reviews ("the", "and"...), with a tiny C:
# it cannot tell the classes apart.
USELESS_SEARCH = """
seed = 1
[selection]
metric = "macro_f1"
tune_class_offsets = false
offset_folds = 3
min_offset_gain = 0.0
offset_range = 1.0
offset_step = 0.5
parity_tolerance = 1e-4
[search]
size = "default"
[families.logreg]
estimator = "logistic_regression"
[families.logreg.default]
ngram_range = [[1, 1]]
min_df = [0.4]
C = [0.001]
class_weight = ["balanced"]
[families.logreg.wide]
ngram_range = [[1, 1]]
min_df = [0.4]
C = [0.001]
class_weight = ["balanced"]
"""


def _land_and_run(home, tmp_path, seed: int = 21):
    files = write_demo_drops(tmp_path / f"drops-{seed}", n_drops=2, rows_per_drop=900, seed=seed)
    Lake(home).land(files)
    return run_pending(home, say=lambda _: None)


def _check(instance, asset: str, name: str):
    import dagster as dg

    key = dg.AssetCheckKey(dg.AssetKey(asset), name)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    return record.event.dagster_event.event_specific_data


def test_first_model_is_judged_by_value_thresholds_registered_and_approved(home, tmp_path):
    report = _land_and_run(home, tmp_path)
    assert report.exit_code == 0, report.blocked
    assert "best_model" in report.materialized
    candidates = [key for key in report.materialized if key.startswith("candidate_models/")]
    assert len(candidates) >= 2

    (version,) = ModelRegistry(home.registry).list()
    assert version.status == "Approved" and version.aliases == ("production",)
    card = version.card
    assert card["lineage"]["drop_hashes"] == sorted(drop.hash for drop in Lake(home).drops())
    assert len(card["lineage"]["split_versions"]["review_splits"]) == 64
    assert card["metrics"]["test"]["macro_f1"] == pytest.approx(version.metrics["macro_f1"])
    assert (version.onnx_path.parent / "card.md").read_text().startswith("# Model card")

    instance = open_instance(home)
    no_regression = _check(instance, "best_model", "no_regression")
    assert no_regression.passed and "no model in production" in no_regression.description
    assert _check(instance, "best_model", "quality_bar").passed
    # Checks that judge numbers carry them and their bounds, nested values as flat keys.
    fairness = _check(instance, "best_model", "fairness_gap").metadata
    assert fairness["max_recall_gap"].value == Settings.load(home.settings_file).gates.max_recall_gap
    assert any(key.startswith("gaps/") and key.endswith("/max_recall_gap") for key in fairness)
    quality = _check(instance, "best_model", "quality_bar").metadata
    assert {"recall/negative", "min_class_recall/negative", "macro_f1", "min_macro_f1"} <= quality.keys()
    assert card["model"]["classes"] == ["negative", "neutral", "positive"]
    tuning = card["hyperparameters"]["class_offset_tuning"]
    assert tuning["method"] == "cross_validation" and tuning["rows"] > 0
    assert set(candidates) == {f"candidate_models/logreg_c{c}" for c in ("0p5", "1", "2")}  # C varies


def test_a_useless_model_is_rejected_and_the_run_names_the_gate(home, tmp_path):
    home.training_file.write_text(USELESS_SEARCH)
    report = _land_and_run(home, tmp_path)

    assert report.exit_code == 1
    assert any(b.asset == "best_model:quality_bar" for b in report.blocked), report.blocked
    (version,) = ModelRegistry(home.registry).list()
    assert version.status == "Rejected"
    assert "quality_bar" in version.status_history[-1]["reason"]
    assert ModelRegistry(home.registry).production() is None


def test_a_model_worse_than_production_fails_no_regression(home, tmp_path):
    assert _land_and_run(home, tmp_path).exit_code == 0
    registry = ModelRegistry(home.registry)
    (good,) = registry.list()
    registry.promote(good.version, by="test")

    # A change of the search (its code version) retrains; the new best is far worse than production.
    home.training_file.write_text(USELESS_SEARCH)
    home.settings_file.write_text(
        "[gates]\nmin_macro_f1 = 0.0\n[gates.min_class_recall]\ndefault = 0.0\nnegative = 0.0\npositive = 0.0\n"
    )
    report = run_pending(home, say=lambda _: None)

    assert report.exit_code == 1
    assert [b.asset for b in report.blocked] == ["best_model:no_regression"]
    worse = registry.get("v2")
    assert worse.status == "Rejected"
    assert registry.production().version == good.version
    no_regression = _check(open_instance(home), "best_model", "no_regression")
    assert not no_regression.passed
    assert json.loads(json.dumps(no_regression.metadata["production_macro_f1"].value)) == pytest.approx(
        good.metrics["macro_f1"], abs=1e-9
    )


def test_manual_approval_policy_waits_for_a_person(home, tmp_path, capsys):
    from mlplatform.cli import main

    home.settings_file.write_text('[registry]\napproval = "manual"\n')
    assert _land_and_run(home, tmp_path).exit_code == 0
    registry = ModelRegistry(home.registry)
    (pending,) = registry.list()
    assert pending.status == "PendingManualApproval"

    assert main(["--home", str(home.root), "models", "approve", pending.version, "--by", "reviewer"]) == 0
    assert registry.get(pending.version).status == "Approved"
    assert registry.get(pending.version).status_history[-1]["by"] == "reviewer"
    # approving twice is refused with one line
    capsys.readouterr()
    assert main(["--home", str(home.root), "models", "approve", pending.version]) == 1
    assert capsys.readouterr().err.count("\n") == 1

    assert main(["--home", str(home.root), "models", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert {"version", "status", "aliases", "metrics", "onnx_path", "sha256", "created_at"} <= listed.keys()
    assert listed["status"] == "Approved" and "macro_f1" in listed["metrics"]


def test_a_registered_model_rebuilds_byte_for_byte_from_its_recorded_versions(home, tmp_path, capsys):
    from mlplatform.cli import main

    assert _land_and_run(home, tmp_path).exit_code == 0
    (version,) = ModelRegistry(home.registry).list()

    assert main(["--home", str(home.root), "models", "rebuild", version.version]) == 0
    out = capsys.readouterr().out
    assert "identical" in out and version.sha256[:12] in out

    # a different search config is a different code version: refused with one line, not a false claim
    home.training_file.write_text(USELESS_SEARCH)
    assert main(["--home", str(home.root), "models", "rebuild", version.version]) == 1
    assert "search config" in capsys.readouterr().err
