from __future__ import annotations

import math

import polars as pl
import pytest

from mlplatform.core.data.features import (
    FeaturesError,
    band,
    band_labels,
    build_reviews,
    check_label_distribution,
    class_labels,
    label_distribution,
    label_shift,
    review_id,
    review_ids,
    reviews_columns,
)
from mlplatform.core.data.text import prepare_text, prepare_texts
from mlplatform.core.platform.settings import FeatureRules, Settings, SettingsError
from mlplatform_tests.core.data.features_fixtures import CLOTHING, drop_frame, read_real_drop, review
from mlplatform_tests.core.data.generated import FIVE_CLASS, TWO_CLASS, generated_drop

CLASSES = CLOTHING.classes


@pytest.fixture
def rules(settings: Settings) -> FeatureRules:
    return settings.features


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


def test_the_clothing_rule_maps_the_five_ratings_and_nothing_else() -> None:
    ratings = pl.DataFrame({"rating": [1, 2, 3, 4, 5, 0, 6, None]})
    labels = ratings.select(class_labels(CLOTHING.labels, pl.col("rating"))).to_series().to_list()
    assert labels == ["negative", "negative", "neutral", "positive", "positive", None, None, None]
    assert CLASSES == ("negative", "neutral", "positive")


def test_a_label_column_is_mapped_as_text_and_unmapped_values_are_null() -> None:
    values = pl.DataFrame({"label": [0, 1, 2, None]})  # 0 and "0" are the same label value
    labels = values.select(class_labels(TWO_CLASS.labels, pl.col("label"))).to_series().to_list()
    assert labels == ["negative", "positive", None, None]


# The ids the platform computed before the dataset contract: the clothing contract keeps them.
PINNED_IDS = [
    (review(0, "Nice", rating=4), "f57dd47d59bb67c6b26c5e01441cdff0"),
    (review(3, None, title="T", age=None, rating=1), "0ab58421a553768ca33451cfed3a00ba"),
]


def test_review_id_ignores_export_index_and_feedback_votes_but_not_content() -> None:
    base = review(0, "Nice", rating=4)
    same_review_reexported = {**base, "source_row": 99, "positive_feedback_count": 12}
    assert review_id(base, CLOTHING) == review_id(same_review_reexported, CLOTHING)
    assert review_id(base, CLOTHING) != review_id({**base, "rating": 5}, CLOTHING)
    assert review_id(base, CLOTHING) != review_id({**base, "title": "Nice"}, CLOTHING)
    assert review_id({**base, "title": None}, CLOTHING) != review_id({**base, "title": ""}, CLOTHING)
    assert len(review_id(base, CLOTHING)) == 32
    assert int(review_id(base, CLOTHING), 16) >= 0
    for values, pinned in PINNED_IDS:
        assert review_id(values, CLOTHING) == pinned


def test_review_ids_matches_review_id_row_by_row_and_needs_its_columns() -> None:
    rows = [review(0, "a"), review(1, "b", title="t")]
    assert review_ids(drop_frame(rows), CLOTHING).to_list() == [review_id(row, CLOTHING) for row in rows]
    pinned = review_ids(drop_frame([values for values, _ in PINNED_IDS]), CLOTHING).to_list()
    assert pinned == [expected for _, expected in PINNED_IDS]
    with pytest.raises(FeaturesError, match="class_name"):
        review_ids(drop_frame(rows).drop("class_name"), CLOTHING)


def test_one_id_column_is_the_review_id_and_without_one_the_content_is() -> None:
    keyed = generated_drop(FIVE_CLASS, rows=3)
    assert review_ids(keyed, FIVE_CLASS).to_list() == ["key-00000", "key-00001", "key-00002"]
    with pytest.raises(FeaturesError, match="have no review_key"):
        review_ids(keyed.with_columns(pl.lit(None, dtype=pl.String).alias("review_key")), FIVE_CLASS)
    sentences = generated_drop(TWO_CLASS, rows=2)
    ids = review_ids(sentences, TWO_CLASS).to_list()
    assert ids == [review_id(row, TWO_CLASS) for row in sentences.iter_rows(named=True)]
    relabelled = sentences.with_columns(
        pl.when(pl.col("label") == "0").then(pl.lit("1")).otherwise(pl.lit("0")).alias("label")
    )
    assert set(ids).isdisjoint(review_ids(relabelled, TWO_CLASS).to_list())


