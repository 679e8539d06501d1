"""The figures in the docs, generated from bench/results: never typed by hand.

    .venv/bin/python bench/figures.py            # rewrite every figure block in README.md and docs/*.md
    .venv/bin/python bench/figures.py --check    # exit 1 naming each block that differs from its results

A document holds a figure as a block between two markers naming it:

    <!-- figure:batch-throughput -->
    ...generated Markdown...
    <!-- /figure:batch-throughput -->

`FIGURES` maps each name to the results file it reads and a function that renders it. The test suite runs
`--check` (mlplatform_tests/test_docs.py), so a re-run bench whose figures were not regenerated, a figure
edited by hand, or a block naming an unknown figure fails CI.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
BLOCK = re.compile(r"(<!-- figure:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)(<!-- /figure:(?P=name) -->)", re.S)

Renderer = Callable[[dict[str, Any]], str]


def _measured(result: dict[str, Any]) -> str:
    machine = result.get("machine", {})
    cpus = machine.get("nproc") or machine.get("cpus")
    load = machine.get("load_average_at_start")
    where = f"{cpus} CPUs ({machine.get('cpu_model', 'unknown')})" if cpus else "unknown machine"
    parts = [where]
    if load:
        parts.append(f"load average {load[0]:.2f} at start")
    if machine.get("git_commit"):
        parts.append(f"commit {machine['git_commit']}")
    if machine.get("measured_at"):
        parts.append(machine["measured_at"][:10])
    return "_Measured: " + ", ".join(parts) + "._"


def _table(header: list[str], rows: list[list[Any]], align: list[str] | None = None) -> str:
    align = align or ["---"] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def batch_throughput(result: dict[str, Any]) -> str:
    rows = [
        [
            row["what"],
            f"{row['rows']:,}",
            f"{row['median_seconds']:.2f}",
            f"{row['rows_per_second']:,}",
            f"{row['vs_scikit_learn']:.2f}x",
        ]
        for row in result["throughput"]
    ]
    rss = result["peak_rss"]
    parity = result["parity"]
    return "\n".join(
        [
            _table(
                ["batch", "rows", "median s", "rows/s", "vs scikit-learn"],
                rows,
                ["---", "---:", "---:", "---:", "---:"],
            ),
            "",
            f"Peak RSS scoring {rss['rows']:,} reviews (CSV in, Parquet out, one process): "
            f"{rss['peak_rss_bytes'] / 1024**2:,.0f} MiB (target under {rss['target_bytes'] / 1024**3:.0f} GiB), "
            f"{rss['rows_per_second']:,} rows/s. Parity with scikit-learn on {parity['rows']:,} real texts: "
            f"{parity['labels_differing_from_scikit_learn']} labels differ, largest probability gap "
            f"{parity['max_probability_gap_scikit_learn']:.1e}.",
            "",
            _measured(result),
        ]
    )


def batch_single_review(result: dict[str, Any]) -> str:
    rows = [
        [name, f"{row['p50_ms']:.3f}", f"{row['p90_ms']:.3f}", f"{row['p99_ms']:.3f}", f"{row['calls']:,}"]
        for name, row in result["single_review"].items()
    ]
    return "\n".join(
        [
            _table(
                ["one review", "p50 ms", "p90 ms", "p99 ms", "calls"],
                rows,
                ["---", "---:", "---:", "---:", "---:"],
            ),
            "",
            _measured(result),
        ]
    )


def batch_targets(result: dict[str, Any]) -> str:
    names = {
        "single_review_p50_ms": "one review in ONNX Runtime, p50 ≤ 0.1 ms",
        "single_review_p99_ms": "one review in ONNX Runtime, p99 ≤ 0.2 ms",
        "in_memory_vs_scikit_learn": "batch in memory ≥ 2x scikit-learn",
        "score_file_vs_scikit_learn": "`mlplatform score` end to end ≥ 1.5x scikit-learn",
        "peak_rss_bytes": "1M rows under 1 GiB peak",
    }
    rows = [
        [names.get(name, name), "met" if met else "**not met**"]
        for name, met in result["targets_met"].items()
    ]
    return _table(["target (issue 13)", "result"], rows)


def search_options(result: dict[str, Any]) -> str:
    rows = [
        [
            option,
            point["C"],
            f"{point['validation_macro_f1']:.4f}",
            f"{point['test_macro_f1']:.4f}",
            "yes" if point["helps_on_validation"] else "no",
        ]
        for option, point in result["best_per_option"].items()
    ]
    return "\n".join(
        [
            _table(
                [
                    "option",
                    "best C",
                    "validation macro-F1",
                    "test macro-F1",
                    f"gains ≥ {result.get('min_gain', 0)}",
                ],
                rows,
                ["---", "---:", "---:", "---:", "---"],
            ),
            "",
            _measured(result),
        ]
    )


def validation_memory(result: dict[str, Any]) -> str:
    rows = []
    for drop in result["drops"]:
        for run in drop["results"]:
            rows.append(
                [
                    f"{drop['bytes'] / 1e6:,.0f} MB ({drop['rows']:,} rows)",
                    run["mode"],
                    run["chunk_rows"] or "whole file",
                    f"{run['seconds']:.1f}",
                    f"{run['peak_rss_bytes'] / 1024**2:,.0f}",
                ]
            )
    return "\n".join(
        [
            _table(
                ["drop", "path", "chunk rows", "seconds", "peak RSS MiB"],
                rows,
                ["---", "---", "---:", "---:", "---:"],
            ),
            "",
            _measured(result),
        ]
    )


def e2e(result: dict[str, Any]) -> str:
    rows = [[what, f"{seconds:.1f}"] for what, seconds in result["land_to_serving_s"].items()]
    return "\n".join(
        [
            _table(["landing → serving", "seconds"], rows, ["---", "---:"]),
            "",
            f"Target: under {result['target_s']} s. " + _measured(result),
        ]
    )


FIGURES: dict[str, tuple[str, Renderer]] = {
    "batch-throughput": ("batch.json", batch_throughput),
    "batch-single-review": ("batch.json", batch_single_review),
    "batch-targets": ("batch.json", batch_targets),
    "search-options": ("search_options.json", search_options),
    "validation-memory": ("validation.json", validation_memory),
    "e2e": ("e2e.json", e2e),
}


def render(name: str, results: Path = RESULTS) -> str:
    file, renderer = FIGURES[name]
    return renderer(json.loads((results / file).read_text(encoding="utf-8"))).rstrip("\n") + "\n"


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def regenerate(text: str, results: Path = RESULTS) -> tuple[str, list[str]]:
    """The text with every figure block re-rendered, and the names of blocks that changed."""
    changed: list[str] = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in FIGURES:
            raise SystemExit(f"unknown figure {name!r} (known: {', '.join(FIGURES)})")
        body = render(name, results)
        if body != match["body"]:
            changed.append(name)
        return f"{match.group(1)}{body}{match.group(4)}"

    return BLOCK.sub(replace, text), changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is stale")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text(encoding="utf-8")
        new, changed = regenerate(text)
        stale += [f"{path.relative_to(ROOT)}: {name}" for name in changed]
        if changed and not args.check:
            path.write_text(new, encoding="utf-8")
    if args.check and stale:
        print("stale figures (run bench/figures.py): " + "; ".join(stale), file=sys.stderr)
        return 1
    if not args.check:
        print(f"{len(stale)} figure block(s) regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
