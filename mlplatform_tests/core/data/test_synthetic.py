"""The demo data generator: realistic, deterministic, and in the exact published layout."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score

from mlplatform.core.data.quality import validate_drop
from mlplatform.core.data.schema import read_drop
from mlplatform.core.data.synthetic import (
    CLOTHING,
    NORMALISED_COLUMNS,
    RATING_SHARES,
    RATINGS,
    generate_reviews,
    to_published_csv,
    write_demo_drops,
)
from mlplatform.core.platform.settings import Settings

REAL_DIVISIONS = {"General", "General Petite", "Initmates"}
REAL_DEPARTMENTS = {"Tops", "Dresses", "Bottoms", "Intimate", "Jackets", "Trend"}


@pytest.fixture(scope="module")
def sample() -> pl.DataFrame:
    return generate_reviews(5_000, seed=11)


def test_same_seed_gives_identical_bytes_and_another_seed_differs() -> None:
    first = to_published_csv(generate_reviews(300, seed=3))
    assert to_published_csv(generate_reviews(300, seed=3)) == first
    assert to_published_csv(generate_reviews(300, seed=4)) != first


def test_rating_distribution_is_near_the_real_one(sample: pl.DataFrame) -> None:
    shares = dict(sample["rating"].value_counts(normalize=True).iter_rows())
    for rating, target in zip(RATINGS, RATING_SHARES, strict=True):
        assert shares[rating] == pytest.approx(target, abs=0.02), rating


def test_rows_look_like_the_real_data(sample: pl.DataFrame) -> None:
    assert sample.columns == list(NORMALISED_COLUMNS)
    assert sample["source_row"].to_list() == list(range(5_000))
    assert set(sample["division_name"].drop_nulls()) == REAL_DIVISIONS
    assert set(sample["department_name"].drop_nulls()) == REAL_DEPARTMENTS
    assert {"Knits", "Blouses", "Dresses", "Pants", "Sweaters", "Jeans"} <= set(
        sample["class_name"].drop_nulls()
    )
    assert sample["age"].min() >= 18
    assert sample["age"].max() <= 85
    assert sample["review_text"].null_count() / sample.height == pytest.approx(0.03, abs=0.01)
    assert sample["title"].null_count() / sample.height == pytest.approx(0.15, abs=0.02)
    recommended = dict(sample.group_by("rating").agg(pl.col("recommended_ind").mean()).iter_rows())
    assert recommended[5] > 0.95
    assert recommended[1] < 0.15
    assert recommended[2] < 0.15


def test_text_carries_learnable_but_imperfect_sentiment(sample: pl.DataFrame) -> None:
    texts = sample.filter(pl.col("review_text").is_not_null()).select(
        text=pl.concat_str(pl.col("title").fill_null(""), pl.col("review_text"), separator=" "),
        label=pl.when(pl.col("rating") <= 2).then(0).when(pl.col("rating") == 3).then(1).otherwise(2),
    )
    train, test = texts.head(3_500), texts.tail(texts.height - 3_500)
    vectoriser = TfidfVectorizer(ngram_range=(1, 2), min_df=2)
    model = LogisticRegression(max_iter=1_000, class_weight="balanced")
    model.fit(vectoriser.fit_transform(train["text"].to_list()), train["label"].to_list())
    predicted = model.predict(vectoriser.transform(test["text"].to_list()))
    macro_f1 = f1_score(test["label"].to_list(), predicted, average="macro")
    assert 0.5 < macro_f1 < 0.85  # chance is 1/3


def test_published_csv_round_trips_through_read_drop_and_passes(
    sample: pl.DataFrame, settings: Settings
) -> None:
    drop = sample.head(1_000)
    payload = to_published_csv(drop)
    assert payload.startswith((",".join(CLOTHING.source_names) + "\n").encode())
    assert read_drop(payload, "csv", CLOTHING).equals(drop)
    validation = validate_drop(payload, "csv", CLOTHING, settings.ingest)
    assert validation.passed, validation.first_failure


def test_published_csv_refuses_a_frame_without_the_normalised_columns(sample: pl.DataFrame) -> None:
    with pytest.raises(ValueError, match="needs exactly the normalised columns"):
        to_published_csv(sample.drop("title"))


def test_demo_drops_have_distinct_source_rows_and_are_never_overwritten(tmp_path: Path) -> None:
    paths = write_demo_drops(tmp_path / "drops", n_drops=3, rows_per_drop=40, seed=5)
    frames = [read_drop(path.read_bytes(), "csv", CLOTHING) for path in paths]
    ranges = [(frame["source_row"].min(), frame["source_row"].max()) for frame in frames]
    assert ranges == [(0, 39), (40, 79), (80, 119)]
    assert write_demo_drops(tmp_path / "drops", n_drops=3, rows_per_drop=40, seed=5) == paths
    paths[0].write_bytes(b"changed by hand")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_demo_drops(tmp_path / "drops", n_drops=3, rows_per_drop=40, seed=5)
    assert paths[0].read_bytes() == b"changed by hand"


def test_demo_drops_need_at_least_one_row() -> None:
    with pytest.raises(ValueError, match="at least one drop of one row"):
        write_demo_drops(Path("unused"), n_drops=0, rows_per_drop=10, seed=1)


@pytest.mark.realdata
def test_published_layout_reproduces_the_real_file_byte_for_byte(real_data_path: Path) -> None:
    payload = real_data_path.read_bytes()
    assert to_published_csv(read_drop(payload, "csv", CLOTHING)) == payload
