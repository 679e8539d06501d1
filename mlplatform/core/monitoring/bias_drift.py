"""Bias drift on live traffic: predicted-class rates per facet value, over time, against the training baseline.

The facets are the dataset contract's (core/data/contract.py, `facet_columns`). The baseline is the
judged version's model card: for every facet value of its test split, its rows and its predicted-class
rates (`card["facets"][facet]["values"][value]["predicted_rate"]`, written by the evaluation at
registration, so new data never moves it).

A live prediction's facet value comes with the request when the capture has a column of the facet's
name, else from its product: the catalogue (the `reviews` table) maps each product to its most frequent
value of the facet, used only when the facet is a property of the product there, i.e. that value covers
at least `catalogue_min_purity` of the catalogue's rows (a department is; a reviewer's age band is not,
and is then reported as not observable on live traffic, not guessed).

What is judged is bias, not drift of the whole traffic (drift_report watches that): for a facet value d
and class c, its gap to all traffic, live rate_d(c) - rate_all(c), against the same gap at training
(all = the row-weighted mix of the card's facet values). A value's shift is the largest
|live gap - training gap| over the classes; WARN above `warn`, ERROR above `error`, judged from
`min_rows` live predictions of the value, and only for values the card judged at training (at least
`[features] min_facet_rows` test rows: a gap measured on a handful of test rows is noise). A global shift (every group predicted more negative) moves
no gap; one group treated differently than at training does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import polars as pl

from mlplatform.core.data.contract import DatasetContract
from mlplatform.core.monitoring.rules import (
    ERROR,
    WARN,
    MonitorOutcome,
    not_enough_data,
    require_columns,
)
from mlplatform.core.platform.settings import BiasDriftRules
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.scoring.model import model_classes

BIAS_DRIFT_CHECK = "bias_drift"
MISSING_VALUE = "(missing)"
BY_DAY_SCHEMA: dict[str, pl.DataType] = {
    "day": pl.Date(),
    "facet": pl.String(),
    "value": pl.String(),
    "label": pl.String(),
    "rows": pl.Int64(),
    "rate": pl.Float64(),
}


class FacetSource(StrEnum):
    """Where a facet's live values come from."""

    REQUEST = "request"
    CATALOGUE = "catalogue"


@dataclass(frozen=True)
class ValueDrift:
    """One facet value on live traffic against its training baseline."""

    facet: str
    value: str
    rows: int
    live_rate: dict[str, float]
    baseline_rate: dict[str, float] | None
    shift: float | None
    worst_class: str | None
    severity: str | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "facet": self.facet,
            "value": self.value,
            "rows": self.rows,
            "live_rate": dict(self.live_rate),
            "baseline_rate": None if self.baseline_rate is None else dict(self.baseline_rate),
            "shift": self.shift,
            "worst_class": self.worst_class,
            "severity": self.severity,
            "note": self.note,
        }


@dataclass(frozen=True)
class FacetDrift:
    """One facet: where its live values came from (None: not observable, `reason` says why) and its values."""

    facet: str
    source: FacetSource | None
    reason: str | None
    values: tuple[ValueDrift, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "facet": self.facet,
            "source": None if self.source is None else self.source.value,
            "reason": self.reason,
            "values": [value.to_dict() for value in self.values],
        }


@dataclass(frozen=True)
class BiasDriftReport:
    """Every facet of the judged version's live traffic, its rates by day, and the verdict."""

    judged_version: str | None
    classes: tuple[str, ...]
    facets: tuple[FacetDrift, ...]
    by_day: pl.DataFrame
    outcome: MonitorOutcome

    def to_dict(self) -> dict[str, Any]:
        return {
            "judged_version": self.judged_version,
            "classes": list(self.classes),
            "facets": [facet.to_dict() for facet in self.facets],
            "by_day": self.by_day.with_columns(pl.col("day").cast(pl.String)).to_dicts(),
            "outcome": self.outcome.to_dict(),
        }

    def metadata(self) -> dict[str, float | int | str]:
        metadata: dict[str, float | int | str] = {"judged_version": str(self.judged_version)}
        for facet in self.facets:
            metadata[f"{facet.facet}/source"] = (
                facet.source.value if facet.source else f"not observable: {facet.reason}"
            )
            for value in facet.values:
                if value.shift is not None:
                    metadata[f"{facet.facet}/{value.value}/shift"] = value.shift
                metadata[f"{facet.facet}/{value.value}/rows"] = value.rows
        return metadata


def _rates(labels: pl.Series, classes: Sequence[str]) -> dict[str, float]:
    counts = dict(labels.value_counts().iter_rows())
    return {label: counts.get(label, 0) / labels.len() for label in classes}