def test_bands_cover_edges_and_missing_values() -> None:
    edges = [25, 35, 45, 55, 65]
    assert band_labels(edges) == ["<25", "25-34", "35-44", "45-54", "55-64", "65+"]
    ages = pl.DataFrame({"age": [18, 24, 25, 34, 35, 64, 65, 99, None]}, schema={"age": pl.Int64})
    bands = ages.select(band(pl.col("age"), edges)).to_series().to_list()
    assert bands == ["<25", "<25", "25-34", "25-34", "35-44", "55-64", "65+", "65+", "unknown"]
    # a float facet's bands hold lo <= value < hi
    assert band_labels([0.5, 2, 10], whole_numbers=False) == ["<0.5", "0.5-2", "2-10", "10+"]
    values = pl.DataFrame({"x": [0.1, 0.5, 1.99, 2.0, 10.0, None]})
    assert values.select(band(pl.col("x"), [0.5, 2, 10], False)).to_series().to_list() == [
        "<0.5",
        "0.5-2",
        "0.5-2",
        "2-10",
        "10+",
        "unknown",
    ]


def test_rules_come_from_settings_and_what_describes_the_data_moved_to_the_contract(
    rules: FeatureRules, tmp_path
) -> None:
    assert set(rules.bias_warn.as_dict()) == {"class_imbalance", "dpl", "kl", "js", "tvd", "ks"}
    assert rules.min_facet_rows == 100
    with pytest.raises(SettingsError, match=r"^\[features\] min_facet_rows: must be positive, got 0$"):
        rules.replace(min_facet_rows=0)
    old = tmp_path / "platform.toml"
    old.write_text('[features]\nfacets = ["age_band"]\n')
    with pytest.raises(SettingsError, match=r"features\.facets.*dataset\.toml"):
        Settings.load(old)
    # the clothing contract declares what the settings used to: these facets, age bands
    assert CLOTHING.facet_columns == ("age_band", "division_name", "department_name")
    assert CLOTHING.column("age").bins == (25, 35, 45, 55, 65)


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
    forward = build_reviews(drops, CLOTHING)
    backward = build_reviews(dict(reversed(list(drops.items()))), CLOTHING)
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
    frame = build_reviews({"h1": drop}, CLOTHING).frame.sort("source_row")
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
    table = build_reviews({"h": drop}, CLOTHING)
    assert table.stats.empty_text_removed == 2
    assert table.stats.rows_out == 2
    assert sorted(table.frame.get_column("text").to_list()) == ["Text", "Title only"]
    metadata = table.stats.as_metadata()
    assert metadata["rows_in"] == 4
    assert metadata["label_count/neutral"] == 1
    assert metadata["label_share/positive"] == 0.5
    assert metadata["label_share/negative"] == 0.0


def test_build_reviews_refuses_bad_input() -> None:
    with pytest.raises(FeaturesError, match="no accepted drops"):
        build_reviews({}, CLOTHING)
    with pytest.raises(FeaturesError, match="lacks columns \\['rating'\\]"):
        build_reviews({"h": drop_frame([review(0, "x")]).drop("rating")}, CLOTHING)
    wrong_type = drop_frame([review(0, "x")]).with_columns(pl.lit("forty").alias("age"))
    with pytest.raises(FeaturesError, match="wrong type"):
        build_reviews({"h": wrong_type}, CLOTHING)


def test_rows_the_label_rule_does_not_map_are_counted_and_dropped() -> None:
    drop = drop_frame(
        [review(0, "x", rating=6), review(1, "y"), review(2, "z", rating=None, recommended_ind=0)]
    )
    table = build_reviews({"h": drop}, CLOTHING)
    assert table.stats.unlabelled_removed == 2
    assert table.stats.as_metadata()["unlabelled_removed"] == 2
    assert table.frame["text"].to_list() == ["y"]
    two = generated_drop(TWO_CLASS, rows=10).with_columns(
        pl.when(pl.col("source_row") < 3).then(pl.lit("7")).otherwise(pl.col("label")).alias("label")
    )
    table = build_reviews({"h": two}, TWO_CLASS)
    assert table.stats.unlabelled_removed == 3 and table.stats.rows_out == 7


@pytest.mark.parametrize("contract", [TWO_CLASS, FIVE_CLASS], ids=["two-class", "five-class"])
def test_build_reviews_follows_any_contract(contract) -> None:
    drops = {"b": generated_drop(contract, rows=60, seed=1), "a": generated_drop(contract, rows=40, seed=2)}
    table = build_reviews(drops, contract)
    frame = table.frame
    assert frame.columns == list(reviews_columns(contract))
    assert {"review_id", "drop_hash", "source_row", "text", "label"} <= set(frame.columns)
    assert set(frame["label"].unique()) == set(contract.classes)
    assert tuple(table.stats.label_counts) == contract.classes
    assert sum(table.stats.label_counts.values()) == table.stats.rows_out == frame.height
    # rows 0..39 of drop "a" repeat those of drop "b" where the generator wrote the same content
    assert table.stats.rows_in == 100
    assert frame["review_id"].is_unique().all() and frame["review_id"].is_sorted()
    for row in frame.head(5).iter_rows(named=True):
        words = row["text"].split()
        assert any(word.startswith(row["label"]) for word in words)
    metadata = table.stats.as_metadata()
    assert {f"label_share/{label}" for label in contract.classes} <= set(metadata)


