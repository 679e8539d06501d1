"""Dataset contracts other than the clothing CSV, and small generated drops in their normalised layout.

- `TWO_CLASS`: the shape of the UCI sentences (no header, a sentence and a 0/1 label column named
  `label`, no id, facets or product): labels by `map`, review ids by content hash.
- `FIVE_CLASS`: an export with its own names: an id column, two text columns, a 1-10 rating mapped to
  five classes, a product key, a string facet and a binned float facet.

`generated_drop(contract, rows, seed)` writes rows whose class shows in their words (with some noise, so
models are good but not perfect), in the frame `read_drop` hands over for that contract.
"""

from __future__ import annotations

import random
from typing import Any

import polars as pl

from mlplatform.core.data.contract import ColumnRole, ColumnType, DatasetContract
from mlplatform.core.data.schema import normalised_dtypes
from mlplatform_tests.core.data.test_contract import UCI

TWO_CLASS = DatasetContract.from_toml(UCI, "two-class test contract (the UCI sentences' layout)")

FIVE_CLASS = DatasetContract.from_toml(
    """
[dataset]
format = "parquet"

[columns.ReviewKey]
role = "id"
type = "string"
nullable = false

[columns.Headline]
role = "text"
type = "string"

[columns.Body]
role = "text"
type = "string"

[columns.Stars]
role = "rating"
type = "int"
min = 1
max = 10

[columns.Sku]
role = "product"
type = "string"

[columns.Region]
role = "facet"
type = "string"

[columns.Income]
role = "facet"
type = "float"
bins = [20000.5, 50000, 100000]

[columns.Channel]
role = "extra"
type = "string"

[labels]
classes = ["awful", "poor", "okay", "good", "great"]
favourable = "great"
from_rating = { awful = [1, 2], poor = [3, 4], okay = [5, 6], good = [7, 8], great = [9, 10] }
""",
    "five-class test contract",
)

FILLER = ("the", "product", "it", "was", "and", "this", "really", "but", "order", "item", "with", "for")
REGIONS = ("north", "south", "east", "west")
SKUS = ("sku-1", "sku-2", "sku-3", "sku-4", "sku-5", "sku-6")


def class_words(label: str) -> list[str]:
    """Words only reviews of `label` use (tokens of the platform's token pattern)."""
    return [f"{label}{suffix}" for suffix in ("ish", "like", "ness", "ful", "wise", "ward")]


def label_values(contract: DatasetContract, label: str) -> list[Any]:
    """The source values the contract's rule maps to `label` (ratings, or label column values)."""
    rule = contract.labels
    if rule.from_rating is not None:
        return [int(value) for value in rule.from_rating[label]]
    values = [value for value, mapped in (rule.mapping or {}).items() if mapped == label]
    source = contract.column(contract.label_column or "")
    return [int(value) if source.type is ColumnType.INT else value for value in values]


def _text(rng: random.Random, label: str, classes: tuple[str, ...]) -> str:
    words = [rng.choice(class_words(label)) for _ in range(3)] + [rng.choice(FILLER) for _ in range(5)]
    if rng.random() < 0.25:  # noise: a word of another class
        words.append(rng.choice(class_words(rng.choice(classes))))
    rng.shuffle(words)
    return " ".join(words)


def generated_drop(contract: DatasetContract, rows: int = 300, seed: int = 7, start: int = 0) -> pl.DataFrame:
    """`rows` reviews in the contract's normalised layout, classes dealt in turn (rows start..start+rows)."""
    rng = random.Random(seed)
    classes = contract.classes
    records = []
    for index in range(start, start + rows):
        label = classes[index % len(classes)]
        record: dict[str, Any] = {"source_row": index}
        texts = contract.text_columns
        for column in contract.columns:
            if column.role is ColumnRole.TEXT:
                record[column.name] = (
                    _text(rng, label, classes) if column.name == texts[-1] else f"Headline {index % 5}"
                )
            elif column.role in (ColumnRole.RATING, ColumnRole.LABEL):
                record[column.name] = rng.choice(label_values(contract, label))
            elif column.role is ColumnRole.ID:
                record[column.name] = f"key-{index:05d}"
            elif column.role is ColumnRole.PRODUCT:
                record[column.name] = SKUS[index % len(SKUS)]
            elif column.role is ColumnRole.FACET and column.type is ColumnType.STRING:
                record[column.name] = REGIONS[index % len(REGIONS)]
            elif column.role is ColumnRole.FACET:
                record[column.name] = None if index % 17 == 0 else float(rng.randrange(5_000, 150_000))
            else:
                record[column.name] = rng.choice(("web", "store"))
        records.append(record)
    return pl.DataFrame(records, schema=normalised_dtypes(contract))
