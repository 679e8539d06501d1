"""Model quality on the real data: the platform's model search vs the reference baseline, as ONNX, and
whether the figure that picks the model is the figure unseen data gives.

Prepares the data exactly as the platform does (read_drop -> build_reviews with the packaged dataset
contract -> assign_splits), runs the packaged model search (config/training.toml) on train/validation,
and evaluates the selected ONNX model and the baseline (TF-IDF word 1-2 grams + class-balanced
LogisticRegression, no offsets) on the test split with ONNX Runtime.

Then the class offsets, four ways, each search selecting its candidate by validation macro-F1:
- `cross_validation` (the platform's): offsets tuned on out-of-fold scores of the train rows, kept
  when they beat none there by `min_offset_gain` (and the same offsets kept whatever the gain);
- `validation` (the platform's rule before): offsets tuned on the validation rows that also pick the
  candidate;
- `none`: no offsets.
For each: the selected model's validation macro-F1 (what chose it) beside its test macro-F1 (rows no
step saw), and the gap between them.

Then the same on the second real data set, the UCI sentences (two classes, another layout: its contract
is docs/examples/uci_sentences.toml, the one docs/data.md shows), read by the same reader, under
`uci_sentences` in the results. Prints Markdown tables and writes bench/results/model_quality.json.

Usage: .venv/bin/python bench/model_quality.py [--data PATH] [--uci DIR] [--size default|wide]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
from _common import machine

from mlplatform.core.data.contract import load_contract
from mlplatform.core.data.features import build_reviews
from mlplatform.core.data.schema import read_drop
from mlplatform.core.data.splits import assign_splits
from mlplatform.core.platform.settings import Settings
from mlplatform.core.scoring.model import ScoringModel
from mlplatform.core.training.evaluation import classification_metrics, label_codes
from mlplatform.core.training.export import to_onnx
from mlplatform.core.training.fit import (
    CandidateSpec,
    TrainedCandidate,
    TrainingConfig,
    apply_offsets,
    candidate_specs,
    decision_scores,
    fit_candidate,
    load_training_config,
    search_offsets,
    select_best,
    split_frames,
    train_candidate,
    train_candidates,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
DEFAULT_UCI = REPO_ROOT.parent / "shared" / "data" / "uci_sentiment_sentences"
UCI_CONTRACT = REPO_ROOT / "docs" / "examples" / "uci_sentences.toml"
RESULTS = REPO_ROOT / "bench" / "results" / "model_quality.json"
BASELINE_SPEC = CandidateSpec(
    name="baseline,tfidf-1-2,logreg-balanced",
    family="baseline",
    estimator="logistic_regression",
    params={"ngram_range": [1, 2], "min_df": 1, "C": 1.0, "class_weight": "balanced"},
)


def prepare_frame(data_path: Path, settings: Settings) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """The real file through the platform's own data stage: normalised, labelled, deduplicated, split."""
    data = data_path.read_bytes()
    contract = load_contract()
    reviews = build_reviews({hashlib.sha256(data).hexdigest(): read_drop(data, "csv", contract)}, contract)
    return assign_splits(reviews.frame, settings.splits), contract.classes


def prepare_uci_frame(directory: Path, settings: Settings) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """The UCI sentences (every *_labelled.txt a drop) through the data stage with their own contract:
    each file read by the platform's reader (`read_drop`, in the contract's TSV layout) as `raw_reviews`
    reads a landed drop, then `build_reviews` and `assign_splits` as for the clothing file."""
    contract = load_contract(UCI_CONTRACT)
    drops = {}
    for path in sorted(directory.glob("*_labelled.txt")):
        data = path.read_bytes()
        drops[hashlib.sha256(data).hexdigest()] = read_drop(data, "txt", contract)
    reviews = build_reviews(drops, contract)
    return assign_splits(reviews.frame, settings.splits), contract.classes


