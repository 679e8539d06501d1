"""The graph's TF-IDF + linear arithmetic for a few texts at a time, in plain Python and small numpy.

The bulk fast path (`scoring.linear_scores`) pays polars and scipy set-up costs of a few milliseconds
per call, fine for a 20k-row chunk, ten times an ONNX Runtime run for one review. For the endpoint's
single reviews this module computes the same class scores from the same `LinearTextPlan`: tokens by
the graph's own regex, the pool's token ids and n-gram columns from hash maps built once at load,
then the idf scale, the row norm and the few weight rows those columns select.

It is an engine of the parity-gated fast path, never used on its own: `ScoringModel` enables it only
when it agrees with ONNX Runtime on the probe texts, and still hands near-ties to ONNX Runtime.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scoring imports this module
    from mlplatform.core.scoring.files import LinearTextPlan

_ABSENT = -1  # the column of an n-gram outside the pool


@dataclass(frozen=True)
class LeanTextScorer:
    """Raw class scores of a `LinearTextPlan` for a handful of texts."""

    plan: LinearTextPlan
    token_pattern: re.Pattern[str]
    # Per n-gram length, the feature column of each pool n-gram keyed by its tokens joined with one
    # space. Per length, because a pool entry may itself hold a space (skl2onnx can emit the
    # vocabulary's "a b" as a 1-gram, which no token ever matches): one shared table would let such
    # an entry answer for the 2-gram a, b. Tokens never hold a space (the pattern is one character
    # class without it), so a key of length n matches exactly n tokens.
    gram_columns: dict[int, dict[str, int]]

    @classmethod
    def from_plan(cls, plan: LinearTextPlan) -> LeanTextScorer:
        """The scorer of `plan`, its n-gram tables decoded once by `LinearTextPlan.pool_ngrams`."""
        tables: dict[int, dict[str, int]] = {}
        for length in plan.gram_lengths:
            texts, columns = plan.pool_ngrams(length)
            tables[length] = dict(zip(texts.tolist(), columns.tolist(), strict=True))
        return cls(plan, re.compile(plan.token_pattern), tables)

    def _term_counts(self, text: str | None) -> Counter[int]:
        """{feature column: count} of one text: the graph's TfIdfVectorizer row (mode TF)."""
        normalised = "" if text is None else (text.lower() if self.plan.lowercase else text)
        tokens = self.token_pattern.findall(normalised)
        if self.plan.min_token_chars > 1:
            tokens = [token for token in tokens if len(token) >= self.plan.min_token_chars]
        counts: Counter[int] = Counter()
        for length, table in self.gram_columns.items():
            # zip stops at the shortest slice: exactly the n-grams that fit in the text.
            grams = (
                tokens
                if length == 1
                else map(" ".join, zip(*(tokens[k:] for k in range(length)), strict=False))
            )
            counts.update(map(table.get, grams, repeat(_ABSENT)))  # counted in C; absent ones dropped below
        counts.pop(_ABSENT, None)
        return counts

    def scores(self, texts: Sequence[str | None]) -> np.ndarray:
        """[N, K] raw class scores, the same arithmetic as `scoring.linear_scores`."""
        plan = self.plan
        result = np.empty((len(texts), plan.weights.shape[1]), dtype=np.float64)
        for row, text in enumerate(texts):
            counts = self._term_counts(text)
            if not counts:
                result[row] = plan.intercepts
                continue
            columns = np.fromiter(counts, dtype=np.int64, count=len(counts))
            values = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
            if plan.column_scale is not None:
                values *= plan.column_scale[columns]
            if plan.feature_norm == "L1":
                total = np.abs(values).sum()
                values /= total if total else 1.0
            elif plan.feature_norm == "L2":
                total = np.sqrt(values @ values)
                values /= total if total else 1.0
            result[row] = values @ plan.weights[columns] + plan.intercepts
        return result
