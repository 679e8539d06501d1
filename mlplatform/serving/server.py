"""Run the endpoint on uvicorn (`mlplatform serve` calls `run_server`; `python -m` runs it directly)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from types import FrameType

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from mlplatform.core.alerts import alert_store_from_env
from mlplatform.core.home import ApiKeysError, PlatformHome, api_keys_from_env
from mlplatform.core.settings import Settings
from mlplatform.serving.app import ServingConfig, create_app
from mlplatform.serving.connection import with_header_deadline
from mlplatform.serving.model_holder import ModelHolder

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class _ReadinessFirstServer(uvicorn.Server):
    """On SIGINT/SIGTERM readiness goes false before uvicorn stops accepting and drains in-flight requests."""

    def __init__(self, config: uvicorn.Config, holder: ModelHolder) -> None:
        super().__init__(config)
        self._holder = holder

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._holder.begin_shutdown()
        super().handle_exit(sig, frame)


def run_server(
    home: PlatformHome, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, settings: Settings | None = None
) -> None:
    """Serve the production model of `home` until SIGINT/SIGTERM; API keys come from MLPLATFORM_API_KEYS
    (ApiKeysError, before anything starts, when it is set but names no key)."""
    api_keys = api_keys_from_env(os.environ)
    settings = settings if settings is not None else Settings.load(home.settings_file)
    home.ensure()
    app = create_app(home, settings, api_keys=api_keys, alerts=alert_store_from_env(home, os.environ))
    serving = ServingConfig.from_settings(settings)
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
    try:
        run_server(PlatformHome.from_env(), args.host, args.port)
    except ApiKeysError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
