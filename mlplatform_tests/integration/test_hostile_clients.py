"""The endpoint as a real process against hostile clients: slow ones, and thousands of generated requests.

- Slow clients: more stalled connections than `max_concurrency`, mid-body and mid-headers; inference
  and readiness carry on, and every stalled connection is answered 408 and closed at its deadline.
- Fuzz (hypothesis): generated JSON documents in both inference shapes, binary tensor data framed well
  and badly (element lengths, sizes, shapes, header lengths), arbitrary bodies, content types,
  request ids, methods and paths over HTTP, and raw byte strings straight onto a socket. The property:
  never a 5xx, every refusal of the app a JSON `{"error", "id"}` naming the request id, readiness true
  throughout (a prober reads it all along), and no internal error in the server's log. A raw byte
  string is the whole of its connection's input (the client half-closes after it): the parser's answer
  comes back, an answer of the app may be lost with the connection, so the endpoint's own count of 5xx
  answers (/metrics) is checked too.
"""

from __future__ import annotations

import json
import re
import socket
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.release.registry import ModelRegistry
from mlplatform_tests.integration.processes import endpoint_process, read_until_closed
from mlplatform_tests.serving.conftest import deploy, tiny_model_bytes

pytestmark = pytest.mark.integration

INFER = "/v2/models/sentiment/infer"
TIMEOUT_S = 3.0  # header_timeout_s and body_timeout_s of the server under test
MAX_CONCURRENCY = 64  # the default: the slow-client test stalls more connections than this
FUZZ = settings(  # thousands of cases in all (1500 + 600 + 500 + 1000 below), a modest run time
    deadline=None,
    database=None,  # no .hypothesis directory in the tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Server:
    base_url: str
    port: int
    log: Path
    not_ready: list[int] = field(default_factory=list)  # readiness answers other than 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hostile")
    home = PlatformHome(root / "home").ensure()
    deploy(ModelRegistry(home.registry), tiny_model_bytes(0))
    home.settings_file.write_text(
        f"[serving]\nheader_timeout_s = {TIMEOUT_S}\nbody_timeout_s = {TIMEOUT_S}\n"
    )
    log = root / "server.log"
    with endpoint_process(home.root, log, ready_path="/v2/health/ready") as (_, base_url):
        running = Server(base_url, int(base_url.rsplit(":", 1)[1]), log)
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=base_url, timeout=30) as http:
                while not stop.wait(0.05):
                    status = http.get("/v2/health/ready").status_code
                    if status != 200:
                        running.not_ready.append(status)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        yield running
        stop.set()
        prober.join()


@pytest.fixture(scope="module")
def http(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


def server_errors(http: httpx.Client) -> list[str]:
    """The 5xx answers the endpoint counted since it started (from /metrics)."""
    return re.findall(
        r'mlplatform_serving_requests_total\{route="[^"]*",status="5\d\d"\} \d+', http.get("/metrics").text
    )


def assert_still_sound(server: Server, http: httpx.Client) -> None:
    assert server_errors(http) == []
    assert server.not_ready == []
    assert http.get("/v2/health/ready").status_code == 200
    log = server.log.read_text()
    assert "Traceback" not in log and "internal error" not in log


# --- slow clients -------------------------------------------------------------------------------------


def stalled(port: int, payload: bytes) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=30)
    connection.sendall(payload)
    return connection


def status_when_closed(connection: socket.socket) -> int | None:
    """The status the server answered before closing (None: closed without a word)."""
    with connection:
        received = read_until_closed(connection)
    return int(received.split(b" ", 2)[1]) if received.startswith(b"HTTP/1.1 ") else None


