"""Gateway settings: one frozen object built from flags, falling back to environment variables, then defaults.

Every knob can come from the environment (``VGG_GATEWAY_*``) so containers need no command line, and from flags so
a developer can override one value without touching the environment.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from server.telemetry import GATEWAY_SERVICE, TelemetryConfigError, TraceExport, trace_export
from server.triton_access import KEY_ENV, KEY_FILE_ENV, AccessKeyError, is_loopback, read_key

ENV_PREFIX = "VGG_GATEWAY_"
ACCESS_LOG_FORMATS = ("json", "text", "off")


class ConfigError(ValueError):
    """A setting is invalid or unsafe; the gateway refuses to start."""


@dataclass(frozen=True)
class Settings:
    """Everything the gateway needs to know; immutable once the app is built."""

    triton_urls: tuple[str, ...] = ("127.0.0.1:8000",)
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: frozenset[str] = field(default_factory=frozenset)
    triton_key: str | None = field(default=None, repr=False)  # Triton's access key (server/triton_access.py)
    allow_open: bool = False
    default_pipeline: str | None = None  # None: "fast" if served, else the first pipeline by name
    max_body_bytes: int = 20 * 1024 * 1024
    max_batch_files: int = 32
    max_top_k: int = 1000
    max_inflight: int = 64  # requests being served at once
    max_queue: int = 256  # requests waiting for a slot; beyond this: 429
    queue_timeout_s: float = 10.0  # waiting longer than this for a slot: 503
    triton_timeout_s: float = 30.0  # one inference; beyond this: 504
    body_timeout_s: float = 30.0  # receiving the request body; beyond this: 408
    health_interval_s: float = 1.0  # how often Triton endpoints are probed
    dns_refresh_s: float = 5.0  # how often a --triton-url that is a name is re-resolved (one endpoint per address)
    catalog_refresh_s: float = 15.0  # how often pipeline metadata is re-read from Triton
    batch_concurrency: int = 8  # concurrent Triton requests for one batch request
    retry_after_s: int = 1
    log_level: str = "info"
    access_log: str = "json"  # one line per request: "json", "text" or "off"
    tracing: TraceExport | None = None  # from the standard OTEL_* variables (server/telemetry.py); None: off
    admin_keys: frozenset[str] = field(default_factory=frozenset, repr=False)  # the rollout admin route's; none: off
    shadow_log: Path = Path(tempfile.gettempdir()) / "vgg-serve" / "shadow-disagreements.jsonl"
    shadow_busy_inflight: int = 1  # users' requests in flight from which shadow copies wait (and, queued, drop)

    def validate(self) -> Settings:
        """Raise ConfigError on nonsense and on an open, non-loopback bind without an explicit opt-in."""
        if not self.triton_urls:
            raise ConfigError("at least one --triton-url is required")
        for url in self.triton_urls:
            check_triton_url(url)
        positive = {
            "max_body_bytes": self.max_body_bytes, "max_batch_files": self.max_batch_files,
            "max_top_k": self.max_top_k, "max_inflight": self.max_inflight, "queue_timeout_s": self.queue_timeout_s,
            "triton_timeout_s": self.triton_timeout_s, "body_timeout_s": self.body_timeout_s,
            "health_interval_s": self.health_interval_s, "catalog_refresh_s": self.catalog_refresh_s,
            "batch_concurrency": self.batch_concurrency, "dns_refresh_s": self.dns_refresh_s,
            "shadow_busy_inflight": self.shadow_busy_inflight,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.access_log not in ACCESS_LOG_FORMATS:
            raise ConfigError(f"access_log must be one of {', '.join(ACCESS_LOG_FORMATS)}, got {self.access_log!r}")
        if self.max_queue < 0:
            raise ConfigError(f"max_queue must be >= 0, got {self.max_queue}")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port out of range: {self.port}")
        if any(not key.strip() or any(c.isspace() for c in key) for key in self.api_keys | self.admin_keys):
            raise ConfigError("API keys must be non-empty and contain no whitespace")
        if self.admin_keys & self.api_keys:
            raise ConfigError("an admin key must not also be an API key")
        if not self.api_keys and not self.allow_open and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to serve on non-loopback address {self.host!r} without API keys: "
                f"set --api-key / {ENV_PREFIX}API_KEYS, or pass --allow-open to run open on purpose")
        return self


def check_triton_url(url: str) -> None:
    """ConfigError unless ``url`` is a Triton HTTP endpoint as the gateway reaches it: HOST:PORT or http://HOST:PORT."""
    address = url.removeprefix("http://").rstrip("/")
    host, _, port = address.rpartition(":")
    if "://" in address:
        raise ConfigError(f"--triton-url {url!r}: only plain http:// is supported (put TLS in front of the gateway)")
    if not host or "/" in address or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--triton-url {url!r} is not HOST:PORT of Triton's HTTP endpoint (e.g. 127.0.0.1:8000)")


