"""Shared fixtures: a fresh platform home per test and the real data set from ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.platform.signals import sigterm_kept
from mlplatform_tests.postgres import postgres_server, postgres_url  # noqa: F401  (fixtures)

REAL_DATA = (
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "womens_clothing_ecommerce_reviews.csv"
)


@pytest.fixture(autouse=True)
def sigterm_left_to_stop_processes():
    """Tests run Dagster in this process directly (execute_in_process, materialize), as the platform's
    own runs do; like those (mlplatform/core/platform/signals.py), no test leaves SIGTERM ignored for the tests
    after it and the processes they start (Dask workers, process pools, servers)."""
    with sigterm_kept():
        yield


@pytest.fixture
def home(tmp_path: Path) -> PlatformHome:
    return PlatformHome(tmp_path / "home").ensure()


@pytest.fixture
def settings() -> Settings:
    return Settings.load()


@pytest.fixture(scope="session")
def real_data_path() -> Path:
    if not REAL_DATA.exists():
        pytest.skip(f"real data set not found at {REAL_DATA} (see ../shared/data/README.md)")
    return REAL_DATA
