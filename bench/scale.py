"""Scale benchmark: ingest, features, splits and training at 20k, 200k and 1M reviews.

    .venv/bin/python bench/scale.py [--sizes 20000,200000,1000000] [--workdir DIR] [--json]

The real reviews (../shared/data/womens_clothing_ecommerce_reviews.csv) are replicated to each size with
variations, so every row is a distinct review: replica 0 is the published file unchanged; every further
replica gets new clothing ids and lightly varied texts (adjacent words swapped, a word dropped or
repeated from the same review, the odd typo), seeded and deterministic, so deduplication keeps them and
the vocabulary grows the way more real reviews make it grow. Each size lands as one CSV drop.

Every (size, stage) runs in its own subprocess, which reports its wall time and its own peak resident
set (VmHWM), so a stage's memory is not polluted by an earlier stage. A stage's time includes importing
its modules (1-2 s, which flatters the 20k -> 200k factors a little); CPU time (every thread, user + system)
is reported beside wall time, and linearity is judged on it, since on a shared machine wall time also
measures the neighbours. Stages hand data to each other
through files on disk, encoded as the platform's versioned IO manager stores them (artifacts.encode):

- ingest:   `Lake.land` the CSV, then what `raw_reviews` does: record the read, `validate_drop` (read,
            pandera contract, completeness, duplicates, non_empty), `Lake.accept`, encode the frame;
- features: what `reviews` does: `build_reviews`, `check_label_distribution`, `pretraining_bias` +
            `check_bias`, encode;
- splits:   what `review_splits` does: `assign_splits`, `split_metadata`, the three checks, encode;
- training: what one `candidate_models/...` asset does: `train_candidate` (fit on train, class offsets
            tuned on validation, ONNX export, ONNX Runtime parity on validation, train and validation
            metrics) and its stored bundle. One candidate only (`--candidate`; default the one
            bench/model_quality.py selected, else the first of the search): the point is cost growth.

Growth 20k -> 200k -> 1M of each stage's time and peak RSS is compared with the growth of the rows; a
stage counts as linear when its factor is at most the rows factor x (1 + LINEAR_TOLERANCE). Peak RSS
above 8 GiB anywhere is flagged. Writes bench/results/scale.json (with the machine) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from _common import machine, peak_rss_bytes

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
RESULTS = ROOT / "bench" / "results" / "scale.json"
DEFAULT_SIZES = (20_000, 200_000, 1_000_000)
STAGES = ("ingest", "features", "splits", "training")
SEED = 20_261_128
CLOTHING_ID_STRIDE = 100_000  # replica k's clothing ids are the published ones + k * stride
LINEAR_TOLERANCE = 0.20  # timings on a shared machine wobble; a factor this much above the rows' still counts
MEMORY_LIMIT_BYTES = 8 * 1024**3
MIB = 1024**2

# Files a size's directory holds, one per stage output.
SOURCE_CSV = "reviews.csv"
RAW_PARQUET = "raw_reviews.parquet"
DROP_HASH_FILE = "drop_hash.txt"
REVIEWS_PARQUET = "reviews.parquet"
SPLITS_PARQUET = "review_splits.parquet"
CANDIDATE_TAR = "candidate.tar"


# --- the replicated data ------------------------------------------------------------------------------


def vary_words(text: str | None, rng: random.Random, typo_chance: float) -> str | None:
    """A light, deterministic variation of a text made from its own words.

    One adjacent pair is swapped; then, each with even odds, a word is dropped and a word of the text is
    repeated in another place; with `typo_chance`, two inner letters of a longer word are transposed
    (a new word, as real typos make). Texts of one word are returned unchanged.
    """
    if not text:
        return text
    words = text.split()
    if len(words) < 2:
        return text
    position = rng.randrange(len(words) - 1)
    words[position], words[position + 1] = words[position + 1], words[position]
    if len(words) >= 6 and rng.random() < 0.5:
        del words[rng.randrange(len(words))]
    if rng.random() < 0.5:
        words.insert(rng.randrange(len(words) + 1), words[rng.randrange(len(words))])
    if rng.random() < typo_chance:
        long_words = [index for index, word in enumerate(words) if len(word) >= 5 and word.isalpha()]
        if long_words:
            index = long_words[rng.randrange(len(long_words))]
            word = words[index]
            cut = rng.randrange(1, len(word) - 2)
            words[index] = word[:cut] + word[cut + 1] + word[cut] + word[cut + 2 :]
    return " ".join(words)


def replica(published: Any, number: int, seed: int) -> Any:
    """Replica `number` of the published frame (all columns text): 0 is unchanged; others get new
    clothing ids and varied titles and review texts, from a generator seeded by (seed, number)."""
    import polars as pl

    if number == 0:
        return published
    rng = random.Random(f"{seed}:{number}")
    titles = [vary_words(title, rng, typo_chance=0.1) for title in published["Title"].to_list()]
    texts = [vary_words(text, rng, typo_chance=0.5) for text in published["Review Text"].to_list()]
    clothing_ids = published["Clothing ID"].cast(pl.Int64) + number * CLOTHING_ID_STRIDE
    return published.with_columns(
        clothing_ids.cast(pl.String).alias("Clothing ID"),
        pl.Series("Title", titles, dtype=pl.String),
        pl.Series("Review Text", texts, dtype=pl.String),
    )


def write_replicated_csv(data: Path, rows: int, seed: int, target: Path) -> dict[str, Any]:
    """The published CSV replicated with variations to `rows` rows, as a published-layout CSV drop."""
    import polars as pl

    published = pl.read_csv(data, infer_schema=False)
    copies = -(-rows // published.height)
    frame = pl.concat([replica(published, number, seed) for number in range(copies)]).head(rows)
    frame = frame.with_columns(pl.int_range(rows, dtype=pl.Int64).cast(pl.String).alias(""))
    frame.write_csv(target)
    return {"rows": frame.height, "replicas": copies, "csv_bytes": target.stat().st_size}


# --- the stages (each runs in a child process) -----------------------------------------------------


def stage_generate(directory: Path, rows: int, data: Path) -> dict[str, Any]:
    return write_replicated_csv(data, rows, SEED, directory / SOURCE_CSV)


def _write_artifact(value: Any, target: Path) -> int:
    """Encode a value as the versioned IO manager stores it and write it; its size in bytes."""
    from mlplatform.core.platform.artifacts import encode

    encoded = encode(value)
    target.write_bytes(encoded.payload)
    return encoded.size


def _read_table(path: Path) -> Any:
    """A stored table, decoded as the versioned IO manager hands it to the next asset."""
    from mlplatform.core.platform.artifacts import FORMAT_PARQUET, decode

    return decode(path, FORMAT_PARQUET)


def stage_ingest(directory: Path, rows: int, data: Path) -> dict[str, Any]:
    from mlplatform.core.data.contract import load_contract
    from mlplatform.core.data.lake import Lake
    from mlplatform.core.data.quality import validate_drop
    from mlplatform.core.platform.home import PlatformHome
    from mlplatform.core.platform.settings import Settings

    home = PlatformHome(directory / "home")
    settings = Settings.load(home.settings_file)
    lake = Lake.from_settings(home, settings)
    (landed,) = lake.land([directory / SOURCE_CSV])
    drop = lake.drop(landed.hash)
    lake.record_read("raw_reviews", drop.hash, consumer="bench-scale:raw_reviews", purpose="validate drop")
    contract = load_contract(home.dataset_file)
    validation = validate_drop(lake.open_drop(drop.hash), drop.format, contract, settings.ingest)
    if not validation.passed:
        failure = validation.first_failure
        raise SystemExit(f"the replicated drop failed ingest: {failure.name}: {failure.description}")
    lake.accept(drop.hash, contract=contract.fingerprint)
    (directory / DROP_HASH_FILE).write_text(drop.hash)
    size = _write_artifact(validation.frame, directory / RAW_PARQUET)
    return {"rows_out": validation.frame.height, "artifact_bytes": size}


def stage_features(directory: Path, rows: int, data: Path) -> dict[str, Any]:
    from mlplatform.core.data.bias import check_bias, pretraining_bias
    from mlplatform.core.data.contract import load_contract
    from mlplatform.core.data.features import build_reviews, check_label_distribution
    from mlplatform.core.platform.settings import Settings

    rules, contract = Settings.load().features, load_contract()
    drop_hash = (directory / DROP_HASH_FILE).read_text()
    table = build_reviews({drop_hash: _read_table(directory / RAW_PARQUET)}, contract)
    check_label_distribution(table.frame, None, rules, contract.classes)
    facets = contract.facet_columns
    check_bias(
        pretraining_bias(table.frame, facets, contract.labels, min_rows=rules.min_facet_rows),
        rules.bias_warn,
        facets,
        contract.labels,
    )
    size = _write_artifact(table.frame, directory / REVIEWS_PARQUET)
    return {
        "rows_out": table.stats.rows_out,
        "duplicates_removed": table.stats.duplicates_removed,
        "empty_text_removed": table.stats.empty_text_removed,
        "artifact_bytes": size,
    }


def stage_splits(directory: Path, rows: int, data: Path) -> dict[str, Any]:
    from mlplatform.core.data.contract import load_contract
    from mlplatform.core.data.splits import (
        assign_splits,
        check_class_coverage,
        check_no_leakage,
        check_proportions,
        split_metadata,
    )
    from mlplatform.core.platform.settings import Settings

    rules, classes = Settings.load().splits, load_contract().classes
    frame = assign_splits(_read_table(directory / REVIEWS_PARQUET), rules)
    metadata = split_metadata(frame, classes)
    outcomes = [
        check_no_leakage(frame),
        check_proportions(frame, rules, classes),
        check_class_coverage(frame, classes),
    ]
    failed = [f"{outcome.name}: {outcome.description}" for outcome in outcomes if not outcome.passed]
    if failed:
        raise SystemExit(f"split checks failed: {'; '.join(failed)}")
    size = _write_artifact(frame, directory / SPLITS_PARQUET)
    return {
        "rows_out": frame.height,
        **{f"{split}_rows": metadata[f"{split}/rows"] for split in ("train", "validation", "test")},
        "artifact_bytes": size,
    }


def training_spec(name: str | None) -> Any:
    """The candidate to train: `name`, else the one bench/model_quality.py selected, else the first."""
    from mlplatform.core.training.fit import candidate_specs, load_training_config

    specs = {spec.name: spec for spec in candidate_specs(load_training_config())}
    if name is None:
        quality = ROOT / "bench" / "results" / "model_quality.json"
        if quality.exists():
            selected = json.loads(quality.read_text())["results"][0]["candidate"]
            name = selected if selected in specs else None
    if name is None:
        return next(iter(specs.values()))
    if name not in specs:
        raise SystemExit(f"no candidate {name!r} in config/training.toml; known: {', '.join(specs)}")
    return specs[name]


def onnx_vocabulary_size(onnx_bytes: bytes) -> int:
    """How many n-grams the exported model reads (its vocabulary, one per line of the `vocabulary` metadata)."""
    import onnx

    metadata = {prop.key: prop.value for prop in onnx.load_from_string(onnx_bytes).metadata_props}
    return len(metadata["vocabulary"].split("\n"))


def stage_training(directory: Path, rows: int, data: Path, candidate: str | None = None) -> dict[str, Any]:
    from mlplatform.core.data.contract import load_contract
    from mlplatform.core.platform.artifacts import Bundle
    from mlplatform.core.training.fit import load_training_config, split_frames, train_candidate
    from mlplatform.core.training.selection import candidate_files

    spec = training_spec(candidate)
    parts = split_frames(_read_table(directory / SPLITS_PARQUET))
    from mlplatform.core.platform.settings import Settings

    trained = train_candidate(
        spec,
        parts,
        load_training_config(),
        Settings.load().scoring,
        load_contract().classes,
    )
    if not trained.parity.passed:
        raise SystemExit(f"candidate {spec.name}: {trained.parity.description}")
    size = _write_artifact(Bundle(candidate_files(trained)), directory / CANDIDATE_TAR)
    return {
        "candidate": spec.name,
        "train_rows": parts["train"].height,
        "validation_rows": parts["validation"].height,
        "fit_and_tune_seconds": trained.fit_seconds,
        "vocabulary": onnx_vocabulary_size(trained.onnx_bytes),
        "onnx_bytes": len(trained.onnx_bytes),
        "validation_macro_f1": round(trained.validation_metrics["macro_f1"], 4),
        "parity": trained.parity.description,
        "artifact_bytes": size,
    }


CHILD_STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "generate": stage_generate,
    "ingest": stage_ingest,
    "features": stage_features,
    "splits": stage_splits,
    "training": stage_training,
}


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread, user + system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_child(stage: str, directory: str, rows: str, data: str, candidate: str | None) -> None:
    """The child side: run one stage, print one JSON line with its seconds, CPU seconds and peak RSS."""
    baseline_rss = peak_rss_bytes()
    action = CHILD_STAGES[stage]
    extra = {"candidate": candidate} if stage == "training" else {}
    started, cpu_started = time.perf_counter(), cpu_seconds()
    details = action(Path(directory), int(rows), Path(data), **extra)
    report = {
        "seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu_started,
        "peak_rss_bytes": peak_rss_bytes(),
        "start_rss_bytes": baseline_rss,
    }
    print(json.dumps({**report, "details": details}))


# --- the parent ----------------------------------------------------------------------------------------


class StageFailed(RuntimeError):
    """A stage's child process failed; the message is its last line of stderr."""


