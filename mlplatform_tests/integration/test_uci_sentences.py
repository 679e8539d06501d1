"""The second real data set runs the whole life with nothing but a contract file (issue 12's proof).

A fresh home whose only configuration is `dataset.toml` = docs/examples/uci_sentences.toml (the UCI
"Sentiment Labelled Sentences": TSV, no header, a sentence and a 0/1 label, two classes, no rating,
facets or product). Everything else is the packaged defaults, driven through the `mlplatform` command
and a real endpoint process, as a user would:

check the two files against the contract -> land them (copies; the IMDb file holds U+0085 inside
sentences, only "\\n" ends a line) -> `mlplatform run`: validate, features, splits, candidates, gates,
register, deploy (no endpoint configured: the smoke test runs in-process before promoting) -> the
endpoint process serves the production model by itself -> predict (`/predict` and the Open Inference
Protocol) on the test split's sentences -> labels land in the contract's label form ("0"/"1", keyed by
the review ids the client sent) -> a file in lake/batch and `mlplatform score` -> `mlplatform run` again:
batch predictions and the monitors (prediction log, drift, live quality equal to what the model scores
offline on the same rows; the product report skipped: no product column) -> the lineage of one
prediction back to the two drops.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pytest

from mlplatform.core.data.contract import load_contract
from mlplatform.core.platform.artifacts import ArtifactStore
from mlplatform.core.platform.fsio import sha256_file
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.core.scoring.model import ScoringModel
from mlplatform.core.training.evaluation import classification_metrics
from mlplatform.instance import open_instance
from mlplatform_tests.core.data.contract_fixtures import EXAMPLES
from mlplatform_tests.integration.processes import endpoint_process

pytestmark = [pytest.mark.integration, pytest.mark.realdata]
UCI = Path(__file__).resolve().parents[3] / "shared" / "data" / "uci_sentiment_sentences"
FILES = ("yelp_labelled.txt", "imdb_labelled.txt")
MLPLATFORM = Path(sys.executable).parent / "mlplatform"
BATCH = 100  # reviews per /predict request (the endpoint takes up to [serving] max_batch)


@pytest.fixture
def sentences() -> Path:
    if not all((UCI / name).is_file() for name in FILES):
        pytest.skip(f"the UCI sentences are not at {UCI} (see ../shared/data/README.md)")
    return UCI


def _mlplatform(home: Path, *argv: str, expect: int = 0) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MLPLATFORM_HOME", "DAGSTER_HOME")}
    done = subprocess.run(
        [str(MLPLATFORM), "--home", str(home), *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=home.parent,
        timeout=600,
    )
    assert done.returncode == expect, (
        f"mlplatform {' '.join(argv)}: {done.returncode}\n{done.stdout}{done.stderr}"
    )
    return done.stdout


def _post(url: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "X-Request-ID": request_id},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_the_uci_sentences_run_the_whole_life_with_only_a_contract_file(
    sentences: Path, tmp_path: Path
) -> None:
    root = tmp_path / "home"
    root.mkdir()
    shutil.copy(EXAMPLES / "uci_sentences.toml", root / "dataset.toml")
    drops = tmp_path / "drops"
    drops.mkdir()
    for name in FILES:
        shutil.copy(sentences / name, drops / name)
    assert b"\xc2\x85" in (drops / "imdb_labelled.txt").read_bytes()  # U+0085 inside a sentence

    # check -> land (docs/data.md): both files pass the contract before anything is landed
    for name in FILES:
        assert _mlplatform(root, "dataset", "check", str(drops / name)).startswith(
            f"ok: {name} matches the contract"
        )
    assert sorted(path.name for path in root.iterdir()) == ["dataset.toml"]
    _mlplatform(root, "lake", "land", *(str(drops / name) for name in FILES))

    # validate -> features -> splits -> candidates -> gates -> register -> deploy, on the defaults
    _mlplatform(root, "run")
    home = PlatformHome(root)
    status = json.loads(_mlplatform(root, "status", "--json"))
    assert {drop["name"]: drop["state"] for drop in status["drops"]} == dict.fromkeys(FILES, "accepted")
    drop_hashes = {drop["name"]: drop["hash"] for drop in status["drops"]}
    gates = status["assets"]["best_model"]["checks"]
    for check, result in gates.items():
        assert result["passed"], f"best_model {check}: {result['description']}"
    assert "the recall of each of 2 classes at or above its floor" in gates["quality_bar"]["description"]
    assert gates["fairness_gap"]["description"] == "no facet to compare: the dataset contract declares none"
    store = ArtifactStore(home.artifacts)
    reviews = store.load(store.latest("reviews"))
    assert reviews.height == 2000 - 7  # a sentence that occurs twice with its label is one review
    assert reviews.filter(pl.col("sentence").str.contains("\u0085")).height == 2  # kept inside its line
    production = ModelRegistry(home.registry).production()
    assert production is not None and production.version == "v1"
    card = production.card
    assert card["model"]["classes"] == ["negative", "positive"]
    assert {case["expected"] for case in card["smoke_cases"]} == {"negative", "positive"}
    assert card["facets"] == {}

    with endpoint_process(root, tmp_path / "endpoint.log", ready_path="/v2/health/ready", timeout_s=60) as (
        _,
        url,
    ):
        metadata = _get(f"{url}/v2/models/sentiment")
        assert metadata["versions"] == ["v1"]
        assert metadata["outputs"][1]["labels"] == ["negative", "positive"]

        # the test split's sentences, as a client sends them: its own review ids, the raw sentence
        test = store.load(store.latest("review_splits")).filter(pl.col("split") == "test").sort("review_id")
        model = ScoringModel.from_bytes(production.onnx_path.read_bytes(), Settings.packaged().scoring)
        offline = model.predict(test["sentence"].to_list())
        assert test.height == 317 and not offline.no_tokens.any()  # (one the model cannot read is a 400)
        expected = classification_metrics(test["label"].to_list(), list(offline.labels), model.classes)
        answers = []
        for start in range(0, test.height, BATCH):
            chunk = test.slice(start, BATCH)
            reviews_sent = [
                {"text": text, "review_id": review_id}
                for text, review_id in zip(chunk["sentence"], chunk["review_id"], strict=True)
            ]
            answer = _post(f"{url}/predict", {"reviews": reviews_sent}, f"uci-{start}")
            assert answer["model_version"] == "v1"
            answers += [prediction["label"] for prediction in answer["predictions"]]
        assert answers == list(offline.labels)  # the endpoint answers as the registered ONNX file offline

        infer = _post(
            f"{url}/v2/models/sentiment/infer",
            {
                "inputs": [
                    {
                        "name": "text",
                        "datatype": "BYTES",
                        "shape": [2],
                        "data": ["Loved every minute of it.", "Worst service ever, never again."],
                    }
                ]
            },
            "uci-oip",
        )
        label, probabilities = infer["outputs"]
        assert label["data"] == ["positive", "negative"] and probabilities["shape"] == [2, 2]

    # ground truth arrives in the contract's label form: the label column's "0"/"1", by review id
    to_source = {label: value for value, label in load_contract(home.dataset_file).labels.mapping.items()}
    home.labels.mkdir(parents=True, exist_ok=True)
    test.select("review_id", pl.col("label").replace_strict(to_source)).write_csv(
        home.labels / "feedback.csv"
    )

    # batch scoring: a file in the contract's layout (headerless TSV) in lake/batch, and `mlplatform score`
    batch_input = tmp_path / "new_sentences.txt"
    batch_input.write_bytes((drops / "yelp_labelled.txt").read_bytes())
    home.batch.mkdir(parents=True, exist_ok=True)
    shutil.copy(batch_input, home.batch / "new_sentences.txt")
    scored = tmp_path / "scored.csv"
    assert "1000 rows scored by v1" in _mlplatform(root, "score", str(batch_input), str(scored))
    scores = pl.read_csv(scored)
    assert scores.columns[:4] == ["row_id", "label", "p_negative", "p_positive"] and scores.height == 1000

    _mlplatform(root, "run")  # the batch file and the monitors
    status = json.loads(_mlplatform(root, "status", "--json"))
    batch = store.load(store.latest("batch_predictions", sha256_file(batch_input)))
    assert batch.height == 1000 and batch["label"].to_list() == scores["label"].to_list()
    assert status["assets"]["batch_predictions"]["checks"]["row_count"]["passed"]

    log = store.load(store.latest("prediction_log"))
    assert log.height == test.height + 2 and set(log["model_version"]) == {"v1"}
    drift = status["assets"]["drift_report"]["checks"]
    assert len(drift) == 6 and all(result["passed"] for result in drift.values()), drift  # judged: 319 rows
    live = status["assets"]["live_model_quality"]["checks"]["live_quality"]
    assert live["passed"], live["description"]
    (judged,) = store.load(store.latest("live_model_quality"))["by_version"].values()
    assert judged["rows_joined"] == test.height
    assert judged["macro_f1"] == pytest.approx(expected["macro_f1"])  # the same rows the model scored offline
    assert judged["confusion_matrix"] == expected["confusion_matrix"]
    with open_instance(home) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("product_quality_report"))
    skipped = event.asset_materialization.metadata["skipped"].value
    assert skipped.startswith("skipped: the dataset contract declares no product column")

    chain = json.loads(_mlplatform(root, "lineage", "--prediction", "uci-0", "--json"))
    assert chain["model_version"]["version"] == "v1"
    traced = {drop["hash"]: drop["names"] for drop in chain["training"]["drops"]}
    assert traced == {drop_hashes[name]: [name] for name in FILES}
