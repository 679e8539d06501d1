"""The connection layer: a request's headers have a deadline; uvicorn's parser errors are JSON with an id.

A real uvicorn server on loopback, with each of its two HTTP/1.1 protocol classes underneath.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from mlplatform.serving.connection import with_header_deadline
from mlplatform_tests.integration.processes import free_port, read_until_closed

DEADLINE_S = 0.3
WAIT_S = 10.0  # far beyond the deadline: a connection still open by then (TimeoutError) was never cut


async def hello(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b'{"hello": true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def httptools_protocol() -> type:
    pytest.importorskip("httptools")  # uvicorn's default parser when installed, else h11
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return HttpToolsProtocol


@pytest.fixture(params=[httptools_protocol, lambda: H11Protocol], ids=["httptools", "h11"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[int, list[int]]]:
    """(port, timeouts counted) of a server whose requests' headers have a DEADLINE_S deadline."""
    timeouts: list[int] = []
    port = free_port()
    protocol = with_header_deadline(request.param(), DEADLINE_S, lambda: timeouts.append(1))
    config = uvicorn.Config(
        hello, host="127.0.0.1", port=port, http=protocol, log_level="warning", lifespan="off"
    )
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    yield port, timeouts
    instance.should_exit = True
    thread.join(timeout=20)


def connect(port: int) -> socket.socket:
    connection = socket.create_connection(("127.0.0.1", port), timeout=WAIT_S)
    return connection


def error_of(response: bytes) -> tuple[int, dict[str, Any], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body), head.lower()


def test_a_connection_that_sends_nothing_is_closed_without_a_word(server: tuple[int, list[int]]) -> None:
    port, timeouts = server
    with connect(port) as connection:
        assert read_until_closed(connection) == b""
    assert timeouts == [1]


def test_partial_headers_get_a_408_and_the_connection_closes(server: tuple[int, list[int]]) -> None:
    port, _ = server
    with connect(port) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: endpoint\r\nContent-Type: appl")
        status, body, head = error_of(read_until_closed(connection))
    assert status == 408
    assert body["error"] == "request headers not complete within 0.3 s ([serving] header_timeout_s)"
    assert len(body["id"]) == 36 and f"x-request-id: {body['id']}".encode() in head
    assert b"connection: close" in head


def test_headers_trickled_a_byte_at_a_time_still_meet_the_deadline(server: tuple[int, list[int]]) -> None:
    port, _ = server
    request = b"GET /v2/health/live HTTP/1.1\r\nHost: endpoint\r\n" + b"X-Pad: " + b"a" * 200
    with connect(port) as connection:
        try:
            for byte in request:  # far longer than the deadline in all
                connection.sendall(bytes([byte]))
                time.sleep(DEADLINE_S / 10)
        except (BrokenPipeError, ConnectionResetError):
            pass  # cut off mid-trickle: what the deadline is for
        status, _, _ = error_of(read_until_closed(connection))
    assert status == 408


def test_a_later_request_on_a_kept_alive_connection_has_its_own_deadline(
    server: tuple[int, list[int]],
) -> None:
    port, _ = server
    with connect(port) as connection:
        connection.sendall(b"GET / HTTP/1.1\r\nHost: endpoint\r\n\r\n")
        first = b""
        while b'{"hello": true}' not in first:
            first += connection.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        connection.sendall(b"GET / HTTP/1.1\r\nHost: end")
        status, _, _ = error_of(read_until_closed(connection))
    assert status == 408


def test_a_request_the_parser_rejects_is_a_json_400_with_an_id(server: tuple[int, list[int]]) -> None:
    port, _ = server
    with connect(port) as connection:
        connection.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        status, body, head = error_of(read_until_closed(connection))
    assert status == 400 and body["error"].startswith("malformed HTTP request")
    assert f"x-request-id: {body['id']}".encode() in head
