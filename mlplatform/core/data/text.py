"""The text a model sees and how a text becomes tokens: one definition for all.

`prepare_text` is THE definition of a model's input text. Training (the `reviews` table), batch
scoring, the endpoint and drift all call it — the endpoint on one review, the others through
`prepare_texts` over columns, which applies the very same function row by row — and the capture
records the prepared text that was scored, so drift compares like with like. A change here changes
every model: keep it small and stable.

How a text becomes tokens is fixed here too, because scikit-learn (training) and ONNX Runtime
(scoring) must read the same tokens from any text: runs of ASCII letters, digits and underscores
(`TOKEN_PATTERN`, read identically by Python's `re` and re2) after lower-casing. ONNX Runtime lower-cases
with its StringNormalizer (C.UTF-8 locale); scikit-learn with `lowercase_for_tokens`, which maps exactly
the characters whose lower case the pattern can read: A-Z, U+0130 (İ → i) and U+212A (Kelvin sign → k).
Every other character is either outside the pattern before and after lower-casing, or already lower.

This module imports nothing heavy: the endpoint loads it at start-up.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

TOKEN_PATTERN = r"[a-zA-Z0-9_]{2,}"
"""What a token is, for every model: the one pattern re2 and Python's `re` read alike."""
CASE_MAP: dict[str, str] = {
    **{chr(code): chr(code + 32) for code in range(ord("A"), ord("Z") + 1)},
    "\u0130": "i",
    "\u212a": "k",
}
"""Every character whose lower case (StringNormalizer, C.UTF-8) the token pattern can read."""
_CASE_TABLE = str.maketrans(CASE_MAP)

# Whitespace runs collapse to one space: the characters Python's str.split() treats as whitespace
# and that reviews actually contain, spelled out so the definition does not move with a library.
_WHITESPACE_RUN = re.compile(r"[\t\n\x0B\x0C\r \u00A0]+")
_SENTENCE_END = ".!?"


def lowercase_for_tokens(text: str) -> str:
    """scikit-learn's preprocessor for every platform model (see the module docstring)."""
    return text.translate(_CASE_TABLE)


def _clean(part: str | None) -> str:
    return "" if part is None else _WHITESPACE_RUN.sub(" ", part).strip(" ")


def prepare_text(*parts: str | None) -> str:
    """A model's input text from a review's text parts, in order (e.g. title, then review text).

    Whitespace runs collapse to one space and ends are trimmed; a missing or blank part is left out;
    parts are joined with ". " unless the text so far already ends a sentence (".", "!", "?"), then
    with " ". Never None: a review with no text gives "".
    """
    text = ""
    for part in parts:
        cleaned = _clean(part)
        if not cleaned:
            continue
        text = cleaned if not text else f"{text}{' ' if text[-1] in _SENTENCE_END else '. '}{cleaned}"
    return text


def prepare_texts(columns: Sequence[pl.Series]) -> pl.Series:
    """`prepare_text` of each row of the given columns (same length), as a String series named "text"."""
    if not columns:
        raise ValueError("prepare_texts needs at least one column")
    values = [column.cast(pl.String).to_list() for column in columns]
    if len(values) == 1:
        prepared = [prepare_text(value) for value in values[0]]
    else:
        prepared = [prepare_text(*row) for row in zip(*values, strict=True)]
    return pl.Series("text", prepared, dtype=pl.String)
