"""Model search: config parsing, candidate specs, deterministic training and export, selection."""

from __future__ import annotations

import copy
import dataclasses
import re

import numpy as np
import polars as pl
import pytest

from mlplatform.core.scoring.model import ScoringModel
from mlplatform.core.training.evaluation import label_codes, macro_f1_from_codes
from mlplatform.core.training.fit import (
    CandidateSpec,
    NoEligibleCandidateError,
    TrainingConfig,
    TrainingConfigError,
    TrainingDataError,
    apply_offsets,
    asset_names,
    build_pipeline,
    candidate_specs,
    config_fingerprint,
    cross_validated_offsets,
    decision_scores,
    fit_candidate,
    held_out_offset_gain,
    load_training_config,
    out_of_fold_scores,
    search_offsets,
    select_best,
    split_frames,
    stratified_folds,
    train_candidate,
    train_candidates,
)
from mlplatform_tests.core.data.generated import FIVE_CLASS, TWO_CLASS
from mlplatform_tests.core.scoring.models import RULES
from mlplatform_tests.core.training.training_data import CLASSES, contract_frame, review_frame

SMALL_CONFIG = """
seed = 3
[selection]
metric = "macro_f1"
tune_class_offsets = true
offset_folds = 3
min_offset_gain = 0.0
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
        (("offset_folds = 3", "offset_folds = 1"), "offset_folds must be at least 2"),
        (("offset_folds = 3\n", ""), "missing \\[selection\\] offset_folds"),
        (("min_offset_gain = 0.0", "min_offset_gain = -0.1"), "min_offset_gain must be >= 0"),
    ],
)
def test_bad_configs_are_refused(edit: tuple[str, str], message: str) -> None:
    with pytest.raises(TrainingConfigError, match=message):
        TrainingConfig.from_toml(SMALL_CONFIG.replace(*edit))


def test_training_is_deterministic_and_exports_working_onnx(config: TrainingConfig) -> None:
    frame = review_frame()
    first = train_candidates(frame, config, RULES, CLASSES)
    # Upstream row order must not matter either.
    second = train_candidates(frame.reverse(), config, RULES, CLASSES)
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
        review_frame(), config, RULES, CLASSES, on_progress=lambda d, t, c: seen.append((d, t, c.spec.name))
    )
    assert seen == [(i + 1, len(trained), c.spec.name) for i, c in enumerate(trained)]


def test_selection_picks_best_validation_macro_f1_among_parity_passing(config: TrainingConfig) -> None:
    trained = train_candidates(review_frame(), config, RULES, CLASSES)
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
    assert [c.onnx_bytes for c in train_candidates(frame, config, RULES, CLASSES)] == [
        c.onnx_bytes for c in train_candidates(poisoned, config, RULES, CLASSES)
    ]


def test_bad_training_frames_are_refused(config: TrainingConfig) -> None:
    frame = review_frame()
    with pytest.raises(TrainingDataError, match="lacks columns"):
        train_candidates(frame.drop("text"), config, RULES, CLASSES)
    with pytest.raises(TrainingDataError, match="no 'validation' rows"):
        train_candidates(frame.filter(pl.col("split") != "validation"), config, RULES, CLASSES)
    no_neutral_in_train = frame.filter(~((pl.col("split") == "train") & (pl.col("label") == "neutral")))
    with pytest.raises(TrainingDataError, match="lacks labels"):
        train_candidates(no_neutral_in_train, config, RULES, CLASSES)

    with pytest.raises(TrainingDataError, match="not the classes"):
        train_candidates(frame, config, RULES, ("negative", "positive"))


def test_validation_labels_never_tune_the_model(config: TrainingConfig) -> None:
    """Offsets are tuned by cross-validation on train: the validation rows (which pick the candidate)
    do not move a single byte of any candidate."""
    frame = review_frame()
    poisoned = frame.with_columns(
        pl.when(pl.col("split") == "validation")
        .then(pl.lit("negative"))
        .otherwise(pl.col("label"))
        .alias("label")
    )
    assert [c.onnx_bytes for c in train_candidates(frame, config, RULES, CLASSES)] == [
        c.onnx_bytes for c in train_candidates(poisoned, config, RULES, CLASSES)
    ]


# --- class offsets --------------------------------------------------------------------------------


def _biased_scores(classes: int, rows: int = 600, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Scores that rank the truth well but carry a constant bias against the first class."""
    rng = np.random.default_rng(seed)
    truth = np.arange(rows) % classes
    scores = rng.normal(0.0, 1.0, (rows, classes))
    scores[np.arange(rows), truth] += 2.0
    scores[:, 0] -= 1.5
    return scores, truth


