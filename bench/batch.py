"""Batch scoring benchmark: mlplatform's ONNX batch scoring vs scikit-learn `predict_proba`, same model.

    .venv/bin/python bench/batch.py [--rows 100000] [--rss-rows 1000000] [--repeats 3] [--data ...csv]

Fits the reference model (TF-IDF word 1-2 grams + class-balanced LogisticRegression, the ASCII token
pattern) on the real reviews, exports it to ONNX, and replicates the reviews, as published, to
`--rows` rows. Then, side by side in one run, alternating A B C A B C ... `--repeats` times:

- scikit-learn: `predict_proba` on the model texts in memory, in chunks of `[scoring] chunk_rows`;
- mlplatform predict: `ScoringModel.predict` on the same texts and chunks (the registered ONNX file,
  fast path parity-gated against ONNX Runtime);
- mlplatform score_file: the whole `mlplatform score` path, CSV as published in -> Parquet out
  (reading, model text, scoring, writing);
- ONNX Runtime alone (the fallback path) on a slice of `--onnx-rows` rows, since it is slow.

Peak RSS: a subprocess scores `--rss-rows` reviews CSV -> Parquet with `score_file` and reports its own
peak resident set (VmHWM; its ru_maxrss would include the parent's peak inherited across fork). Prints a Markdown table and writes bench/results/batch.json (with the machine).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from _common import machine, peak_rss_bytes

from mlplatform.core.training.export import TOKEN_PATTERN, to_onnx

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
RESULTS = ROOT / "bench" / "results" / "batch.json"
RSS_TARGET_BYTES = 2 * 1024**3


def fit_and_export(reviews: pl.DataFrame, workdir: Path) -> tuple[Any, Path, str]:
    """The reference pipeline fitted on the reviews, and the platform's ONNX export of it (path, sha256)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    texts = model_texts(reviews)
    ratings = reviews["Rating"].cast(pl.Int64).to_numpy()
    labels = np.where(ratings <= 2, "negative", np.where(ratings == 3, "neutral", "positive"))
    vectorizer = TfidfVectorizer(token_pattern=TOKEN_PATTERN, ngram_range=(1, 2))
    classifier = LogisticRegression(max_iter=1000, class_weight="balanced")
    pipeline = Pipeline([("tfidf", vectorizer), ("clf", classifier)]).fit(texts, labels)
    content = to_onnx(pipeline)
    path = workdir / "model.onnx"
    path.write_bytes(content)
    return pipeline, path, hashlib.sha256(content).hexdigest()


def model_texts(reviews: pl.DataFrame) -> list[str]:
    from mlplatform.core.data.text import model_text

    return reviews.select(model_text(pl.col("Title"), pl.col("Review Text")))[:, 0].to_list()


