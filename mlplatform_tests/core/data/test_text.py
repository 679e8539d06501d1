"""The one text preparation: a long text cleaned in pieces reads exactly as if cleaned whole."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlplatform.core.data import text as text_module
from mlplatform.core.data.text import _WHITESPACE_RUN, prepare_text

# Whitespace of the definition, other whitespace (not collapsed) and words, in runs of any length.
CHARACTERS = st.sampled_from(
    ["\t", "\n", "\x0b", "\x0c", "\r", " ", "\u00a0", "\u2003", "\x1c", "a", "é", "😀"]
)
TEXTS = st.lists(CHARACTERS, max_size=80).map("".join)


@settings(max_examples=400, deadline=None, database=None)
@given(text=TEXTS, piece=st.integers(1, 9))
def test_cleaning_in_pieces_equals_cleaning_whole(text: str, piece: int) -> None:
    whole = _WHITESPACE_RUN.sub(" ", text).strip(" ")
    original = text_module.PIECE_CHARS
    text_module.PIECE_CHARS = piece
    try:
        assert prepare_text(text) == whole
        assert prepare_text("Title", text) == prepare_text("Title", whole)
    finally:
        text_module.PIECE_CHARS = original


def test_a_megabyte_review_is_cleaned_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_sub = _WHITESPACE_RUN.sub

    class CountingPattern:
        def sub(self, replacement: str, part: str) -> str:
            calls.append(len(part))
            return real_sub(replacement, part)

    monkeypatch.setattr(text_module, "_WHITESPACE_RUN", CountingPattern())
    review = "lovely  dress\n" * 80_000  # about 1.1 MB
    assert prepare_text(review) == " ".join(["lovely dress"] * 80_000)
    assert max(calls) <= text_module.PIECE_CHARS and len(calls) > 16