@pytest.mark.parametrize("classes", [2, 3, 5, 10])
def test_offset_search_undoes_a_bias_for_any_number_of_classes(classes: int) -> None:
    scores, truth = _biased_scores(classes)
    before = macro_f1_from_codes(truth, np.argmax(scores, axis=1), classes)
    offsets, best = search_offsets(scores, truth, offset_range=2.0, offset_step=0.25)
    assert offsets.shape == (classes,) and offsets[-1] == 0.0
    assert best == pytest.approx(macro_f1_from_codes(truth, np.argmax(scores + offsets, axis=1), classes))
    assert best > before + 0.02
    # the first class is lifted relative to the others (the bias pushed it down)
    assert offsets[0] - np.mean(offsets[1:]) > 0.5
    assert np.all(np.abs(offsets) <= 2.0)


def test_the_held_out_gain_keeps_offsets_that_generalise_and_not_those_that_fit_noise() -> None:
    scores, truth = _biased_scores(3, rows=900)
    folds = stratified_folds([str(code) for code in truth], 3)
    assert held_out_offset_gain(scores, truth, folds, 2.0, 0.25) > 0.02  # a real bias: gains on unseen rows
    rng = np.random.default_rng(5)
    noise = rng.normal(0.0, 1.0, (300, 3))  # scores that know nothing about the truth
    labels = rng.integers(0, 3, 300)
    _, in_sample = search_offsets(noise, labels, 2.0, 0.25)
    baseline = macro_f1_from_codes(labels, np.argmax(noise, axis=1), 3)
    held_out = held_out_offset_gain(noise, labels, stratified_folds([str(c) for c in labels], 3), 2.0, 0.25)
    assert in_sample - baseline > 0.02  # searched and judged on the same rows, offsets always look good
    assert held_out < (in_sample - baseline) / 2


def test_offset_search_keeps_zero_offsets_when_nothing_beats_them() -> None:
    truth = np.arange(30) % 3
    perfect = np.eye(3)[truth] * 5.0
    offsets, best = search_offsets(perfect, truth, 1.0, 0.5)
    assert best == 1.0 and np.all(offsets == 0.0)


@pytest.mark.parametrize("classes", [("negative", "positive"), CLASSES], ids=["binary", "three"])
def test_applied_offsets_move_each_class_score_by_its_offset(classes: tuple[str, ...]) -> None:
    frame = review_frame().filter(pl.col("label").is_in(classes))
    pipeline = fit_candidate(
        CandidateSpec("m", "logreg", "logistic_regression", {"C": 1.0}), frame, seed=1, classes=classes
    )
    texts = frame["text"].head(20).to_list()
    before = decision_scores(pipeline, texts, classes)
    offsets = [0.5 * (index + 1) for index in range(len(classes) - 1)] + [0.0]
    moved = copy.deepcopy(pipeline)
    apply_offsets(moved, offsets, classes)
    after = decision_scores(moved, texts, classes)
    # a score matrix is defined up to a constant per row: compare differences with the last class
    gaps_before, gaps_after = before - before[:, -1:], after - after[:, -1:]
    assert np.allclose(gaps_after - gaps_before, np.array(offsets) - offsets[-1])


def test_folds_are_stratified_and_out_of_fold_scores_come_from_models_that_never_saw_the_row() -> None:
    labels = ["a"] * 7 + ["b"] * 5
    folds = stratified_folds(labels, 3)
    assert folds.tolist() == [0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 0, 1]
    frame = review_frame().filter(pl.col("split") == "train").sort("review_id")
    texts, truth = frame["text"].to_list(), frame["label"].to_list()
    spec = CandidateSpec("m", "logreg", "logistic_regression", {"C": 1.0, "ngram_range": [1, 2], "min_df": 2})
    scores = out_of_fold_scores(spec, texts, truth, 1, CLASSES, folds=3)
    # fold 0's scores are those of the candidate fitted on the raw texts of the other folds
    fold_of = stratified_folds(truth, 3)
    others = [index for index, fold in enumerate(fold_of) if fold != 0]
    held_out = [index for index, fold in enumerate(fold_of) if fold == 0]
    reference = build_pipeline(spec, 1).fit([texts[i] for i in others], [truth[i] for i in others])
    expected = decision_scores(reference, [texts[i] for i in held_out], CLASSES)
    assert np.allclose(scores[held_out], expected)


