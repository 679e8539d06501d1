"""Pre-training bias by facet, with the SageMaker Clarify definitions.

For each value d of a facet (e.g. age_band = "65+") the rows with that value are facet d and all other
rows are the rest a. Which facets there are, and which class is favourable, the dataset contract says
(`DatasetContract.facet_columns`, `labels.favourable`); a contract without facets has nothing to judge,
and the check says so and passes.

Label outcomes, as Clarify computes them: with a favourable class y+ (`labels.favourable`), every
label-based metric judges the outcome "y+ or not" — P_a, P_d are the two-point distributions
(q(y+), 1 - q(y+)) of the rest and the facet, as Clarify collapses a multi-category label into its
positive label values. Without a favourable class they are the shares over every declared class, and
DPL takes the class with the largest gap (the platform's rule before contracts named a favourable class).
Metrics:

- class_imbalance  CI  = (n_a - n_d) / (n_a + n_d)
- dpl              DPL = q_a(y+) - q_d(y+); without y+, q_a(y) - q_d(y) of the class y of largest magnitude
- kl               KL(P_a || P_d) = sum_y P_a log(P_a / P_d)   (natural log)
- js               JS = (KL(P_a || M) + KL(P_d || M)) / 2 with M = (P_a + P_d) / 2
- tvd              TVD = sum_y |P_a - P_d| / 2
- ks               KS = max_y |P_a - P_d|   (Clarify's form: over label outcomes, not over a cumulative
                   distribution)

KL is infinite when the facet lacks an outcome the rest has; there, and only there, a zero share of P_d
is replaced by `KL_EPSILON`, which keeps the number finite (plottable) and still large.

`facet_groups` is the shared grouping: the post-training gaps of the model evaluation reuse it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import polars as pl

from mlplatform.core.data.contract import LabelRule
from mlplatform.core.data.features import js_divergence
from mlplatform.core.data.quality import CheckOutcome
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.settings import BiasBounds

METRICS: tuple[str, ...] = tuple(BiasBounds.model_fields)
"""Metric names: the keys of `[features.bias_warn]` (`BiasBounds`)."""

KL_EPSILON = 1e-6
BIAS_CHECK = "pretraining_bias"
MISSING_FACET_VALUE = "(missing)"


class BiasError(UserError, ValueError):
    """Bias metrics cannot be computed for this input."""


@dataclass(frozen=True)
class FacetGroup:
    """One facet value d: its rows (`members`) and everyone else's (`rest`).

    `skip_reason` is set when the value is not judged (too few rows, or no rest to compare with).
    """

    facet: str
    value: str
    members: pl.DataFrame
    rest: pl.DataFrame
    skip_reason: str | None = None

    @property
    def n(self) -> int:
        return self.members.height

    @property
    def judged(self) -> bool:
        return self.skip_reason is None


@dataclass(frozen=True)
class FacetBias:
    """Bias metrics of one facet value against the rest; `metrics` is empty when skipped."""

    facet: str
    value: str
    n: int
    metrics: dict[str, float] = field(default_factory=dict)
    dpl_by_label: dict[str, float] = field(default_factory=dict)
    skip_reason: str | None = None


def facet_groups(frame: pl.DataFrame, facet: str, min_rows: int) -> list[FacetGroup]:
    """Split `frame` by each value of `facet` (missing values form the group "(missing)").

    Values with fewer than `min_rows` rows, or whose rest is empty, are returned with a skip reason
    rather than left out. Sorted by value.
    """
    if facet not in frame.columns:
        raise BiasError(f"facet column '{facet}' is not in the frame (columns: {frame.columns})")
    values = frame.get_column(facet).cast(pl.String).fill_null(MISSING_FACET_VALUE)
    groups = []
    for value in sorted(values.unique().to_list()):
        in_group = values == value
        members, rest = frame.filter(in_group), frame.filter(~in_group)
        skip_reason = None
        if members.height < min_rows:
            skip_reason = f"{members.height} rows < min_facet_rows {min_rows}"
        elif rest.height == 0:
            skip_reason = "no other facet value to compare with"
        groups.append(FacetGroup(facet, value, members, rest, skip_reason))
    return groups


def outcomes(labels: LabelRule) -> tuple[str, ...]:
    """The label outcomes the metrics compare: (favourable, "not <favourable>"), or every class."""
    if labels.favourable is None:
        return labels.classes
    return (labels.favourable, f"not {labels.favourable}")


def _distribution(frame: pl.DataFrame, label_col: str, labels: LabelRule) -> list[float]:
    counts = dict(frame.group_by(label_col).len().iter_rows())
    if labels.favourable is None:
        return [counts.get(label, 0) / frame.height for label in labels.classes]
    favourable = counts.get(labels.favourable, 0) / frame.height
    return [favourable, 1.0 - favourable]


def label_metrics(
    n_rest: int, n_facet: int, rest: Sequence[float], facet: Sequence[float], labels: Sequence[str]
) -> tuple[dict[str, float], dict[str, float]]:
    """The metrics for row counts and outcome distributions (in the order of `labels`, the outcomes) of
    rest a and facet d. DPL is the first outcome's gap when there are two (the favourable class),
    else the largest in magnitude.

    Returns (metrics by name, DPL by outcome).
    """
    gaps = {label: a - d for label, a, d in zip(labels, rest, facet, strict=True)}
    facet_floored = [d if d > 0 or a == 0 else KL_EPSILON for a, d in zip(rest, facet, strict=True)]
    metrics = {
        "class_imbalance": (n_rest - n_facet) / (n_rest + n_facet),
        "dpl": gaps[labels[0]] if len(labels) == 2 else max(gaps.values(), key=abs),
        "kl": sum(a * math.log(a / d) for a, d in zip(rest, facet_floored, strict=True) if a > 0),
        "js": js_divergence(rest, facet),
        "tvd": sum(abs(gap) for gap in gaps.values()) / 2,
        "ks": max(abs(gap) for gap in gaps.values()),
    }
    dpl_by_label = {labels[0]: gaps[labels[0]]} if len(labels) == 2 else gaps
    return metrics, dpl_by_label


def pretraining_bias(
    frame: pl.DataFrame,
    facets: Sequence[str],
    labels: LabelRule,
    label_col: str = "label",
    *,
    min_rows: int,
) -> list[FacetBias]:
    """Bias metrics for every value of every facet (the contract's `facet_columns`), judging the
    contract's favourable class (`labels`); skipped values carry their reason."""
    if label_col not in frame.columns:
        raise BiasError(f"label column '{label_col}' is not in the frame")
    unknown = set(frame.get_column(label_col).unique().to_list()) - set(labels.classes)
    if unknown:
        raise BiasError(
            f"column '{label_col}' holds values that are not classes {list(labels.classes)}: "
            f"{sorted(map(str, unknown))}"
        )
    judged_outcomes = outcomes(labels)
    results = []
    for facet in facets:
        for group in facet_groups(frame, facet, min_rows):
            if not group.judged:
                results.append(FacetBias(facet, group.value, group.n, skip_reason=group.skip_reason))
                continue
            metrics, dpl_by_label = label_metrics(
                group.rest.height,
                group.n,
                _distribution(group.rest, label_col, labels),
                _distribution(group.members, label_col, labels),
                judged_outcomes,
            )
            results.append(FacetBias(facet, group.value, group.n, metrics, dpl_by_label))
    return results


def bias_warnings(results: Sequence[FacetBias], bounds: Mapping[str, float]) -> list[str]:
    """One line per metric whose magnitude exceeds its bound (bounds keyed by `METRICS` names)."""
    unknown = set(bounds) - set(METRICS)
    if unknown:
        raise BiasError(f"bias bounds name unknown metrics {sorted(unknown)} (known: {list(METRICS)})")
    warnings = []
    for result in results:
        for metric, bound in bounds.items():
            value = result.metrics.get(metric)
            if value is not None and abs(value) > bound:
                warnings.append(
                    f"{result.facet}={result.value} (n={result.n}): {metric} {value:+.4f} exceeds bound {bound}"
                )
    return warnings


def summary_metrics(results: Sequence[FacetBias]) -> dict[str, float]:
    """Flat numeric metadata per facet: the largest magnitude of each metric over judged values
    (`bias/<facet>/<metric>_max`) and how many values were judged and skipped."""
    summary: dict[str, float] = {}
    for facet in dict.fromkeys(result.facet for result in results):
        of_facet = [result for result in results if result.facet == facet]
        judged = [result for result in of_facet if result.skip_reason is None]
        summary[f"bias/{facet}/values_judged"] = float(len(judged))
        summary[f"bias/{facet}/values_skipped"] = float(len(of_facet) - len(judged))
        for metric in METRICS:
            if judged:
                summary[f"bias/{facet}/{metric}_max"] = max(abs(result.metrics[metric]) for result in judged)
    return summary


def judged_outcome_note(labels: LabelRule) -> str:
    """What the label-based metrics judged, in words (for a check's description)."""
    if labels.favourable is not None:
        return f"label metrics judge the favourable class {labels.favourable!r}"
    return (
        f"no favourable class declared ([labels] favourable): label metrics compare all "
        f"{len(labels.classes)} classes, DPL the class with the largest gap"
    )


def check_bias(
    results: Sequence[FacetBias], bounds: Mapping[str, float], facets: Sequence[str], labels: LabelRule
) -> CheckOutcome:
    """Passes when no judged facet value exceeds a bound; names the warnings, the skipped values and
    what the label metrics judged. No facet declared: nothing to judge, and it says so.

    The metadata is `summary_metrics(results)`.
    """
    if not facets:
        return CheckOutcome(
            BIAS_CHECK,
            True,
            'no facet declared in the dataset contract (role = "facet"): no bias to judge',
            {"facets": 0},
        )
    warnings = bias_warnings(results, bounds)
    skipped = [
        f"{result.facet}={result.value} ({result.skip_reason})" for result in results if result.skip_reason
    ]
    skipped_note = f"; not judged: {', '.join(skipped)}" if skipped else ""
    judged = len(results) - len(skipped)
    note = judged_outcome_note(labels)
    if warnings:
        description = f"{len(warnings)} over bounds: {'; '.join(warnings)}{skipped_note}; {note}"
        return CheckOutcome(BIAS_CHECK, False, description, dict(summary_metrics(results)))
    description = f"{judged} facet values within bounds{skipped_note}; {note}"
    return CheckOutcome(BIAS_CHECK, True, description, dict(summary_metrics(results)))
