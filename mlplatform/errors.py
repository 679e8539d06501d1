"""One line for the user, the traceback for the log: how the CLI reports a failure.

Which is which goes by type (core/platform/errors.py): a `UserError` is told in one line; anything else
is a bug, told in one line too, with its traceback appended to `<home>/logs/cli-errors.log`.
"""

from __future__ import annotations

import traceback
import warnings
from datetime import UTC, datetime
from pathlib import Path

from mlplatform.core.platform.errors import UserError


def one_line(exc: BaseException, log_dir: Path) -> str:
    """The message to print; a bug (not a UserError) gets its traceback written under log_dir."""
    if isinstance(exc, UserError):
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    log_dir.mkdir(parents=True, exist_ok=True)
    log_file = log_dir / "cli-errors.log"
    with log_file.open("a", encoding="utf-8") as handle:
        handle.write(f"--- {datetime.now(UTC).isoformat()}\n")
        handle.write("".join(traceback.format_exception(exc)))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"unexpected {type(exc).__name__}: {first} (traceback in {log_file})"


def silence_dagster_stability_warnings() -> None:
    """Dagster flags APIs we rely on (data versions, asset checks) as beta/preview on every use: noise
    for a user. Called by the CLI and by the step processes it starts (definitions.job_of_home)."""
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview).*")
    warnings.filterwarnings("ignore", message=r".*is (in beta|in preview|experimental).*")
