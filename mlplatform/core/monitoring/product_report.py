"""Products that draw an unusual share of predictions of the watched class, with enough volume to mean it.

The watched class is the one farthest from the favourable class in the dataset contract's declared class
order (`watched_class`): the first class, unless the favourable class is the first, then the last; with
no favourable class, the first (for the packaged clothing contract: "negative"). A product (the
contract's `product` column; the endpoint's `product_id`) is flagged when it has at least
`min_product_predictions` predictions and the Wilson lower bound of its watched share (z = `wilson_z`)
lies above the overall watched rate of all predictions that name a product: a few unlucky reviews give a
wide interval and are not flagged; a steady stream of complaints is. Each product's taxonomy is its most
frequent value of each of the contract's string facet and extra columns in the reviews table. Written as
CSV with cells safe against spreadsheet formula injection, and as Markdown. A contract without a product
column has no products: the report is skipped, and says so.

Why a product draws them: each flagged product's watched-class predictions are explained by the model
version that made them (the exact n-gram contributions of the sparse ONNX graph, core/scoring/model.py),
and the report's `pushing_ngrams` column lists the n-grams that most often appear among a prediction's
strongest pushes towards the watched class ("fabric (12), too small (9)"). The explainer is injected
(`Explainer`: version and texts in, each text's contributions out; None when that version cannot explain,
e.g. a model registered before the sparse graph), so this module reads no model files.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import polars as pl

from mlplatform.core.data.contract import ColumnRole, ColumnType, DatasetContract, LabelRule
from mlplatform.core.monitoring.rules import MonitoringError, require_columns
from mlplatform.core.platform.settings import MonitoringRules
from mlplatform.core.scoring.model import Contribution

Explainer = Callable[[str, Sequence[str]], Sequence[Sequence[Contribution]] | None]
"""(model version, texts) -> each text's strongest contributions to its predicted class; None: that version
cannot explain."""
PUSHING_NGRAMS = "pushing_ngrams"

# A spreadsheet treats a cell starting with one of these as a formula (or, for tab / CR, may shift it).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_START = r"^[=+\-@\t\r]"


def watched_class(labels: LabelRule) -> str:
    """The class whose share the report watches (see the module docstring)."""
    classes = labels.classes
    return classes[-1] if labels.favourable == classes[0] else classes[0]


def taxonomy_columns(contract: DatasetContract) -> tuple[str, ...]:
    """The reviews table's columns that describe a product: the contract's string facets and extras."""
    return tuple(
        column.name
        for column in contract.columns
        if column.role in (ColumnRole.FACET, ColumnRole.EXTRA) and column.type is ColumnType.STRING
    )


def report_columns(watched: str, taxonomy: Sequence[str]) -> tuple[str, ...]:
    """The report's columns, named after the watched class (e.g. `negative_share`)."""
    return (
        "product_id",
        *taxonomy,
        "predictions",
        f"{watched}_predictions",
        f"{watched}_share",
        "wilson_lower",
        f"overall_{watched}_rate",
        PUSHING_NGRAMS,
    )


def wilson_lower_bound(successes: pl.Expr, trials: pl.Expr, z: float) -> pl.Expr:
    """Lower bound of the Wilson score interval of a proportion (trials > 0)."""
    share = successes / trials
    z2 = z * z
    centre = share + z2 / (2 * trials)
    margin = z * ((share * (1 - share) + z2 / (4 * trials)) / trials).sqrt()
    return (centre - margin) / (1 + z2 / trials)


def product_taxonomy(catalogue: pl.DataFrame, id_column: str, taxonomy: Sequence[str]) -> pl.DataFrame:
    """One row per product id (string, from `id_column`) with its most frequent taxonomy values.

    The catalogue may be the reviews table (one row per review) or a product list; the taxonomy
    columns it lacks are left null.
    """
    require_columns(catalogue, (id_column,), "catalogue")
    present = [column for column in taxonomy if column in catalogue.columns]
    frame = catalogue.select(pl.col(id_column).cast(pl.String).alias("product_id"), *present).filter(
        pl.col("product_id").is_not_null()
    )
    counted = frame.group_by("product_id", *present).len()
    most_frequent = counted.sort(
        ["product_id", "len", *present], descending=[False, True] + [False] * len(present)
    )
    found = most_frequent.unique(subset="product_id", keep="first", maintain_order=True).drop("len")
    return found.with_columns(
        pl.lit(None, dtype=pl.String).alias(column) for column in taxonomy if column not in present
    ).select("product_id", *taxonomy)


