"""Run the endpoint on uvicorn (`mlplatform serve` calls `run_server`; `python -m` runs it directly).

The registry must answer before the endpoint starts: with its database down (MLPLATFORM_PG_URL
unreachable) the server would only fail inside the app's startup, with a traceback. Instead `run_server`
reads the production alias once first and refuses to start with one line (`ServeError`), and both
entry points exit 1: a supervisor (systemd, Kubernetes) restarts it as it would any failed start, and
nobody is shown a server that can never become ready. Once running, a database outage does not stop
the endpoint: the model it serves stays, and the holder's poll retries the registry. The settings are
loaded once, first (`mlplatform serve` or `main`): a bad one is refused the same way, in one line.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from mlplatform.core.monitoring.alerts import alert_store_from_env
from mlplatform.core.platform.errors import UserError
from mlplatform.core.platform.home import PlatformHome, api_keys_from_env
from mlplatform.core.platform.records import RecordsError
from mlplatform.core.platform.reporting import one_line, secrets_of
from mlplatform.core.platform.settings import Settings
from mlplatform.core.release.registry import ModelRegistry
from mlplatform.serving.app import create_app
from mlplatform.serving.connection import with_header_deadline
from mlplatform.serving.model_holder import ModelHolder

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class ServeError(UserError, RuntimeError):
    """The endpoint cannot start (one line; the CLI and `python -m` exit 1)."""


class _ReadinessFirstServer(uvicorn.Server):
    """On SIGINT/SIGTERM readiness goes false before uvicorn stops accepting and drains in-flight requests."""

    def __init__(self, config: uvicorn.Config, holder: ModelHolder) -> None:
        super().__init__(config)
        self._holder = holder

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._holder.begin_shutdown()
        super().handle_exit(sig, frame)


def run_server(
    home: PlatformHome, settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> None:
    """Serve the production model of `home` by `settings` until SIGINT/SIGTERM; API keys come from
    MLPLATFORM_API_KEYS (ApiKeysError, before anything starts, when it is set but names no key)."""
    api_keys = api_keys_from_env(os.environ)
    home.ensure()
    registry = ModelRegistry.for_home(home, settings.storage)
    try:
        registry.production_pointer()  # the registry answers, or the endpoint does not start
    except RecordsError as exc:
        raise ServeError(f"the endpoint cannot start: {exc}") from None
    alerts = alert_store_from_env(home, os.environ, settings.alerts)
    app = create_app(home, settings, api_keys=api_keys, registry=registry, alerts=alerts)
    serving = settings.serving
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # httptools' parser (h11 without it), with a deadline for each request's headers.
        http=with_header_deadline(
            AutoHTTPProtocol, serving.header_timeout_s, app.state.serving.metrics.count_header_timeout
        ),
        access_log=False,  # per-request logging would cost more than the inference; metrics count requests
        timeout_graceful_shutdown=serving.graceful_shutdown_s,
        log_level="info",
    )
    _ReadinessFirstServer(config, app.state.serving.holder).run()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m mlplatform.serving.server [--host H] [--port P]` on $MLPLATFORM_HOME."""
    parser = argparse.ArgumentParser(prog="python -m mlplatform.serving.server", description=__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    home = PlatformHome.from_env()
    settings: Settings | None = None
    try:
        settings = Settings.load(home.settings_file)  # a bad setting: one line, before anything starts
        run_server(home, settings, args.host, args.port)
    except Exception as exc:  # as the CLI reports it: one line on stderr, exit 1
        storage = settings.storage if settings is not None else None
        print(f"error: {one_line(exc, home.root / 'logs', secrets_of(home, storage))}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