def measure(stage: str, directory: Path, rows: int, data: Path, candidate: str | None) -> dict[str, Any]:
    """Run one (size, stage) in a fresh interpreter and return its measurements."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", stage, str(directory), str(rows)]
    command += [str(data), candidate or ""]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, check=False, cwd=ROOT)
    process_seconds = time.perf_counter() - started
    if completed.returncode != 0:
        lines = (completed.stderr.strip() or completed.stdout.strip() or "no output").splitlines()
        raise StageFailed(f"{stage} at {rows:,} rows exited {completed.returncode}: {lines[-1]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return {
        "stage": stage,
        "rows": rows,
        "seconds": round(result["seconds"], 2),
        "cpu_seconds": round(result["cpu_seconds"], 2),
        "process_seconds": round(process_seconds, 2),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "rows_per_second": round(rows / result["seconds"]),
        "peak_rss_mib": round(result["peak_rss_bytes"] / MIB),
        "start_rss_mib": round(result["start_rss_bytes"] / MIB),
        "over_memory_limit": result["peak_rss_bytes"] > MEMORY_LIMIT_BYTES,
        "details": result["details"],
    }


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_size(rows: int, workdir: Path, data: Path, candidate: str | None) -> dict[str, Any]:
    """Generate the data for one size, then measure every stage on it; stop at the first failure."""
    directory = workdir / f"rows_{rows}"
    directory.mkdir(parents=True, exist_ok=True)
    generated = measure("generate", directory, rows, data, candidate)
    progress(
        f"[{rows:>9,}] data      {generated['seconds']:7.1f} s  "
        f"({generated['details']['replicas']} replicas, {generated['details']['csv_bytes'] / MIB:,.0f} MiB CSV)"
    )
    stages: list[dict[str, Any]] = []
    for stage in STAGES:
        try:
            result = measure(stage, directory, rows, data, candidate)
        except StageFailed as exc:
            progress(f"[{rows:>9,}] {stage:<9} FAILED: {exc}")
            stages.append({"stage": stage, "rows": rows, "error": str(exc)})
            break
        flag = "  OVER 8 GiB" if result["over_memory_limit"] else ""
        progress(
            f"[{rows:>9,}] {stage:<9} {result['seconds']:7.1f} s  (CPU {result['cpu_seconds']:7.1f} s)  "
            f"{result['rows_per_second']:>9,} rows/s  peak RSS {result['peak_rss_mib']:>6,} MiB  "
            f"load {max(result['load_average_1min']):.1f}{flag}"
        )
        stages.append(result)
    return {"rows": rows, "data": generated["details"], "stages": stages}


def growth(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage and consecutive pair of sizes: the CPU time, wall time and peak RSS factors vs the rows
    factor. Linearity is judged on CPU time: on a shared machine wall time also measures the neighbours."""
    found: list[dict[str, Any]] = []
    for smaller, larger in pairwise(sizes):
        by_stage = {result["stage"]: result for result in smaller["stages"] if "error" not in result}
        for result in larger["stages"]:
            before = by_stage.get(result["stage"])
            if before is None or "error" in result:
                continue
            rows_factor = larger["rows"] / smaller["rows"]
            bound = rows_factor * (1 + LINEAR_TOLERANCE)
            factors = {
                key: result[measure] / before[measure]
                for key, measure in (("cpu", "cpu_seconds"), ("wall", "seconds"), ("memory", "peak_rss_mib"))
            }
            found.append(
                {
                    "stage": result["stage"],
                    "from_rows": smaller["rows"],
                    "to_rows": larger["rows"],
                    "rows_factor": round(rows_factor, 2),
                    **{f"{key}_factor": round(factor, 2) for key, factor in factors.items()},
                    "time_linear": factors["cpu"] <= bound,
                    "memory_linear": factors["memory"] <= bound,
                }
            )
    return found


