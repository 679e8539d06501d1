"""score_file: layouts in, rows in = rows out, no_tokens rows, explanations, refusals, crash safety."""

from __future__ import annotations

import json
import os

import numpy as np
import polars as pl
import pytest

from mlplatform.core.data.contract import DatasetContract, load_contract
from mlplatform.core.data.text import prepare_text
from mlplatform.core.scoring import files as scoring_files
from mlplatform.core.scoring.files import ScoringInputError, score_file
from mlplatform.core.scoring.model import ExplanationUnavailable, ScoringError, ScoringModel
from mlplatform.core.training.export import sklearn_answers
from mlplatform_tests.core.data.contract_fixtures import SENTENCES_TOML
from mlplatform_tests.core.scoring.models import (
    LABELS,
    RULES,
    fitted_pipeline,
    legacy_model_bytes,
    sparse_model_bytes,
    tricky_texts,
)

CLOTHING = load_contract()
OUTPUT_COLUMNS = ("row_id", "label", "p_negative", "p_neutral", "p_positive", "no_tokens", "model_version")
PROBABILITIES = ["p_negative", "p_neutral", "p_positive"]


def write_input(frame: pl.DataFrame, path):
    if path.suffix == ".csv":
        frame.write_csv(path)
    else:
        frame.write_parquet(path)
    return path


def read_output(path) -> pl.DataFrame:
    return pl.read_csv(path) if path.suffix == ".csv" else pl.read_parquet(path)


@pytest.mark.parametrize(
    ("input_suffix", "output_suffix"),
    [(".csv", ".csv"), (".csv", ".parquet"), (".parquet", ".csv"), (".parquet", ".parquet")],
)
def test_score_file_keeps_every_row_in_order(model, pipeline, tmp_path, input_suffix, output_suffix) -> None:
    texts = tricky_texts(57, seed=11)
    source = write_input(pl.DataFrame({"text": texts}), tmp_path / f"in{input_suffix}")
    target = tmp_path / "out" / f"predictions{output_suffix}"
    progress: list[int] = []

    summary = score_file(source, target, model, "v7", 10, on_progress=progress.append, contract=CLOTHING)

    output = read_output(target)
    prepared = [prepare_text(text) for text in texts]
    labels, probabilities = sklearn_answers(pipeline, prepared, LABELS)
    assert (summary.rows_in, summary.rows_out, summary.no_tokens, summary.output_path) == (57, 57, 0, target)
    assert tuple(output.columns) == OUTPUT_COLUMNS
    assert output["row_id"].to_list() == list(range(57))
    assert output["label"].to_list() == labels.tolist()
    np.testing.assert_allclose(output.select(PROBABILITIES).to_numpy(), probabilities, atol=1e-6)
    assert output["model_version"].unique().to_list() == ["v7"]
    assert progress == [10, 20, 30, 40, 50, 57]
    assert sorted(path.name for path in target.parent.iterdir()) == [target.name]


def test_chunk_size_does_not_change_the_answers(model, tmp_path) -> None:
    source = write_input(pl.DataFrame({"text": tricky_texts(120, seed=5)}), tmp_path / "in.csv")
    one = score_file(source, tmp_path / "one.parquet", model, "v1", 1000, contract=CLOTHING)
    many = score_file(source, tmp_path / "many.parquet", model, "v1", 7, contract=CLOTHING)
    assert one.rows_out == many.rows_out == 120
    assert pl.read_parquet(one.output_path).equals(pl.read_parquet(many.output_path))


def published_reviews() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "": [17, 4, 23001, 9],
            "Clothing ID": [767, 1080, 1077, 1049],
            "Age": [33, 34, 60, 50],
            "Title": [None, "Love it!", "Awful design, it ripped", "  "],
            "Review Text": ["Absolutely perfect and comfortable", "The  fit is great", None, None],
            "Rating": [5, 5, 3, 1],
        }
    )


def test_published_csv_is_scored_with_the_prepared_text_and_its_index(model, pipeline, tmp_path) -> None:
    reviews = published_reviews()
    source = write_input(reviews, tmp_path / "reviews.csv")

    summary = score_file(source, tmp_path / "scored.csv", model, "v2", 100, contract=CLOTHING)

    output = read_output(summary.output_path)
    texts = [
        prepare_text(title, body)
        for title, body in zip(reviews["Title"], reviews["Review Text"], strict=True)
    ]
    assert texts[1] == "Love it! The fit is great" and texts[3] == ""
    labels, _ = sklearn_answers(pipeline, texts[:3], LABELS)
    assert output["row_id"].to_list() == [17, 4, 23001, 9]
    assert output["label"].to_list() == [*labels.tolist(), None]  # the last one says nothing
    assert output["no_tokens"].to_list() == [False, False, False, True]
    assert summary.no_tokens == 1


