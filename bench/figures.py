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
import statistics
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
    data = result.get("data", {})
    drops = (
        f"First drop {data['first_drop_rows']:,} reviews, second drop {data['second_drop_rows']:,} more. "
        if "first_drop_rows" in data
        else ""
    )
    return "\n".join(
        [
            _table(["landing → serving", "seconds"], rows, ["---", "---:"]),
            "",
            drops + f"Target: under {result['target_s']} s. Sensor ticks with nothing landed launched "
            f"{result['runs_launched_by_idle_ticks']} runs. " + _measured(result),
        ]
    )


def model_quality(result: dict[str, Any]) -> str:
    """Each real data set (the clothing reviews; the UCI sentences under `uci_sentences`): the selected
    model beside the reference on the same test split, and the test split's noise."""
    sets = [("Women's clothing", result), ("UCI sentences", result.get("uci_sentences"))]
    rows, noise = [], []
    for name, measured in sets:
        if measured is None:
            continue
        data, classes = measured["data"], measured["classes"]
        split = f"{data['train_rows']:,} / {data['validation_rows']:,} / {data['test_rows']:,}"
        for row in measured["results"]:
            f1 = " · ".join(f"{label} {row['test_f1'][label]:.3f}" for label in classes)
            rows.append(
                [
                    f"{name}, {len(classes)} classes",
                    split,
                    "selected" if row["model"] == "selected" else "reference",
                    f"`{row['candidate']}`",
                    f"{row['test_macro_f1']:.3f}",
                    f"{row['test_balanced_accuracy']:.3f}" if "test_balanced_accuracy" in row else "—",
                    f1,
                    f"{row['onnx_bytes'] / 1000:,.0f} KB",
                ]
            )
        f1 = measured["results"][0]["test_macro_f1"]
        noise.append(f"{name} ±{(f1 * (1 - f1) / data['test_rows']) ** 0.5:.3f}")
    return "\n".join(
        [
            _table(
                [
                    "data set",
                    "train / validation / test",
                    "model",
                    "candidate",
                    "test macro-F1",
                    "test balanced accuracy",
                    "test F1 per class",
                    "ONNX",
                ],
                rows,
                ["---", "---:", "---", "---", "---:", "---:", "---", "---:"],
            ),
            "",
            "Standard error of a test macro-F1 near these (√(F1(1−F1)/test rows)): " + ", ".join(noise) + ".",
            "",
            _measured(result),
        ]
    )


def model_offsets(result: dict[str, Any]) -> str:
    """bench/model_quality.py's `class_offsets`: each way of tuning the per-class offsets, the candidate it
    selects by validation macro-F1 (what chose the model) and its test macro-F1 (rows no step saw)."""
    names = {
        "validation": "the validation rows (the rule before)",
        "cross_validation": "cross-validation on train (the rule now)",
        "cross_validation, kept whatever the gain": "cross-validation on train, kept whatever the gain",
        "none": "none",
    }
    sets = [("Women's clothing", result), ("UCI sentences", result.get("uci_sentences"))]
    rows, notes = [], []
    for name, measured in sets:
        if measured is None:
            continue
        ways = {way["offsets"]: way for way in measured["class_offsets"]}
        for key, way in ways.items():
            offsets = ", ".join(
                f"{label} {value:+g}" for label, value in way["class_offsets"].items() if value
            )
            c = re.search(r"C=([0-9.]+)", way["candidate"])
            rows.append(
                [
                    name,
                    names.get(key, key),
                    f"C={float(c[1]):g}" if c else way["candidate"],
                    offsets or "none",
                    f"{way['validation_macro_f1']:.3f}",
                    f"{way['test_macro_f1']:.3f}",
                ]
            )
        tuned, none, cv = ways.get("validation"), ways.get("none"), ways.get("cross_validation")
        if tuned and none:
            notes.append(
                f"{name}: offsets tuned on the validation rows promised "
                f"{tuned['validation_macro_f1'] - none['validation_macro_f1']:+.3f} there and gave "
                f"{tuned['test_macro_f1'] - none['test_macro_f1']:+.3f} on test"
            )
        tuning = (cv or {}).get("tuning") or {}
        if tuning.get("held_out_gain") is not None:
            notes[-1] += (
                f"; the cross-validated estimate of their gain was {tuning['held_out_gain']:+.4f} "
                f"({'kept' if tuning.get('kept') else 'dropped'})"
            )
    return "\n".join(
        [
            _table(
                [
                    "data set",
                    "offsets tuned on",
                    "selected",
                    "offsets",
                    "validation macro-F1",
                    "test macro-F1",
                ],
                rows,
                ["---", "---", "---", "---", "---:", "---:"],
            ),
            "",
            ". ".join(notes) + ".",
            "",
            _measured(result),
        ]
    )


