"""The connection layer below the app: a deadline for a request's headers, and JSON for uvicorn's own 400.

uvicorn closes a keep-alive connection that stays idle for `timeout_keep_alive` after a response, but
it has no deadline for the headers of a request: a connection that sends nothing after connecting, or
the first bytes of a request and then a byte now and then, is kept open for ever (the slowloris
attack), holding a file descriptor and a parser. `with_header_deadline(base, timeout_s)` subclasses
uvicorn's HTTP protocol class (`base`: the httptools or h11 one) so that a request's headers must be
complete within `[serving] header_timeout_s` of the connection being made, or of the first byte of a
later request on it. Past the deadline a connection that sent part of a request gets a 408 and is
closed; one that sent nothing is closed without a word (a response nobody asked for could be read by a
client as the answer to the request it is about to send). The body's own deadline is the app's
(serving/admission.py), so the whole of a request arrives within the two.

The same subclass answers a request uvicorn's parser rejects (malformed request line or headers) with
the endpoint's usual `{"error": ..., "id": ...}` and an `X-Request-ID`, not uvicorn's plain-text 400.

The hooks used are the ones both uvicorn protocol classes share: `connection_made`, `data_received`,
`connection_lost`, `send_400_response`, and their `cycle` attribute (the request being answered, replaced
as soon as a request's headers are complete), `transport` and `loop`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from mlplatform.serving.protocol import error_body

_REASONS = {400: b"Bad Request", 408: b"Request Timeout"}


def refusal_bytes(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 error response that closes its connection, with a new request id."""
    request_id = str(uuid.uuid4())
    body = error_body(message, request_id)
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"x-request-id: %s\r\nconnection: close\r\n\r\n"
    ) % (status, _REASONS[status], len(body), request_id.encode())
    return head + body


def with_header_deadline(
    base: type[asyncio.Protocol], timeout_s: float, on_timeout: Callable[[], None] | None = None
) -> type[asyncio.Protocol]:
    """`base` (a uvicorn HTTP protocol class) with a deadline for each request's headers.

    `on_timeout` hears of every connection closed for missing its deadline (for metrics).
    """
    if timeout_s <= 0:
        raise ValueError(f"[serving] header_timeout_s must be positive, got {timeout_s}")

    class HeaderDeadlineProtocol(base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None
        _waiting_cycle: Any = None  # the cycle that was current when the deadline was set
        _bytes_waiting = 0

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._set_deadline()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self._between_requests():
                self._set_deadline()  # the first bytes of a later request on this connection
            self._bytes_waiting += len(data)
            super().data_received(data)
            if self._deadline is not None and self.cycle is not self._waiting_cycle:
                self._clear_deadline()  # the parser started a request: its headers are complete

        def connection_lost(self, exc: Exception | None) -> None:
            self._clear_deadline()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            self._clear_deadline()
            if not self.transport.is_closing():
                self.transport.write(refusal_bytes(400, f"malformed HTTP request: {msg}"))
                self.transport.close()

        def _between_requests(self) -> bool:
            cycle = self.cycle
            return cycle is None or cycle.response_complete

        def _set_deadline(self) -> None:
            self._waiting_cycle = self.cycle
            self._bytes_waiting = 0
            self._deadline = self.loop.call_later(timeout_s, self._deadline_passed)

        def _clear_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _deadline_passed(self) -> None:
            self._deadline = None
            if self.transport.is_closing() or self.cycle is not self._waiting_cycle:
                return
            if self.transport.get_protocol() is not self:  # upgraded (WebSocket): no longer ours
                return
            if self._bytes_waiting:
                self.transport.write(
                    refusal_bytes(
                        408,
                        f"request headers not complete within {timeout_s:g} s ([serving] header_timeout_s)",
                    )
                )
            self.transport.close()
            if on_timeout is not None:
                on_timeout()

    HeaderDeadlineProtocol.__name__ = HeaderDeadlineProtocol.__qualname__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadlineProtocol
