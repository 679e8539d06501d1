"""Which vectorizer options the sparse graph made legal help the search: each judged on validation.

    .venv/bin/python bench/search_options.py [--data ../shared/data/womens_clothing_ecommerce_reviews.csv]

The real reviews go through the platform's own data stage (normalised, labelled, deduplicated, split),
then the production family (word 1-2 grams, min_df 2, class-balanced LogisticRegression, C 0.5 / 1 / 2)
is trained with the packaged selection settings, once as is and once per option the sparse ONNX graph
can now express (`sublinear_tf`, `binary`, `max_df`, `max_features`, English stop words). Each point
reports validation macro-F1 (what selects a model) and test macro-F1 (for information only: never used
to choose). An option earns a place in the wide grid of config/training.toml when its best validation
macro-F1 beats the plain family's by at least `MIN_GAIN` (0.005, the margin the search already asks of class
offsets: `min_offset_gain` in config/training.toml; smaller differences are noise between fits). Writes
bench/results/search_options.json.
"""

from __future__ import annotations

import argparse
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
from mlplatform.core.training.evaluation import classification_metrics
from mlplatform.core.training.fit import CandidateSpec, load_training_config, split_frames, train_candidate

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
RESULTS = ROOT / "bench" / "results" / "search_options.json"
BASE = {"ngram_range": [1, 2], "min_df": 2, "class_weight": "balanced"}
OPTIONS: dict[str, dict[str, Any]] = {
    "plain (the default family)": {},
    "sublinear_tf": {"sublinear_tf": True},
    "binary": {"binary": True},
    "max_df 0.5": {"max_df": 0.5},
    "max_features 20000": {"max_features": 20000},
    "English stop words": {"stop_words": "english"},
    "sublinear_tf, 1-3 grams": {"sublinear_tf": True, "ngram_range": [1, 3]},
}
C_VALUES = (0.5, 1.0, 2.0)
MIN_GAIN = 0.005
CLASSES = load_contract().classes


def prepare_frame(data_path: Path, settings: Settings) -> pl.DataFrame:
    data = data_path.read_bytes()
    contract = load_contract()
    reviews = build_reviews({hashlib.sha256(data).hexdigest(): read_drop(data, "csv", contract)}, contract)
    return assign_splits(reviews.frame, settings.splits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"real data not found at {args.data} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    settings = Settings.load()
    scoring = settings.scoring
    config = load_training_config()
    frame = prepare_frame(args.data, settings)
    parts, test = split_frames(frame), frame.filter(pl.col("split") == "test")
    points = []
    for option, params in OPTIONS.items():
        for c in C_VALUES:
            spec = CandidateSpec(
                f"{option}, C={c}", "logreg", "logistic_regression", {**BASE, **params, "C": c}
            )
            started = time.perf_counter()
            trained = train_candidate(spec, parts, config, scoring, CLASSES)
            test_labels = (
                ScoringModel.from_bytes(trained.onnx_bytes, scoring).predict(test["text"].to_list()).labels
            )
            point = {
                "option": option,
                "C": c,
                "validation_macro_f1": round(trained.validation_metrics["macro_f1"], 4),
                "test_macro_f1": round(
                    classification_metrics(test["label"].to_list(), test_labels, CLASSES)["macro_f1"], 4
                ),
                "parity": trained.parity.passed,
                "onnx_bytes": len(trained.onnx_bytes),
                "seconds": round(time.perf_counter() - started, 1),
            }
            points.append(point)
            print(json.dumps(point), flush=True)
    best = {}
    for point in points:
        if (
            point["option"] not in best
            or point["validation_macro_f1"] > best[point["option"]]["validation_macro_f1"]
        ):
            best[point["option"]] = point
    plain = best["plain (the default family)"]["validation_macro_f1"]
    summary = {
        option: {**point, "helps_on_validation": point["validation_macro_f1"] >= plain + MIN_GAIN}
        for option, point in best.items()
    }
    report = {
        "machine": machine(),
        "rows": frame.height,
        "min_gain": MIN_GAIN,
        "points": points,
        "best_per_option": summary,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"\n| option | best C | validation macro-F1 | test macro-F1 | gains >= {MIN_GAIN} |\n|---|---:|---:|---:|---|"
    )
    for option, point in summary.items():
        print(
            f"| {option} | {point['C']} | {point['validation_macro_f1']:.4f} | {point['test_macro_f1']:.4f} "
            f"| {'yes' if point['helps_on_validation'] else 'no'} |"
        )
    print(f"\nwritten: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