def executors(result: dict[str, Any]) -> str:
    """bench/executors.py: the search's candidates trained by each executor in turn."""
    rows = [
        [f"`{row['executor']}`", row["candidates"], f"{row['wall_s']:.1f}", f"{row['fit_s_sum']:.1f}"]
        for row in result["results"]
    ]
    return "\n".join(
        [
            _table(
                ["executor", "candidates", "wall s", "fit s, summed over candidates"],
                rows,
                ["---", "---:", "---:", "---:"],
            ),
            "",
            _measured(result),
        ]
    )


def _rows(n: int) -> str:
    return f"{n // 1_000_000:,}M" if n % 1_000_000 == 0 else f"{n // 1000:,}k"


def scale(result: dict[str, Any]) -> str:
    """bench/scale.py: each (size, stage) in its own process, and how each stage grows between sizes."""
    rows = [
        [
            f"{size['rows']:,}",
            stage["stage"],
            f"{stage['seconds']:,.1f}",
            f"{stage['cpu_seconds']:,.1f}",
            f"{stage['rows_per_second']:,}",
            f"{stage['peak_rss_mib']:,}",
        ]
        for size in result["sizes"]
        for stage in size["stages"]
    ]
    spans: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
    for row in result["growth"]:
        spans.setdefault((row["from_rows"], row["to_rows"]), {})[row["stage"]] = row
    stages = list(dict.fromkeys(row["stage"] for row in result["growth"]))
    header = ["stage"] + [f"{_rows(a)} → {_rows(b)} (rows {b / a:g}x): CPU / wall / RSS" for a, b in spans]
    growth = [
        [stage]
        + [
            f"{g['cpu_factor']:.1f}x / {g['wall_factor']:.1f}x / {g['memory_factor']:.1f}x"
            for g in (span[stage] for span in spans.values())
        ]
        for stage in stages
    ]
    worst = max(result["growth"], key=lambda g: g["cpu_factor"] / g["rows_factor"])
    largest = max(
        ((size["rows"], stage) for size in result["sizes"] for stage in size["stages"]),
        key=lambda item: item[1]["peak_rss_mib"],
    )
    vocabulary = [
        stage["details"]["vocabulary"]
        for size in result["sizes"]
        for stage in size["stages"]
        if stage["stage"] == "training" and "vocabulary" in stage.get("details", {})
    ]
    summary = (
        f"Every stage grows {'no worse than linearly' if result['all_linear'] else '**worse than linearly**'} "
        f"(CPU factor at most {1 + result['linear_tolerance']:g}x the rows factor; the closest: "
        f"{worst['stage']}, {worst['cpu_factor']:.1f}x for {worst['rows_factor']:g}x rows). The largest peak "
        f"is {largest[1]['peak_rss_mib'] / 1024:.1f} GiB ({largest[1]['stage']} at {largest[0]:,} rows), "
        f"{'under' if not result['over_memory_limit'] else '**over**'} the "
        f"{result['memory_limit_bytes'] / 1024**3:.0f} GiB target."
    )
    if vocabulary:
        summary += " Vocabulary: " + " → ".join(f"{v / 1000:,.0f}k" for v in vocabulary) + " n-grams."
    return "\n".join(
        [
            _table(
                ["rows", "stage", "wall s", "CPU s", "rows/s (wall)", "peak RSS MiB"],
                rows,
                ["---:", "---", "---:", "---:", "---:", "---:"],
            ),
            "",
            _table(header, growth),
            "",
            summary,
            "",
            _measured(result),
        ]
    )


