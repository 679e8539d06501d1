"""Triton's own HTTP client (`tritonclient[http]`) against a live endpoint, with the client's defaults.

What a KServe v2 user reaches for first: health, readiness, server and model metadata, inference with
binary tensor data (the client's default: inputs sent binary, every output asked for binary) and with
JSON tensors, and an explanation through the request parameter `explain`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest

from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.registry import ModelRegistry
from mlplatform_tests.integration.processes import endpoint_process
from mlplatform_tests.serving.conftest import deploy, tiny_model_bytes

httpclient = pytest.importorskip("tritonclient.http")
pytestmark = pytest.mark.integration

TEXTS = ["I love this dress, great fit", "awful quality, ripped after one wash"]


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str, str]]:
    root = tmp_path_factory.mktemp("triton")
    home = PlatformHome(root / "home").ensure()
    version = deploy(ModelRegistry(home.registry), tiny_model_bytes(0))
    with endpoint_process(home.root, root / "server.log", ready_path="/v2/health/ready") as (_, base_url):
        yield home.root, base_url.removeprefix("http://"), version


@pytest.fixture(scope="module")
def client(endpoint: tuple[Path, str, str]) -> Iterator[httpclient.InferenceServerClient]:
    triton = httpclient.InferenceServerClient(url=endpoint[1])
    yield triton
    triton.close()


def text_input(texts: list[str], binary: bool = True) -> httpclient.InferInput:
    tensor = httpclient.InferInput("text", [len(texts)], "BYTES")
    tensor.set_data_from_numpy(
        np.array([text.encode() for text in texts], dtype=np.object_), binary_data=binary
    )
    return tensor


def test_health_readiness_and_metadata(
    client: httpclient.InferenceServerClient, endpoint: tuple[Path, str, str]
) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("sentiment")
    server = client.get_server_metadata()
    assert server["name"] == "mlplatform" and "binary_tensor_data" in server["extensions"]
    model = client.get_model_metadata("sentiment")
    assert model["versions"] == [endpoint[2]]
    outputs = {output["name"]: output for output in model["outputs"]}
    assert outputs["probabilities"]["labels"] == ["negative", "neutral", "positive"]
    assert outputs["probabilities"]["shape"] == [-1, 3] and "explanation" in outputs


def test_infer_with_the_clients_defaults_binary_both_ways(client: httpclient.InferenceServerClient) -> None:
    result = client.infer("sentiment", [text_input(TEXTS)], request_id="triton-binary")
    assert result.get_response()["id"] == "triton-binary"
    labels = [label.decode() for label in result.as_numpy("label")]
    probabilities = result.as_numpy("probabilities")
    assert labels == ["positive", "negative"]
    assert probabilities.dtype == np.float32 and probabilities.shape == (2, 3)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert all(output["parameters"]["binary_data_size"] > 0 for output in result.get_response()["outputs"])


def test_infer_with_json_tensors_matches_binary(client: httpclient.InferenceServerClient) -> None:
    binary = client.infer("sentiment", [text_input(TEXTS)])
    outputs = [
        httpclient.InferRequestedOutput(name, binary_data=False) for name in ("label", "probabilities")
    ]
    as_json = client.infer("sentiment", [text_input(TEXTS, binary=False)], outputs=outputs)
    assert all("data" in output for output in as_json.get_response()["outputs"])
    assert list(as_json.as_numpy("label")) == [label.decode() for label in binary.as_numpy("label")]
    assert np.array_equal(
        as_json.as_numpy("probabilities").astype(np.float32), binary.as_numpy("probabilities")
    )


def test_explain_through_the_request_parameter(
    client: httpclient.InferenceServerClient, endpoint: tuple[Path, str, str]
) -> None:
    result = client.infer(
        "sentiment", [text_input(TEXTS)], parameters={"explain": True}, request_id="triton-explain"
    )
    documents = [orjson.loads(document) for document in result.as_numpy("explanation")]
    assert len(documents) == 2
    assert documents[1][0]["ngram"] in {"awful", "quality", "ripped", "wash", "after", "one"}
    weights = [item["weight"] for item in documents[0]]
    assert weights == sorted(weights, reverse=True)
    captured = read_capture(endpoint[0] / "capture")
    explained = captured.filter(captured["explanation"].is_not_null())
    assert explained.height == 2
    assert [row[0]["ngram"] for row in explained.sort("row")["explanation"].to_list()] == [
        document[0]["ngram"] for document in documents
    ]


def test_bad_input_is_a_client_error_the_client_reports(client: httpclient.InferenceServerClient) -> None:
    unknown = httpclient.InferInput("rating", [1], "BYTES")
    unknown.set_data_from_numpy(np.array([b"5"], dtype=np.object_))
    with pytest.raises(httpclient.InferenceServerException) as refused:
        client.infer("sentiment", [unknown])
    assert refused.value.status() == "400" and "inputs[0].name" in refused.value.message()
