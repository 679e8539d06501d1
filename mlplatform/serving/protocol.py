"""The wire protocol of the inference routes: parsing and validation, and the bytes of each answer.

Plain functions over bytes, so the request path stays lean (orjson, no pydantic) and every refusal is a
`RequestRefused` with a status and a one-line reason.

`POST /predict`: `{"reviews": [{"text", "product_id"?, "review_id"?}], "explain"?: bool}` ->
`{"id", "model_version", "predictions": [{"label", "probabilities": {class: p}, "explanation"?}]}`.

`POST /v2/models/{name}/infer` (Open Inference Protocol v2): BYTES input `text` [N] (or [N, 1]), optional
BYTES `product_id`, `review_id`; outputs `label` (BYTES [N]), `probabilities` (FP32 [N, C], the served
model's classes in its order) and, when the request parameter `explain` is true (or the output is asked
for by name), `explanation` (BYTES [N]: each element one JSON document per review, see below). A request
may name the outputs it wants (`"outputs": [{"name", "parameters"?: {"binary_data": bool}}]`); the
request's own `id` is returned as the answer's `id` (else the endpoint's request id is).

The binary tensor data extension (Triton's, what `tritonclient` sends by default): with the header
`Inference-Header-Content-Length: H` the body is H bytes of JSON followed by the binary data of the
inputs whose `parameters.binary_data_size` says so, in input order; a BYTES element is a 4-byte
little-endian length then that many bytes (UTF-8 here). Outputs come back binary when the request says
`"parameters": {"binary_data_output": true}` or an output asks with `"binary_data": true`: then the
answer is the JSON header, then each binary output's bytes (FP32 little-endian, BYTES length-prefixed),
with the header `Inference-Header-Content-Length` and `Content-Type: application/octet-stream`. Every
framing fault (a header length past the body, sizes that do not add up to the bytes sent, an element
running past its tensor, bytes that are not UTF-8) is a 400 naming what is wrong.

An explanation is the top `[serving] explain_top_k` n-grams pushing the predicted class, strongest first:
`[{"ngram": "runs small", "weight": 0.83}, ...]` (the weight is the n-gram's exact contribution to that
class's score: core/scoring/model.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from mlplatform.core.data.text import prepare_text
from mlplatform.core.platform.errors import UserError
from mlplatform.core.scoring.model import Contribution

ASGIScope = MutableMapping[str, Any]
ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]

JSON_TYPE = b"application/json"
BINARY_TYPE = b"application/octet-stream"
BINARY_HEADER = b"inference-header-content-length"
_ID_INPUTS = ("product_id", "review_id")
_KNOWN_INPUTS = frozenset({"text", *_ID_INPUTS})
LABEL, PROBABILITIES, EXPLANATION = "label", "probabilities", "explanation"
OUTPUTS = (LABEL, PROBABILITIES, EXPLANATION)
_LENGTH_PREFIX = 4  # bytes of a BYTES element's length in binary tensor data


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


@dataclass(frozen=True)
class OutputForm:
    """One Open Inference Protocol output a request answers with, as binary tensor data or JSON."""

    name: str
    binary: bool


@dataclass(frozen=True)
class InferenceRequest:
    """A parsed inference request: its reviews and how it wants them answered."""

    reviews: Reviews
    explain: bool = False
    outputs: tuple[OutputForm, ...] = ()  # the OIP outputs, in order (/predict: unused)
    echo_id: str | None = None  # the OIP request's own `id`, returned as the answer's


@dataclass(frozen=True)
class Scored:
    """What one request's reviews were scored as, by which model, to render."""

    model_name: str
    version: str
    request_id: str
    classes: Sequence[str]
    labels: list[str]
    probabilities: np.ndarray  # float32 [N, C]
    explanations: Sequence[Sequence[Contribution]] | None


@dataclass(frozen=True)
class Rendered:
    """An answer's body; `header_length` set: binary tensor data follows the first that many bytes."""

    body: bytes
    header_length: int | None = None


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


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise RequestRefused(400, f"{where} must be true or false")
    return value


