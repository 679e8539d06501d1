"""Model search: config parsing, candidate specs, deterministic training and export, selection."""

from __future__ import annotations

import dataclasses
import re

import polars as pl
import pytest

from mlplatform.core.scoring.model import ScoringModel
from mlplatform.core.training.fit import (
    CandidateSpec,
    NoEligibleCandidateError,
    TrainingConfig,
    TrainingConfigError,
    TrainingDataError,
    asset_names,
    candidate_specs,
    config_fingerprint,
    load_training_config,
    select_best,
    train_candidates,
)
from mlplatform_tests.core.scoring.models import RULES
from mlplatform_tests.core.training.training_data import review_frame

SMALL_CONFIG = """
seed = 3
[selection]
metric = "macro_f1"
tune_class_offsets = true
offset_range = 0.5
offset_step = 0.25
parity_tolerance = 1e-4
[search]
size = "default"
[families.logreg]
estimator = "logistic_regression"
[families.logreg.default]
ngram_range = [[1, 2]]
C = [0.5, 2.0]
class_weight = ["balanced"]
[families.logreg.wide]
C = [0.1, 1.0, 10.0]
[families.sgd]
estimator = "sgd"
[families.sgd.default]
loss = ["log_loss"]
alpha = [1e-4]
[families.sgd.wide]
loss = ["log_loss"]
alpha = [1e-4]
"""


@pytest.fixture
def config() -> TrainingConfig:
    return TrainingConfig.from_toml(SMALL_CONFIG)


def test_packaged_config_loads_and_names_candidates_stably() -> None:
    config = load_training_config()
    specs = candidate_specs(config)
    assert specs, "the packaged default search must have candidates"
    assert [spec.name for spec in specs] == [spec.name for spec in candidate_specs(load_training_config())]
    assert len({spec.name for spec in specs}) == len(specs)
    wide = dataclasses.replace(config, search_size="wide")
    assert len(candidate_specs(wide)) > len(specs)


def test_a_family_without_a_grid_for_the_size_is_not_searched() -> None:
    without_sgd_default = SMALL_CONFIG.replace(
        '[families.sgd.default]\nloss = ["log_loss"]\nalpha = [1e-4]\n', ""
    )
    names = [spec.name for spec in candidate_specs(TrainingConfig.from_toml(without_sgd_default))]
    assert names and all(name.startswith("logreg,") for name in names)
    only_sgd_wide = without_sgd_default[: without_sgd_default.index("[families.logreg]")] + (
        '[families.sgd]\nestimator = "sgd"\n[families.sgd.wide]\nalpha = [1e-4]\n'
    )
    with pytest.raises(TrainingConfigError, match="no family has a grid for search size 'default'"):
        candidate_specs(TrainingConfig.from_toml(only_sgd_wide))
    with pytest.raises(TrainingConfigError, match="unknown keys"):
        TrainingConfig.from_toml(
            SMALL_CONFIG.replace("[families.logreg.default]", "[families.logreg.defualt]")
        )


def test_candidate_names_are_readable(config: TrainingConfig) -> None:
    names = [spec.name for spec in candidate_specs(config)]
    assert names == [
        "logreg,C=0.5,class_weight=balanced,ngram_range=1-2",
        "logreg,C=2.0,class_weight=balanced,ngram_range=1-2",
        "sgd,alpha=0.0001,loss=log_loss",
    ]


def test_asset_names_show_the_family_and_what_varies_in_it(config: TrainingConfig) -> None:
    specs = candidate_specs(config)
    assert list(asset_names(specs).values()) == ["logreg_c0p5", "logreg_c2", "sgd"]
    wide = candidate_specs(dataclasses.replace(load_training_config(), search_size="wide"))
    names = asset_names(wide)
    assert len(set(names.values())) == len(wide)
    assert all(re.fullmatch(r"[a-z0-9_]+", name) for name in names.values())
    assert "sgd_alpha1em5_noclassweight_logloss_min1_ngram1to2" in names.values()


def test_asset_names_that_would_read_the_same_are_told_apart() -> None:
    same = [
        CandidateSpec("a", "logreg", "logistic_regression", {"C": 1}),
        CandidateSpec("b", "logreg", "logistic_regression", {"C": 1.0}),
        CandidateSpec("c", "logreg", "logistic_regression", {"C": 2}),
    ]
    names = asset_names(same)
    assert names["c"] == "logreg_c2"
    assert names["a"].startswith("logreg_c1_") and names["b"].startswith("logreg_c1_")
    assert names["a"] != names["b"]


