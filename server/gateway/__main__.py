"""``python -m server.gateway``: validate the configuration, refuse unsafe binds, then serve with uvicorn."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvicorn

from server.gateway.app import create_app
from server.gateway.config import ConfigError, load_settings
from server.gateway.http_protocol import JsonErrorHTTPProtocol


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings, args = load_settings(argv)
    except (ConfigError, OSError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        print(f"gateway: configuration ok ({len(settings.triton_urls)} Triton endpoint(s), "
              f"{'with' if settings.api_keys else 'without'} API keys, {settings.host}:{settings.port})")
        return 0
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # loop "auto" and JsonErrorHTTPProtocol (uvicorn's "auto" HTTP protocol): uvloop and httptools (pinned in
    # requirements.txt) when importable, else asyncio and h11; they cut the gateway's CPU per request
    # (bench/results/gateway.md).
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level,
                loop="auto", http=JsonErrorHTTPProtocol, access_log=False, server_header=False,
                timeout_graceful_shutdown=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