def _per_round(values: list[float], fmt: str) -> str:
    return " / ".join(format(value, fmt) for value in values)


def serving_throughput(result: dict[str, Any]) -> str:
    """bench/serving.py: each server's requests/s, p99 and ratio to the baseline, round by round."""
    by_server: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in result["results"]:
        by_server.setdefault((row["concurrency"], row["server"]), []).append(row)
    baseline = {
        (row["round"], row["concurrency"]): row["requests_per_s"]
        for row in result["results"]
        if row["server"].startswith("baseline")
    }
    rows = []
    for (concurrency, server), runs in sorted(by_server.items(), key=lambda item: item[0][0]):
        ratios = [run["requests_per_s"] / baseline[(run["round"], concurrency)] for run in runs]
        rows.append(
            [
                server,
                concurrency,
                _per_round([run["requests_per_s"] for run in runs], ",.0f"),
                _per_round([run["p50_ms"] for run in runs], ".2f"),
                _per_round([run["p99_ms"] for run in runs], ".1f"),
                " / ".join(f"{ratio:.2f}x" for ratio in ratios),
            ]
        )
    sync = result["disk_sync_ms"]["preallocated_fdatasync"]
    load = result.get("load_average_1m", {})
    return "\n".join(
        [
            _table(
                ["server", "concurrency", "req/s, per round", "p50 ms", "p99 ms", "vs baseline"],
                rows,
                ["---", "---:", "---:", "---:", "---:", "---:"],
            ),
            "",
            f"{result['rounds']} rounds of {result['duration_s']:g} s per run ({result['load_tool']}, loopback). "
            f"The disk where capture is written: one record's `fdatasync` p50 {sync['p50_ms']:.2f} ms, "
            f"p99 {sync['p99_ms']:.2f} ms, {sync['over_2ms']} of {sync['records']} over 2 ms. "
            f"Load average {load.get('before', 0):.1f} before, {load.get('after', 0):.1f} after. "
            + _measured(result),
        ]
    )


def serving_targets(result: dict[str, Any]) -> str:
    """bench/serving.py: issue 13's targets for the defaults, rounds met of rounds run."""
    rows = [
        [name.replace("_", " "), f"{met['rounds_met']} of {met['rounds']}"]
        for name, met in result["targets"].items()
    ]
    return _table(["target (defaults, every round)", "rounds met"], rows, ["---", "---:"])


def serving_hostile(result: dict[str, Any]) -> str:
    """bench/serving_hostile.py: the readiness probe idle and under each load, and the slow clients."""

    def probe(figures: dict[str, Any]) -> list[str]:
        statuses = ", ".join(f"{count} x {status}" for status, count in sorted(figures["statuses"].items()))
        return [
            f"{figures['p50_ms']:.1f} / {figures['p99_ms']:.1f} / {figures['max_ms']:.1f}",
            f"{figures['over_50_ms']} of {figures['probes']}",
            statuses,
        ]

    large, small, slow = result["large_texts"], result["small_reviews"], result["slow_clients"]
    rows = [
        ["idle", *probe(result["readiness_idle"]), "—"],
        [
            f"{large['clients']} clients posting one ~1 MB review each",
            *probe(large["readiness_under_load"]),
            ", ".join(f"{count} x {status}" for status, count in large["inference"]["statuses"].items()),
        ],
        [
            f"{small['clients']} clients posting short reviews",
            *probe(small["readiness_under_load"]),
            ", ".join(f"{count} x {status}" for status, count in small["inference"]["statuses"].items()),
        ],
        [
            f"{slow['stalled_mid_body']} connections stalled mid-body + {slow['stalled_mid_headers']} mid-headers",
            *probe(slow["readiness"]),
            ", ".join(f"{count} x {status}" for status, count in slow["inference_statuses"].items())
            + f"; stalled: {', '.join(f'{n} x {s}' for s, n in slow['stalled_connections_ended'].items())}, "
            f"{slow['stalled_connections_still_open']} still open",
        ],
    ]
    return "\n".join(
        [
            _table(
                [
                    "10 s of",
                    "readiness probe p50 / p99 / max ms",
                    "probes over 50 ms",
                    "probe answers",
                    "inference answers",
                ],
                rows,
            ),
            "",
            (f"Server code: {result['code_label']}. " if result.get("code_label") else "")
            + f"Load average {result['load_average_1m_after']:.1f} at the end. "
            + _measured(result),
        ]
    )


