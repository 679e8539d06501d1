"""Contracts the tests share: the UCI sentences layout (TSV, no header, a 0/1 label column)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlplatform.core.data.contract import DatasetContract

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples"
SENTENCES_TOML = (EXAMPLES / "uci_sentences.toml").read_text(encoding="utf-8")
"""The UCI sentiment sentences (../shared/data/uci_sentiment_sentences) as a contract file: the example
docs/data.md shows, so what the page says is what the tests load."""


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
    return SENTENCES_TOML.replace("[columns.sentence]\n", "\n".join(["[columns.sentence]", *lines, ""]), 1)
