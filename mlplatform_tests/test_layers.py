"""The layering, read from the source: every import statement of every module in mlplatform/.

Imports point one way: cli → runner → defs / serving → core. Core is pure (never dagster, never an outer
layer); serving never reaches into the Dagster wiring; inside core a stage imports only its own stage or an
earlier one (platform < data < scoring < training < release < monitoring); and no mlplatform module
imports itself back through others, not even under `if TYPE_CHECKING` or inside a function.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mlplatform"

STAGES: tuple[str, ...] = ("platform", "data", "scoring", "training", "release", "monitoring")
"""The core stages, in dependency order: a stage may import its own stage and the ones before it. Scoring
(running a registered ONNX file in ONNX Runtime) comes before training, whose parity gate and evaluation
run the exported bytes exactly as production will."""

KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()
"""Import cycles tolerated for now: none."""


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, importer: str, is_package: bool, known: set[str]) -> list[Import]:
    """Every import in the module, wherever it stands, resolved to the modules it names: `from a import b`
    names `a.b` when that is a module, else `a`."""
    found: list[Import] = []
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend(Import(importer, alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.append(Import(importer, child if child in known else base, node.lineno))
    return found


def read_package(root: Path) -> dict[str, list[Import]]:
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    known = set(files)
    return {
        name: imports_of(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known)
        for name, path in files.items()
    }


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[:2] == ["mlplatform", "core"] else None


def layer_violations(graph: dict[str, list[Import]]) -> list[str]:
    problems: list[str] = []
    for module, imports in graph.items():
        for imp in imports:
            target, where = imp.imported, f"{module}:{imp.line} imports {imp.imported}"
            top = target.split(".")[0]
            if module.startswith("mlplatform.core"):
                if top == "dagster" or top.startswith("dagster_"):
                    problems.append(f"{where}: core never imports dagster")
                elif top == "mlplatform" and not target.startswith("mlplatform.core"):
                    problems.append(f"{where}: core imports only core")
                elif (
                    (mine := stage_of(module))
                    and (theirs := stage_of(target))
                    and STAGES.index(theirs) > STAGES.index(mine)
                ):
                    problems.append(f"{where}: stage {mine} comes before {theirs}")
            elif module.startswith("mlplatform.serving") and top == "mlplatform":
                if not target.startswith(("mlplatform.core", "mlplatform.serving")):
                    problems.append(f"{where}: serving imports only core and serving")
            elif module.startswith("mlplatform.defs") and target.startswith(
                ("mlplatform.serving", "mlplatform.runner", "mlplatform.cli")
            ):
                problems.append(f"{where}: defs never imports serving, runner or cli")
    return problems


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself)."""
    edges = {
        module: sorted({imp.imported for imp in imports if imp.imported in graph})
        for module, imports in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[Import]]:
    return read_package(PACKAGE)


def test_core_is_made_of_the_stage_packages(graph: dict[str, list[Import]]) -> None:
    core = [m for m in graph if m.startswith("mlplatform.core.")]
    assert core, "no core modules found"
    assert sorted({stage_of(m) for m in core}) == sorted(STAGES)
    loose = [m for m in core if (PACKAGE / "core" / f"{m.split('.')[2]}.py").exists()]
    assert loose == [], "every core module belongs to a stage package"


def test_imports_follow_the_layers(graph: dict[str, list[Import]]) -> None:
    assert layer_violations(graph) == []


def test_no_import_cycles(graph: dict[str, list[Import]]) -> None:
    assert [c for c in cycles(graph) if frozenset(c) not in KNOWN_CYCLES] == []


SETTINGS_EDGES = frozenset(
    {
        "mlplatform.cli",
        "mlplatform.runner",
        "mlplatform.definitions",
        "mlplatform.instance",
        "mlplatform.defs.resources",
        "mlplatform.defs.io_manager",
        "mlplatform.serving.server",
    }
)
"""The only modules that load settings (`Settings.load`, `Settings.packaged`): the command line, the
runner, the server, and what Dagster opens by itself (the definitions, the instance, the resources and
the IO manager). Every other module, core above all, receives them as typed sections."""


def settings_loads(source: str) -> list[int]:
    """The lines of `source` that load settings: calls of `Settings.load` or `Settings.packaged`."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("load", "packaged")
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "Settings"
    ]


def test_settings_are_loaded_only_at_the_edges() -> None:
    loading = {
        module_name(path, PACKAGE)
        for path in PACKAGE.rglob("*.py")
        if settings_loads(path.read_text(encoding="utf-8"))
    }
    assert loading - SETTINGS_EDGES == set()
    assert {"mlplatform.cli", "mlplatform.serving.server", "mlplatform.definitions"} <= loading


# -- the checker itself catches what it is meant to catch ------------------------------------------


def test_the_settings_checker_sees_loads_in_functions() -> None:
    source = "def f(home):\n    x = Settings.load(home.settings_file).gates\n    return settings.load()\n"
    assert settings_loads(source) == [2]


FAKE = {
    "mlplatform.core.data.lake": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from mlplatform.core.release.registry import ModelRegistry\n"
        "def f():\n"
        "    import dagster\n"
        "    from mlplatform.serving import app\n"
    ),
    "mlplatform.core.release.registry": "from mlplatform.core.data import lake\n",
    "mlplatform.serving.app": "from mlplatform.defs.training import x\n",
    "mlplatform.serving": "",
    "mlplatform.core.data": "",
    "mlplatform.defs.training": "from ..serving.app import y\n",
}


def fake_graph() -> dict[str, list[Import]]:
    known = set(FAKE)
    return {
        name: imports_of(source, name, name in {"mlplatform.serving", "mlplatform.core.data"}, known)
        for name, source in FAKE.items()
    }


def test_the_checker_sees_function_level_type_checking_and_relative_imports() -> None:
    problems = layer_violations(fake_graph())
    assert len(problems) == 5
    assert any("stage data comes before release" in p for p in problems)  # under TYPE_CHECKING
    assert any("never imports dagster" in p for p in problems)  # inside a function
    assert any("core imports only core" in p for p in problems)
    assert any("serving imports only core and serving" in p for p in problems)
    assert any("defs never imports serving" in p and "mlplatform.serving.app" in p for p in problems)


def test_the_checker_finds_a_cycle_through_a_package_import() -> None:
    found = cycles(fake_graph())
    assert ["mlplatform.core.data.lake", "mlplatform.core.release.registry"] in found
    assert ["mlplatform.defs.training", "mlplatform.serving.app"] in found