def replicated_csv(reviews: pl.DataFrame, rows: int, path: Path) -> Path:
    """The published CSV repeated to `rows` rows, with a fresh unique index column."""
    copies = -(-rows // reviews.height)
    frame = pl.concat([reviews] * copies).head(rows)
    frame = frame.with_columns(pl.int_range(rows, dtype=pl.Int64).cast(pl.String).alias(""))
    frame.write_csv(path)
    return path


def timed(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def in_chunks(texts: list[str], chunk_rows: int) -> list[list[str]]:
    return [texts[start : start + chunk_rows] for start in range(0, len(texts), chunk_rows)]


def throughput(args: argparse.Namespace, reviews: pl.DataFrame, workdir: Path) -> dict[str, Any]:
    from mlplatform.core.platform.settings import Settings
    from mlplatform.core.scoring.files import ScoringRules, load_model, score_file

    print(f"fitting the reference model on {reviews.height} reviews ...", flush=True)
    pipeline, model_path, sha256 = fit_and_export(reviews, workdir)
    rules = ScoringRules.from_settings(Settings.load())
    model = load_model(model_path, sha256, rules)
    fallback = load_model(model_path, sha256, dataclasses.replace(rules, fast_path=False))
    print(f"model: {model_path.stat().st_size / 1e6:.1f} MB, scoring engine: {model.engine}", flush=True)

    source = replicated_csv(reviews, args.rows, workdir / "reviews.csv")
    texts = model_texts(pl.read_csv(source, infer_schema=False))
    chunks = in_chunks(texts, rules.chunk_rows)
    onnx_chunks = in_chunks(texts[: args.onnx_rows], rules.chunk_rows)
    measures: dict[str, Callable[[], Any]] = {
        "scikit-learn predict_proba (in memory)": lambda: [pipeline.predict_proba(chunk) for chunk in chunks],
        "mlplatform ScoringModel.predict (in memory)": lambda: [model.predict(chunk) for chunk in chunks],
        "mlplatform score_file (CSV in, Parquet out)": lambda: score_file(
            source, workdir / "scored.parquet", model, "bench"
        ),
        "ONNX Runtime alone (fallback path)": lambda: [fallback.predict(chunk) for chunk in onnx_chunks],
    }
    rows_of = {name: args.rows for name in measures} | {"ONNX Runtime alone (fallback path)": args.onnx_rows}
    seconds: dict[str, list[float]] = {name: [] for name in measures}
    for repeat in range(args.repeats):
        for name, action in measures.items():
            seconds[name].append(timed(action))
            print(f"  run {repeat + 1}: {name}: {seconds[name][-1]:.2f} s", flush=True)

    parity = parity_report(pipeline, model, fallback, texts[: args.onnx_rows])
    sklearn_rate = args.rows / statistics.median(seconds["scikit-learn predict_proba (in memory)"])
    results = []
    for name, runs in seconds.items():
        rate = rows_of[name] / statistics.median(runs)
        results.append(
            {
                "what": name,
                "rows": rows_of[name],
                "median_seconds": round(statistics.median(runs), 3),
                "runs_seconds": [round(value, 3) for value in runs],
                "rows_per_second": round(rate),
                "vs_scikit_learn": round(rate / sklearn_rate, 2),
            }
        )
    return {
        "engine": model.engine,
        "model_bytes": model_path.stat().st_size,
        "throughput": results,
        "parity": parity,
    }


def parity_report(pipeline: Any, model: Any, fallback: Any, texts: list[str]) -> dict[str, Any]:
    """How the fast path's answers compare with ONNX Runtime's and scikit-learn's on real texts."""
    labels, probabilities = model.predict(texts)
    onnx_labels, onnx_probabilities = fallback.predict(texts)
    sklearn_probabilities = pipeline.predict_proba(texts)
    sklearn_labels = pipeline.classes_[np.argmax(sklearn_probabilities, axis=1)]
    return {
        "rows": len(texts),
        "labels_differing_from_onnxruntime": int(np.sum(labels != onnx_labels)),
        "max_probability_gap_onnxruntime": float(np.max(np.abs(probabilities - onnx_probabilities))),
        "labels_differing_from_scikit_learn": int(np.sum(labels != sklearn_labels)),
        "max_probability_gap_scikit_learn": float(np.max(np.abs(probabilities - sklearn_probabilities))),
    }


def peak_rss(args: argparse.Namespace, reviews: pl.DataFrame, workdir: Path) -> dict[str, Any]:
    """Score `--rss-rows` reviews in a fresh process and read its peak resident set size."""
    model_path = workdir / "model.onnx"
    source = replicated_csv(reviews, args.rss_rows, workdir / "reviews_rss.csv")
    print(
        f"peak RSS: scoring {args.rss_rows} reviews ({source.stat().st_size / 1e6:.0f} MB CSV) ...",
        flush=True,
    )
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--score-child",
        str(source),
        str(workdir / "scored_rss.parquet"),
        str(model_path),
        hashlib.sha256(model_path.read_bytes()).hexdigest(),
    ]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"scoring subprocess failed: {completed.stderr.strip().splitlines()[-1:]}")
    child = json.loads(completed.stdout.strip().splitlines()[-1])
    child["target_bytes"] = RSS_TARGET_BYTES
    child["under_target"] = child["peak_rss_bytes"] < RSS_TARGET_BYTES
    return child


def score_child(input_path: str, output_path: str, model_path: str, sha256: str) -> None:
    """The subprocess side of peak_rss: score one file, print a JSON line with its peak RSS."""
    from mlplatform.core.scoring.files import load_model, score_file

    model = load_model(Path(model_path), sha256)
    rss_after_load = peak_rss_bytes()
    summary = score_file(Path(input_path), Path(output_path), model, "bench")
    report = {
        "rows": summary.rows_out,
        "seconds": round(summary.seconds, 2),
        "rows_per_second": round(summary.rows_out / summary.seconds),
        "engine": summary.engine,
        "rss_after_model_load_bytes": rss_after_load,
        "peak_rss_bytes": peak_rss_bytes(),
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    print(json.dumps(report))


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Batch scoring, {report['machine']['nproc']} CPUs ({report['machine']['cpu_model']}), "
        f"fast path engine: {report['engine']}",
        "",
        "| what | rows | median s | rows/s | vs scikit-learn |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["throughput"]:
        lines.append(
            f"| {row['what']} | {row['rows']:,} | {row['median_seconds']:.2f} | {row['rows_per_second']:,} "
            f"| {row['vs_scikit_learn']:.2f}x |"
        )
    rss = report["peak_rss"]
    lines += [
        "",
        f"Peak RSS scoring {rss['rows']:,} reviews (CSV in, Parquet out, one process): "
        f"{rss['peak_rss_bytes'] / 1024**2:,.0f} MiB (after loading the model: "
        f"{rss['rss_after_model_load_bytes'] / 1024**2:,.0f} MiB; target < 2 GiB), "
        f"{rss['rows_per_second']:,} rows/s.",
        "",
        "Parity on {rows:,} real texts: {labels_differing_from_onnxruntime} labels differ from ONNX Runtime, "
        "max probability gap {max_probability_gap_onnxruntime:.1e}; vs scikit-learn "
        "{labels_differing_from_scikit_learn} labels, {max_probability_gap_scikit_learn:.1e}.".format(
            **report["parity"]
        ),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rss-rows", type=int, default=1_000_000)
    parser.add_argument("--onnx-rows", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--score-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.score_child:
        score_child(*args.score_child)
        return 0
    if not args.data.exists():
        print(f"real data not found at {args.data} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    reviews = pl.read_csv(args.data, infer_schema=False)
    with tempfile.TemporaryDirectory(prefix="mlplatform-bench-batch-") as directory:
        workdir = Path(directory)
        report = {"machine": machine(), **throughput(args, reviews, workdir)}
        report["peak_rss"] = peak_rss(args, reviews, workdir)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown(report))
    print(f"\nwritten: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
