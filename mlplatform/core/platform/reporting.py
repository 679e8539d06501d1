"""One line for the user, the traceback for the log: how the command line and the server report a failure.

Which is which goes by type (core/platform/errors.py): a `UserError` is told in one line; anything else
is a bug, told in one line too, with its traceback appended to `<home>/logs/cli-errors.log`.

Neither ever shows credentials: both pass through `core.platform.redaction.redact` with the secrets of the
home (`secrets_of`: MLPLATFORM_PG_URL and the `[storage]` URLs), because a driver's message anywhere in an
exception chain may quote a URL or a piece of one.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.redaction import redact, url_secrets
from mlplatform.core.platform.settings import StorageRules


def secrets_of(home: PlatformHome, storage: StorageRules | None) -> tuple[str, ...]:
    """The credentials configured for `home` that no message may show (see core/platform/redaction.py):
    its pg_url's and those of the `[storage]` URLs (`storage` None: the settings did not load, and the
    error that says so shows none of them; URLs in any message are masked anyway)."""
    urls = [home.pg_url, *(storage.urls() if storage is not None else ())]
    return tuple(secret for url in urls if isinstance(url, str) for secret in url_secrets(url))


def one_line(exc: BaseException, log_dir: Path, secrets: Iterable[str] = ()) -> str:
    """The message to print; a bug (not a UserError) gets its traceback written under log_dir. Both are
    redacted: no URL credentials, none of `secrets`."""
    secrets = tuple(secrets)
    text = redact(str(exc).strip(), secrets)
    if isinstance(exc, UserError):
        return text.splitlines()[0] if text else type(exc).__name__
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / "cli-errors.log"
    with log_file.open("a", encoding="utf-8") as handle:
        handle.write(f"--- {datetime.now(UTC).isoformat()}\n")
        handle.write(redact("".join(traceback.format_exception(exc)), secrets))
    first = text.splitlines()[0] if text else ""
    return f"unexpected {type(exc).__name__}: {first} (traceback in {log_file})"
