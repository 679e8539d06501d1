"""Scoring benchmark: ONNX Runtime on the platform's sparse text graph vs scikit-learn, same model.

    .venv/bin/python bench/batch.py [--rows 100000] [--rss-rows 1000000] [--repeats 3] [--calls 20000]

Fits the production family (TF-IDF word 1-2 grams, min_df 2, class-balanced LogisticRegression C=1,
the platform's tokenisation) on the real reviews, exports it with the platform's exporter, and
replicates the reviews, as published, to `--rows` rows. Then, side by side in one run:

- throughput, alternating A B C D A B C D ... `--repeats` times, on the same prepared texts in chunks of
  `[scoring] chunk_rows`: scikit-learn `predict_proba`; `ScoringModel.predict` with the packaged
  settings (runs side by side on every core); the same on one thread; and the whole `mlplatform score`
  path (`score_file`: CSV as published in, text preparation, scoring, Parquet out);
- one review at a time over `--calls` real reviews, in alternating blocks of 500 calls per way
  (`BLOCK_CALLS`): scikit-learn `predict_proba([text])`, `ScoringModel.predict([text])` (what the
  endpoint calls) and a bare `InferenceSession.run` on the same bytes (ONNX Runtime alone);
- parity with scikit-learn on 5,000 real texts;
- peak RSS: a subprocess scores `--rss-rows` reviews CSV -> Parquet with `score_file` and reports its own
  peak resident set (VmHWM).

Targets (issue 13): one review p50 <= 0.1 ms and p99 <= 0.2 ms in ONNX Runtime; batch >= 2x scikit-learn
in memory on the machine's cores; `score_file` >= 1.5x; 1M rows under 1 GiB peak. Prints a Markdown
table and writes bench/results/batch.json (with the machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import polars as pl
from _common import machine, peak_rss_bytes

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.text import TOKEN_PATTERN, lowercase_for_tokens, prepare_texts
from mlplatform.core.platform.settings import ScoringRules, Settings
from mlplatform.core.scoring.files import score_file
from mlplatform.core.scoring.model import ScoringModel, load_model
from mlplatform.core.training.export import sklearn_answers, to_onnx

CONTRACT = load_contract()
LABELS = CONTRACT.classes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
RESULTS = ROOT / "bench" / "results" / "batch.json"
RSS_TARGET_BYTES = 1024**3
TARGETS = {
    "single_review_p50_ms": 0.1,
    "single_review_p99_ms": 0.2,
    "in_memory_vs_scikit_learn": 2.0,
    "score_file_vs_scikit_learn": 1.5,
    "peak_rss_bytes": RSS_TARGET_BYTES,
}
SKLEARN = "scikit-learn predict_proba (in memory)"
BLOCK_CALLS = 500
"""Calls of one way in a row in the single-review comparison."""
PREDICT = "ScoringModel.predict, packaged settings (in memory)"
ONE_THREAD = "ScoringModel.predict, one thread (in memory)"
SCORE_FILE = "score_file (CSV in, Parquet out)"


def prepared(reviews: pl.DataFrame) -> list[str]:
    return prepare_texts([reviews["Title"], reviews["Review Text"]]).to_list()


def fit_and_export(reviews: pl.DataFrame, workdir: Path) -> tuple[Any, Path, str]:
    """The production family fitted on the reviews, and the platform's ONNX export of it (path, sha256)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    texts = prepared(reviews)
    rule = CONTRACT.labels.rating_classes()
    labels = np.array([rule[float(rating)] for rating in reviews["Rating"].cast(pl.Int64).to_list()])
    vectorizer = TfidfVectorizer(
        token_pattern=TOKEN_PATTERN,
        lowercase=False,
        preprocessor=lowercase_for_tokens,
        ngram_range=(1, 2),
        min_df=2,
    )
    classifier = LogisticRegression(C=1.0, max_iter=3000, class_weight="balanced")
    pipeline = Pipeline([("tfidf", vectorizer), ("clf", classifier)]).fit(texts, labels)
    content = to_onnx(pipeline, LABELS)  # the packaged (clothing) contract's classes
    path = workdir / "model.onnx"
    path.write_bytes(content)
    return pipeline, path, hashlib.sha256(content).hexdigest()


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