def test_no_tokens_rows_are_flagged_unlabelled_and_counted(model, tmp_path) -> None:
    frame = pl.DataFrame(
        {"review_id": ["r-9", "r-1", "r-5", "r-7"], "text": ["love it", "!!!", None, "zzq wibble"]}
    )
    summary = score_file(
        write_input(frame, tmp_path / "in.parquet"),
        tmp_path / "out.parquet",
        model,
        "v1",
        10,
        contract=CLOTHING,
    )
    output = pl.read_parquet(summary.output_path)
    assert output["row_id"].to_list() == ["r-9", "r-1", "r-5", "r-7"]
    assert output["no_tokens"].to_list() == [False, True, True, True]
    assert output["label"].to_list() == ["positive", None, None, None]
    assert output.filter(pl.col("no_tokens")).select(PROBABILITIES).null_count().row(0) == (3, 3, 3)
    assert summary.no_tokens == 3 and summary.rows_out == 4


def test_explain_adds_the_top_ngrams_of_each_prediction(model, tmp_path) -> None:
    texts = ["love the perfect dress", "awful, ripped and cheap", "", "okay fit"]
    source = write_input(pl.DataFrame({"text": texts}), tmp_path / "in.csv")
    summary = score_file(source, tmp_path / "out.csv", model, "v1", 10, explain_top_k=2, contract=CLOTHING)
    output = pl.read_csv(summary.output_path)
    expected = model.predict(texts, explain_top_k=2).explanations
    assert output.columns[-1] == "explanation"
    for cell, explanation, no_tokens in zip(
        output["explanation"], expected, output["no_tokens"], strict=True
    ):
        if no_tokens:
            assert cell is None
            continue
        assert json.loads(cell) == [{"ngram": item.ngram, "weight": item.weight} for item in explanation]
        assert 1 <= len(json.loads(cell)) <= 2


def test_explain_is_refused_for_a_model_that_cannot_explain(tmp_path) -> None:
    legacy = ScoringModel.from_bytes(legacy_model_bytes(), RULES, "v1")
    source = write_input(pl.DataFrame({"text": ["love it"]}), tmp_path / "in.csv")
    with pytest.raises(ExplanationUnavailable, match="retrain"):
        score_file(source, tmp_path / "out.csv", legacy, "v1", 10, explain_top_k=3, contract=CLOTHING)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.csv"]
    summary = score_file(
        source, tmp_path / "out.csv", legacy, "v1", 10, contract=CLOTHING
    )  # without explanations it scores
    assert pl.read_csv(summary.output_path)["label"].to_list() == ["positive"]


def test_an_existing_output_is_replaced_only_with_overwrite(model, tmp_path) -> None:
    source = write_input(pl.DataFrame({"text": ["love it"]}), tmp_path / "in.csv")
    target = tmp_path / "out.csv"
    target.write_text("someone's earlier results\n")
    with pytest.raises(ScoringInputError, match="exists: pass --overwrite"):
        score_file(source, target, model, "v1", 10, contract=CLOTHING)
    assert target.read_text() == "someone's earlier results\n"
    score_file(source, target, model, "v1", 10, overwrite=True, contract=CLOTHING)
    assert pl.read_csv(target)["label"].to_list() == ["positive"]


def test_an_output_that_appears_while_scoring_is_not_replaced(model, tmp_path, monkeypatch) -> None:
    source = write_input(pl.DataFrame({"text": tricky_texts(30)}), tmp_path / "in.csv")
    target = tmp_path / "out.csv"
    real_count = scoring_files.count_input_rows

    def someone_else_writes_the_output(path, contract):
        target.write_text("written by another process\n")
        return real_count(path, contract)

    monkeypatch.setattr(scoring_files, "count_input_rows", someone_else_writes_the_output)
    with pytest.raises(ScoringInputError, match="appeared while scoring"):
        score_file(source, target, model, "v1", 10, contract=CLOTHING)
    assert target.read_text() == "written by another process\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.csv", "out.csv"]


