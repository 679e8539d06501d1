"""The manual's measured figures are the benchmarks' results: each figure in docs/ marked with an HTML
comment `<!-- bench/results/FILE.json: KEY -->` shows the value at KEY (dotted, `[i]` for list items;
`A minus B` for a difference; `N KB` for bytes), as rounded on the page. Re-running a benchmark without
updating the page fails here, naming the figure."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").glob("*.md"))
MARKED = re.compile(
    r"(?P<figure>[+-]?[\d,]*\.?\d+)?(?P<kb> KB)?[`\s]*<!-- (?P<file>bench/results/[\w.]+\.json): (?P<key>[^>]+?) -->"
)


def lookup(data: Any, key: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", key):
        data = data[int(part[1:-1])] if part.startswith("[") else data[part]
    return data


def figures() -> list[tuple[str, str, str | None, bool, str]]:
    found = []
    for page in PAGES:
        for match in MARKED.finditer(page.read_text(encoding="utf-8")):
            found.append((page.name, match["file"], match["figure"], bool(match["kb"]), match["key"].strip()))
    return found


def test_the_data_page_marks_its_figures() -> None:
    assert sum(page == "data.md" for page, *_ in figures()) >= 20


@pytest.mark.parametrize(("page", "file", "figure", "kb", "key"), figures(), ids=lambda value: str(value))
def test_a_marked_figure_is_its_benchmark_result(
    page: str, file: str, figure: str | None, kb: bool, key: str
) -> None:
    data = json.loads((ROOT / file).read_text(encoding="utf-8"))
    terms = [lookup(data, term.strip()) for term in key.split(" minus ")]
    value = terms[0] - terms[1] if len(terms) == 2 else terms[0]
    if figure is None or not isinstance(value, int | float):
        return  # a value that is not a number (a candidate's name): the key must resolve, as it did
    shown = float(figure.replace(",", ""))
    if kb:
        value = value / 1000
    decimals = len(figure.split(".")[1]) if "." in figure else 0
    assert round(value, decimals) == pytest.approx(shown), f"{page}: {figure} is not {file} {key} = {value}"