def onnx_test_metrics(onnx_bytes: bytes, test: pl.DataFrame, classes: tuple[str, ...]) -> dict[str, Any]:
    scoring = Settings.load().scoring
    labels = ScoringModel.from_bytes(onnx_bytes, scoring).predict(test["text"].to_list()).labels
    return classification_metrics(test["label"].to_list(), labels, classes)


def summarise(
    name: str, candidate: TrainedCandidate, metrics: dict[str, Any], wall_seconds: float
) -> dict[str, Any]:
    return {
        "model": name,
        "candidate": candidate.spec.name,
        "hyperparameters": candidate.hyperparameters,
        "validation_macro_f1": candidate.validation_metrics["macro_f1"],
        "test_macro_f1": metrics["macro_f1"],
        "test_balanced_accuracy": metrics["balanced_accuracy"],
        "test_accuracy": metrics["accuracy"],
        "test_f1": {label: entry["f1"] for label, entry in metrics["per_class"].items()},
        "fit_seconds": candidate.fit_seconds,
        "training_wall_seconds": round(wall_seconds, 1),
        "onnx_bytes": len(candidate.onnx_bytes),
        "parity": candidate.parity.description,
    }


def markdown_table(rows: list[dict[str, Any]], classes: tuple[str, ...]) -> str:
    head = " | ".join(f"F1 {label}" for label in classes)
    lines = [
        f"| model | test macro-F1 | balanced acc. | {head} | training wall s |",
        "|---|---|---|" + "---|" * len(classes) + "---|",
    ]
    for row in rows:
        f1 = " | ".join(f"{row['test_f1'][label]:.4f}" for label in classes)
        lines.append(
            f"| {row['model']} ({row['candidate']}) | {row['test_macro_f1']:.4f} | "
            f"{row['test_balanced_accuracy']:.4f} | {f1} | {row['training_wall_seconds']} |"
        )
    return "\n".join(lines)


def offsets_compared(
    frame: pl.DataFrame,
    config: TrainingConfig,
    classes: tuple[str, ...],
    cross_validated: list[TrainedCandidate],
    search_seconds: float,
) -> list[dict[str, Any]]:
    """The selected model's validation and test macro-F1 under each way of setting the class offsets."""
    parts = split_frames(frame)
    validation = parts["validation"].sort("review_id")
    test = frame.filter(pl.col("split") == "test").sort("review_id")
    truth = label_codes(validation["label"].to_list(), "validation labels", classes)
    ways: dict[str, list[tuple[str, dict[str, float], Any]]] = {
        "cross_validation, kept whatever the gain": [],
        "validation": [],
        "none": [],
    }
    searched = {candidate.spec.name: candidate.offset_tuning.searched for candidate in cross_validated}
    started = time.perf_counter()
    for spec in candidate_specs(config):
        fitted = fit_candidate(spec, parts["train"], config.seed, classes)
        ways["none"].append((spec.name, dict.fromkeys(classes, 0.0), fitted))
        ungated = copy.deepcopy(fitted)
        apply_offsets(ungated, [searched[spec.name][label] for label in classes], classes)
        ways["cross_validation, kept whatever the gain"].append(
            (spec.name, dict(searched[spec.name]), ungated)
        )
        tuned = copy.deepcopy(fitted)
        scores = decision_scores(tuned, validation["text"].to_list(), classes)
        offsets, _ = search_offsets(
            scores, truth, config.selection.offset_range, config.selection.offset_step
        )
        apply_offsets(tuned, offsets, classes)
        ways["validation"].append((spec.name, dict(zip(classes, map(float, offsets), strict=True)), tuned))
    other_seconds = time.perf_counter() - started
    rows = []
    best = select_best(cross_validated)
    rows.append(
        {
            "offsets": "cross_validation",
            "candidate": best.spec.name,
            "class_offsets": best.hyperparameters["class_offsets"],
            "tuning": best.offset_tuning.to_dict(),
            "validation_macro_f1": best.validation_metrics["macro_f1"],
            "test_macro_f1": onnx_test_metrics(best.onnx_bytes, test, classes)["macro_f1"],
            "search_wall_seconds": round(search_seconds, 1),
        }
    )
    for way, fitted_models in ways.items():
        scored = [
            (
                classification_metrics(
                    validation["label"].to_list(), model.predict(validation["text"].to_list()), classes
                )["macro_f1"],
                name,
                offsets,
                model,
            )
            for name, offsets, model in fitted_models
        ]
        validation_f1, name, offsets, model = min(scored, key=lambda item: (-item[0], item[1]))
        rows.append(
            {
                "offsets": way,
                "candidate": name,
                "class_offsets": offsets,
                "validation_macro_f1": validation_f1,
                "test_macro_f1": onnx_test_metrics(to_onnx(model, classes), test, classes)["macro_f1"],
                "search_wall_seconds": None,
            }
        )
    for row in rows:
        row["validation_minus_test"] = row["validation_macro_f1"] - row["test_macro_f1"]
    rows[0]["other_ways_wall_seconds"] = round(other_seconds, 1)
    return rows


