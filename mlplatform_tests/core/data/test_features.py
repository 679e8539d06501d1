from __future__ import annotations

import math
from dataclasses import replace

import polars as pl
import pytest

from mlplatform.core.data.features import (
    LABELS,
    FeatureRules,
    FeaturesError,
    age_band,
    age_band_labels,
    build_reviews,
    check_label_distribution,
    label_distribution,
    label_from_rating,
    label_shift,
    review_id,
    review_ids,
)
from mlplatform.core.data.text import prepare_text, prepare_texts
from mlplatform.core.platform.settings import Settings
from mlplatform_tests.core.data.features_fixtures import drop_frame, read_real_drop, review


@pytest.fixture
def rules(settings: Settings) -> FeatureRules:
    return FeatureRules.from_settings(settings)


# --- model text -------------------------------------------------------------------------------------

TEXT_CASES = [
    ("Love it", "Fits well.", "Love it. Fits well."),
    ("Love it!", "Fits well.", "Love it! Fits well."),
    ("Really?", "Yes", "Really? Yes"),
    (None, "Only text", "Only text"),
    ("Only title", None, "Only title"),
    ("   ", "  spaced   out \n\n text ", "spaced out text"),
    ("  Title\twith tab ", "", "Title with tab"),
    (None, None, ""),
    ("", "   ", ""),
    ("Nbsp\u00a0title", "line\r\nbreak", "Nbsp title. line break"),
    # Only the listed whitespace collapses; other separators are kept as they are.
    ("sep\x1cchar", "em\u2003space", "sep\x1cchar. em\u2003space"),
]


@pytest.mark.parametrize(("title", "text", "expected"), TEXT_CASES)
def test_prepare_text(title: str | None, text: str | None, expected: str) -> None:
    assert prepare_text(title, text) == expected


def test_prepare_texts_is_prepare_text_on_every_row() -> None:
    frame = pl.DataFrame(
        {"title": [case[0] for case in TEXT_CASES], "review_text": [case[1] for case in TEXT_CASES]},
        schema={"title": pl.String, "review_text": pl.String},
    )
    prepared = prepare_texts([frame["title"], frame["review_text"]])
    assert prepared.name == "text" and prepared.dtype == pl.String
    assert prepared.to_list() == [case[2] for case in TEXT_CASES]


def test_prepare_text_joins_any_number_of_parts_in_order() -> None:
    assert (
        prepare_text("Great", None, "  fits   well ", "Would buy again!")
        == "Great. fits well. Would buy again!"
    )
    assert prepare_text() == ""
    assert prepare_texts([pl.Series([None, "b"])]).to_list() == ["", "b"]


def test_prepare_texts_handles_an_all_null_title_column() -> None:
    frame = pl.DataFrame({"title": [None, None], "review_text": ["a", "b"]})
    assert prepare_texts([frame["title"], frame["review_text"]]).to_list() == ["a", "b"]


# --- labels, ids, bands -----------------------------------------------------------------------------


def test_label_from_rating_maps_the_five_ratings_and_nothing_else() -> None:
    ratings = pl.DataFrame({"rating": [1, 2, 3, 4, 5, 0, 6, None]})
    labels = ratings.select(label_from_rating(pl.col("rating"))).to_series().to_list()
    assert labels == ["negative", "negative", "neutral", "positive", "positive", None, None, None]
    assert LABELS == ("negative", "neutral", "positive")


def test_review_id_ignores_export_index_and_feedback_votes_but_not_content() -> None:
    base = review(0, "Nice", rating=4)
    same_review_reexported = {**base, "source_row": 99, "positive_feedback_count": 12}
    assert review_id(base) == review_id(same_review_reexported)
    assert review_id(base) != review_id({**base, "rating": 5})
    assert review_id(base) != review_id({**base, "title": "Nice"})
    assert review_id({**base, "title": None}) != review_id({**base, "title": ""})
    assert len(review_id(base)) == 32
    assert int(review_id(base), 16) >= 0


