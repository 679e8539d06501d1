"""The project declares what its code imports, and nothing it does not: pandas is gone; PostgreSQL's
packages are the `postgres` extra (in `dev`), and without them the code that needs them says so in
one line; the license is an SPDX expression."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

from mlplatform.cli import main
from mlplatform.core.platform.home import PG_URL_ENV

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Declared, never imported: commands a user runs, and plugins Dagster or fsspec load by name.
NOT_IMPORTED = {
    "dagster-webserver": "the UI of `dagster dev` / `mlplatform ui`",
    "dagster-dg-cli": "the `dg` command",
    "dagster-postgres": "named in dagster.yaml (postgres extra)",
    "s3fs": "fsspec's s3:// backend (s3 extra)",
}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _imported_distributions() -> set[str]:
    modules = set()
    for path in (ROOT / "mlplatform").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"mlplatform", "__future__"}
    distributions = packages_distributions()
    return {_name(distributions[module][0]) for module in third_party}


def test_every_third_party_import_is_declared_and_every_declaration_imported():
    base = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    extras = PYPROJECT["project"]["optional-dependencies"]
    optional = {_name(r) for name, reqs in extras.items() if name != "dev" for r in reqs}
    optional -= {"mlplatform"}
    imported = _imported_distributions()
    assert imported - (base | optional) == set()  # nothing used without being declared
    assert (base | optional) - imported == set(NOT_IMPORTED) & (base | optional)
    assert "pandas" not in base | optional


def test_postgresql_is_an_extra_in_dev_and_the_license_an_spdx_expression():
    project = PYPROJECT["project"]
    extras = project["optional-dependencies"]
    assert {_name(r) for r in extras["postgres"]} == {"dagster-postgres", "psycopg2-binary"}
    assert not {"dagster-postgres", "psycopg2-binary"} & {_name(r) for r in project["dependencies"]}
    assert "mlplatform[postgres]" in extras["dev"]
    assert project["license"] == "Apache-2.0"


def test_without_the_postgres_extra_a_database_url_is_one_line(capsys, home, monkeypatch):
    for module in ("psycopg2", "dagster_postgres"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    monkeypatch.setenv(PG_URL_ENV, "postgresql://mlplatform@127.0.0.1:5432/mlplatform")
    code = main(["--home", str(home.root), "run"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "PostgreSQL support is not installed (no psycopg2, dagster_postgres)" in err
    assert "pip install 'mlplatform[postgres]'" in err


NO_PANDAS = textwrap.dedent(
    """
    import sys

    class NoPandas:  # as if pandas were not installed: `import pandas` fails like a missing module
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "pandas":
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)

    sys.meta_path.insert(0, NoPandas())

    from pathlib import Path

    import polars as pl

    from mlplatform.core.platform.home import PlatformHome
    from mlplatform.core.data.lake import Lake
    from mlplatform.core.data.synthetic import write_demo_drops
    from mlplatform.runner import run_pending

    root = Path(sys.argv[1])
    home = PlatformHome(root / "home").ensure()
    Lake(home).land(write_demo_drops(root / "drops", n_drops=2, rows_per_drop=1500, seed=5))
    pl.DataFrame({"id": ["a", "b"], "text": ["lovely dress", "fell apart"]}).write_csv(home.batch / "b.csv")
    home.settings_file.write_text("[lake]\\nsettle_seconds = 0.0\\n")
    report = run_pending(home, say=lambda _: None)
    assert report.exit_code == 0, report.blocked
    assert "batch_predictions[b.csv]" in report.materialized, report.materialized
    assert "pandas" not in sys.modules
    print("ok without pandas")
    """
)


@pytest.mark.filterwarnings("ignore")
def test_the_whole_pipeline_runs_without_pandas(tmp_path):
    """Validation (pandera's polars backend), training and ONNX export, deployment with its smoke test
    through the endpoint app, batch scoring: none of it needs pandas."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLPLATFORM_HOME", "DAGSTER_HOME")}
    done = subprocess.run(
        [sys.executable, "-c", NO_PANDAS, str(tmp_path)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0 and "ok without pandas" in done.stdout, done.stderr[-3000:]
