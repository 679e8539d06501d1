from __future__ import annotations

import hashlib

import polars as pl
import pytest

from mlplatform.core.data.features import build_reviews
from mlplatform.core.data.splits import (
    SplitError,
    assign_splits,
    check_class_coverage,
    check_no_leakage,
    check_proportions,
    split_metadata,
    split_of,
    split_position,
)
from mlplatform.core.platform.settings import Settings, SettingsError, SplitRules
from mlplatform_tests.core.data.features_fixtures import CLOTHING, read_real_drop
from mlplatform_tests.core.data.generated import FIVE_CLASS, TWO_CLASS, generated_drop

LABEL_CYCLE = ["negative", "neutral", "positive", "positive", "positive"]
CLASSES = CLOTHING.classes


@pytest.fixture
def rules(settings: Settings) -> SplitRules:
    return settings.splits


def _reviews(count: int, start: int = 0) -> pl.DataFrame:
    ids = [hashlib.blake2b(str(i).encode(), digest_size=16).hexdigest() for i in range(start, start + count)]
    labels = [LABEL_CYCLE[i % len(LABEL_CYCLE)] for i in range(start, start + count)]
    return pl.DataFrame(
        {"review_id": ids, "label": labels, "text": [f"review {i}" for i in range(start, start + count)]}
    )


def _crafted(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["review_id", "split", "label"], orient="row")


def test_rules_from_settings_and_their_validation(rules: SplitRules) -> None:
    assert rules.target_shares() == pytest.approx({"train": 0.70, "validation": 0.15, "test": 0.15})
    with pytest.raises(
        SettingsError, match=r"^\[splits\] validation_share 0.5 and test_share 0.5 must leave"
    ):
        rules.replace(validation_share=0.5, test_share=0.5)
    with pytest.raises(SettingsError, match=r"^\[splits\] test_share: must be above 0 and below 1, got 0.0$"):
        rules.replace(test_share=0.0)


def test_split_position_is_a_uniform_looking_pure_function_of_id_and_salt() -> None:
    assert split_position("abc", "s1") == split_position("abc", "s1")
    assert split_position("abc", "s1") != split_position("abc", "s2")
    positions = [split_position(f"id-{i}", "s") for i in range(2000)]
    assert all(0 <= p < 1 for p in positions)
    assert sum(p < 0.5 for p in positions) == pytest.approx(1000, abs=100)


def test_growing_data_never_moves_an_existing_review(rules: SplitRules) -> None:
    before = assign_splits(_reviews(500), rules)
    grown = pl.concat([_reviews(700, start=500), _reviews(500)]).sample(fraction=1.0, shuffle=True, seed=3)
    after = assign_splits(grown, rules)
    joined = before.join(after, on="review_id", suffix="_after")
    assert joined.height == 500
    assert (joined.get_column("split") == joined.get_column("split_after")).all()
    assert check_no_leakage(after, previous=before).passed


def test_a_larger_validation_share_never_moves_a_test_review(rules: SplitRules) -> None:
    ids = _reviews(1000).get_column("review_id").to_list()
    wider = rules.replace(validation_share=0.25)
    for review_id in ids:
        if split_of(review_id, rules) == "test":
            assert split_of(review_id, wider) == "test"


def test_assign_splits_needs_review_ids(rules: SplitRules) -> None:
    with pytest.raises(SplitError, match="no 'review_id' column"):
        assign_splits(pl.DataFrame({"label": ["positive"]}), rules)
    with pytest.raises(SplitError, match="1 rows have no review_id"):
        assign_splits(pl.DataFrame({"review_id": ["a", None]}, schema={"review_id": pl.String}), rules)


def test_checks_pass_on_assigned_splits_with_numeric_metadata(rules: SplitRules) -> None:
    splits = assign_splits(_reviews(3000), rules)
    outcomes = [
        check_no_leakage(splits),
        check_proportions(splits, rules, CLASSES),
        check_class_coverage(splits, CLASSES),
    ]
    assert [outcome.passed for outcome in outcomes] == [True, True, True], [o.description for o in outcomes]
    assert [outcome.name for outcome in outcomes] == ["no_leakage", "proportions", "class_coverage"]
    proportions = outcomes[1].metadata
    assert proportions["train/rows"] + proportions["validation/rows"] + proportions["test/rows"] == 3000
    assert proportions["test/share"] == pytest.approx(0.15, abs=rules.proportion_tolerance)
    assert outcomes[2].metadata["max_label_share_gap"] < 0.05
    for outcome in outcomes:
        assert all(isinstance(value, int | float) for value in outcome.metadata.values())