def offsets_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| class offsets tuned on | selected candidate | offsets | validation macro-F1 | test macro-F1 | "
        "validation - test |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        offsets = ", ".join(f"{label} {value:+.1f}" for label, value in row["class_offsets"].items())
        lines.append(
            f"| {row['offsets']} | {row['candidate']} | {offsets} | {row['validation_macro_f1']:.4f} | "
            f"{row['test_macro_f1']:.4f} | {row['validation_minus_test']:+.4f} |"
        )
    return "\n".join(lines)


def run(frame: pl.DataFrame, classes: tuple[str, ...], config: TrainingConfig) -> dict[str, Any]:
    settings = Settings.load()
    test = frame.filter(pl.col("split") == "test")

    started = time.perf_counter()
    scoring = settings.scoring
    candidates = train_candidates(
        frame,
        config,
        scoring,
        classes,
        on_progress=lambda done, total, c: print(f"  [{done}/{total}] {c.spec.name}", file=sys.stderr),
    )
    search_seconds = time.perf_counter() - started
    best = select_best(candidates)

    baseline_config = dataclasses.replace(
        config, selection=dataclasses.replace(config.selection, tune_class_offsets=False)
    )
    started = time.perf_counter()
    baseline = train_candidate(BASELINE_SPEC, split_frames(frame), baseline_config, scoring, classes)
    baseline_seconds = time.perf_counter() - started

    rows = [
        summarise("selected", best, onnx_test_metrics(best.onnx_bytes, test, classes), search_seconds),
        summarise(
            "baseline", baseline, onnx_test_metrics(baseline.onnx_bytes, test, classes), baseline_seconds
        ),
    ]
    print("  comparing the ways of tuning class offsets", file=sys.stderr)
    return {
        "machine": machine(),
        "data": {
            "rows": frame.height,
            **{
                f"{s}_rows": frame.filter(pl.col("split") == s).height
                for s in ("train", "validation", "test")
            },
        },
        "classes": list(classes),
        "search_size": config.search_size,
        "candidates": [
            {
                "name": c.spec.name,
                "validation_macro_f1": c.validation_metrics["macro_f1"],
                "fit_seconds": c.fit_seconds,
                "parity": c.parity.passed,
            }
            for c in candidates
        ],
        "results": rows,
        "class_offsets": offsets_compared(frame, config, classes, candidates, search_seconds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--uci", type=Path, default=DEFAULT_UCI, help="the UCI sentences' directory")
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
    settings = Settings.load()
    report = run(*prepare_frame(args.data, settings), config)
    if args.uci.is_dir():
        print("UCI sentences", file=sys.stderr)
        report["uci_sentences"] = run(*prepare_uci_frame(args.uci, settings), config)
    else:
        print(f"UCI sentences not found at {args.uci}: measured the clothing data only", file=sys.stderr)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    for name, result in (("clothing reviews", report), ("UCI sentences", report.get("uci_sentences"))):
        if result is not None:
            print(f"\n## {name}\n")
            print(markdown_table(result["results"], tuple(result["classes"])))
            print()
            print(offsets_table(result["class_offsets"]))
    print(f"\nwritten to {RESULTS.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
