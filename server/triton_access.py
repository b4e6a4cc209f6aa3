"""Triton's access key: which of its APIs need it, where the key comes from, and the flags that enforce it.

Triton has no authentication of its own beyond a header it compares (``--http-restricted-api`` and
``--grpc-restricted-protocol``). The launcher turns every API except health checks into a keyed one, so the only
open door on Triton's HTTP and gRPC ports is ``/v2/health/*``; the metrics port stays open (it reveals request
counts and timings, not models or data). The gateway, the launcher's healer and the client's direct mode send the
key as the ``vgg-triton-key`` header.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from client.contract import KEY_ENV, KEY_FILE_ENV, KEY_HEADER

LOOPBACK_NAMES = {"localhost", "ip6-localhost", "ip6-loopback"}
RESTRICTED_APIS = ("metadata", "inference", "shared-memory", "model-config", "model-repository", "statistics",
                   "trace", "logging")


class AccessKeyError(ValueError):
    """The key's source is unreadable or the key is unusable; the message says which."""


def read_key(key_file: str | Path | None = None, environ: Mapping[str, str] | None = None) -> str | None:
    """The key from ``key_file``, else ``$VGG_TRITON_KEY``, else the file named by ``$VGG_TRITON_KEY_FILE``; None
    when none is set. The file holds the key on its first non-empty line."""
    env = os.environ if environ is None else environ
    if key_file is None and env.get(KEY_ENV):
        return check_key(env[KEY_ENV].strip(), KEY_ENV)
    path = key_file or env.get(KEY_FILE_ENV)
    if not path:
        return None
    try:
        lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise AccessKeyError(f"cannot read the Triton key file {path}: {getattr(exc, 'strerror', None) or exc}") \
            from None
    if not lines:
        raise AccessKeyError(f"the Triton key file {path} is empty")
    return check_key(lines[0], str(path))


def check_key(key: str, source: str) -> str:
    """Triton splits its flag on ',' ':' and '='; a key that contains them (or spaces) would silently break it."""
    if len(key) < 16 or not all(c.isalnum() or c in "-_." for c in key):
        raise AccessKeyError(f"the Triton key from {source} must be at least 16 characters of letters, digits, "
                             "'-', '_' or '.'")
    return key


def new_key() -> str:
    return secrets.token_urlsafe(24)


def write_key_file(path: Path, key: str) -> Path:
    """Readable by this user only: the key is a password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)
    return path


def restriction_flags(key: str) -> list[str]:
    """tritonserver flags that refuse every API but health without the key, on HTTP and gRPC alike."""
    apis = ",".join(RESTRICTED_APIS)
    return [f"--http-restricted-api={apis}:{KEY_HEADER}={key}",
            f"--grpc-restricted-protocol={apis}:{KEY_HEADER}={key}"]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach; anything unparsable counts as public."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def keyed_request(http_url: str, path: str, key: str | None, body: dict | None = None,
                  timeout_s: float = 120.0) -> dict:
    """GET (or POST ``body`` to) one of Triton's keyed HTTP APIs at ``http_url`` ("host:port"): its JSON answer;
    OSError naming Triton's status and message when it refuses."""
    request = urllib.request.Request(f"http://{http_url}{path}", method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode())
    if key:
        request.add_header(KEY_HEADER, key)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code}: {exc.read()[:300].decode(errors='replace')}") from None
    return json.loads(payload) if payload.strip() else {}
