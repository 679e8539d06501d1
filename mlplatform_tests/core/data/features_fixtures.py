"""Frames in the raw_reviews contract (core/data/schema.py output) for the features, bias and splits tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.schema import normalised_dtypes

CLOTHING = load_contract()
"""The packaged default contract: the clothing CSV as published."""


def review(source_row: int, review_text: str | None, rating: int = 5, **overrides: Any) -> dict[str, Any]:
    """One normalised review row; every field not given gets a plain default."""
    row = {
        "source_row": source_row,
        "clothing_id": 1000,
        "age": 40,
        "title": None,
        "review_text": review_text,
        "rating": rating,
        "recommended_ind": 1 if rating is not None and rating >= 4 else 0,
        "positive_feedback_count": 0,
        "division_name": "General",
        "department_name": "Tops",
        "class_name": "Knits",
    }
    row.update(overrides)
    return row


def drop_frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """A drop as core/data/schema.py hands it over: contract columns and dtypes."""
    return pl.DataFrame(rows, schema=normalised_dtypes(CLOTHING))


def read_real_drop(path: Path) -> pl.DataFrame:
    """The real CSV as one normalised drop (published names renamed to the contract's)."""
    return pl.read_csv(path).rename({column.source: column.name for column in load_contract().columns})