def product_facet(
    catalogue: pl.DataFrame, product_column: str, facet: str, min_purity: float
) -> tuple[pl.DataFrame | None, str]:
    """(product_id -> facet value, a note): the facet as a property of the product, or None and why not."""
    if product_column not in catalogue.columns or facet not in catalogue.columns:
        return None, f"the catalogue has no {product_column} and {facet} columns"
    pairs = catalogue.select(
        pl.col(product_column).cast(pl.String).alias("product_id"),
        pl.col(facet).cast(pl.String).fill_null(MISSING_VALUE).alias(facet),
    ).filter(pl.col("product_id").is_not_null())
    if pairs.height == 0:
        return None, "the catalogue names no product"
    counted = pairs.group_by("product_id", facet).len()
    modes = counted.sort(["product_id", "len", facet], descending=[False, True, False]).unique(
        subset="product_id", keep="first", maintain_order=True
    )
    purity = modes["len"].sum() / pairs.height
    if purity < min_purity:
        return None, (
            f"{facet} is not a property of the product: its most frequent value per product covers "
            f"{purity:.2f} of the catalogue's rows (< {min_purity})"
        )
    return modes.select(
        "product_id", facet
    ), f"joined from the product ({purity:.2f} of catalogue rows agree)"


def _baseline(
    card_facets: Mapping[str, Any], facet: str, classes: Sequence[str]
) -> dict[str, tuple[int, dict[str, float], bool]]:
    """{value: (test rows, predicted rates, judged at training)} of the card's values of `facet` (empty:
    none). A value with fewer test rows than `[features] min_facet_rows` was not judged at training."""
    entry = card_facets.get(facet)
    values = entry.get("values") if isinstance(entry, Mapping) else None
    if not isinstance(values, Mapping):
        return {}
    baseline = {}
    for value, numbers in values.items():
        rates = numbers.get("predicted_rate") if isinstance(numbers, Mapping) else None
        if isinstance(rates, Mapping) and numbers.get("rows"):
            baseline[str(value)] = (
                int(numbers["rows"]),
                {label: float(rates.get(label, 0.0)) for label in classes},
                bool(numbers.get("judged", True)),
            )
    return baseline


def _value_drift(
    facet: str,
    value: str,
    live: pl.Series,
    live_all: Mapping[str, float],
    baseline: Mapping[str, tuple[int, dict[str, float], bool]],
    base_all: Mapping[str, float],
    classes: Sequence[str],
    rules: BiasDriftRules,
) -> ValueDrift:
    rates = _rates(live, classes)
    base = baseline.get(value)
    if base is None:
        return ValueDrift(
            facet, value, live.len(), rates, None, None, None, None, "not in the training baseline"
        )
    if not base[2]:
        note = f"{base[0]} test rows at training (< [features] min_facet_rows): not judged"
        return ValueDrift(facet, value, live.len(), rates, base[1], None, None, None, note)
    if live.len() < rules.min_rows:
        note = f"{live.len()} live predictions < min_rows {rules.min_rows}: not judged"
        return ValueDrift(facet, value, live.len(), rates, base[1], None, None, None, note)
    shifts = {
        label: (rates[label] - live_all[label]) - (base[1][label] - base_all[label]) for label in classes
    }
    worst = max(shifts, key=lambda label: abs(shifts[label]))
    shift = abs(shifts[worst])
    severity = ERROR if shift > rules.error else WARN if shift > rules.warn else None
    note = f"{worst}: gap to all traffic {rates[worst] - live_all[worst]:+.3f} live vs {base[1][worst] - base_all[worst]:+.3f} at training"
    return ValueDrift(facet, value, live.len(), rates, base[1], shift, worst, severity, note)


def _by_day(rows: pl.DataFrame, facet: str, classes: Sequence[str]) -> pl.DataFrame:
    if rows.height == 0:
        return pl.DataFrame(schema=BY_DAY_SCHEMA)
    counts = rows.group_by("day", facet, "label").len().rename({"len": "label_rows"})
    totals = rows.group_by("day", facet).len().rename({"len": "rows"})
    grid = totals.join(pl.DataFrame({"label": list(classes)}), how="cross")
    return (
        grid.join(counts, on=["day", facet, "label"], how="left")
        .select(
            "day",
            pl.lit(facet).alias("facet"),
            pl.col(facet).alias("value"),
            "label",
            pl.col("rows").cast(pl.Int64),
            (pl.col("label_rows").fill_null(0) / pl.col("rows")).alias("rate"),
        )
        .sort("day", "value", "label")
    )