def test_no_leakage_fails_on_an_id_in_two_splits() -> None:
    leaky = _crafted([("a", "train", "positive"), ("a", "test", "positive"), ("b", "test", "neutral")])
    outcome = check_no_leakage(leaky)
    assert not outcome.passed
    assert outcome.description == "1 review ids are in more than one split (e.g. a)"
    assert outcome.metadata["ids_in_several_splits"] == 1


def test_no_leakage_fails_when_an_id_moved_since_the_previous_version() -> None:
    previous = _crafted([("a", "test", "positive"), ("b", "train", "neutral")])
    current = _crafted([("a", "train", "positive"), ("b", "train", "neutral"), ("c", "test", "negative")])
    outcome = check_no_leakage(current, previous=previous)
    assert not outcome.passed
    assert "1 review ids changed split since the previous version (e.g. a)" in outcome.description
    assert outcome.metadata["ids_moved_since_previous"] == 1


def test_no_leakage_counts_texts_shared_across_splits_without_failing() -> None:
    frame = _crafted([("a", "train", "positive"), ("b", "test", "positive")]).with_columns(
        pl.lit("Same words").alias("text")
    )
    outcome = check_no_leakage(frame)
    assert outcome.passed
    assert outcome.metadata["texts_in_several_splits"] == 1


def test_proportions_fail_when_a_split_is_off_target(rules: SplitRules) -> None:
    skewed = _reviews(100).with_columns(
        pl.when(pl.int_range(pl.len()) < 90).then(pl.lit("train")).otherwise(pl.lit("test")).alias("split")
    )
    outcome = check_proportions(skewed, rules, CLASSES)
    assert not outcome.passed
    assert "train share 0.900 is off target 0.700" in outcome.description
    assert "validation share 0.000" in outcome.description
    assert outcome.metadata["train/share_gap"] == pytest.approx(0.2)
    assert not check_proportions(skewed.head(0), rules, CLASSES).passed


def test_class_coverage_fails_when_a_split_lacks_a_class() -> None:
    rows = [
        (f"{split}-{label}", split, label)
        for split in ("train", "validation", "test")
        for label in LABEL_CYCLE[:3]
    ]
    complete = _crafted(rows)
    assert check_class_coverage(complete, CLASSES).passed
    no_neutral_in_test = complete.filter(~((pl.col("split") == "test") & (pl.col("label") == "neutral")))
    outcome = check_class_coverage(no_neutral_in_test, CLASSES)
    assert not outcome.passed
    assert outcome.description == "classes missing: neutral in test"
    assert outcome.metadata["test/label_share/neutral"] == 0.0
    no_validation = complete.filter(pl.col("split") != "validation")
    assert "negative in validation" in check_class_coverage(no_validation, CLASSES).description
    # a class the contract declares but no row has is missing everywhere
    four = (*CLASSES, "mixed")
    assert "mixed in train" in check_class_coverage(complete, four).description
    with pytest.raises(SplitError, match="not classes"):
        check_class_coverage(complete, ("negative", "positive"))


@pytest.mark.parametrize("contract", [TWO_CLASS, FIVE_CLASS], ids=["two-class", "five-class"])
def test_splits_check_the_contracts_classes(contract, rules: SplitRules) -> None:
    reviews = build_reviews({"h": generated_drop(contract, rows=400)}, contract).frame
    splits = assign_splits(reviews, rules)
    coverage = check_class_coverage(splits, contract.classes)
    assert coverage.passed, coverage.description
    assert coverage.description == f"all {len(contract.classes)} classes in all 3 splits"
    metadata = split_metadata(splits, contract.classes)
    assert {f"test/label_share/{label}" for label in contract.classes} <= set(metadata)
    assert check_proportions(splits, rules, contract.classes).passed
    one_class_short = splits.filter(
        ~((pl.col("split") == "validation") & (pl.col("label") == contract.classes[-1]))
    )
    assert not check_class_coverage(one_class_short, contract.classes).passed


def test_unknown_split_names_are_refused() -> None:
    with pytest.raises(SplitError, match="not splits: \\['holdout'\\]"):
        split_metadata(_crafted([("a", "holdout", "positive")]), CLASSES)


@pytest.mark.realdata
def test_real_data_splits_meet_their_targets(real_data_path, settings: Settings, rules: SplitRules) -> None:
    reviews = build_reviews({"real": read_real_drop(real_data_path)}, CLOTHING).frame
    splits = assign_splits(reviews, rules)
    proportions = check_proportions(splits, rules, CLASSES)
    assert proportions.passed, proportions.description
    for split, target in rules.target_shares().items():
        # binomial sd at n=19k is ~0.003; the hash should land well inside the tolerance
        assert abs(proportions.metadata[f"{split}/share"] - target) < 0.01
    coverage = check_class_coverage(splits, CLASSES)
    assert coverage.passed, coverage.description
    assert coverage.metadata["max_label_share_gap"] < 0.02
    assert check_no_leakage(splits).passed
