"""No part of a URL's credentials in a message: URLs as the platform shows them, driver text, chains."""

from __future__ import annotations

import pytest

from mlplatform.core.platform.records import (
    RecordsError,
    postgres_location,
    postgres_transaction,
    sqlalchemy_url,
)
from mlplatform.core.platform.redaction import redact, redact_url, url_secrets
from mlplatform.core.platform.storage import StorageConfigError, open_location

# (URL, the secrets in it): well-formed, and malformed in the ways that make drivers quote them.
PG_URLS = [
    ("postgresql://bob:s3cret-pw@db.example:5432/ml", ["s3cret-pw"]),
    ("postgresql://bob:pa%ss-s3cret@localhost:5432/db", ["pa%ss-s3cret"]),  # a raw '%'
    ("postgresql://bob:s3cret-pw@[::1:5432/db", ["s3cret-pw"]),  # an unclosed '['
    ("postgresql://bob:s3c@ret/pw@localhost/db", ["s3c@ret/pw"]),  # a raw '@' and '/'
    ("postgresql://bob:s3cret%2Dpw@localhost/db", ["s3cret%2Dpw", "s3cret-pw"]),  # percent-encoded
    ("postgresql://localhost/db?user=bob&password=s3cret-pw&sslmode=require", ["s3cret-pw"]),
    ("postgresql+psycopg2://bob:s3cret-pw@localhost/db?sslpassword=k3y-pass", ["s3cret-pw", "k3y-pass"]),
]


@pytest.mark.parametrize(("url", "secrets"), PG_URLS)
def test_a_url_is_shown_without_its_credentials(url: str, secrets: list[str]) -> None:
    shown = redact_url(url)
    assert not any(secret in shown for secret in secrets)
    assert "***" in shown and "bob:" not in shown
    assert set(secrets) <= set(url_secrets(url))


@pytest.mark.parametrize(("url", "secrets"), PG_URLS)
def test_a_driver_quoting_a_fragment_is_masked_by_the_known_secrets(url: str, secrets: list[str]) -> None:
    text = f'invalid dsn: invalid percent-encoded token: "{secrets[0]}" in "{url}"'
    masked = redact(text, url_secrets(url))
    assert not any(secret in masked for secret in secrets)
    assert masked.startswith("invalid dsn: invalid percent-encoded token:")


def test_text_without_credentials_is_left_alone() -> None:
    text = 'PostgreSQL records unavailable (database db on localhost:5432): connection refused, port "5432"'
    assert redact(text, url_secrets("postgresql://localhost/db")) == text
    assert redact_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert url_secrets(None) == () and url_secrets("") == ()


@pytest.mark.parametrize(("url", "secrets"), [case for case in PG_URLS if "[" in case[0] or "%ss" in case[0]])
def test_a_malformed_database_url_is_refused_in_one_line_without_its_secret(
    url: str, secrets: list[str]
) -> None:
    for attempt in (
        lambda: postgres_location(url),
        lambda: sqlalchemy_url(url),  # what dagster.yaml would get: refused before it is written
        lambda: postgres_transaction(url).__enter__(),
    ):
        with pytest.raises(RecordsError, match="not a valid PostgreSQL URL") as caught:
            attempt()
        message = str(caught.value)
        assert not any(secret in message for secret in secrets) and "\n" not in message
        # No chained driver exception carries the original text into a traceback or Dagster's event log.
        assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_an_unreachable_database_is_named_without_credentials() -> None:
    url = "postgresql://bob:s3cret-pw@127.0.0.1:1/db?connect_timeout=2"  # a port nothing listens on
    with (
        pytest.raises(RecordsError, match=r"unavailable \(database db on 127.0.0.1:1\)") as caught,
        postgres_transaction(url),
    ):
        pass
    assert "s3cret-pw" not in str(caught.value) and caught.value.__cause__ is None


@pytest.mark.parametrize(
    "url",
    [
        "nosuchscheme://bob:s3cret-pw@host/x",  # unknown scheme
        "ftp://bob:s3cret-pw@[host/x",  # cannot be opened
        "mlpnodriver://bob:s3cret-pw@host/x",  # its driver is not installed
    ],
)
def test_storage_url_errors_never_show_credentials(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fsspec.registry import known_implementations

    monkeypatch.setitem(known_implementations, "mlpnodriver", {"class": "mlp_no_such_package.FileSystem"})
    with pytest.raises(StorageConfigError) as caught:
        open_location(url)
    assert "s3cret-pw" not in str(caught.value) and "\n" not in str(caught.value)


def test_a_storage_location_with_credentials_shows_it_nowhere() -> None:
    location = open_location("memory://bob:s3cret-pw@bucket/prefix")
    location.put_bytes("a/blob", b"x")
    assert location.get_bytes("a/blob") == b"x"  # the real URL still opens it
    for shown in (location.url, location.url_of("a/blob"), repr(location)):
        assert "s3cret-pw" not in shown and "***@" in shown
    assert location == open_location("memory://bob:s3cret-pw@bucket/prefix")
    assert location != open_location("memory://bob:other-pw@bucket/prefix")