def bias_drift(
    log: pl.DataFrame,
    catalogue: pl.DataFrame | None,
    *,
    version: str | None,
    card_facets: Mapping[str, Any],
    facets: Sequence[str],
    product_column: str | None,
    classes: Sequence[str],
    rules: BiasDriftRules,
) -> BiasDriftReport:
    """Bias drift of `version`'s answered predictions in `log` (see the module docstring).

    `card_facets` is the version's model card `facets` section; `facets` the contract's facet columns;
    `product_column` the catalogue's product column (None: no catalogue join).
    """
    require_columns(log, ("model_version", "time", "label", "product_id"), "prediction log")
    live = log.filter(pl.col("model_version") == version) if version is not None else log.clear()
    live = live.with_columns(pl.col("time").dt.date().alias("day"))
    results: list[FacetDrift] = []
    by_day: list[pl.DataFrame] = []
    for facet in facets:
        if facet in live.columns:
            source, joined, reason = (
                FacetSource.REQUEST,
                live.with_columns(pl.col(facet).cast(pl.String)),
                None,
            )
        else:
            mapping, note = (
                product_facet(catalogue, product_column, facet, rules.catalogue_min_purity)
                if catalogue is not None and product_column is not None
                else (None, "no catalogue to join the product with")
            )
            if mapping is None:
                results.append(FacetDrift(facet, None, note, ()))
                continue
            source, reason = FacetSource.CATALOGUE, None
            joined = live.join(mapping, on="product_id", how="left")
        joined = joined.with_columns(pl.col(facet).fill_null(MISSING_VALUE))
        baseline = _baseline(card_facets, facet, classes)
        if not baseline:
            results.append(FacetDrift(facet, None, "the model card has no predicted rates for it", ()))
            continue
        total = sum(rows for rows, _, _ in baseline.values())
        base_all = {
            label: sum(rows * rates[label] for rows, rates, _ in baseline.values()) / total
            for label in classes
        }
        live_all = _rates(joined["label"], classes) if joined.height else dict.fromkeys(classes, 0.0)
        values = tuple(
            _value_drift(facet, value, group["label"], live_all, baseline, base_all, classes, rules)
            for (value,), group in sorted(joined.partition_by(facet, as_dict=True).items())
        )
        results.append(FacetDrift(facet, source, reason, values))
        by_day.append(_by_day(joined, facet, classes))
    frame = pl.concat(by_day) if by_day else pl.DataFrame(schema=BY_DAY_SCHEMA)
    return BiasDriftReport(version, tuple(classes), tuple(results), frame, _outcome(version, results, rules))


def _outcome(version: str | None, facets: Sequence[FacetDrift], rules: BiasDriftRules) -> MonitorOutcome:
    judged = [value for facet in facets for value in facet.values if value.shift is not None]
    if not judged:
        rows = sum(value.rows for facet in facets for value in facet.values)
        what = (
            f"live predictions of {version} in judged facet values"
            if version
            else "rows (no production version)"
        )
        return not_enough_data(BIAS_DRIFT_CHECK, rows, rules.min_rows, what)
    worst = max(judged, key=lambda value: value.shift or 0.0)
    failed = [value for value in judged if value.severity is not None]
    severity = ERROR if any(value.severity == ERROR for value in failed) else WARN if failed else None
    metadata: dict[str, float | int | str] = {
        "evaluated": 1,
        "judged_values": len(judged),
        "failed_values": len(failed),
        "max_shift": worst.shift or 0.0,
        "worst": f"{worst.facet}={worst.value}",
        "warn_bound": rules.warn,
        "error_bound": rules.error,
    }
    if severity is None:
        description = (
            f"{len(judged)} facet values judged; the largest shift, {worst.facet}={worst.value} "
            f"({worst.note}), {worst.shift:.3f} <= WARN bound {rules.warn}"
        )
        return MonitorOutcome(BIAS_DRIFT_CHECK, True, None, description, metadata)
    listed = "; ".join(
        f"{value.facet}={value.value} shift {value.shift:.3f} ({value.note})" for value in failed
    )
    bound = rules.error if severity == ERROR else rules.warn
    return MonitorOutcome(BIAS_DRIFT_CHECK, False, severity, f"{listed} > {severity} bound {bound}", metadata)


def judge_bias_drift(
    log: pl.DataFrame,
    catalogue: pl.DataFrame | None,
    registry: ModelRegistry,
    contract: DatasetContract,
    rules: BiasDriftRules,
) -> BiasDriftReport:
    """`bias_drift` of the production version (the one whose behaviour can still be acted on): the
    contract's facets, its card's test rates, the classes of its model file."""
    production = registry.production()
    card_facets = production.card.get("facets") if production is not None else None
    return bias_drift(
        log,
        catalogue,
        version=None if production is None else production.version,
        card_facets=card_facets if isinstance(card_facets, Mapping) else {},
        facets=contract.facet_columns,
        product_column=contract.product_column,
        classes=contract.classes if production is None else model_classes(production.onnx_path),
        rules=rules,
    )
