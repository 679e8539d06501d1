"""Contracts the tests share: the UCI sentences layout (TSV, no header, a 0/1 label column)."""

from __future__ import annotations

from typing import Any

from mlplatform.core.data.contract import DatasetContract

SENTENCES_TOML = """
[dataset]
format = "tsv"
header = false
column_names = ["sentence", "label"]

[columns.sentence]
role = "text"
type = "string"
nullable = false

[columns.label]
role = "label"
type = "string"
nullable = false
allowed = ["0", "1"]

[labels]
classes = ["negative", "positive"]
favourable = "positive"
map = { "0" = "negative", "1" = "positive" }
"""
"""The UCI sentiment sentences (../shared/data/uci_sentiment_sentences) as a contract file."""


def sentences_contract(**sentence: Any) -> DatasetContract:
    """The sentences contract, with `sentence` keys added to its text column (e.g. max_length=40)."""
    contract = DatasetContract.from_toml(SENTENCES_TOML)
    raw = dict(contract.raw)
    columns = dict(raw["columns"])
    columns["sentence"] = {**columns["sentence"], **sentence}
    return DatasetContract.from_mapping({**raw, "columns": columns})


def sentences_toml(**sentence: Any) -> str:
    """`sentences_contract` as the text of a dataset.toml."""
    lines = [f"{key} = {value!r}".replace("'", '"') for key, value in sentence.items()]
    return SENTENCES_TOML.replace(
        "nullable = false\n\n[columns.label]", "\n".join(["nullable = false", *lines]) + "\n\n[columns.label]"
    )
