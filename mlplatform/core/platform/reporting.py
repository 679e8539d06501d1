"""One line for the user, the traceback for the log: how the command line and the server report a failure.

Which is which goes by type (core/platform/errors.py): a `UserError` is told in one line; anything else
is a bug, told in one line too, with its traceback appended to `<home>/logs/cli-errors.log`.

Neither ever shows credentials: both pass through `core.platform.redaction.redact` with the secrets of the
home (`secrets_of`: MLPLATFORM_PG_URL and the `[storage]` URLs), because a driver's message anywhere in an
exception chain may quote a URL or a piece of one.
"""

from __future__ import annotations

import contextlib
import traceback
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.home import PlatformHome
from mlplatform.core.platform.redaction import redact, url_secrets


def secrets_of(home: PlatformHome) -> tuple[str, ...]:
    """The credentials configured for `home` that no message may show (see core/platform/redaction.py)."""
    from mlplatform.core.platform.settings import Settings

    urls = [home.pg_url]
    # Unreadable settings: the command reports that itself, and URLs in any message are masked anyway.
    with contextlib.suppress(Exception):
        urls += list(Settings.load(home.settings_file).section("storage").values())
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