def test_fingerprint_is_stable_and_follows_the_config() -> None:
    first, again = TrainingConfig.from_toml(SMALL_CONFIG), TrainingConfig.from_toml(SMALL_CONFIG)
    assert config_fingerprint(first) == config_fingerprint(again)
    changed = TrainingConfig.from_toml(SMALL_CONFIG.replace("C = [0.5, 2.0]", "C = [0.5, 3.0]"))
    assert config_fingerprint(changed) != config_fingerprint(first)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("ngram_range = [[1, 2]]", "ngram_range = [[1, 2]]\ntoken_pattern = ['[a-z]+']"),
            "fixed by the platform",
        ),
        (("ngram_range = [[1, 2]]", "ngram_range = [[1, 2]]\nlowercase = [true]"), "fixed by the platform"),
        (('loss = ["log_loss"]', 'loss = ["hinge"]'), "no probabilities"),
        (('estimator = "sgd"', 'estimator = "complement_nb"'), "estimator must be one of"),
        (('size = "default"', 'size = "huge"'), "size must be one of"),
        (("C = [0.5, 2.0]", "C = []"), "non-empty list"),
        (("seed = 3", ""), "'seed' must be an integer"),
    ],
)
def test_bad_configs_are_refused(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(TrainingConfigError, match=message):
        TrainingConfig.from_toml(SMALL_CONFIG.replace(*edit))


def test_training_is_deterministic_and_exports_working_onnx(config: TrainingConfig) -> None:
    frame = review_frame()
    first = train_candidates(frame, config, RULES)
    # Upstream row order must not matter either.
    second = train_candidates(frame.reverse(), config, RULES)
    assert [c.onnx_bytes for c in first] == [c.onnx_bytes for c in second]
    for candidate in first:
        assert candidate.parity.passed, candidate.parity.description
        assert candidate.parity.rows == frame.filter(pl.col("split") == "validation").height
        assert candidate.validation_metrics["macro_f1"] > 0.8
        assert candidate.train_metrics["rows"] == frame.filter(pl.col("split") == "train").height
        prediction = ScoringModel.from_bytes(candidate.onnx_bytes, RULES).predict(["love it, gorgeous"])
        assert prediction.labels.tolist() == ["positive"]
        assert prediction.probabilities.shape == (1, 3)


def test_progress_is_reported_for_every_candidate(config: TrainingConfig) -> None:
    seen: list[tuple[int, int, str]] = []
    trained = train_candidates(
        review_frame(), config, RULES, on_progress=lambda d, t, c: seen.append((d, t, c.spec.name))
    )
    assert seen == [(i + 1, len(trained), c.spec.name) for i, c in enumerate(trained)]


def test_selection_picks_best_validation_macro_f1_among_parity_passing(config: TrainingConfig) -> None:
    trained = train_candidates(review_frame(), config, RULES)
    best = select_best(trained)
    assert best.validation_metrics["macro_f1"] == max(c.validation_metrics["macro_f1"] for c in trained)
    broken_parity = dataclasses.replace(best.parity, passed=False)
    demoted = [dataclasses.replace(c, parity=broken_parity) if c is best else c for c in trained]
    assert select_best(demoted) is not best
    with pytest.raises(NoEligibleCandidateError):
        select_best([dataclasses.replace(c, parity=broken_parity) for c in trained])


def test_test_split_is_never_used(config: TrainingConfig) -> None:
    frame = review_frame()
    poisoned = frame.with_columns(
        pl.when(pl.col("split") == "test").then(pl.lit("positive")).otherwise(pl.col("label")).alias("label")
    )
    assert [c.onnx_bytes for c in train_candidates(frame, config, RULES)] == [
        c.onnx_bytes for c in train_candidates(poisoned, config, RULES)
    ]


def test_bad_training_frames_are_refused(config: TrainingConfig) -> None:
    frame = review_frame()
    with pytest.raises(TrainingDataError, match="lacks columns"):
        train_candidates(frame.drop("text"), config, RULES)
    with pytest.raises(TrainingDataError, match="no 'validation' rows"):
        train_candidates(frame.filter(pl.col("split") != "validation"), config, RULES)
    no_neutral_in_train = frame.filter(~((pl.col("split") == "train") & (pl.col("label") == "neutral")))
    with pytest.raises(TrainingDataError, match="lacks labels"):
        train_candidates(no_neutral_in_train, config, RULES)