def _split_list(value: str) -> list[str]:
    return [item.strip() for item in value.replace("\n", ",").split(",") if item.strip()]


def _read_keys_file(path: str) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _truthy(value: str) -> bool:
    return value.strip().lower() in {"1", "true", "yes", "on"}


_NUMERIC = {
    "port": int, "max_body_bytes": int, "max_batch_files": int, "max_top_k": int, "max_inflight": int,
    "max_queue": int, "queue_timeout_s": float, "triton_timeout_s": float, "body_timeout_s": float,
    "health_interval_s": float, "catalog_refresh_s": float, "batch_concurrency": int, "retry_after_s": int,
    "dns_refresh_s": float, "shadow_busy_inflight": int,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server.gateway",
        description="HTTP gateway in front of one or more Triton servers serving the VGG pipelines. "
                    f"Every flag also reads an environment variable {ENV_PREFIX}<NAME> (e.g. {ENV_PREFIX}PORT).")
    parser.add_argument("--triton-url", action="append", dest="triton_urls", metavar="HOST:PORT",
                        help="Triton HTTP endpoint; repeat for replicas (env TRITON_URLS, comma-separated); a name "
                             "means every address it resolves to, re-resolved every --dns-refresh-s")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--api-key", action="append", dest="api_keys", metavar="TOKEN",
                        help="accepted bearer token; repeat for several (env API_KEYS, comma-separated)")
    parser.add_argument("--api-keys-file", help="file with one bearer token per line (env API_KEYS_FILE)")
    parser.add_argument("--admin-key", action="append", dest="admin_keys", metavar="TOKEN",
                        help="bearer token of the rollout admin route (promote, roll back); repeat for several "
                             "(env ADMIN_KEYS, comma-separated); without one the route is off")
    parser.add_argument("--shadow-log", help="JSON-lines file of shadow disagreements (env SHADOW_LOG; default "
                                             "$TMPDIR/vgg-serve/shadow-disagreements.jsonl)")
    parser.add_argument("--triton-key-file",
                        help=f"Triton's access key, sent with every call to Triton (env {KEY_ENV} or {KEY_FILE_ENV})")
    parser.add_argument("--allow-open", action="store_true", default=None,
                        help="serve without API keys on a non-loopback address")
    parser.add_argument("--default-pipeline")
    for name, kind in _NUMERIC.items():
        if name != "port":
            parser.add_argument("--" + name.replace("_", "-"), type=kind, dest=name)
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", help="one line per request: json (default), text or off (env ACCESS_LOG)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration and exit without serving")
    return parser


def load_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
                  ) -> tuple[Settings, argparse.Namespace]:
    """Flags win over environment variables, which win over defaults (API keys: all sources count); validated."""
    env = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)
    values: dict[str, object] = {}

    def pick(name: str, flag_value: object) -> object | None:
        if flag_value is not None:
            return flag_value
        return env.get(ENV_PREFIX + name.upper())

    urls = args.triton_urls or _split_list(env.get(ENV_PREFIX + "TRITON_URLS", ""))
    if urls:
        values["triton_urls"] = tuple(urls)
    # API keys add up across sources (flag, environment, file): rotating a key means accepting two for a while.
    keys = list(args.api_keys or []) + _split_list(env.get(ENV_PREFIX + "API_KEYS", ""))
    for keys_file in {args.api_keys_file, env.get(ENV_PREFIX + "API_KEYS_FILE")} - {None, ""}:
        keys += _read_keys_file(str(keys_file))
    values["api_keys"] = frozenset(keys)
    values["admin_keys"] = frozenset(list(args.admin_keys or []) + _split_list(env.get(ENV_PREFIX + "ADMIN_KEYS", "")))
    shadow_log = pick("shadow_log", args.shadow_log)
    if shadow_log:
        values["shadow_log"] = Path(str(shadow_log))
    try:
        values["triton_key"] = read_key(args.triton_key_file, env)
    except AccessKeyError as exc:
        raise ConfigError(str(exc)) from None
    try:
        values["tracing"] = trace_export(env, GATEWAY_SERVICE)
    except TelemetryConfigError as exc:
        raise ConfigError(str(exc)) from None
    for name in ("host", "default_pipeline", "log_level", "access_log"):
        value = pick(name, getattr(args, name))
        if value:
            values[name] = value
    allow_open = args.allow_open if args.allow_open is not None else env.get(ENV_PREFIX + "ALLOW_OPEN")
    if allow_open is not None:
        values["allow_open"] = allow_open if isinstance(allow_open, bool) else _truthy(allow_open)
    for name, kind in _NUMERIC.items():
        value = pick(name, getattr(args, name))
        if value is not None:
            try:
                values[name] = kind(value)
            except ValueError as exc:
                raise ConfigError(f"{name}: not a number: {value!r}") from exc
    return Settings(**values).validate(), args  # type: ignore[arg-type]