def product_quality_report(
    log: pl.DataFrame,
    catalogue: pl.DataFrame | None,
    rules: MonitoringRules,
    watched: str,
    product_column: str,
    taxonomy: Sequence[str] = (),
    explain: Explainer | None = None,
) -> pl.DataFrame:
    """Flagged products (`report_columns`), the most clearly unusual first (by Wilson lower bound).

    `watched` is the class whose share is judged; `product_column` the catalogue's product key.
    Predictions without a product id are left out of both the products and the overall rate.
    """
    require_columns(log, ("product_id", "label"), "prediction log")
    with_product = log.filter(pl.col("product_id").is_not_null())
    if with_product.height == 0:
        raise MonitoringError("no captured prediction names a product; nothing to report on")
    count, share, overall = f"{watched}_predictions", f"{watched}_share", f"overall_{watched}_rate"
    overall_rate = with_product.filter(pl.col("label") == watched).height / with_product.height
    per_product = with_product.group_by("product_id").agg(
        pl.len().alias("predictions"), (pl.col("label") == watched).sum().alias(count)
    )
    flagged = (
        per_product.with_columns(
            (pl.col(count) / pl.col("predictions")).alias(share),
            wilson_lower_bound(pl.col(count), pl.col("predictions"), rules.wilson_z).alias("wilson_lower"),
            pl.lit(overall_rate).alias(overall),
        )
        .filter(
            (pl.col("predictions") >= rules.min_product_predictions) & (pl.col("wilson_lower") > overall_rate)
        )
        .with_columns(pl.col("predictions").cast(pl.Int64), pl.col(count).cast(pl.Int64))
    )
    taxonomy_frame = (
        product_taxonomy(catalogue, product_column, taxonomy)
        if catalogue is not None
        else pl.DataFrame(schema={"product_id": pl.String, **dict.fromkeys(taxonomy, pl.String)})
    )
    report = flagged.join(taxonomy_frame, on="product_id", how="left")
    report = report.with_columns(
        pl.lit(None, dtype=pl.String).alias(PUSHING_NGRAMS)
        if explain is None
        else pushing_ngrams(with_product, report["product_id"], watched, explain, rules.report_ngrams)
    )
    return report.select(report_columns(watched, taxonomy)).sort(
        ["wilson_lower", "product_id"], descending=[True, False]
    )


def pushing_ngrams(
    log: pl.DataFrame, products: pl.Series, watched: str, explain: Explainer, top: int
) -> pl.Series:
    """Per product (in `products`' order): the `top` n-grams most often among the strongest pushes of its
    watched-class predictions towards that class, "ngram (count), ..."; null when none could be explained."""
    rows = log.filter(pl.col("product_id").is_in(products.implode()) & (pl.col("label") == watched))
    counts: dict[str, Counter[str]] = {product: Counter() for product in products.to_list()}
    for (version,), group in rows.group_by(["model_version"], maintain_order=True):
        explanations = explain(str(version), group["text"].to_list())
        if explanations is None:
            continue
        for product, explanation in zip(group["product_id"].to_list(), explanations, strict=True):
            counts[product].update({item.ngram for item in explanation if item.weight > 0})
    return pl.Series(
        PUSHING_NGRAMS,
        [
            ", ".join(f"{ngram} ({count})" for ngram, count in _most_common(counts[product], top)) or None
            for product in products.to_list()
        ],
        dtype=pl.String,
    )


def _most_common(counter: Counter[str], top: int) -> list[tuple[str, int]]:
    """The `top` most frequent, ties broken by the n-gram, so the report is deterministic."""
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:top]


def _neutralise(value: str) -> str:
    return f"'{value}" if value.startswith(_FORMULA_PREFIXES) else value