def test_slow_clients_hold_no_slot_and_are_cut_off_at_their_deadline(
    server: Server, http: httpx.Client
) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n"
    )
    mid_body = [stalled(server.port, head + b'{"reviews": [') for _ in range(MAX_CONCURRENCY + 16)]
    mid_headers = [
        stalled(server.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Le") for _ in range(80)
    ]
    answers = [http.post("/predict", json={"reviews": [{"text": "lovely"}]}).status_code for _ in range(20)]
    assert answers == [200] * 20
    assert http.get("/v2/health/ready").status_code == 200
    assert [status_when_closed(connection) for connection in mid_body] == [408] * len(mid_body)
    assert [status_when_closed(connection) for connection in mid_headers] == [408] * len(mid_headers)
    assert "mlplatform_serving_header_timeouts_total 80.0" in http.get("/metrics").text
    assert_still_sound(server, http)


# --- fuzz ---------------------------------------------------------------------------------------------

SAFE_HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(
    str.strip
)
PATH_TEXT = st.text(alphabet=string.ascii_letters + string.digits + "-._~/:@!$&'()*+,;=", max_size=30)
JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
TEXTS = st.text(max_size=200) | st.integers(0, 3000).map(lambda n: "lovely dress " * n) | JSON_VALUES
IDS = st.none() | st.text(max_size=20) | st.integers() | JSON_VALUES
REVIEW = st.fixed_dictionaries(
    {}, optional={"text": TEXTS, "product_id": IDS, "review_id": IDS, "extra": JSON_VALUES}
)
PREDICT_DOCUMENTS = st.fixed_dictionaries(
    {"reviews": st.lists(REVIEW, max_size=6) | JSON_VALUES}, optional={"explain": JSON_VALUES}
)
SHAPES = st.lists(st.integers(-2, 300) | st.booleans() | st.text(max_size=3), max_size=3)
TENSOR = st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["text", "product_id", "review_id", "rating", ""]) | st.text(max_size=8),
        "datatype": st.sampled_from(["BYTES", "FP32", "INT64", "bytes"]) | JSON_VALUES,
        "shape": SHAPES | JSON_VALUES,
        "data": st.lists(TEXTS, max_size=6) | JSON_VALUES,
        "parameters": JSON_VALUES,
    },
)
INFER_DOCUMENTS = st.fixed_dictionaries({"inputs": st.lists(TENSOR, max_size=4) | JSON_VALUES})
# Well-formed requests with odd contents (any text: unicode, control characters, NUL, very long), so that
# many cases get as far as scoring and capture, inline and in a worker thread.
GOOD_TEXTS = st.text(min_size=1, max_size=300) | st.integers(1, 3000).map(lambda n: "lovely dress " * n)
GOOD_IDS = st.none() | st.text(max_size=20) | st.integers(-(2**63), 2**63 - 1)
GOOD_REVIEW = st.fixed_dictionaries(
    {"text": GOOD_TEXTS}, optional={"product_id": GOOD_IDS, "review_id": GOOD_IDS}
)
GOOD_PREDICT = st.fixed_dictionaries({"reviews": st.lists(GOOD_REVIEW, min_size=1, max_size=8)})
GOOD_INFER = st.lists(GOOD_TEXTS, min_size=1, max_size=8).map(
    lambda texts: {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)], "data": texts}]}
)
GOOD_DOCUMENTS = GOOD_PREDICT | GOOD_INFER
DOCUMENTS = GOOD_DOCUMENTS | PREDICT_DOCUMENTS | INFER_DOCUMENTS | JSON_VALUES
CONTENT_TYPES = (
    st.just("application/json")
    | st.just("application/json; charset=utf-8")
    | st.sampled_from(["application/x+json", "text/plain", "application/json; charset=latin-1", None])
    | SAFE_HEADER_TEXT
)
REQUEST_IDS = (
    st.none()
    | st.from_regex(r"[A-Za-z0-9._:\-]{1,40}", fullmatch=True)
    | st.just("fuzz-1")
    | SAFE_HEADER_TEXT
)


def mangled(data: bytes, cut: int, flip: int) -> bytes:
    """JSON bytes cut short or with one byte changed: almost valid, the hardest to parse."""
    if not data:
        return data
    index = flip % len(data)
    flipped = data[:index] + bytes([data[index] ^ 0x20]) + data[index + 1 :]
    return flipped[: max(1, cut % (len(data) + 1))]


BODIES = (
    GOOD_DOCUMENTS.map(lambda doc: json.dumps(doc, ensure_ascii=False).encode())
    | DOCUMENTS.map(lambda doc: json.dumps(doc).encode())
    | st.builds(
        mangled,
        DOCUMENTS.map(lambda doc: json.dumps(doc).encode()),
        st.integers(0, 10**6),
        st.integers(0, 10**6),
    )
    | st.binary(max_size=600)
)


def check_answer(response: httpx.Response, sent_id: str | None) -> None:
    event(f"status {response.status_code}")  # the mix of answers, in --hypothesis-show-statistics
    assert response.status_code < 500, response.text
    if response.status_code >= 400 and response.headers.get("content-type") == "application/json":
        answer = response.json()
        assert isinstance(answer["error"], str) and answer["error"]
        assert answer["id"] == response.headers["x-request-id"]
        if sent_id is not None and response.status_code != 400:
            assert answer["id"] == sent_id


@settings(FUZZ, max_examples=1500)
@given(
    path=st.sampled_from([INFER, "/predict"]),
    body=BODIES,
    content_type=CONTENT_TYPES,
    request_id=REQUEST_IDS,
)
def test_fuzz_inference_bodies_and_headers(
    server: Server,
    http: httpx.Client,
    path: str,
    body: bytes,
    content_type: str | None,
    request_id: str | None,
) -> None:
    headers = {}
    if content_type is not None:
        headers["Content-Type"] = content_type
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    check_answer(http.post(path, content=body, headers=headers), request_id)


