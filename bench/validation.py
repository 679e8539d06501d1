"""Validation memory and time: a ~1 GB drop validated in chunks, beside the old whole-file path.

    .venv/bin/python bench/validation.py [--gb 1.0] [--old-mb 200] [--old-ref b3f89db] [--chunk-rows N]

Builds drops in the published clothing layout by replicating the real reviews (each copy with its own
clothing ids, so no copy duplicates another: the drops pass every check, so every check runs to the
end) and validates them in fresh processes, each reporting its own peak resident set (VmHWM), wall and
CPU seconds and its verdict:

- `streaming`: `validate_drop(path, ..., keep_frame=False)` — chunks of `[ingest] chunk_rows` read from
  the file, checked and let go (what `mlplatform dataset check` does);
- `keeping the frame`: the same, keeping the normalised frame (what `raw_reviews` holds to store it:
  the frame itself, not validation, is then most of the peak);
- `old`: the whole-file path of commit `--old-ref` (the bytes read, decoded to one string, every record
  tokenised into Python lists, one pandera pass), extracted with `git archive` and run from there. Its
  peak grows about 10x the file, so it runs on the `--old-mb` drop only (1 GB would need ~10 GB on a
  machine shared with others); the streaming path runs on that drop too, for the side by side.

Target (issue 14 item 10): the 1 GB drop validates under 1 GiB peak. Prints a Markdown table and writes
bench/results/validation.json (with the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, machine, peak_rss_bytes

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
RESULTS = ROOT / "bench" / "results" / "validation.json"
TARGET_BYTES = 1024**3
OLD_REF = "b3f89db"  # main before issue 12: validate_drop(bytes, fmt, rules), one pass over the whole file
CLOTHING_ID_STRIDE = 10_000  # copy n's clothing ids are the originals + n * stride: no copy repeats another


def write_drop(data: Path, target_bytes: int, target: Path) -> dict[str, Any]:
    """The published CSV replicated to about `target_bytes`, streamed to `target` copy by copy."""
    import polars as pl

    published = pl.read_csv(data, infer_schema=False)
    copies = rows = 0
    with open(target, "wb") as handle:
        while handle.tell() < target_bytes:
            copy = published.with_columns(
                (pl.col("Clothing ID").cast(pl.Int64) + copies * CLOTHING_ID_STRIDE).cast(pl.String),
                pl.int_range(rows, rows + published.height, dtype=pl.Int64).cast(pl.String).alias(""),
            )
            copy.write_csv(handle, include_header=copies == 0)
            copies += 1
            rows += published.height
    return {"rows": rows, "copies": copies, "bytes": target.stat().st_size}


def old_tree(ref: str, directory: Path) -> Path | None:
    """The `mlplatform` package of commit `ref`, extracted under `directory` (None without git)."""
    archive = directory / "old.tar"
    with open(archive, "wb") as handle:
        made = subprocess.run(["git", "archive", ref, "mlplatform"], cwd=ROOT, stdout=handle, check=False)
    if made.returncode != 0:
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(directory / "old", filter="data")
    return directory / "old"


def measure(mode: str, drop: Path, chunk_rows: int | None, old: Path | None = None) -> dict[str, Any]:
    """Validate `drop` in a fresh process (the old package first on its path for mode "old")."""
    env = dict(os.environ)
    if old is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(old), env.get("PYTHONPATH", "")])
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, str(drop)]
    if chunk_rows is not None:
        command += ["--chunk-rows", str(chunk_rows)]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if completed.returncode != 0:
        raise SystemExit(f"{mode} validation failed: {completed.stderr.strip().splitlines()[-3:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    print(
        f"  {mode:>18}: {result['seconds']:6.1f} s wall, {result['cpu_seconds']:6.1f} s CPU, "
        f"peak RSS {result['peak_rss_bytes'] / 1024**2:7.0f} MiB",
        flush=True,
    )
    return result


def child(mode: str, drop: Path, chunk_rows: int | None) -> None:
    """The subprocess side of `measure`: validate one drop, print a JSON line."""

    from mlplatform.core.data.quality import validate_drop
    from mlplatform.core.platform.settings import Settings

    rules = Settings.load().ingest
    after_import = peak_rss_bytes()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    if mode == "old":
        validation = validate_drop(drop.read_bytes(), "csv", rules)
        rows = validation.frame.height if validation.frame is not None else None
    else:
        from mlplatform.core.data.contract import load_contract

        if chunk_rows is not None:
            rules = rules.replace(chunk_rows=chunk_rows)
        validation = validate_drop(
            drop, "csv", load_contract(), rules, keep_frame=mode == "keeping the frame"
        )
        rows = validation.rows
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    duplicates = next(outcome for outcome in validation.checks if outcome.name == "duplicates")
    print(
        json.dumps(
            {
                "mode": mode,
                "seconds": round(seconds, 2),
                "cpu_seconds": round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 2),
                "peak_rss_bytes": peak_rss_bytes(),
                "rss_after_imports_bytes": after_import,
                "chunk_rows": getattr(rules, "chunk_rows", None),
                "rows": rows,
                "passed": validation.passed,
                "checks": {outcome.name: outcome.passed for outcome in validation.checks},
                "duplicate_rows": duplicates.metadata.get("duplicate_rows"),
            }
        )
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| drop | path | rows | wall s | CPU s | peak RSS MiB | verdict |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for drop in report["drops"]:
        for result in drop["results"]:
            verdict = "passed" if result["passed"] else "FAILED"
            lines.append(
                f"| {drop['bytes'] / 1e6:,.0f} MB | {result['mode']} | {result['rows']:,} | "
                f"{result['seconds']:.1f} | {result['cpu_seconds']:.1f} | "
                f"{result['peak_rss_bytes'] / 1024**2:,.0f} | {verdict} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--gb", type=float, default=1.0, help="size of the big drop")
    parser.add_argument("--old-mb", type=float, default=200.0, help="size of the drop the old path reads")
    parser.add_argument("--old-ref", default=OLD_REF, help="the commit whose whole-file path is measured")
    parser.add_argument("--chunk-rows", type=int, help="override [ingest] chunk_rows")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]), args.chunk_rows)
        return 0
    if not args.data.exists():
        print(f"real data not found at {args.data} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"machine": machine(), "target_bytes": TARGET_BYTES, "old_ref": args.old_ref}
    with tempfile.TemporaryDirectory(prefix="mlplatform-bench-validation-") as directory:
        workdir = Path(directory)
        old = old_tree(args.old_ref, workdir)
        report["drops"] = []
        for name, size, modes in (
            ("small", args.old_mb * 1e6, ["old", "streaming"]),
            ("big", args.gb * 1e9, ["streaming", "keeping the frame"]),
        ):
            drop = workdir / f"{name}.csv"
            print(f"writing the {name} drop (~{size / 1e6:,.0f} MB) ...", flush=True)
            made = write_drop(args.data, int(size), drop)
            results = []
            for mode in modes:
                if mode == "old" and old is None:
                    print("  old: skipped (git archive failed)", flush=True)
                    continue
                results.append(measure(mode, drop, args.chunk_rows, old if mode == "old" else None))
            report["drops"].append({"name": name, **made, "results": results})
            drop.unlink()
    big = report["drops"][1]
    streaming = next(result for result in big["results"] if result["mode"] == "streaming")
    report["target_met"] = streaming["passed"] and streaming["peak_rss_bytes"] < TARGET_BYTES
    small = report["drops"][0]["results"]
    report["same_verdicts_as_old"] = (
        len({json.dumps(r["checks"]) for r in small}) == 1 and len({r["duplicate_rows"] for r in small}) == 1
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(markdown(report))
    print(
        f"\n1 GB drop under 1 GiB peak: {report['target_met']}; same verdicts as the old path: "
        f"{report['same_verdicts_as_old']}"
    )
    print(f"written: {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
