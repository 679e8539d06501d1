"""Secrets out of every message: the one place that knows what of a URL must never be shown.

The platform is configured with URLs that may carry credentials: `MLPLATFORM_PG_URL`
(`postgresql://user:password@host/db`, or `?password=` in its query) and the `[storage]` locations
(fsspec URLs such as `ftp://user:password@host/path`). Such a URL, or a piece of it, reaches messages
in three ways: the platform's own messages name a location; drivers quote what they could not parse
(psycopg2: `invalid percent-encoded token: "pa%ss"`, or the whole URI for an unclosed `[`); and
exception chains carry those driver messages into tracebacks, logs and Dagster's event log.

So:

- The platform's messages show a URL only as `redact_url(url)`: its userinfo (user name and password)
  becomes `***`, and so does the value of every password-like query parameter (`password`, `secret`,
  `token`, ...).
- Text from elsewhere goes through `redact(text, secrets)` before it is printed or logged: the same
  masking for every URL in it, plus every known secret wherever it appears, which catches a driver
  quoting only a fragment. `url_secrets(url)` gives a URL's secrets even when the URL is malformed (a
  raw `%`, an unclosed `[`), because that is when drivers quote them.
- Exceptions that carry a driver's message are raised `from None` with a redacted message, so no chain
  takes the original text anywhere.

A user name inside a driver's own sentence (PostgreSQL's `password authentication failed for user
"bob"`) stays: it names who failed, and masking every occurrence of a short common word would garble
messages. Inside a URL the user name is masked with the password.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

MASK = "***"

# scheme://userinfo@ -- userinfo runs to the last '@' before whitespace or a quote, so a raw '@' or '/'
# in a malformed password is masked too.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^\s\"'<>@]*(?:@[^\s\"'<>@]*)*@")
# key=value where the key names a secret: URL query parameters and libpq "key=value" strings alike.
_SECRET_PARAMETER = re.compile(
    r"(?P<key>\b[\w.\-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key)[\w.\-]*)"
    r"(?P<sep>\s*=\s*)(?P<value>'[^']*'|\"[^\"]*\"|[^&\s;,\"'<>]+)",
    re.IGNORECASE,
)


def url_secrets(url: str | None) -> tuple[str, ...]:
    """The secrets written in `url`, malformed or not: its userinfo's password (as written and
    percent-decoded) and the values of password-like query parameters. () when it has none."""
    if not url:
        return ()
    found: list[str] = []
    _, separator, rest = url.partition("://")
    if separator and "@" in rest:
        # The last '@' ends the userinfo when the password holds a raw '@'; the first one when a '@'
        # appears later (a query parameter). Both candidates are secrets: masking more never leaks.
        for userinfo in {rest[: rest.rfind("@")], rest[: rest.find("@")]}:
            _user, colon, password = userinfo.partition(":")
            found += [password, unquote(password)] if colon else []
    for match in _SECRET_PARAMETER.finditer(url):
        value = match.group("value").strip("'\"")
        found += [value, unquote(value)]
    return tuple(secret for secret in dict.fromkeys(found) if secret)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with URL userinfo, password-like parameters and each of `secrets` replaced by `***`."""
    text = _USERINFO.sub(lambda match: f"{match.group('scheme')}{MASK}@", text)
    text = _SECRET_PARAMETER.sub(lambda match: f"{match.group('key')}{match.group('sep')}{MASK}", text)
    for secret in sorted(set(secrets), key=len, reverse=True):  # longest first: no half-masked secret
        if secret:
            text = text.replace(secret, MASK)
    return text


def redact_url(url: str) -> str:
    """`url` as the platform shows it: no user name, password or secret parameter."""
    return redact(url, url_secrets(url))
