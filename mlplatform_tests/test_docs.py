"""The manual's measured figures are the benchmarks' results: every `<!-- figure:NAME -->` block in
README.md and docs/*.md is what bench/figures.py renders from bench/results now (its `--check`), so a
re-run benchmark whose figures were not regenerated, or a figure edited by hand, fails here."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("bench_figures", ROOT / "bench" / "figures.py")
figures = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(figures)


@pytest.mark.parametrize("document", figures.documents(ROOT), ids=lambda path: path.name)
def test_every_figure_block_is_what_its_results_render(document: Path) -> None:
    _, stale = figures.regenerate(document.read_text(encoding="utf-8"))
    assert stale == [], f"{document.name}: stale figures {stale} (run bench/figures.py)"


def test_the_data_page_shows_the_model_quality_of_both_real_data_sets() -> None:
    page = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    block = figures.BLOCK.search(page)
    assert block is not None and block["name"] == "model-quality"
    assert "Women's clothing, 3 classes" in block["body"] and "UCI sentences, 2 classes" in block["body"]
