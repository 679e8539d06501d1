"""The wire protocol of the inference routes: body reading with a limit, validation, JSON responses.

Plain functions over bytes and parsed JSON, so the request path stays lean (orjson, no pydantic) and
every refusal is a `RequestRefused` with a status and a one-line reason.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from mlplatform.core.data.text import prepare_text
from mlplatform.core.platform.errors import UserError

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_JSON_HEADERS = ((b"content-type", b"application/json"),)
_ID_INPUTS = ("product_id", "review_id")
_KNOWN_INPUTS = frozenset({"text", *_ID_INPUTS})


class RequestRefused(UserError):
    """A request the endpoint answers with an error status and a one-line reason.

    `close`: the answer also closes the connection (what is left of the request cannot be trusted to
    end where the next one begins, e.g. a body that stopped arriving).
    """

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


@dataclass(frozen=True)
class Reviews:
    """The validated inputs of one inference request, one entry per review."""

    texts: list[str]
    product_ids: list[str | None]
    review_ids: list[str | None]


# --- parsing and validation -----------------------------------------------------------------------


def _check_batch_size(size: int, max_batch: int, what: str) -> None:
    if size == 0:
        raise RequestRefused(400, f"{what} is empty: send at least one review")
    if size > max_batch:
        raise RequestRefused(413, f"{what} has {size} reviews, over the maximum of {max_batch} per request")


def _optional_id(value: Any, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RequestRefused(400, f"{where} must be a string, an integer or null")


def parse_predict_request(document: Any, max_batch: int) -> Reviews:
    """`{"reviews": [{"text": str, "product_id"?: str|int|null, "review_id"?: str|int|null}, ...]}`."""
    if not isinstance(document, dict):
        raise RequestRefused(400, 'body must be a JSON object {"reviews": [...]}')
    reviews = document.get("reviews")
    if not isinstance(reviews, list):
        raise RequestRefused(400, '"reviews" must be a list of {"text": ...} objects')
    _check_batch_size(len(reviews), max_batch, '"reviews"')
    texts, product_ids, review_ids = [], [], []
    for index, review in enumerate(reviews):
        if not isinstance(review, dict):
            raise RequestRefused(400, f"reviews[{index}] must be an object with a text")
        text = review.get("text")
        if not isinstance(text, str):
            raise RequestRefused(400, f"reviews[{index}].text must be a string")
        texts.append(text)
        product_ids.append(_optional_id(review.get("product_id"), f"reviews[{index}].product_id"))
        review_ids.append(_optional_id(review.get("review_id"), f"reviews[{index}].review_id"))
    return Reviews(texts, product_ids, review_ids)


def _tensor_strings(tensor: Any, index: int, max_batch: int) -> tuple[str, list[str]]:
    """Validate one v2 input tensor (BYTES, shape [N] or [N, 1], N strings); return (name, data)."""
    if not isinstance(tensor, dict):
        raise RequestRefused(400, f"inputs[{index}] must be a tensor object")
    name = tensor.get("name")
    if name not in _KNOWN_INPUTS:
        raise RequestRefused(
            400, f"inputs[{index}].name must be one of {sorted(_KNOWN_INPUTS)}, got {name!r}"
        )
    if tensor.get("datatype") != "BYTES":
        raise RequestRefused(400, f'input {name!r}: datatype must be "BYTES"')
    data, shape = tensor.get("data"), tensor.get("shape")
    if not isinstance(data, list):
        raise RequestRefused(400, f"input {name!r}: data must be a list of strings")
    _check_batch_size(len(data), max_batch, f"input {name!r}")
    valid_shape = (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(isinstance(dim, int) and not isinstance(dim, bool) for dim in shape)
        and shape[0] == len(data)
        and (len(shape) == 1 or shape[1] == 1)
    )
    if not valid_shape:
        raise RequestRefused(
            400, f"input {name!r}: shape must be [{len(data)}] (or [{len(data)}, 1]), got {shape!r}"
        )
    if not all(isinstance(item, str) for item in data):
        raise RequestRefused(400, f"input {name!r}: every element must be a string")
    return name, data


def parse_infer_request(document: Any, max_batch: int) -> Reviews:
    """Open Inference Protocol v2 request: BYTES `text` [N], optional BYTES `product_id`, `review_id` [N]."""
    if not isinstance(document, dict):
        raise RequestRefused(400, 'body must be a JSON object {"inputs": [...]}')
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestRefused(400, '"inputs" must be a non-empty list of tensors')
    tensors: dict[str, list[str]] = {}
    for index, tensor in enumerate(inputs):
        name, data = _tensor_strings(tensor, index, max_batch)
        if name in tensors:
            raise RequestRefused(400, f"input {name!r} given twice")
        tensors[name] = data
    texts = tensors.get("text")
    if texts is None:
        raise RequestRefused(400, "the BYTES input 'text' is required")
    for name in _ID_INPUTS:
        if name in tensors and len(tensors[name]) != len(texts):
            raise RequestRefused(
                400, f"input {name!r} has {len(tensors[name])} elements, 'text' has {len(texts)}"
            )
    missing: list[str | None] = [None] * len(texts)
    return Reviews(texts, tensors.get("product_id", missing), tensors.get("review_id", missing))


def model_inputs(texts: Sequence[str]) -> list[str]:
    """The text the model sees (the one text preparation, core/data/text.py); an empty review is a 400."""
    cleaned = [prepare_text(text) for text in texts]
    for index, text in enumerate(cleaned):
        if not text:
            raise RequestRefused(400, f"review {index} has an empty text")
    return cleaned


# --- responses --------------------------------------------------------------------------------------


def render_infer_response(
    model_name: str,
    version: str,
    request_id: str,
    labels: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
) -> bytes:
    """The v2 answer: `label` [N] and `probabilities` [N, classes], columns in the model's class order."""
    size = len(labels)
    return orjson.dumps(
        {
            "model_name": model_name,
            "model_version": version,
            "id": request_id,
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [size], "data": labels},
                {
                    "name": "probabilities",
                    "datatype": "FP32",
                    "shape": [size, len(classes)],
                    "data": probabilities.ravel(),
                },
            ],
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def render_predict_response(
    model_name: str,
    version: str,
    request_id: str,
    labels: Sequence[str],
    probabilities: np.ndarray,
    classes: Sequence[str],
) -> bytes:
    """The /predict answer: each review's label and its probability of each of the model's classes."""
    predictions = [
        {"label": label, "probabilities": dict(zip(classes, row, strict=True))}
        for label, row in zip(labels, probabilities, strict=True)
    ]
    return orjson.dumps(
        {"id": request_id, "model_version": version, "predictions": predictions},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def error_body(message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": message, "id": request_id})


async def send_json(
    send: ASGISend, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *headers]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(scope: ASGIScope, receive: ASGIReceive, limit: int) -> bytes:
    """The request body, refused with a 413 as soon as it is known to exceed `limit` bytes."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit():
                raise RequestRefused(400, "Content-Length is not a number")
            if int(value) > limit:
                raise RequestRefused(413, f"body of {int(value)} bytes is over the limit of {limit} bytes")
    chunks, total = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestRefused(400, "client disconnected before the body was complete")
        chunk = message.get("body", b"")
        total += len(chunk)
        if total > limit:  # chunked bodies have no Content-Length: count what streams in
            raise RequestRefused(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRefused(400, f"body is not valid JSON (UTF-8, no NaN/Infinity): {exc}") from None
