"""What an inference request must pass before it is scored: a JSON content type, a whole body within
its size and time limits, then a concurrency slot -- in that order, each refusal a 4xx/503 with a
one-line reason.

1. **Content type** (415), checked before a byte of the body is read. The inference routes take JSON:
   `application/json` or an `application/*+json` type, UTF-8 when a charset is named. A browser
   posts `text/plain`, form and multipart bodies to another origin without asking first (no CORS
   preflight), so accepting them would let any web page a user opens submit reviews to an endpoint
   the browser can reach; a JSON type needs a preflight, which this endpoint never grants. Two more
   cases are accepted because no browser can send them unasked:
   - no Content-Type at all from a client that sends no `Origin` (Triton's `tritonclient` sends no
     Content-Type; a browser sends `Origin` with every POST, so a page posting a typeless body is
     still refused, and so is an empty Content-Type). `curl -d` sends a form type: refused;
   - the binary tensor data extension (`Inference-Header-Content-Length`, Open Inference Protocol
     route only: serving/protocol.py) with no Content-Type or `application/octet-stream`: that header
     is not one a page may add without a preflight either.
2. **The body**, read to its end: 413 as soon as it is known to exceed `[serving] max_body_bytes`, 408
   when it is not complete within `[serving] body_timeout_s` of the headers. A 408 closes the
   connection: the rest of a body that stopped arriving cannot be told from the next request.
3. **A slot** (503 beyond `[serving] max_concurrency`), taken only once the body is complete and held
   while the request is scored and its capture made durable. A client that stalls mid-body holds a
   connection until its deadline, never a slot, so slow clients cannot lock inference out.

A request's headers have their own deadline, below the app (serving/connection.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from mlplatform.serving.protocol import (
    BINARY_HEADER,
    BINARY_TYPE,
    ASGIReceive,
    ASGIScope,
    RequestRefused,
    read_body,
)

_JSON_TYPE = b"application/json"
_JSON_SUFFIX = b"+json"
_UTF8_CHARSETS = frozenset({b"utf-8", b"utf8"})
UNSUPPORTED_TYPE = "inference takes JSON: send Content-Type: application/json"


def _type_problem(value: bytes, *, binary: bool) -> RequestRefused | None:
    media_type, *parameters = value.split(b";")
    media_type = media_type.strip().lower()
    if binary and media_type == BINARY_TYPE:
        return None
    is_json = media_type == _JSON_TYPE or (
        media_type.startswith(b"application/") and media_type.endswith(_JSON_SUFFIX)
    )
    if not is_json:
        shown = value.decode("latin-1")[:80]
        return RequestRefused(415, f"{UNSUPPORTED_TYPE} (got {shown!r})")
    for parameter in parameters:
        key, _, given = parameter.partition(b"=")
        if key.strip().lower() == b"charset" and given.strip().strip(b'"').lower() not in _UTF8_CHARSETS:
            return RequestRefused(415, "JSON bodies are UTF-8: drop the charset or name utf-8")
    return None


def admit_content(scope: ASGIScope, *, binary_route: bool) -> int | None:
    """Check the content type (module docstring); return the binary tensor data's JSON header length
    (`Inference-Header-Content-Length`), None for a JSON body. Raises RequestRefused (415, 400)."""
    content_types, origin, header_length = [], False, None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_types.append(value)
        elif name == b"origin":
            origin = True
        elif name == BINARY_HEADER:
            if not binary_route:
                raise RequestRefused(
                    400,
                    "binary tensor data (Inference-Header-Content-Length) is for the Open Inference "
                    "Protocol route",
                )
            if not value.isdigit() or header_length is not None:
                raise RequestRefused(400, "Inference-Header-Content-Length must be one non-negative integer")
            header_length = int(value)
    for value in content_types:
        problem = _type_problem(value, binary=header_length is not None)
        if problem is not None:
            raise problem
    if not content_types and origin and header_length is None:
        raise RequestRefused(415, f"{UNSUPPORTED_TYPE} (no Content-Type given)")
    return header_length


async def read_whole_body(scope: ASGIScope, receive: ASGIReceive, *, limit: int, timeout_s: float) -> bytes:
    """The body, refused with a 413 over `limit` bytes, or a 408 (closing) when not whole in `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):
            return await read_body(scope, receive, limit)
    except TimeoutError:
        raise RequestRefused(
            408, f"request body not complete within {timeout_s:g} s ([serving] body_timeout_s)", close=True
        ) from None


class ConcurrencySlots:
    """Inference requests past their body, being scored or captured; only the event loop's thread uses it."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"[serving] max_concurrency must be at least 1, got {limit}")
        self.limit = limit
        self.taken = 0

    @property
    def full(self) -> bool:
        return self.taken >= self.limit

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """One slot for the block; a fast 503 when all are taken (never a queue)."""
        if self.full:
            raise RequestRefused(503, f"over capacity: {self.limit} requests in flight")
        self.taken += 1
        try:
            yield
        finally:
            self.taken -= 1