def _verdict(factor: float, linear: bool) -> str:
    return f"{factor:.1f}x" if linear else f"**{factor:.1f}x (superlinear)**"


def markdown(report: dict[str, Any]) -> str:
    """The summary printed: per size and stage, then the growth factors (docs/operations.md shows them as
    the `scale` figure, rendered by bench/figures.py)."""
    box = report["machine"]
    lines = [
        f"Scale, {box['nproc']} CPUs ({box['cpu_model']}), {box['memory_gib']} GiB RAM, shared machine "
        f"(noisy timings). Training: one candidate, `{report['candidate']}`.",
        "",
        "| rows | stage | wall s | CPU s | rows/s (wall) | peak RSS MiB | load avg |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for size in report["sizes"]:
        for result in size["stages"]:
            if "error" in result:
                lines.append(f"| {size['rows']:,} | {result['stage']} | failed: {result['error']} | | | | |")
                continue
            flag = " **> 8 GiB**" if result["over_memory_limit"] else ""
            lines.append(
                f"| {size['rows']:,} | {result['stage']} | {result['seconds']:,.1f} | "
                f"{result['cpu_seconds']:,.1f} | {result['rows_per_second']:,} | {result['peak_rss_mib']:,}{flag} | "
                f"{max(result['load_average_1min']):.1f} |"
            )
    vocabularies = [
        f"{r['details']['vocabulary']:,} at {s['rows']:,}"
        for s in report["sizes"]
        for r in s["stages"]
        if r["stage"] == "training" and "error" not in r
    ]
    lines += [
        "",
        f"Training vocabulary (n-grams, the ONNX model's feature width): {', '.join(vocabularies)}.",
    ]
    lines += [
        "",
        f"Growth (linear = factor at most the rows factor x {1 + LINEAR_TOLERANCE:.2f}; time judged on CPU "
        "seconds, since wall time on a shared machine also measures the neighbours):",
        "",
        "| stage | rows | rows factor | CPU time factor | wall time factor | peak RSS factor |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for step in report["growth"]:
        lines.append(
            f"| {step['stage']} | {step['from_rows']:,} -> {step['to_rows']:,} | {step['rows_factor']:.0f}x | "
            f"{_verdict(step['cpu_factor'], step['time_linear'])} | {step['wall_factor']:.1f}x | "
            f"{_verdict(step['memory_factor'], step['memory_linear'])} |"
        )
    over = [
        f"{s['rows']:,} {r['stage']}"
        for s in report["sizes"]
        for r in s["stages"]
        if r.get("over_memory_limit")
    ]
    lines += ["", f"Over 8 GiB: {', '.join(over)}." if over else "Every stage stays under 8 GiB peak RSS."]
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes must be comma-separated integers, got {text!r}") from None
    if not sizes or any(size < 1000 for size in sizes) or sizes != sorted(set(sizes)):
        raise argparse.ArgumentTypeError("--sizes must be increasing, distinct and each at least 1000")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES))
    parser.add_argument("--workdir", type=Path, help="keep the generated data and stage outputs here")
    parser.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--candidate", help="the search point to train (a name from config/training.toml)")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        stage, directory, rows, data, candidate = args.child
        run_child(stage, directory, rows, data, candidate or None)
        return 0
    if not args.data.exists():
        print(
            f"real data not found at {args.data} (see ../shared/data/README.md); nothing to benchmark",
            file=sys.stderr,
        )
        return 2
    candidate = training_spec(args.candidate).name
    progress(f"training candidate: {candidate} (one search point, not the whole search)")
    report: dict[str, Any] = {"machine": machine(), "candidate": candidate, "seed": SEED}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="mlplatform-bench-scale-"))
    try:
        report["sizes"] = [run_size(rows, workdir, args.data, candidate) for rows in args.sizes]
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    report["growth"] = growth(report["sizes"])
    report["linear_tolerance"] = LINEAR_TOLERANCE
    report["memory_limit_bytes"] = MEMORY_LIMIT_BYTES
    report["over_memory_limit"] = any(
        r.get("over_memory_limit") for s in report["sizes"] for r in s["stages"]
    )
    report["all_linear"] = all(step["time_linear"] and step["memory_linear"] for step in report["growth"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2) if args.json else markdown(report))
    progress(f"written: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
