"""Dagster's stability warnings, silenced for a user (the CLI and the step processes it starts).

How a failure is reported to a person lives in core/platform/reporting.py.
"""

from __future__ import annotations

import warnings


def silence_dagster_stability_warnings() -> None:
    """Dagster flags APIs we rely on (data versions, asset checks) as beta/preview on every use: noise
    for a user. Called by the CLI and by the step processes it starts (definitions.job_of_home)."""
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview).*")
    warnings.filterwarnings("ignore", message=r".*is (in beta|in preview|experimental).*")
