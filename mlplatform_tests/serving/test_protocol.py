"""The wire: explanations, the served model's classes, server metadata, and binary tensor data.

In-process (TestClient); the same endpoint through Triton's own client is in
mlplatform_tests/integration/test_triton_client.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from mlplatform.core.monitoring.capture import read_capture
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.serving.app import create_app
from mlplatform_tests.core.scoring.models import legacy_model_bytes
from mlplatform_tests.serving.conftest import deploy, with_serving
from mlplatform_tests.serving.test_app import INFER, JSON, infer_body

TOP_K = 3


@pytest.fixture
def explaining_settings(fast_settings: Settings) -> Settings:
    return with_serving(fast_settings, explain_top_k=TOP_K)


@pytest.fixture
def client(
    home: PlatformHome, explaining_settings: Settings, registry: ModelRegistry, tiny_models: dict[int, bytes]
) -> Iterator[TestClient]:
    deploy(registry, tiny_models[0])
    with TestClient(create_app(home, explaining_settings)) as http:
        yield http


def binary_body(texts: list[str], **document: Any) -> tuple[bytes, dict[str, str]]:
    """A request with BYTES `text` as binary tensor data, as tritonclient frames it."""
    data = b"".join(len(text.encode()).to_bytes(4, "little") + text.encode() for text in texts)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "datatype": "BYTES",
                    "shape": [len(texts)],
                    "parameters": {"binary_data_size": len(data)},
                }
            ],
            **document,
        }
    )
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def binary_outputs(response: Any) -> dict[str, Any]:
    """Outputs of a binary answer: name -> (tensor JSON, decoded data)."""
    header_length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:header_length])
    rest = memoryview(response.content)[header_length:]
    decoded = {}
    for tensor in header["outputs"]:
        size = tensor["parameters"]["binary_data_size"]
        chunk, rest = bytes(rest[:size]), rest[size:]
        if tensor["datatype"] == "FP32":
            decoded[tensor["name"]] = np.frombuffer(chunk, "<f4").reshape(tensor["shape"])
        else:
            items, offset = [], 0
            while offset < len(chunk):
                length = int.from_bytes(chunk[offset : offset + 4], "little")
                items.append(chunk[offset + 4 : offset + 4 + length].decode())
                offset += 4 + length
            decoded[tensor["name"]] = items
    assert len(rest) == 0
    return decoded


# --- explanations -------------------------------------------------------------------------------------


def test_predict_explains_each_prediction_with_its_strongest_ngrams(
    client: TestClient, home: PlatformHome
) -> None:
    reviews = [{"text": "I love this dress, great fit and lovely fabric"}, {"text": "awful quality, ripped"}]
    answer = client.post("/predict", json={"reviews": reviews, "explain": True}).json()
    for prediction in answer["predictions"]:
        explanation = prediction["explanation"]
        assert 1 <= len(explanation) <= TOP_K
        assert all(set(item) == {"ngram", "weight"} for item in explanation)
        weights = [item["weight"] for item in explanation]
        assert weights == sorted(weights, reverse=True)
    assert {item["ngram"] for item in answer["predictions"][1]["explanation"]} <= {
        "awful",
        "quality",
        "ripped",
    }
    plain = client.post("/predict", json={"reviews": reviews}).json()
    assert all("explanation" not in prediction for prediction in plain["predictions"])
    captured = read_capture(home.capture).sort("time")
    explained, not_explained = captured["explanation"][:2].to_list(), captured["explanation"][2:].to_list()
    assert explained == [prediction["explanation"] for prediction in answer["predictions"]]
    assert not_explained == [None, None]


def test_infer_explains_with_the_explain_parameter_as_an_extra_output(client: TestClient) -> None:
    body = {**infer_body(["awful quality, ripped", "lovely fabric"]), "parameters": {"explain": True}}
    answer = client.post(INFER, json=body).json()
    outputs = {output["name"]: output for output in answer["outputs"]}
    assert list(outputs) == ["label", "probabilities", "explanation"]
    explanation = outputs["explanation"]
    assert (explanation["datatype"], explanation["shape"]) == ("BYTES", [2])
    documents = [orjson.loads(document) for document in explanation["data"]]
    assert documents[0][0]["ngram"] in {"awful", "quality", "ripped"}
    assert all(len(document) <= TOP_K for document in documents)
    plain = client.post(INFER, json=infer_body(["lovely fabric"])).json()
    assert [output["name"] for output in plain["outputs"]] == ["label", "probabilities"]


@pytest.mark.parametrize("explain", ["yes", 1, [], {}])
def test_explain_must_be_a_boolean(client: TestClient, explain: Any) -> None:
    predict = client.post("/predict", json={"reviews": [{"text": "lovely"}], "explain": explain})
    infer = client.post(INFER, json={**infer_body(["lovely"]), "parameters": {"explain": explain}})
    assert (predict.status_code, infer.status_code) == (400, 400)
    assert "true or false" in predict.json()["error"] and "true or false" in infer.json()["error"]


def test_a_model_that_cannot_explain_answers_409_with_the_reason(
    home: PlatformHome, explaining_settings: Settings, registry: ModelRegistry
) -> None:
    version = deploy(registry, legacy_model_bytes())
    with TestClient(create_app(home, explaining_settings)) as http:
        refused = http.post(
            "/predict",
            json={"reviews": [{"text": "the dress fit"}], "explain": True},
            headers={"X-Request-ID": "x1"},
        )
        oip = http.post(INFER, json={**infer_body(["the dress fit"]), "parameters": {"explain": True}})
        plain = http.post("/predict", json={"reviews": [{"text": "the dress fit"}]})
        metadata = http.get("/v2/models/sentiment").json()
    assert refused.status_code == 409 and oip.status_code == 409
    assert refused.json()["id"] == "x1"
    assert f"model version {version} cannot explain" in refused.json()["error"]
    assert "/" not in refused.json()["error"].split("explain")[0]  # no file path of the registry
    assert plain.status_code == 200
    assert "explanation" not in [output["name"] for output in metadata["outputs"]]
    assert read_capture(home.capture).height == 1


# --- metadata -----------------------------------------------------------------------------


def test_server_metadata_names_the_binary_tensor_data_extension(client: TestClient) -> None:
    metadata = client.get("/v2").json()
    assert metadata["name"] == "mlplatform" and metadata["version"]
    assert "binary_tensor_data" in metadata["extensions"]


def test_the_requests_own_id_is_returned_as_the_protocol_asks(client: TestClient) -> None:
    answer = client.post(
        INFER, json={**infer_body(["lovely"]), "id": "client-7"}, headers={"X-Request-ID": "r-7"}
    )
    assert answer.json()["id"] == "client-7" and answer.headers["x-request-id"] == "r-7"


# --- binary tensor data -------------------------------------------------------------------------------


def test_binary_inputs_with_json_outputs(client: TestClient) -> None:
    body, headers = binary_body(["I love this dress, great fit", "awful quality, ripped"])
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["outputs"][0]["data"] == ["positive", "negative"]


def test_binary_outputs_for_every_output_or_the_ones_asked(client: TestClient) -> None:
    texts = ["I love this dress, great fit", "awful quality, ripped"]
    json_answer = client.post(INFER, json=infer_body(texts)).json()
    expected = np.array(json_answer["outputs"][1]["data"], dtype=np.float32).reshape(2, 3)

    body, headers = binary_body(texts, parameters={"binary_data_output": True, "explain": True})
    response = client.post(INFER, content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    outputs = binary_outputs(response)
    assert outputs["label"] == ["positive", "negative"]
    assert np.array_equal(outputs["probabilities"], expected)
    assert orjson.loads(outputs["explanation"][1])[0]["ngram"] in {"awful", "quality", "ripped"}

    mixed = {"outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}, {"name": "label"}]}
    response = client.post(INFER, content=orjson.dumps({**infer_body(texts), **mixed}), headers=JSON)
    header_length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:header_length])
    assert [output["name"] for output in header["outputs"]] == ["probabilities", "label"]
    assert header["outputs"][1]["data"] == ["positive", "negative"]
    assert np.array_equal(np.frombuffer(response.content[header_length:], "<f4").reshape(2, 3), expected)


def frame(
    document: dict[str, Any], data: bytes, header_length_delta: int = 0
) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(document)
    return header + data, {"Inference-Header-Content-Length": str(len(header) + header_length_delta)}


def text_tensor(size: int, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "name": "text",
        "datatype": "BYTES",
        "shape": shape or [1],
        "parameters": {"binary_data_size": size},
    }


ELEMENT = (6).to_bytes(4, "little") + b"lovely"
BAD_FRAMES: list[tuple[str, tuple[bytes, dict[str, str]], str]] = [
    ("header length past the body", frame({"inputs": [text_tensor(10)]}, ELEMENT, 1000), "the body has"),
    ("header length not a number", (b"{}", {"Inference-Header-Content-Length": "twelve"}), "integer"),
    ("header cuts the JSON short", frame({"inputs": [text_tensor(10)]}, ELEMENT, -3), "not valid JSON"),
    ("size past the data", frame({"inputs": [text_tensor(11)]}, ELEMENT), "past the end"),
    ("bytes left over", frame({"inputs": [text_tensor(10)]}, ELEMENT + b"xx"), "belong to no input"),
    ("element runs past its tensor", frame({"inputs": [text_tensor(9)]}, ELEMENT[:9]), "says 6 bytes"),
    ("length prefix cut", frame({"inputs": [text_tensor(12, [2])]}, ELEMENT + b"\x01\x00"), "length prefix"),
    ("fewer elements than the shape", frame({"inputs": [text_tensor(10, [2])]}, ELEMENT), "element 1 of 2"),
    ("extra bytes inside the tensor", frame({"inputs": [text_tensor(12)]}, ELEMENT + b"zz"), "left after"),
    ("not UTF-8", frame({"inputs": [text_tensor(6)]}, (2).to_bytes(4, "little") + b"\xff\xfe"), "not UTF-8"),
    ("negative size", frame({"inputs": [text_tensor(-1)]}, ELEMENT), "non-negative"),
    ("size and JSON data", frame({"inputs": [{**text_tensor(10), "data": ["x"]}]}, ELEMENT), "both"),
    ("size without the header", (orjson.dumps({"inputs": [text_tensor(10)]}), {}), "past the end"),
    (
        "unknown output",
        frame({"inputs": [text_tensor(10)], "outputs": [{"name": "logits"}]}, ELEMENT),
        "outputs[0]",
    ),
    (
        "binary_data not a bool",
        frame(
            {"inputs": [text_tensor(10)], "outputs": [{"name": "label", "parameters": {"binary_data": "y"}}]},
            ELEMENT,
        ),
        "true or false",
    ),
]


@pytest.mark.parametrize("case", BAD_FRAMES, ids=[case[0] for case in BAD_FRAMES])
def test_bad_binary_framing_is_a_400_naming_what_is_wrong(
    client: TestClient, home: PlatformHome, case: tuple[str, tuple[bytes, dict[str, str]], str]
) -> None:
    _, (body, headers), message = case
    response = client.post(INFER, content=body, headers={**headers, "X-Request-ID": "framed"})
    assert response.status_code == 400, response.text
    assert message in response.json()["error"] and response.json()["id"] == "framed"
    assert read_capture(home.capture).height == 0