def test_cross_validated_offsets_are_kept_only_when_they_gain_enough(config: TrainingConfig) -> None:
    spec = candidate_specs(config)[0]
    train = review_frame().filter(pl.col("split") == "train")
    offsets, tuning = cross_validated_offsets(spec, train, 1, CLASSES, config.selection)
    assert tuning.method == "cross_validation" and tuning.folds == 3 and tuning.rows == train.height
    assert tuning.macro_f1_with >= tuning.macro_f1_without
    assert set(tuning.searched) == set(CLASSES) and tuning.searched["positive"] == 0.0
    assert tuning.kept == (tuning.held_out_gain > 0 and tuning.macro_f1_with > tuning.macro_f1_without)
    assert offsets == (tuple(tuning.searched.values()) if tuning.kept else (0.0, 0.0, 0.0))
    demanding = dataclasses.replace(config.selection, min_offset_gain=1.0)
    zeros, refused = cross_validated_offsets(spec, train, 1, CLASSES, demanding)
    assert zeros == (0.0, 0.0, 0.0) and not refused.kept
    assert "on the rows they were not searched on (mean of 3 folds) < min_offset_gain 1.0" in refused.reason
    scarce = pl.concat(
        [train.filter(pl.col("label") != "neutral"), train.filter(pl.col("label") == "neutral").head(2)]
    )
    zeros, skipped = cross_validated_offsets(spec, scarce, 1, CLASSES, config.selection)
    assert zeros == (0.0, 0.0, 0.0) and "'neutral' has 2 train rows, fewer than the 3 folds" in skipped.reason


def test_the_tuning_is_recorded_beside_the_offsets(config: TrainingConfig) -> None:
    trained = train_candidate(
        candidate_specs(config)[0], split_frames(review_frame()), config, RULES, CLASSES
    )
    recorded = trained.hyperparameters
    assert recorded["class_offsets"] == dict(zip(CLASSES, trained.class_offsets, strict=True))
    assert recorded["class_offset_tuning"]["method"] == "cross_validation"
    off = dataclasses.replace(
        config, selection=dataclasses.replace(config.selection, tune_class_offsets=False)
    )
    untuned = train_candidate(candidate_specs(off)[0], split_frames(review_frame()), off, RULES, CLASSES)
    assert untuned.class_offsets == (0.0, 0.0, 0.0)
    assert untuned.hyperparameters["class_offset_tuning"]["method"] == "none"


@pytest.mark.parametrize("contract", [TWO_CLASS, FIVE_CLASS], ids=["two-class", "five-class"])
def test_candidates_learn_and_export_the_contracts_classes(contract, config: TrainingConfig) -> None:
    frame = contract_frame(contract, rows=400)
    trained = train_candidates(frame, config, RULES, contract.classes)
    validation = frame.filter(pl.col("split") == "validation")
    for candidate in trained:
        assert candidate.parity.passed, candidate.parity.description
        assert candidate.classes == contract.classes
        assert list(candidate.hyperparameters["class_offsets"]) == list(contract.classes)
        assert list(candidate.validation_metrics["per_class"]) == list(contract.classes)
        assert candidate.validation_metrics["macro_f1"] > 0.7
        model = ScoringModel.from_bytes(candidate.onnx_bytes, RULES)
        assert model.classes == contract.classes
        prediction = model.predict(validation["text"].to_list())
        assert prediction.probabilities.shape == (validation.height, len(contract.classes))
        codes = label_codes(validation["label"].to_list(), "validation", contract.classes)
        assert (
            macro_f1_from_codes(
                codes, label_codes(prediction.labels, "predicted", contract.classes), len(contract.classes)
            )
            > 0.7
        )
