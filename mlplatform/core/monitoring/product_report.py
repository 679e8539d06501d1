"""Products that draw an unusual share of negative predictions, with enough volume to mean it.

A product is flagged when it has at least `min_product_predictions` predictions and the Wilson lower
bound of its negative share (z = `wilson_z`) lies above the overall negative rate of all predictions
that name a product: a few unlucky reviews give a wide interval and are not flagged; a steady stream of
complaints is. Written as CSV with cells safe against spreadsheet formula injection, and as Markdown.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from mlplatform.core.monitoring.rules import MonitoringError, MonitoringRules, require_columns

NEGATIVE = "negative"
TAXONOMY_COLUMNS: tuple[str, ...] = ("division_name", "department_name", "class_name")
REPORT_COLUMNS: tuple[str, ...] = (
    "product_id",
    *TAXONOMY_COLUMNS,
    "predictions",
    "negative_predictions",
    "negative_share",
    "wilson_lower",
    "overall_negative_rate",
)
# A spreadsheet treats a cell starting with one of these as a formula (or, for tab / CR, may shift it).
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_START = r"^[=+\-@\t\r]"


def wilson_lower_bound(successes: pl.Expr, trials: pl.Expr, z: float) -> pl.Expr:
    """Lower bound of the Wilson score interval of a proportion (trials > 0)."""
    share = successes / trials
    z2 = z * z
    centre = share + z2 / (2 * trials)
    margin = z * ((share * (1 - share) + z2 / (4 * trials)) / trials).sqrt()
    return (centre - margin) / (1 + z2 / trials)


def product_taxonomy(catalogue: pl.DataFrame) -> pl.DataFrame:
    """One row per product id (string) with its most frequent (division, department, class).

    The catalogue may be the reviews table (`clothing_id`, one row per review) or a product list
    (`product_id`); the taxonomy columns it lacks are left null.
    """
    id_column = "product_id" if "product_id" in catalogue.columns else "clothing_id"
    require_columns(catalogue, (id_column,), "catalogue")
    present = [column for column in TAXONOMY_COLUMNS if column in catalogue.columns]
    frame = catalogue.select(pl.col(id_column).cast(pl.String).alias("product_id"), *present).filter(
        pl.col("product_id").is_not_null()
    )
    counted = frame.group_by("product_id", *present).len()
    most_frequent = counted.sort(
        ["product_id", "len", *present], descending=[False, True] + [False] * len(present)
    )
    taxonomy = most_frequent.unique(subset="product_id", keep="first", maintain_order=True).drop("len")
    return taxonomy.with_columns(
        pl.lit(None, dtype=pl.String).alias(column) for column in TAXONOMY_COLUMNS if column not in present
    )


def product_quality_report(
    log: pl.DataFrame, catalogue: pl.DataFrame | None, rules: MonitoringRules
) -> pl.DataFrame:
    """Flagged products (`REPORT_COLUMNS`), the most clearly unusual first (by Wilson lower bound).

    Predictions without a product id are left out of both the products and the overall rate.
    """
    require_columns(log, ("product_id", "label"), "prediction log")
    with_product = log.filter(pl.col("product_id").is_not_null())
    if with_product.height == 0:
        raise MonitoringError("no captured prediction names a product; nothing to report on")
    overall_rate = with_product.filter(pl.col("label") == NEGATIVE).height / with_product.height
    per_product = with_product.group_by("product_id").agg(
        pl.len().alias("predictions"), (pl.col("label") == NEGATIVE).sum().alias("negative_predictions")
    )
    flagged = (
        per_product.with_columns(
            (pl.col("negative_predictions") / pl.col("predictions")).alias("negative_share"),
            wilson_lower_bound(pl.col("negative_predictions"), pl.col("predictions"), rules.wilson_z).alias(
                "wilson_lower"
            ),
            pl.lit(overall_rate).alias("overall_negative_rate"),
        )
        .filter(
            (pl.col("predictions") >= rules.min_product_predictions) & (pl.col("wilson_lower") > overall_rate)
        )
        .with_columns(pl.col("predictions").cast(pl.Int64), pl.col("negative_predictions").cast(pl.Int64))
    )
    taxonomy = (
        product_taxonomy(catalogue)
        if catalogue is not None
        else pl.DataFrame(schema={"product_id": pl.String, **dict.fromkeys(TAXONOMY_COLUMNS, pl.String)})
    )
    report = flagged.join(taxonomy, on="product_id", how="left")
    return report.select(REPORT_COLUMNS).sort(["wilson_lower", "product_id"], descending=[True, False])


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
    """The flagged products, as a formula-safe CSV and a Markdown table, and what they were drawn from."""

    report: pl.DataFrame
    markdown: str
    predictions_with_product: int
    note: str
    top_n: int

    def files(self) -> dict[str, bytes]:
        return {REPORT_CSV: to_safe_csv(self.report), REPORT_MARKDOWN: self.markdown.encode("utf-8")}

    def metadata(self) -> dict[str, int | str]:
        return {
            "flagged": self.report.height,
            "predictions_with_product": self.predictions_with_product,
            "summary": self.note,
            "top_product_ids": ", ".join(self.report["product_id"].head(self.top_n).to_list()),
        }


def product_report(log: pl.DataFrame, reviews: pl.DataFrame, rules: MonitoringRules) -> ProductReport:
    """The report on the log's predictions that name a product (an empty report when none does)."""
    with_product = log.filter(pl.col("product_id").is_not_null())
    if with_product.height == 0:
        report = pl.DataFrame(schema=dict.fromkeys(REPORT_COLUMNS, pl.String))
        note = "no captured prediction names a product: nothing to report on"
    else:
        report = product_quality_report(log, reviews, rules)
        note = f"{report.height} product(s) flagged of {with_product['product_id'].n_unique()}"
    markdown = to_markdown(report, rules.report_top_n)
    return ProductReport(report, markdown, with_product.height, note, rules.report_top_n)