@settings(FUZZ, max_examples=500)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"]),
    path=st.sampled_from(
        [INFER, "/predict", "/v2/health/ready", "/v2/models/sentiment", "/metrics", "/dashboard"]
    )
    | PATH_TEXT.map(lambda text: "/" + text),
    body=st.binary(max_size=64),
    headers=st.dictionaries(
        st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=12).filter(
            lambda name: name.lower() not in {"content-length", "transfer-encoding", "host", "connection"}
        ),
        SAFE_HEADER_TEXT,
        max_size=4,
    ),
)
def test_fuzz_methods_paths_and_headers(
    server: Server, http: httpx.Client, method: str, path: str, body: bytes, headers: dict[str, str]
) -> None:
    response = http.request(method, path, content=body or None, headers=headers)
    assert response.status_code < 500, response.text


def framed_text(texts: list[bytes], lengths: list[int]) -> bytes:
    """BYTES elements as binary tensor data, each with its stated length (true or not)."""
    return b"".join(length.to_bytes(4, "little") + text for text, length in zip(texts, lengths, strict=False))


BINARY_ELEMENTS = st.lists(
    st.sampled_from([b"lovely dress", b"awful fabric, ripped"])
    | st.binary(max_size=40)
    | st.text(max_size=40).map(str.encode),
    min_size=0,
    max_size=5,
)


@st.composite
def binary_requests(draw: st.DrawFn) -> tuple[bytes, str]:
    """Binary tensor data, half of it well framed, the rest with any element lengths, sizes, shapes,
    header lengths and trailing bytes."""
    texts = draw(BINARY_ELEMENTS)
    lengths = [len(text) for text in texts]
    size, shape, trailing, header_length = None, [len(texts)], b"", None
    if not draw(st.booleans()):  # badly framed: lie about lengths, sizes, shapes, what follows
        lengths = [draw(st.integers(0, 2**32 - 1)) if draw(st.booleans()) else n for n in lengths]
        size = draw(st.none() | st.integers(-5, 300) | JSON_VALUES)
        shape = draw(st.just(shape) | SHAPES | JSON_VALUES)
        trailing = draw(st.binary(max_size=8))
        header_length = draw(st.none() | st.integers(-3, 400).map(str) | SAFE_HEADER_TEXT)
    data = framed_text(texts, lengths)
    tensor = {
        "name": "text",
        "datatype": "BYTES",
        "shape": shape,
        "parameters": {"binary_data_size": len(data) if size is None else size},
    }
    document: dict = {"inputs": [tensor]}
    if draw(st.booleans()):
        document["parameters"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "binary_data_output": st.booleans() | JSON_VALUES,
                    "explain": st.booleans() | JSON_VALUES,
                },
            )
        )
    if draw(st.booleans()):
        document["outputs"] = draw(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.sampled_from(["label", "probabilities", "explanation", "x"])},
                    optional={
                        "parameters": st.fixed_dictionaries(
                            {}, optional={"binary_data": st.booleans() | JSON_VALUES}
                        )
                    },
                ),
                max_size=4,
            )
            | JSON_VALUES
        )
    header = json.dumps(document).encode()
    return header + data + trailing, str(len(header)) if header_length is None else header_length


@settings(FUZZ, max_examples=600)
@given(
    request=binary_requests(),
    content_type=st.sampled_from([None, "application/octet-stream", "application/json"]),
)
def test_fuzz_binary_tensor_data(
    server: Server, http: httpx.Client, request: tuple[bytes, str], content_type: str | None
) -> None:
    body, header_length = request
    headers = {"Inference-Header-Content-Length": header_length}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = http.post(INFER, content=body, headers=headers)
    event(f"status {response.status_code}")
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["id"] == response.headers["x-request-id"]


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` as the whole of a connection's input, then read everything the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(data)
        connection.shutdown(socket.SHUT_WR)
        return read_until_closed(connection)


REQUEST_LINES = st.sampled_from(
    [
        b"POST /predict HTTP/1.1\r\n",
        b"POST /v2/models/sentiment/infer HTTP/1.1\r\n",
        b"GET /v2/health/live HTTP/1.1\r\n",
        b"",
    ]
)


@settings(FUZZ, max_examples=1000)
@given(start=REQUEST_LINES, raw=st.binary(max_size=400), ending=st.sampled_from([b"", b"\r\n\r\n", b"\r\n"]))
def test_fuzz_raw_bytes_on_a_socket(server: Server, start: bytes, raw: bytes, ending: bytes) -> None:
    received = raw_exchange(server.port, start + raw + ending)
    for status in re.findall(rb"HTTP/1\.[01] (\d{3}) ", received):
        assert int(status) < 500, received[:500]


def test_after_the_fuzz_the_endpoint_is_sound(server: Server, http: httpx.Client) -> None:
    """Runs after the fuzz tests of this module (pytest keeps file order): readiness held throughout."""
    assert http.post("/predict", json={"reviews": [{"text": "still fine"}]}).status_code == 200
    assert_still_sound(server, http)
