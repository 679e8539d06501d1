"""A home traced end to end for the lineage tests: real drops, the real pipeline, the real endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi.testclient import TestClient

from mlplatform.core.data.lake import Lake, LandResult
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.runner import run_pending
from mlplatform.serving.app import create_app
from mlplatform_tests.core.training.training_data import TRAINING_SEARCH

REQUEST_ID = "lineage-test-request-1"
REUSED_REQUEST_ID = "lineage-reused-id"
REVIEWS = [
    {"text": "Lovely dress, fits perfectly", "product_id": "1077", "review_id": "r-1"},
    {"text": "Fabric ripped after one wash, awful", "product_id": "862", "review_id": "r-2"},
]


@dataclass(frozen=True)
class TracedHome:
    home: PlatformHome
    landed: list[LandResult]
    model_version: str
    answer: dict
    reused_capture_ids: tuple[str, ...]  # of the requests sent with REUSED_REQUEST_ID, in order


def build_traced_home(root: Path) -> TracedHome:
    """Land two demo drops, run the pipeline, promote its model, and ask the endpoint.

    One request under REQUEST_ID, and two separate requests both sent with REUSED_REQUEST_ID.
    """
    home = PlatformHome(root / "home").ensure()
    home.training_file.write_text(TRAINING_SEARCH, encoding="utf-8")
    files = write_demo_drops(root / "drops", n_drops=2, rows_per_drop=900, seed=11)
    landed = Lake(home).land(files)
    report = run_pending(home, say=lambda _: None)
    if report.exit_code != 0:
        raise RuntimeError(f"the pipeline blocked: {report.blocked}")
    registry = ModelRegistry(home.registry)
    model_version = registry.list()[0].version
    registry.promote(model_version, by="test")
    with TestClient(create_app(home, Settings.load())) as client:
        response = client.post("/predict", json={"reviews": REVIEWS}, headers={"X-Request-ID": REQUEST_ID})
        response.raise_for_status()
        reused = [
            client.post("/predict", json={"reviews": [review]}, headers={"X-Request-ID": REUSED_REQUEST_ID})
            for review in REVIEWS
        ]
    for answer in reused:
        answer.raise_for_status()
    capture_ids = tuple(answer.headers["x-capture-id"] for answer in reused)
    return TracedHome(home, landed, model_version, response.json(), capture_ids)
