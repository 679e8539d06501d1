"""The text a model sees and the label order: shared by training, batch scoring and serving.

`model_text` / `model_text_values` are THE definition of a model's input text, so a change here
changes every model: keep them small and stable. This module imports nothing heavy on purpose: the
endpoint loads it at start-up.
"""

from __future__ import annotations

import re

import polars as pl

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
"""Sentiment classes, in the order of every model's probability columns."""
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{label}" for label in LABELS)
"""Column names of the class probabilities in predictions and the capture."""

# Whitespace runs collapse to one space. An explicit character class rather than `\s`, because
# Python's `\s` and the Rust regex engine behind polars disagree on a few control characters, and
# `model_text` and `model_text_values` must agree on every input.
_WHITESPACE_RUN = r"[\t\n\x0B\x0C\r \u00A0]+"
_WHITESPACE_RUN_PY = re.compile(_WHITESPACE_RUN)
_SENTENCE_END = ".!?"


# --- the text a model sees -------------------------------------------------------------------------


def _clean_expr(part: pl.Expr) -> pl.Expr:
    return part.cast(pl.String).str.replace_all(_WHITESPACE_RUN, " ").str.strip_chars(" ").fill_null("")


def _clean_value(part: str | None) -> str:
    return "" if part is None else _WHITESPACE_RUN_PY.sub(" ", part).strip(" ")


def model_text(title: pl.Expr, review_text: pl.Expr) -> pl.Expr:
    """The model's input text: "Title. Review text".

    Whitespace runs collapse to one space and ends are trimmed; a missing or blank part is left out;
    the title is joined with ". " unless it already ends a sentence (".", "!", "?"), then with " ".
    Never null: a review with neither part gives "". Agrees exactly with `model_text_values`.
    """
    title_clean = _clean_expr(title)
    text_clean = _clean_expr(review_text)
    separator = (
        pl.when(title_clean.str.contains(f"[{re.escape(_SENTENCE_END)}]$"))
        .then(pl.lit(" "))
        .otherwise(pl.lit(". "))
    )
    return (
        pl.when(title_clean == "")
        .then(text_clean)
        .when(text_clean == "")
        .then(title_clean)
        .otherwise(pl.concat_str([title_clean, separator, text_clean]))
    )


def model_text_values(title: str | None, review_text: str | None) -> str:
    """`model_text` for one review (serving uses it); identical result for identical input."""
    title_clean = _clean_value(title)
    text_clean = _clean_value(review_text)
    if not title_clean:
        return text_clean
    if not text_clean:
        return title_clean
    separator = " " if title_clean[-1] in _SENTENCE_END else ". "
    return f"{title_clean}{separator}{text_clean}"