def to_safe_csv(frame: pl.DataFrame) -> bytes:
    """CSV (UTF-8) whose text cells cannot run as spreadsheet formulas: a leading = + - @ tab or CR gets a '.

    Column names are neutralised too; numeric columns are left as numbers.
    """
    safe = frame.with_columns(
        pl.when(pl.col(name).str.contains(_FORMULA_START))
        .then(pl.lit("'") + pl.col(name))
        .otherwise(pl.col(name))
        .alias(name)
        for name, dtype in frame.schema.items()
        if dtype == pl.String
    )
    safe = safe.rename({name: _neutralise(name) for name in safe.columns})
    return safe.write_csv().encode("utf-8")


def _markdown_cell(value: object) -> str:
    if value is None:
        return ""
    text = f"{value:.4f}" if isinstance(value, float) else str(value)
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def to_markdown(frame: pl.DataFrame, top_n: int) -> str:
    """The first `top_n` rows as a Markdown table (pipes escaped, line breaks flattened)."""
    if top_n < 1:
        raise MonitoringError(f"top_n must be at least 1, got {top_n}")
    shown = frame.head(top_n)
    lines = [
        "| " + " | ".join(_markdown_cell(name) for name in frame.columns) + " |",
        "|" + "---|" * len(frame.columns),
    ]
    lines += ["| " + " | ".join(_markdown_cell(value) for value in row) + " |" for row in shown.iter_rows()]
    if frame.height > top_n:
        lines += ["", f"({frame.height - top_n} more rows not shown)"]
    elif frame.height == 0:
        lines += ["", "(no rows)"]
    return "\n".join(lines) + "\n"


REPORT_CSV = "product_quality_report.csv"
REPORT_MARKDOWN = "product_quality_report.md"


@dataclass(frozen=True)
class ProductReport:
    """The flagged products, as a formula-safe CSV and a Markdown table, and what they were drawn from;
    `skipped` when the dataset contract has no product column (`note` says so)."""

    report: pl.DataFrame
    markdown: str
    predictions_with_product: int
    note: str
    top_n: int
    watched: str
    skipped: bool = False

    def files(self) -> dict[str, bytes]:
        return {REPORT_CSV: to_safe_csv(self.report), REPORT_MARKDOWN: self.markdown.encode("utf-8")}

    def metadata(self) -> dict[str, int | str]:
        metadata: dict[str, int | str] = {
            "flagged": self.report.height,
            "predictions_with_product": self.predictions_with_product,
            "watched_class": self.watched,
            "summary": self.note,
            "top_product_ids": ", ".join(self.report["product_id"].head(self.top_n).to_list()),
        }
        if self.skipped:
            metadata["skipped"] = self.note
        return metadata


NO_PRODUCT_COLUMN = (
    'skipped: the dataset contract declares no product column (role = "product"), so there are no '
    "products to report on"
)


def product_report(
    log: pl.DataFrame,
    reviews: pl.DataFrame,
    rules: MonitoringRules,
    contract: DatasetContract,
    explain: Explainer | None = None,
) -> ProductReport:
    """The report on the log's predictions that name a product (an empty report when none does, a
    skipped one when the contract has no product column)."""
    watched, taxonomy = watched_class(contract.labels), taxonomy_columns(contract)
    empty = pl.DataFrame(schema=dict.fromkeys(report_columns(watched, taxonomy), pl.String))
    with_product = log.filter(pl.col("product_id").is_not_null())
    if contract.product_column is None:
        markdown = f"{NO_PRODUCT_COLUMN}.\n"
        return ProductReport(
            empty, markdown, with_product.height, NO_PRODUCT_COLUMN, rules.report_top_n, watched, True
        )
    if with_product.height == 0:
        report, note = empty, "no captured prediction names a product: nothing to report on"
    else:
        report = product_quality_report(
            log, reviews, rules, watched, contract.product_column, taxonomy, explain
        )
        note = f"{report.height} product(s) flagged of {with_product['product_id'].n_unique()}"
    markdown = to_markdown(report, rules.report_top_n)
    return ProductReport(report, markdown, with_product.height, note, rules.report_top_n, watched)