def parse_predict_request(raw: bytes, header_length: int | None, max_batch: int) -> InferenceRequest:
    """`{"reviews": [{"text": str, "product_id"?: str|int|null, "review_id"?: str|int|null}, ...],
    "explain"?: bool}`."""
    if header_length is not None:
        raise RequestRefused(
            400,
            "binary tensor data (Inference-Header-Content-Length) is for the Open Inference Protocol route",
        )
    document = decode_json(raw)
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
    explain = _flag(document.get("explain"), '"explain"')
    return InferenceRequest(Reviews(texts, product_ids, review_ids), explain=explain)


def _binary_strings(data: memoryview, count: int, name: str) -> list[str]:
    """`count` BYTES elements of binary tensor data (4-byte little-endian length, then the bytes), UTF-8."""
    strings, offset, end = [], 0, len(data)
    for element in range(count):
        if offset + _LENGTH_PREFIX > end:
            raise RequestRefused(
                400,
                f"input {name!r}: binary data ends before element {element} of {count} (its length prefix)",
            )
        length = int.from_bytes(data[offset : offset + _LENGTH_PREFIX], "little")
        offset += _LENGTH_PREFIX
        if length > end - offset:
            raise RequestRefused(
                400, f"input {name!r}: element {element} says {length} bytes, {end - offset} are left"
            )
        try:
            strings.append(str(data[offset : offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise RequestRefused(400, f"input {name!r}: element {element} is not UTF-8") from None
        offset += length
    if offset != end:
        raise RequestRefused(
            400, f"input {name!r}: {end - offset} bytes of binary data left after its {count} elements"
        )
    return strings


def _binary_size(parameters: Any, name: str) -> int | None:
    """A tensor's `parameters.binary_data_size` (None: its data is JSON)."""
    if parameters is None:
        return None
    if not isinstance(parameters, dict):
        raise RequestRefused(400, f"input {name!r}: parameters must be an object")
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestRefused(400, f"input {name!r}: binary_data_size must be a non-negative integer")
    return size


def _tensor_strings(
    tensor: Any, index: int, max_batch: int, binary: memoryview, offset: int
) -> tuple[str, list[str], int]:
    """Validate one v2 input tensor (BYTES, shape [N] or [N, 1], N strings as JSON data or binary data at
    `offset` of `binary`); return (name, strings, the binary bytes it took)."""
    if not isinstance(tensor, dict):
        raise RequestRefused(400, f"inputs[{index}] must be a tensor object")
    name = tensor.get("name")
    if name not in _KNOWN_INPUTS:
        raise RequestRefused(
            400, f"inputs[{index}].name must be one of {sorted(_KNOWN_INPUTS)}, got {name!r}"
        )
    if tensor.get("datatype") != "BYTES":
        raise RequestRefused(400, f'input {name!r}: datatype must be "BYTES"')
    shape = tensor.get("shape")
    valid_shape = (
        isinstance(shape, list)
        and len(shape) in (1, 2)
        and all(isinstance(dim, int) and not isinstance(dim, bool) for dim in shape)
        and shape[0] >= 0
        and (len(shape) == 1 or shape[1] == 1)
    )
    if not valid_shape:
        raise RequestRefused(400, f"input {name!r}: shape must be [N] or [N, 1], got {shape!r}")
    size = shape[0]
    binary_size = _binary_size(tensor.get("parameters"), name)
    if binary_size is None:
        data = tensor.get("data")
        if not isinstance(data, list):
            raise RequestRefused(400, f"input {name!r}: data must be a list of strings")
        if not all(isinstance(item, str) for item in data):
            raise RequestRefused(400, f"input {name!r}: every element must be a string")
        taken = 0
    else:
        if "data" in tensor:
            raise RequestRefused(400, f"input {name!r}: data given both as JSON and as binary_data_size")
        if binary_size > len(binary) - offset:
            raise RequestRefused(
                400,
                f"input {name!r}: binary_data_size {binary_size} is past the end of the body's binary data "
                f"({len(binary) - offset} bytes left)",
            )
        _check_batch_size(size, max_batch, f"input {name!r}")
        data = _binary_strings(binary[offset : offset + binary_size], size, name)
        taken = binary_size
    _check_batch_size(len(data), max_batch, f"input {name!r}")
    if size != len(data):
        raise RequestRefused(
            400, f"input {name!r}: shape must be [{len(data)}] (or [{len(data)}, 1]), got {shape!r}"
        )
    return name, data, taken


def _split_binary(raw: bytes, header_length: int | None) -> tuple[bytes | memoryview, memoryview]:
    """(the JSON header, the binary data after it) of a body."""
    if header_length is None:
        return raw, memoryview(b"")
    if header_length > len(raw):
        raise RequestRefused(
            400, f"Inference-Header-Content-Length is {header_length}, the body has {len(raw)} bytes"
        )
    view = memoryview(raw)
    return view[:header_length], view[header_length:]


def _requested_outputs(document: dict[str, Any]) -> tuple[tuple[OutputForm, ...] | None, bool, bool]:
    """(the outputs named by the request, None: all; explain; binary_data_output)."""
    parameters = document.get("parameters")
    if parameters is None:
        parameters = {}
    elif not isinstance(parameters, dict):
        raise RequestRefused(400, '"parameters" must be an object')
    explain = _flag(parameters.get("explain"), "parameter explain")
    binary_default = _flag(parameters.get("binary_data_output"), "parameter binary_data_output")
    outputs = document.get("outputs")
    if outputs is None:
        return None, explain, binary_default
    if not isinstance(outputs, list):
        raise RequestRefused(400, '"outputs" must be a list of {"name": ...} objects')
    forms: dict[str, OutputForm] = {}
    for index, output in enumerate(outputs):
        name = output.get("name") if isinstance(output, dict) else None
        if name not in OUTPUTS:
            raise RequestRefused(400, f"outputs[{index}].name must be one of {list(OUTPUTS)}, got {name!r}")
        if name in forms:
            raise RequestRefused(400, f"output {name!r} asked for twice")
        output_parameters = output.get("parameters")
        if output_parameters is not None and not isinstance(output_parameters, dict):
            raise RequestRefused(400, f"output {name!r}: parameters must be an object")
        binary = (output_parameters or {}).get("binary_data")
        forms[name] = OutputForm(
            name, binary_default if binary is None else _flag(binary, f"output {name!r} binary_data")
        )
    return tuple(forms.values()), explain or EXPLANATION in forms, binary_default


def parse_infer_request(raw: bytes, header_length: int | None, max_batch: int) -> InferenceRequest:
    """Open Inference Protocol v2 request (module docstring), JSON or with binary tensor data."""
    header, binary = _split_binary(raw, header_length)
    document = decode_json(header)
    if not isinstance(document, dict):
        raise RequestRefused(400, 'body must be a JSON object {"inputs": [...]}')
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestRefused(400, '"inputs" must be a non-empty list of tensors')
    tensors: dict[str, list[str]] = {}
    offset = 0
    for index, tensor in enumerate(inputs):
        name, data, taken = _tensor_strings(tensor, index, max_batch, binary, offset)
        if name in tensors:
            raise RequestRefused(400, f"input {name!r} given twice")
        tensors[name] = data
        offset += taken
    if offset != len(binary):
        raise RequestRefused(
            400, f"{len(binary) - offset} bytes after the JSON header belong to no input's binary_data_size"
        )
    texts = tensors.get("text")
    if texts is None:
        raise RequestRefused(400, "the BYTES input 'text' is required")
    for name in _ID_INPUTS:
        if name in tensors and len(tensors[name]) != len(texts):
            raise RequestRefused(
                400, f"input {name!r} has {len(tensors[name])} elements, 'text' has {len(texts)}"
            )
    echo_id = document.get("id")
    if echo_id is not None and not isinstance(echo_id, str):
        raise RequestRefused(400, '"id" must be a string')
    named, explain, binary_default = _requested_outputs(document)
    if named is None:
        wanted = (LABEL, PROBABILITIES, EXPLANATION) if explain else (LABEL, PROBABILITIES)
        named = tuple(OutputForm(name, binary_default) for name in wanted)
    missing: list[str | None] = [None] * len(texts)
    reviews = Reviews(texts, tensors.get("product_id", missing), tensors.get("review_id", missing))
    return InferenceRequest(reviews, explain=explain, outputs=named, echo_id=echo_id)


def model_inputs(texts: Sequence[str]) -> list[str]:
    """The text the model sees (the one text preparation, core/data/text.py); an empty review is a 400."""
    cleaned = [prepare_text(text) for text in texts]
    for index, text in enumerate(cleaned):
        if not text:
            raise RequestRefused(400, f"review {index} has an empty text")
    return cleaned


# --- responses --------------------------------------------------------------------------------------


def _length_prefixed(items: Sequence[bytes]) -> bytes:
    """BYTES elements as binary tensor data: each a 4-byte little-endian length, then its bytes."""
    return b"".join(len(item).to_bytes(_LENGTH_PREFIX, "little") + item for item in items)


def _output_tensor(form: OutputForm, scored: Scored) -> tuple[dict[str, Any], bytes | None]:
    """One output's JSON entry and, when it goes as binary tensor data, its bytes."""
    if form.name == PROBABILITIES:
        probabilities = scored.probabilities
        tensor: dict[str, Any] = {"name": form.name, "datatype": "FP32", "shape": list(probabilities.shape)}
        if not form.binary:
            return {**tensor, "data": probabilities.ravel()}, None
        data = probabilities.astype("<f4", copy=False).tobytes()
    else:
        if form.name == LABEL:
            items = scored.labels
        else:
            assert scored.explanations is not None  # a request that wants this output asked to explain
            items = [orjson.dumps(row).decode() for row in scored.explanations]
        tensor = {"name": form.name, "datatype": "BYTES", "shape": [len(items)]}
        if not form.binary:
            return {**tensor, "data": items}, None
        data = _length_prefixed([item.encode() for item in items])
    return {**tensor, "parameters": {"binary_data_size": len(data)}}, data


def render_infer_response(request: InferenceRequest, scored: Scored) -> Rendered:
    tensors, binary = [], []
    for form in request.outputs:
        tensor, data = _output_tensor(form, scored)
        tensors.append(tensor)
        if data is not None:
            binary.append(data)
    header = orjson.dumps(
        {
            "model_name": scored.model_name,
            "model_version": scored.version,
            "id": scored.request_id if request.echo_id is None else request.echo_id,
            "outputs": tensors,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not binary:
        return Rendered(header)
    return Rendered(b"".join([header, *binary]), header_length=len(header))


def render_predict_response(request: InferenceRequest, scored: Scored) -> Rendered:
    classes = scored.classes
    predictions: list[dict[str, Any]] = [
        {"label": label, "probabilities": dict(zip(classes, row, strict=True))}
        for label, row in zip(scored.labels, scored.probabilities, strict=True)
    ]
    if scored.explanations is not None:
        for prediction, explanation in zip(predictions, scored.explanations, strict=True):
            prediction["explanation"] = explanation
    return Rendered(
        orjson.dumps(
            {"id": scored.request_id, "model_version": scored.version, "predictions": predictions},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
    )


def error_body(message: str, request_id: str) -> bytes:
    return orjson.dumps({"error": message, "id": request_id})


async def send_json(
    send: ASGISend,
    status: int,
    body: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    content_type: bytes = JSON_TYPE,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers]
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


def decode_json(body: bytes | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RequestRefused(400, f"body is not valid JSON (UTF-8, no NaN/Infinity): {exc}") from None