CONCURRENT_CLIENTS = 16


def rollout(result: dict[str, Any]) -> str:
    """bench/rollout.py: the shadow's cost at concurrency 1 (medians of alternating runs, and each round),
    a shadow and a canary step under 16 clients, and the canary's share."""
    cost, shadow, canary, share = (
        result["shadow_cost_at_concurrency_1"],
        result["shadow_under_load"],
        result["canary_step_under_load"],
        result["canary_share"],
    )
    medians = cost["median_p99_ms"]
    runs = {
        variant: [row for row in cost["results"] if row["variant"] == variant]
        for variant in ("no rollout", "shadow of v2")
    }
    rows = [
        [
            variant,
            len(found),
            f"{statistics.median(row['p50_ms'] for row in found):.2f}",
            f"{medians[variant]:.2f}",
            f"{statistics.median(row['requests_per_s'] for row in found):,.0f}",
        ]
        for variant, found in runs.items()
    ]
    increases = " / ".join(f"{value:+.0%}" for value in cost["p99_increase_per_round"])
    load = [
        [
            f"shadow, {CONCURRENT_CLIENTS} clients, {result['duration_s']:g} s",
            f"{shadow['requests']:,}",
            shadow["non_2xx"],
            shadow["acknowledged_missing_from_capture"],
            f"{shadow['shadow_rows']:,} shadow rows for {shadow['answered_rows']:,} answered",
        ],
        [
            f"canary 25% → 75% halfway, {CONCURRENT_CLIENTS} clients, {result['duration_s']:g} s",
            f"{canary['requests']:,}",
            canary["non_2xx"],
            canary["acknowledged_missing_from_capture"],
            f"candidate share {canary['candidate_share_first_half_at_25']:.1%} then "
            f"{canary['candidate_share_second_half_at_75']:.1%}; "
            f"{canary['capture_names_another_version']} answers captured under another version",
        ],
    ]
    return "\n".join(
        [
            _table(
                ["concurrency 1", "runs", "median p50 ms", "median p99 ms", "median req/s"],
                rows,
                ["---", "---:", "---:", "---:", "---:"],
            ),
            "",
            f"The shadow adds {cost['p99_increase_of_medians']:+.1%} to the median p99 (target: at most +10%); "
            f"round by round ({result['cost_seconds']:g} s runs, {result['load_tool_concurrency_1']}): {increases}.",
            "",
            _table(["under load", "requests", "non-2xx", "acknowledged, not captured", "rows"], load),
            "",
            f"Canary share over {share['requests']:,} requests at {share['percent']}%: "
            f"{share['candidate_share']:.1%} (target: within 3 points). " + _measured(result),
        ]
    )


FIGURES: dict[str, tuple[str, Renderer]] = {
    "model-quality": ("model_quality.json", model_quality),
    "serving-throughput": ("serving.json", serving_throughput),
    "serving-targets": ("serving.json", serving_targets),
    "serving-hostile": ("serving_hostile.json", serving_hostile),
    "serving-hostile-whole-cleaning": ("serving_hostile_whole_cleaning.json", serving_hostile),
    "serving-hostile-before": ("serving_hostile_before.json", serving_hostile),
    "batch-throughput": ("batch.json", batch_throughput),
    "batch-single-review": ("batch.json", batch_single_review),
    "batch-targets": ("batch.json", batch_targets),
    "search-options": ("search_options.json", search_options),
    "validation-memory": ("validation.json", validation_memory),
    "e2e": ("e2e.json", e2e),
    "rollout": ("rollout.json", rollout),
    "e2e-before": ("e2e_before.json", e2e),
    "model-offsets": ("model_quality.json", model_offsets),
    "executors": ("executors.json", executors),
    "scale": ("scale.json", scale),
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
