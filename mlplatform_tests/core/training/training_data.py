"""A tiny deterministic review generator for the training/export/evaluation tests."""

from __future__ import annotations

import random

import polars as pl

from mlplatform.core.data.contract import DatasetContract
from mlplatform.core.data.features import build_reviews
from mlplatform.core.data.splits import assign_splits
from mlplatform.core.platform.settings import Settings
from mlplatform_tests.core.data.generated import generated_drop

CLASSES = ("negative", "neutral", "positive")
"""The clothing classes, which `review_frame` writes."""
WORDS = {
    "negative": ["awful", "terrible", "returned", "cheap", "ripped", "disappointed", "poor", "scratchy"],
    "neutral": ["okay", "average", "fine", "decent", "mixed", "alright", "so-so", "ordinary"],
    "positive": ["love", "gorgeous", "perfect", "great", "flattering", "soft", "beautiful", "favorite"],
}
FILLER = ["the", "dress", "fit", "color", "fabric", "size", "top", "and", "this", "was", "really", "but"]
FACETS = {
    "age_band": ["<25", "25-34", "35-44"],
    "division_name": ["General", "Petite"],
    "department_name": ["Tops", "Dresses"],
}


# A small search (two candidates, so one is selected and one is not) keeps the pipeline run short.
TRAINING_SEARCH = """
seed = 1729
[selection]
metric = "macro_f1"
tune_class_offsets = true
offset_folds = 3
min_offset_gain = 0.0
offset_range = 1.0
offset_step = 0.25
parity_tolerance = 1e-4
[search]
size = "default"
[families.logreg]
estimator = "logistic_regression"
[families.logreg.default]
ngram_range = [[1, 1]]
min_df = [2]
C = [0.5, 2.0]
class_weight = ["balanced"]
"""


def review_frame(rows: int = 240, seed: int = 7) -> pl.DataFrame:
    """Reviews whose label shows in their words, with splits and facets, in the training data contract."""
    rng = random.Random(seed)
    labels = list(CLASSES)
    records = []
    for index in range(rows):
        label = labels[index % 3]
        words = [rng.choice(WORDS[label]) for _ in range(3)] + [rng.choice(FILLER) for _ in range(5)]
        if rng.random() < 0.2:  # some noise so that models are not perfect
            words.append(rng.choice(WORDS[rng.choice(labels)]))
        rng.shuffle(words)
        records.append(
            {
                "review_id": f"r{index:05d}",
                "text": " ".join(words).capitalize() + ".",
                "label": label,
                "split": ("train", "train", "train", "validation", "test")[index % 5],
                **{facet: values[index % len(values)] for facet, values in FACETS.items()},
            }
        )
    return pl.DataFrame(records)


SPLIT_RULES = Settings.packaged().splits.replace(
    validation_share=0.2, test_share=0.2, proportion_tolerance=0.05, salt="tests"
)


def contract_frame(contract: DatasetContract, rows: int = 300, seed: int = 7) -> pl.DataFrame:
    """Generated reviews of `contract` through the platform's data stage: labelled, with hash splits."""
    reviews = build_reviews({"generated": generated_drop(contract, rows, seed)}, contract).frame
    return assign_splits(reviews, SPLIT_RULES)