def test_a_five_class_contract_bands_its_float_facet_and_joins_its_texts_in_order() -> None:
    frame = build_reviews({"h": generated_drop(FIVE_CLASS, rows=20)}, FIVE_CLASS).frame.sort("source_row")
    first = frame.row(1, named=True)
    assert first["text"] == prepare_text(first["headline"], first["body"])
    assert first["text"].startswith("Headline 1. ")
    assert first["review_id"] == "key-00001"
    assert frame.filter(pl.col("income").is_null())["income_band"].unique().to_list() == ["unknown"]
    assert set(frame["income_band"].unique()) <= {
        "<20000.5",
        "20000.5-50000",
        "50000-100000",
        "100000+",
        "unknown",
    }
    # stars 1-10 map to the five classes as the contract says
    assert frame.select(pl.col("stars").is_in([9, 10]) == (pl.col("label") == "great")).to_series().all()


# --- label distribution and shift -------------------------------------------------------------------


def test_label_distribution_and_shift_by_hand() -> None:
    labels = pl.DataFrame({"label": ["negative", "positive", "positive", "positive"]})
    assert label_distribution(labels, CLASSES) == {"negative": 0.25, "neutral": 0.0, "positive": 0.75}
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
        label_distribution(labels.head(0), CLASSES)
    with pytest.raises(FeaturesError, match="not classes"):
        label_distribution(pl.DataFrame({"label": ["happy"]}), CLASSES)
    assert label_distribution(labels, ("negative", "positive")) == {"negative": 0.25, "positive": 0.75}


def test_check_label_distribution_passes_then_fails_on_shift_and_missing_class(rules: FeatureRules) -> None:
    balanced = pl.DataFrame({"label": ["negative", "neutral", "positive"] * 10})
    first = check_label_distribution(balanced, None, rules, CLASSES)
    assert first.passed
    assert first.name == "label_distribution"
    assert first.metadata["label_share/neutral"] == pytest.approx(1 / 3)
    same = check_label_distribution(balanced, label_distribution(balanced, CLASSES), rules, CLASSES)
    assert same.passed
    assert same.metadata["label_shift_js"] == 0.0
    shifted = pl.DataFrame({"label": ["negative"] * 2 + ["neutral"] * 3 + ["positive"] * 25})
    moved = check_label_distribution(shifted, label_distribution(balanced, CLASSES), rules, CLASSES)
    assert not moved.passed
    assert "label shift JS" in moved.description
    two = pl.DataFrame({"label": ["negative", "positive"]})
    no_neutral = check_label_distribution(two, None, rules, CLASSES)
    assert not no_neutral.passed
    assert "'neutral' is absent" in no_neutral.description
    # the same rows under a two-class contract: every class present; the three-class history not compared
    other = check_label_distribution(two, label_distribution(balanced, CLASSES), rules, TWO_CLASS.classes)
    assert other.passed and "all 2 classes present" in other.description
    assert "not compared" in other.description and "label_shift_js" not in other.metadata


# --- real data --------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_build_reviews_on_the_real_data(real_data_path, rules: FeatureRules) -> None:
    real = read_real_drop(real_data_path)
    table = build_reviews({"real": real}, CLOTHING)
    stats = table.stats
    assert stats.rows_in == 19_986
    assert stats.rows_out == stats.rows_in - stats.duplicates_removed - stats.empty_text_removed
    # README: review text missing in ~3.6% of rows; a title alone still makes a text.
    assert 0.02 < stats.empty_text_removed / stats.rows_in < 0.045
    assert (table.frame.get_column("text") != "").all()
    assert table.frame.get_column("review_id").is_unique().all()
    # README rating shares: 1-2 = 10.4%, 3 = 12.2%, 4-5 = 77.4% (before removing empty texts).
    shares = label_distribution(table.frame, CLASSES)
    assert shares["negative"] == pytest.approx(0.104, abs=0.01)
    assert shares["neutral"] == pytest.approx(0.122, abs=0.01)
    assert shares["positive"] == pytest.approx(0.774, abs=0.01)
    # The same file re-exported with another index is the same reviews.
    reindexed = real.with_columns(pl.col("source_row") + 1_000_000)
    again = build_reviews({"real": real, "reindexed": reindexed}, CLOTHING)
    assert again.stats.rows_out == stats.rows_out
    assert again.stats.duplicates_removed == stats.duplicates_removed + stats.rows_in