def test_review_ids_matches_review_id_row_by_row_and_needs_its_columns() -> None:
    rows = [review(0, "a"), review(1, "b", title="t")]
    assert review_ids(drop_frame(rows)).to_list() == [review_id(row) for row in rows]
    with pytest.raises(FeaturesError, match="class_name"):
        review_ids(drop_frame(rows).drop("class_name"))


def test_age_bands_cover_edges_and_missing_ages() -> None:
    edges = [25, 35, 45, 55, 65]
    assert age_band_labels(edges) == ["<25", "25-34", "35-44", "45-54", "55-64", "65+"]
    ages = pl.DataFrame({"age": [18, 24, 25, 34, 35, 64, 65, 99, None]}, schema={"age": pl.Int64})
    bands = ages.select(age_band(pl.col("age"), edges)).to_series().to_list()
    assert bands == ["<25", "<25", "25-34", "25-34", "35-44", "55-64", "65+", "65+", "unknown"]


def test_rules_come_from_settings_and_reject_unordered_edges(rules: FeatureRules) -> None:
    assert rules.facets == ("age_band", "division_name", "department_name")
    assert rules.age_band_edges == (25, 35, 45, 55, 65)
    assert set(rules.bias_warn) == {"class_imbalance", "dpl", "kl", "js", "tvd", "ks"}
    with pytest.raises(FeaturesError, match="strictly increasing"):
        replace(rules, age_band_edges=(35, 25))


# --- build_reviews ----------------------------------------------------------------------------------


def _two_overlapping_drops() -> dict[str, pl.DataFrame]:
    shared = review(0, "Same review in both drops", rating=3)
    drop_b = drop_frame([review(0, "Only in b", rating=1), {**shared, "source_row": 1}])
    drop_a = drop_frame([{**shared, "source_row": 7, "positive_feedback_count": 5}, review(8, "Only in a")])
    return {"bbbb": drop_b, "aaaa": drop_a}


def test_build_reviews_dedupes_keeping_the_first_drop_by_hash_whatever_the_dict_order(
    rules: FeatureRules,
) -> None:
    drops = _two_overlapping_drops()
    forward = build_reviews(drops, rules)
    backward = build_reviews(dict(reversed(list(drops.items()))), rules)
    assert forward.frame.equals(backward.frame)
    shared = forward.frame.filter(pl.col("text") == "Same review in both drops")
    assert shared.select("drop_hash", "source_row", "positive_feedback_count").row(0) == ("aaaa", 7, 5)
    assert forward.stats.rows_in == 4
    assert forward.stats.duplicates_removed == 1
    assert forward.stats.rows_out == 3
    assert forward.frame.get_column("review_id").is_unique().all()
    assert forward.frame.get_column("review_id").is_sorted()


def test_build_reviews_labels_bands_and_prepares_text(rules: FeatureRules) -> None:
    drop = drop_frame(
        [review(0, "Too small", rating=2, title="Sad", age=22), review(1, "Great", rating=5, age=70)]
    )
    frame = build_reviews({"h1": drop}, rules).frame.sort("source_row")
    assert frame.select("text", "label", "age_band", "drop_hash").rows() == [
        ("Sad. Too small", "negative", "<25", "h1"),
        ("Great", "positive", "65+", "h1"),
    ]


def test_build_reviews_removes_empty_texts_and_counts_them(rules: FeatureRules) -> None:
    drop = drop_frame(
        [
            review(0, None),
            review(1, "   ", title=" "),
            review(2, None, title="Title only"),
            review(3, "Text", rating=3),
        ]
    )
    table = build_reviews({"h": drop}, rules)
    assert table.stats.empty_text_removed == 2
    assert table.stats.rows_out == 2
    assert sorted(table.frame.get_column("text").to_list()) == ["Text", "Title only"]
    metadata = table.stats.as_metadata()
    assert metadata["rows_in"] == 4
    assert metadata["label_count/neutral"] == 1
    assert metadata["label_share/positive"] == 0.5
    assert metadata["label_share/negative"] == 0.0