def throughput(
    args: argparse.Namespace,
    pipeline: Any,
    model: ScoringModel,
    one_thread: ScoringModel,
    source: Path,
    texts: list[str],
    rules: ScoringRules,
    workdir: Path,
) -> list[dict[str, Any]]:
    chunks = in_chunks(texts, rules.chunk_rows)
    measures: dict[str, Callable[[], Any]] = {
        SKLEARN: lambda: [pipeline.predict_proba(chunk) for chunk in chunks],
        PREDICT: lambda: [model.predict(chunk) for chunk in chunks],
        ONE_THREAD: lambda: [one_thread.predict(chunk) for chunk in chunks],
        SCORE_FILE: lambda: score_file(
            source,
            workdir / "scored.parquet",
            model,
            "bench",
            rules.chunk_rows,
            contract=load_contract(),
            overwrite=True,
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in measures}
    for repeat in range(args.repeats):
        for name, action in measures.items():
            seconds[name].append(timed(action))
            print(f"  run {repeat + 1}: {name}: {seconds[name][-1]:.2f} s", flush=True)
    sklearn_rate = args.rows / statistics.median(seconds[SKLEARN])
    results = []
    for name, runs in seconds.items():
        rate = args.rows / statistics.median(runs)
        results.append(
            {
                "what": name,
                "rows": args.rows,
                "median_seconds": round(statistics.median(runs), 3),
                "runs_seconds": [round(value, 3) for value in runs],
                "rows_per_second": round(rate),
                "vs_scikit_learn": round(rate / sklearn_rate, 2),
            }
        )
    return results


def single_review_latency(
    pipeline: Any, model: ScoringModel, model_path: Path, texts: list[str], calls: int
) -> dict[str, Any]:
    """Per-call latency of one review, the three ways on the same texts, in alternating blocks."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    ways: dict[str, Callable[[str], Any]] = {
        "ONNX Runtime InferenceSession.run": lambda text: session.run(
            ["label", "probabilities"], {"text": np.array([text], dtype=object)}
        ),
        "ScoringModel.predict (the endpoint's call)": lambda text: model.predict([text]),
        "scikit-learn predict_proba": lambda text: pipeline.predict_proba([text]),
    }
    timings: dict[str, list[float]] = {name: [] for name in ways}
    for warm in texts[:200]:
        for way in ways.values():
            way(warm)
    # Blocks of BLOCK_CALLS calls per way, the ways in rotation until each made `calls`: side by side in
    # time (a load change hits all alike), but each call follows calls of its own kind, as an endpoint's
    # do. Call-by-call alternation would time each way on caches the other two just evicted.
    order = list(ways.items())
    for block, start in enumerate(range(0, calls, BLOCK_CALLS)):
        shift = block % len(order)
        for name, way in order[shift:] + order[:shift]:
            for index in range(start, min(start + BLOCK_CALLS, calls)):
                text = texts[index % len(texts)]
                started = time.perf_counter()
                way(text)
                timings[name].append((time.perf_counter() - started) * 1000.0)
    return {
        name: {
            "calls": calls,
            "p50_ms": round(float(np.percentile(values, 50)), 4),
            "p90_ms": round(float(np.percentile(values, 90)), 4),
            "p99_ms": round(float(np.percentile(values, 99)), 4),
        }
        for name, values in timings.items()
    }


def parity(pipeline: Any, model: ScoringModel, texts: list[str]) -> dict[str, Any]:
    prediction = model.predict(texts)
    labels, probabilities = sklearn_answers(pipeline, texts, LABELS)
    answered = ~prediction.no_tokens
    return {
        "rows": len(texts),
        "no_tokens_rows": int(prediction.no_tokens.sum()),
        "labels_differing_from_scikit_learn": int(np.sum(prediction.labels[answered] != labels[answered])),
        "max_probability_gap_scikit_learn": float(np.max(np.abs(prediction.probabilities - probabilities))),
    }


def peak_rss(
    args: argparse.Namespace, reviews: pl.DataFrame, model_path: Path, workdir: Path
) -> dict[str, Any]:
    """Score `--rss-rows` reviews in a fresh process and read its peak resident set size."""
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
    rules = Settings.load().scoring
    model = load_model(Path(model_path), sha256, rules)
    rss_after_load = peak_rss_bytes()
    summary = score_file(
        Path(input_path), Path(output_path), model, "bench", rules.chunk_rows, contract=load_contract()
    )
    print(
        json.dumps(
            {
                "rows": summary.rows_out,
                "seconds": round(summary.seconds, 2),
                "rows_per_second": round(summary.rows_out / summary.seconds),
                "rss_after_model_load_bytes": rss_after_load,
                "peak_rss_bytes": peak_rss_bytes(),
            }
        )
    )


def verdicts(report: dict[str, Any]) -> dict[str, bool]:
    by_name = {row["what"]: row for row in report["throughput"]}
    onnx = report["single_review"]["ONNX Runtime InferenceSession.run"]
    return {
        "single_review_p50_ms": onnx["p50_ms"] <= TARGETS["single_review_p50_ms"],
        "single_review_p99_ms": onnx["p99_ms"] <= TARGETS["single_review_p99_ms"],
        "in_memory_vs_scikit_learn": by_name[PREDICT]["vs_scikit_learn"]
        >= TARGETS["in_memory_vs_scikit_learn"],
        "score_file_vs_scikit_learn": by_name[SCORE_FILE]["vs_scikit_learn"]
        >= TARGETS["score_file_vs_scikit_learn"],
        "peak_rss_bytes": report["peak_rss"]["under_target"],
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Scoring, {report['machine']['nproc']} CPUs ({report['machine']['cpu_model']}), model "
        f"{report['model_bytes'] / 1e6:.1f} MB",
        "",
        "| batch | rows | median s | rows/s | vs scikit-learn |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in report["throughput"]:
        lines.append(
            f"| {row['what']} | {row['rows']:,} | {row['median_seconds']:.2f} | {row['rows_per_second']:,} "
            f"| {row['vs_scikit_learn']:.2f}x |"
        )
    lines += ["", "| one review | p50 ms | p90 ms | p99 ms |", "|---|---:|---:|---:|"]
    for name, row in report["single_review"].items():
        lines.append(f"| {name} | {row['p50_ms']:.3f} | {row['p90_ms']:.3f} | {row['p99_ms']:.3f} |")
    rss = report["peak_rss"]
    lines += [
        "",
        f"Peak RSS scoring {rss['rows']:,} reviews (CSV in, Parquet out, one process): "
        f"{rss['peak_rss_bytes'] / 1024**2:,.0f} MiB (target < 1 GiB), {rss['rows_per_second']:,} rows/s.",
        "",
        "Parity with scikit-learn on {rows:,} real texts: {labels_differing_from_scikit_learn} labels differ, "
        "max probability gap {max_probability_gap_scikit_learn:.1e}.".format(**report["parity"]),
        "",
        "Targets met: "
        + ", ".join(f"{name} {'yes' if met else 'NO'}" for name, met in report["targets_met"].items()),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rss-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--score-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.score_child:
        score_child(*args.score_child)
        return 0
    if not args.data.exists():
        print(f"real data not found at {args.data} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    reviews = pl.read_csv(args.data, infer_schema=False)
    report: dict[str, Any] = {"machine": machine(), "targets": TARGETS}
    with tempfile.TemporaryDirectory(prefix="mlplatform-bench-batch-") as directory:
        workdir = Path(directory)
        print(f"fitting the reference model on {reviews.height} reviews ...", flush=True)
        pipeline, model_path, sha256 = fit_and_export(reviews, workdir)
        rules = Settings.load().scoring
        model = load_model(model_path, sha256, rules)
        one_thread = load_model(model_path, sha256, rules.replace(threads=1))
        source = replicated_csv(reviews, args.rows, workdir / "reviews.csv")
        texts = prepared(pl.read_csv(source, infer_schema=False))
        report["model_bytes"] = model_path.stat().st_size
        report["scoring_threads"] = rules.parallel_runs
        report["throughput"] = throughput(args, pipeline, model, one_thread, source, texts, rules, workdir)
        real_texts = [text for text in prepared(reviews) if text]
        print(f"one review at a time, {args.calls} calls each ...", flush=True)
        report["single_review"] = single_review_latency(pipeline, model, model_path, real_texts, args.calls)
        report["parity"] = parity(pipeline, model, real_texts[-5000:])
        report["peak_rss"] = peak_rss(args, reviews, model_path, workdir)
    report["targets_met"] = verdicts(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown(report))
    print(f"\nwritten: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