def test_an_empty_input_gives_an_empty_output_with_the_columns(model, tmp_path) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("text\n")
    summary = score_file(source, tmp_path / "out.parquet", model, "v1", 10, contract=CLOTHING)
    output = pl.read_parquet(summary.output_path)
    assert (summary.rows_in, summary.rows_out, output.height) == (0, 0, 0)
    assert tuple(output.columns) == OUTPUT_COLUMNS


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("no_text.csv", "id,comment\n1,hello\n", "has no text"),
        ("ragged.csv", 'text\n"unterminated quote\n', "cannot read"),
        ("model.json", '{"text": "hi"}', "must be .csv, .tsv, .txt or .parquet"),
        ("broken.parquet", "not parquet at all", "cannot read"),
        ("absent.csv", None, "not a readable file"),
    ],
)
def test_bad_input_is_a_scoring_input_error_and_leaves_no_output(
    model, tmp_path, name, content, message
) -> None:
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    with pytest.raises(ScoringInputError, match=message) as caught:
        score_file(source, tmp_path / "out.csv", model, "v1", 10, contract=CLOTHING)
    assert "\n" not in str(caught.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == ([] if content is None else [name])


def test_unknown_output_extension_is_refused(model, tmp_path) -> None:
    source = write_input(pl.DataFrame({"text": ["fine"]}), tmp_path / "in.csv")
    with pytest.raises(ScoringInputError, match=r"must end in \.csv or \.parquet"):
        score_file(source, tmp_path / "out.xlsx", model, "v1", 10, contract=CLOTHING)


def test_a_failure_mid_file_leaves_no_half_written_output(model, tmp_path, monkeypatch) -> None:
    source = write_input(pl.DataFrame({"text": tricky_texts(40)}), tmp_path / "in.csv")
    target = tmp_path / "out.csv"
    calls = {"count": 0}
    original = ScoringModel.predict

    def fail_on_third_chunk(self, texts, explain_top_k=0):
        calls["count"] += 1
        if calls["count"] == 3:
            raise ScoringError("model crashed")
        return original(self, texts, explain_top_k)

    monkeypatch.setattr(ScoringModel, "predict", fail_on_third_chunk)
    with pytest.raises(ScoringError, match="model crashed"):
        score_file(source, target, model, "v1", 10, contract=CLOTHING)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.csv"]


def test_rows_lost_between_reading_and_writing_fail_the_run(model, tmp_path, monkeypatch) -> None:
    source = write_input(pl.DataFrame({"text": tricky_texts(30)}), tmp_path / "in.parquet")
    reading = scoring_files._chunks

    def drop_last_chunk(frame, chunk_rows, input_path):
        chunks = list(reading(frame, chunk_rows, input_path))
        yield from chunks[:-1]

    monkeypatch.setattr(scoring_files, "_chunks", drop_last_chunk)
    with pytest.raises(ScoringError, match=r"rows in != rows out.*input has 30, read 20, wrote 20"):
        score_file(source, tmp_path / "out.parquet", model, "v1", 10, contract=CLOTHING)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["in.parquet"]


def test_output_may_not_overwrite_the_input(model, tmp_path) -> None:
    source = write_input(pl.DataFrame({"text": ["fine"]}), tmp_path / "in.csv")
    with pytest.raises(ScoringInputError, match="would overwrite the input"):
        score_file(source, source, model, "v1", 10, overwrite=True, contract=CLOTHING)
    assert pl.read_csv(source)["text"].to_list() == ["fine"]


@pytest.mark.realdata
def test_real_reviews_score_row_for_row_like_scikit_learn(real_data_path, tmp_path) -> None:
    reviews = pl.read_csv(real_data_path, infer_schema=False)
    texts = [
        prepare_text(title, body)
        for title, body in zip(reviews["Title"], reviews["Review Text"], strict=True)
    ]
    ratings = reviews["Rating"].cast(pl.Int64).to_numpy()
    targets = np.where(ratings <= 2, "negative", np.where(ratings == 3, "neutral", "positive"))
    pipeline = fitted_pipeline()
    pipeline.fit(texts[:4000], targets[:4000])
    model = ScoringModel.from_bytes(sparse_model_bytes(pipeline), RULES, "real")

    summary = score_file(real_data_path, tmp_path / "scored.parquet", model, "v1", 5000, contract=CLOTHING)

    output = pl.read_parquet(summary.output_path)
    assert summary.rows_in == summary.rows_out == reviews.height
    assert output["row_id"].to_list() == reviews[""].cast(pl.Int64).to_list()
    # no_tokens exactly where scikit-learn's feature row is empty (here: reviews with no title and no text)
    empty = pipeline.steps[0][1].transform(texts).getnnz(axis=1) == 0
    assert output["no_tokens"].to_list() == empty.tolist()
    assert empty.sum() == sum(1 for text in texts if not text)
    answered = np.flatnonzero(~empty).tolist()
    labels, probabilities = sklearn_answers(pipeline, [texts[index] for index in answered], LABELS)
    assert output["label"].gather(answered).to_list() == labels.tolist()
    assert np.max(np.abs(output.select(PROBABILITIES).to_numpy()[answered] - probabilities)) <= 1e-6
    assert os.listdir(tmp_path) == ["scored.parquet"]


# --- the home's contract decides the layout ------------------------------------------------------

SENTENCES = DatasetContract.from_toml(SENTENCES_TOML)
KEYED = DatasetContract.from_toml(
    """
[dataset]
format = "csv"
[columns.shop]
role = "id"
[columns.number]
role = "id"
type = "int"
[columns.headline]
role = "text"
[columns.body]
role = "text"
[columns.verdict]
role = "label"
[labels]
classes = ["bad", "good"]
"""
)


@pytest.mark.parametrize("suffix", [".txt", ".tsv"])
def test_a_headerless_tsv_in_the_contracts_layout_is_scored(model, pipeline, tmp_path, suffix) -> None:
    texts = ["I LOVE THIS DRESS", 'Love "the" dress; perfect fit  ', 'so "awful", never again']
    source = tmp_path / f"sentences{suffix}"
    source.write_text("".join(f"{text}\t{index % 2}\n" for index, text in enumerate(texts)))
    summary = score_file(source, tmp_path / "out.parquet", model, "v1", 2, contract=SENTENCES)
    output = pl.read_parquet(summary.output_path)
    labels, _ = sklearn_answers(pipeline, [prepare_text(text) for text in texts], LABELS)
    assert summary.rows_in == summary.rows_out == 3 and summary.no_tokens == 0
    assert output["row_id"].to_list() == [0, 1, 2]
    assert output["label"].to_list() == labels.tolist()


def test_a_chunk_that_starts_with_a_no_tokens_row_is_scored(model, tmp_path) -> None:
    source = write_input(pl.DataFrame({"text": ["!!!", "love it", "", "awful"]}), tmp_path / "in.csv")
    summary = score_file(source, tmp_path / "out.csv", model, "v1", 2, contract=CLOTHING)
    output = read_output(summary.output_path)
    assert output["no_tokens"].to_list() == [True, False, True, False]
    assert output["label"].is_null().to_list() == [True, False, True, False]


def test_a_plain_text_column_is_scored_under_any_contract(model, tmp_path) -> None:
    source = write_input(
        pl.DataFrame({"review_id": ["a", "b"], "text": ["love it", "awful"]}), tmp_path / "in.csv"
    )
    summary = score_file(source, tmp_path / "out.csv", model, "v1", 10, contract=SENTENCES)
    assert read_output(summary.output_path)["row_id"].to_list() == ["a", "b"]


def test_ids_and_text_columns_come_from_the_contract(model, pipeline, tmp_path) -> None:
    frame = pl.DataFrame(
        {
            "number": [7, 8],
            "shop": ["north", "south"],
            "headline": ["Great", None],
            "body": ["fits well, love it", "awful dress"],
            "extra": ["ignored", "ignored"],
        }
    )
    for name, layout in (("source.csv", frame), ("normalised.parquet", frame)):
        summary = score_file(
            write_input(layout, tmp_path / name),
            tmp_path / f"{name}.out.csv",
            model,
            "v1",
            10,
            contract=KEYED,
        )
        output = read_output(summary.output_path)
        assert output["row_id"].to_list() == ["north|7", "south|8"]
        texts = [prepare_text("Great", "fits well, love it"), prepare_text(None, "awful dress")]
        assert output["no_tokens"].to_list() == [False, False]
        assert output["label"].to_list() == sklearn_answers(pipeline, texts, LABELS)[0].tolist()
    missing = write_input(frame.drop("headline"), tmp_path / "partial.csv")
    with pytest.raises(ScoringInputError, match="the contract's text column\\(s\\) 'headline', 'body'"):
        score_file(missing, tmp_path / "partial.out.csv", model, "v1", 10, contract=KEYED)
