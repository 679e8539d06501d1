"""The documents are kept true by tests: README.md is a front page (at most 20,000 bytes) whose table
links every page of docs/; every relative link in README.md and docs/*.md reaches a file of the
repository, and every `#anchor` a heading of its target; every `mlplatform` command they name in code is
one the CLI has; and the measured figures are the benchmarks' results: every `<!-- figure:NAME -->`
block is what bench/figures.py renders from bench/results now (its `--check`), so a re-run benchmark
whose figures were not regenerated, or a figure edited by hand, fails here."""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

from mlplatform.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
_SPEC = importlib.util.spec_from_file_location("bench_figures", ROOT / "bench" / "figures.py")
figures = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(figures)

DOCUMENTS = figures.documents(ROOT)
README_MAX_BYTES = 20_000

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
COMMAND = re.compile(
    r"(?:^|[\s`(|$])(?:\S*/)?mlplatform(?:[ \t]+--home[ \t]+\S+)?[ \t]+([a-z][a-z-]*)(?:[ \t]+([a-z][a-z-]*))?"
)


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans: what Markdown reads links and headings from."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _code(text: str) -> list[str]:
    """The fenced code blocks' lines and the code spans: where commands are written."""
    blocks = [line for match in FENCE.finditer(text) for line in match.group(0).splitlines()]
    return blocks + [span.strip("`") for span in CODE_SPAN.findall(FENCE.sub("", text))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: formatting and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = re.sub(r"[`*_~]|<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    found: set[str] = set()
    for match in HEADING.finditer(FENCE.sub("", text)):
        base = slug(match.group(2))
        name, n = base, 0
        while name in found:
            n += 1
            name = f"{base}-{n}"
        found.add(name)
    return found


def broken_links(document: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of `document` that reaches no file in `root` or no heading of its target. Links
    leaving the repository (the shared data and design beside it) are the reader's machine's, not checked."""
    problems = []
    for target in LINK.findall(_prose(document.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (document.parent / path).resolve() if path else document
        if not file.is_relative_to(root.resolve()):
            continue
        if not file.exists():
            problems.append(f"{target}: no file {file.relative_to(root.resolve())}")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading #{anchor} in {file.name}")
    return problems


def commands(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """The CLI's commands, each with its actions (empty for a command without any)."""
    found: dict[str, set[str]] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = set(commands(sub))
    return found


def unknown_commands(text: str, known: dict[str, set[str]]) -> list[str]:
    unknown = []
    for line in _code(text):
        for command, action in COMMAND.findall(line):
            if command not in known:
                unknown.append(f"mlplatform {command}")
            elif known[command] and action and action not in known[command]:
                unknown.append(f"mlplatform {command} {action}")
    return unknown


def test_readme_is_a_front_page() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size:,} bytes: move text into docs/ (limit {README_MAX_BYTES:,})"
    )


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve()
        for target in LINK.findall(_prose((ROOT / "README.md").read_text(encoding="utf-8")))
    }
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert pages, "no docs pages"
    assert [page.name for page in pages if page.resolve() not in linked] == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_reaches_a_file_and_heading(document: Path) -> None:
    assert broken_links(document) == []


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_command_named_exists_in_the_cli(document: Path) -> None:
    assert unknown_commands(document.read_text(encoding="utf-8"), commands(build_parser())) == []


def test_the_checks_catch_a_broken_link_a_missing_heading_and_an_unknown_command(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "# A page\n\n## The endpoint: limits (measured)\n", encoding="utf-8"
    )
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#the-endpoint-limits-measured) [ok](#front) [web](https://x.org/y)\n"
        "[gone](docs/b.md) [no heading](docs/a.md#nowhere) `[in code](docs/c.md)`\n\n# Front\n"
        "```\nmlplatform run\nmlplatform models approve v1\nmlplatform deploy\nmlplatform models promote v2\n```\n",
        encoding="utf-8",
    )
    assert broken_links(page, tmp_path) == [
        "docs/b.md: no file docs/b.md",
        "docs/a.md#nowhere: no heading #nowhere in a.md",
    ]
    known = commands(build_parser())
    assert {"run", "models", "lake", "rollout", "dataset"} <= set(known) and "approve" in known["models"]
    assert unknown_commands(page.read_text(encoding="utf-8"), known) == [
        "mlplatform deploy",
        "mlplatform models promote",
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_figure_block_is_what_its_results_render(document: Path) -> None:
    _, stale = figures.regenerate(document.read_text(encoding="utf-8"))
    assert stale == [], f"{document.name}: stale figures {stale} (run bench/figures.py)"


def test_the_figures_cover_the_readme_and_every_docs_page(tmp_path: Path) -> None:
    for name in ["README.md", "docs/b.md", "docs/a.md", "docs/examples/c.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("# x\n", encoding="utf-8")
    assert [path.relative_to(tmp_path).as_posix() for path in figures.documents(tmp_path)] == [
        "README.md",
        "docs/a.md",
        "docs/b.md",
    ]


def test_the_data_page_shows_the_model_quality_of_both_real_data_sets() -> None:
    page = (ROOT / "docs" / "data.md").read_text(encoding="utf-8")
    block = figures.BLOCK.search(page)
    assert block is not None and block["name"] == "model-quality"
    assert "Women's clothing, 3 classes" in block["body"] and "UCI sentences, 2 classes" in block["body"]
