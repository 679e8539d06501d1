"""Model quality on the real data: the platform's model search vs the reference baseline, as ONNX.

Prepares the data exactly as the platform does (read_drop -> build_reviews -> assign_splits), runs the
packaged model search (config/training.toml) on train/validation, and evaluates the selected ONNX model
and the baseline (TF-IDF word 1-2 grams + class-balanced LogisticRegression) on the test split with ONNX
Runtime. Prints a Markdown table and writes bench/results/model_quality.json.

Usage: .venv/bin/python bench/model_quality.py [--data PATH] [--size default|wide]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.features import FeatureRules, build_reviews
from mlplatform.core.data.schema import read_drop
from mlplatform.core.data.splits import SplitRules, assign_splits
from mlplatform.core.data.text import LABELS
from mlplatform.core.platform.settings import Settings
from mlplatform.core.scoring.model import ScoringModel, ScoringRules
from mlplatform.core.training.evaluation import classification_metrics
from mlplatform.core.training.fit import (
    CandidateSpec,
    TrainedCandidate,
    TrainingConfig,
    load_training_config,
    select_best,
    split_frames,
    train_candidate,
    train_candidates,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
RESULTS = REPO_ROOT / "bench" / "results" / "model_quality.json"
BASELINE_SPEC = CandidateSpec(
    name="baseline,tfidf-1-2,logreg-balanced",
    family="baseline",
    estimator="logistic_regression",
    params={"ngram_range": [1, 2], "min_df": 1, "C": 1.0, "class_weight": "balanced"},
)


def prepare_frame(data_path: Path, settings: Settings) -> pl.DataFrame:
    """The real file through the platform's own data stage: normalised, labelled, deduplicated, split."""
    data = data_path.read_bytes()
    drop = read_drop(data, "csv", load_contract())
    reviews = build_reviews({hashlib.sha256(data).hexdigest(): drop}, FeatureRules.from_settings(settings))
    return assign_splits(reviews.frame, SplitRules.from_settings(settings))


def test_metrics(candidate: TrainedCandidate, test: pl.DataFrame) -> dict[str, Any]:
    scoring = ScoringRules.from_settings(Settings.load())
    labels = ScoringModel.from_bytes(candidate.onnx_bytes, scoring).predict(test["text"].to_list()).labels
    return classification_metrics(test["label"].to_list(), labels)


def summarise(name: str, candidate: TrainedCandidate, metrics: dict[str, Any], wall_seconds: float) -> dict:
    return {
        "model": name,
        "candidate": candidate.spec.name,
        "hyperparameters": candidate.hyperparameters,
        "validation_macro_f1": candidate.validation_metrics["macro_f1"],
        "test_macro_f1": metrics["macro_f1"],
        "test_balanced_accuracy": metrics["balanced_accuracy"],
        "test_accuracy": metrics["accuracy"],
        "test_f1": {label: metrics["per_class"][label]["f1"] for label in LABELS},
        "fit_seconds": candidate.fit_seconds,
        "training_wall_seconds": round(wall_seconds, 1),
        "onnx_bytes": len(candidate.onnx_bytes),
        "parity": candidate.parity.description,
    }


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| model | test macro-F1 | balanced acc. | F1 negative | F1 neutral | F1 positive | training wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        f1 = row["test_f1"]
        lines.append(
            f"| {row['model']} ({row['candidate']}) | {row['test_macro_f1']:.4f} | "
            f"{row['test_balanced_accuracy']:.4f} | {f1['negative']:.4f} | {f1['neutral']:.4f} | "
            f"{f1['positive']:.4f} | {row['training_wall_seconds']} |"
        )
    return "\n".join(lines)


def run(data_path: Path, config: TrainingConfig) -> dict:
    settings = Settings.load()
    frame = prepare_frame(data_path, settings)
    test = frame.filter(pl.col("split") == "test")

    started = time.perf_counter()
    scoring = ScoringRules.from_settings(settings)
    candidates = train_candidates(
        frame,
        config,
        scoring,
        on_progress=lambda done, total, c: print(f"  [{done}/{total}] {c.spec.name}", file=sys.stderr),
    )
    search_seconds = time.perf_counter() - started
    best = select_best(candidates)

    baseline_config = dataclasses.replace(
        config, selection=dataclasses.replace(config.selection, tune_class_offsets=False)
    )
    started = time.perf_counter()
    baseline = train_candidate(BASELINE_SPEC, split_frames(frame), baseline_config, scoring)
    baseline_seconds = time.perf_counter() - started

    rows = [
        summarise("selected", best, test_metrics(best, test), search_seconds),
        summarise("baseline", baseline, test_metrics(baseline, test), baseline_seconds),
    ]
    return {
        "data": {
            "rows": frame.height,
            **{
                f"{s}_rows": frame.filter(pl.col("split") == s).height
                for s in ("train", "validation", "test")
            },
        },
        "cores": os.cpu_count(),
        "search_size": config.search_size,
        "candidates": [
            {
                "name": c.spec.name,
                "validation_macro_f1": c.validation_metrics["macro_f1"],
                "parity": c.parity.passed,
            }
            for c in candidates
        ],
        "results": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--size", choices=("default", "wide"), default=None, help="override [search] size")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(
            f"real data not found at {args.data} (see ../shared/data/README.md); nothing to benchmark",
            file=sys.stderr,
        )
        return 2
    config = load_training_config()
    if args.size:
        config = dataclasses.replace(config, search_size=args.size)
    report = run(args.data, config)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown_table(report["results"]))
    print(f"\nwritten to {RESULTS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