def test_build_reviews_refuses_bad_input(rules: FeatureRules) -> None:
    with pytest.raises(FeaturesError, match="no accepted drops"):
        build_reviews({}, rules)
    with pytest.raises(FeaturesError, match="lacks columns \\['rating'\\]"):
        build_reviews({"h": drop_frame([review(0, "x")]).drop("rating")}, rules)
    with pytest.raises(FeaturesError, match=r"1 rows with a rating outside 1\.\.5"):
        build_reviews({"h": drop_frame([review(0, "x", rating=6), review(1, "y")])}, rules)
    wrong_type = drop_frame([review(0, "x")]).with_columns(pl.lit("forty").alias("age"))
    with pytest.raises(FeaturesError, match="wrong type"):
        build_reviews({"h": wrong_type}, rules)


# --- label distribution and shift -------------------------------------------------------------------


def test_label_distribution_and_shift_by_hand() -> None:
    labels = pl.DataFrame({"label": ["negative", "positive", "positive", "positive"]})
    assert label_distribution(labels) == {"negative": 0.25, "neutral": 0.0, "positive": 0.75}
    # JS between (1/2, 0, 1/2) and (0, 0, 1): M = (1/4, 0, 3/4).
    expected = 0.5 * (0.5 * math.log(2) + 0.5 * math.log(2 / 3)) + 0.5 * math.log(4 / 3)
    shift = label_shift({"negative": 0.5, "positive": 0.5}, {"positive": 1.0})
    assert shift == pytest.approx(expected, abs=1e-12)
    assert shift == pytest.approx(0.215762, abs=1e-6)
    assert (
        label_shift(
            {"negative": 0.2, "neutral": 0.3, "positive": 0.5},
            {"negative": 0.2, "neutral": 0.3, "positive": 0.5},
        )
        == 0.0
    )
    with pytest.raises(FeaturesError, match="empty frame"):
        label_distribution(labels.head(0))
    with pytest.raises(FeaturesError, match="not labels"):
        label_distribution(pl.DataFrame({"label": ["happy"]}))


def test_check_label_distribution_passes_then_fails_on_shift_and_missing_class(rules: FeatureRules) -> None:
    balanced = pl.DataFrame({"label": ["negative", "neutral", "positive"] * 10})
    first = check_label_distribution(balanced, None, rules)
    assert first.passed
    assert first.name == "label_distribution"
    assert first.metadata["label_share/neutral"] == pytest.approx(1 / 3)
    same = check_label_distribution(balanced, label_distribution(balanced), rules)
    assert same.passed
    assert same.metadata["label_shift_js"] == 0.0
    shifted = pl.DataFrame({"label": ["negative"] * 2 + ["neutral"] * 3 + ["positive"] * 25})
    moved = check_label_distribution(shifted, label_distribution(balanced), rules)
    assert not moved.passed
    assert "label shift JS" in moved.description
    no_neutral = check_label_distribution(pl.DataFrame({"label": ["negative", "positive"]}), None, rules)
    assert not no_neutral.passed
    assert "'neutral' is absent" in no_neutral.description


# --- real data --------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_build_reviews_on_the_real_data(real_data_path, rules: FeatureRules) -> None:
    real = read_real_drop(real_data_path)
    table = build_reviews({"real": real}, rules)
    stats = table.stats
    assert stats.rows_in == 19_986
    assert stats.rows_out == stats.rows_in - stats.duplicates_removed - stats.empty_text_removed
    # README: review text missing in ~3.6% of rows; a title alone still makes a text.
    assert 0.02 < stats.empty_text_removed / stats.rows_in < 0.045
    assert (table.frame.get_column("text") != "").all()
    assert table.frame.get_column("review_id").is_unique().all()
    # README rating shares: 1-2 = 10.4%, 3 = 12.2%, 4-5 = 77.4% (before removing empty texts).
    shares = label_distribution(table.frame)
    assert shares["negative"] == pytest.approx(0.104, abs=0.01)
    assert shares["neutral"] == pytest.approx(0.122, abs=0.01)
    assert shares["positive"] == pytest.approx(0.774, abs=0.01)
    # The same file re-exported with another index is the same reviews.
    reindexed = real.with_columns(pl.col("source_row") + 1_000_000)
    again = build_reviews({"real": real, "reindexed": reindexed}, rules)
    assert again.stats.rows_out == stats.rows_out
    assert again.stats.duplicates_removed == stats.duplicates_removed + stats.rows_in
