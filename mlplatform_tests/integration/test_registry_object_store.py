"""The model registry, and then the whole pipeline, with every storage location on a real S3 server.

moto_server is started by `s3_endpoint` (mlplatform_tests/integration/test_object_store.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mlplatform.core.data.lake import Lake
from mlplatform.core.data.synthetic import write_demo_drops
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.deploy import SMOKE_CASES
from mlplatform.core.release.registry import APPROVED, IntegrityError, ModelRegistry
from mlplatform.core.scoring.model import load_model
from mlplatform.runner import run_pending
from mlplatform_tests.integration.test_object_store import BUCKET, s3_endpoint  # noqa: F401 (a fixture)

s3fs = pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed: pip install -e '.[s3]'")
pytestmark = [pytest.mark.filterwarnings("ignore"), pytest.mark.timeout(180)]

KINDS = ("lake", "artifacts", "registry", "capture")
METRICS = {"macro_f1": 0.7}


def _home_on_s3(tmp_path: Path, extra: str = "") -> PlatformHome:
    home = PlatformHome(tmp_path / "home").ensure()
    storage = "".join(f'{kind} = "s3://{BUCKET}/{kind}"\n' for kind in KINDS)
    home.settings_file.write_text(f"{extra}[storage]\n{storage}", encoding="utf-8")
    return home


def _local_files(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()]


@pytest.mark.usefixtures("s3_endpoint")
def test_registry_lifecycle_on_s3(tmp_path: Path) -> None:
    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    home = _home_on_s3(tmp_path)
    registry = ModelRegistry.for_home(home, Settings.load(home.settings_file).storage)

    for tag in ("a", "b"):
        version = registry.register(f"model-{tag}".encode() * 100, {"name": tag}, METRICS, card_markdown=tag)
        assert registry.approve(version.version, by="tester").status == APPROVED
        registry.promote(version.version, by="tester")

    assert sorted(fs.ls(f"{BUCKET}/registry/versions/v1")) == [
        f"{BUCKET}/registry/versions/v1/{name}"
        for name in ("card.json", "card.md", "meta.json", "model.onnx")
    ]
    assert [version.version for version in registry.list()] == ["v2", "v1"]
    assert registry.aliases() == {"production": "v2", "previous": "v1"}
    production = registry.production()
    assert production.to_dict()["onnx_path"] == f"s3://{BUCKET}/registry/versions/v2/model.onnx"
    assert registry.verify("v2").read_bytes() == b"model-b" * 100
    assert hashlib.sha256(production.onnx_path.read_bytes()).hexdigest() == production.sha256
    assert not (home.registry / "versions").exists()

    fs.pipe_file(f"{BUCKET}/registry/versions/v1/model.onnx", b"tampered")
    with pytest.raises(IntegrityError, match="model v1"):
        registry.rollback(by="oncall", reason="bad")
    assert registry.aliases() == {"production": "v2", "previous": "v1"}


@pytest.mark.usefixtures("s3_endpoint")
def test_the_pipeline_trains_registers_and_deploys_with_everything_on_s3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlplatform.cli import main

    fs = s3fs.S3FileSystem()
    fs.mkdir(BUCKET)
    home = _home_on_s3(tmp_path, extra="[lake]\nsettle_seconds = 0.0\n")
    Lake(home).land(write_demo_drops(tmp_path / "drops", n_drops=2, rows_per_drop=900, seed=21))

    report = run_pending(home, say=lambda _: None)

    assert report.exit_code == 0, report.blocked
    assert {"best_model", "sentiment_endpoint"} <= set(report.materialized)
    registry = ModelRegistry.for_home(home, Settings.load(home.settings_file).storage)
    production = registry.production()
    assert production is not None and production.version == "v1"
    assert fs.exists(f"{BUCKET}/registry/versions/v1/meta.json")
    stored = fs.cat_file(f"{BUCKET}/registry/versions/v1/model.onnx")
    assert hashlib.sha256(stored).hexdigest() == production.sha256
    assert not (home.registry / "versions").exists()
    assert _local_files(home.artifacts) == []

    # the production model loads from the local cache and scores
    model = load_model(production.onnx_path, production.sha256, Settings.load().scoring)
    assert production.onnx_path.parent == registry.cache_dir
    prediction = model.predict([case.text for case in SMOKE_CASES])
    labels, probabilities = prediction.labels, prediction.probabilities
    assert list(labels) == [case.expected for case in SMOKE_CASES]
    assert probabilities.shape == (len(SMOKE_CASES), 3)

    # the deployment record and the best model are artifacts in the bucket
    store = ArtifactStore.from_settings(home, Settings.load(home.settings_file).storage)
    assert store.load(store.latest("sentiment_endpoint"))["production"] == "v1"
    assert store.latest("best_model").path.startswith(f"s3://{BUCKET}/artifacts/best_model/")

    assert main(["--home", str(home.root), "lineage", "best_model", "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert chain["upstream"]["registered_as"]["version"] == "v1"
    assert len(chain["upstream"]["training"]["drops"]) == 2

    assert main(["--home", str(home.root), "artifacts", "list", "best_model", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [entry["version"] for entry in listed] == [store.latest("best_model").version]

    dest = tmp_path / "checkout"
    argv = ["lake", "checkout", "reviews", "--as", "ana", "--purpose", "error analysis", "--to", str(dest)]
    assert main(["--home", str(home.root), *argv]) == 0
    (copied,) = list(dest.iterdir())
    assert hashlib.sha256(copied.read_bytes()).hexdigest() == store.latest("reviews").version
