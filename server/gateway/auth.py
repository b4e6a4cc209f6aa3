"""Optional bearer-token authentication: when keys are configured, /v1 and /metrics require one of them."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from fastapi import Request

from server.gateway.errors import ApiError


def bearer_auth(api_keys: frozenset[str]) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency checking ``Authorization: Bearer <key>`` in constant time; a no-op without keys."""
    keys = [key.encode() for key in api_keys]

    async def check(request: Request) -> None:
        if not keys:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "missing bearer token", {"WWW-Authenticate": "Bearer"})
        given = token.strip().encode()
        # Compare against every key, without early exit, so timing doesn't reveal which one nearly matched.
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            raise ApiError(401, "unauthorized", "invalid API key",
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    return check


def admin_auth(admin_keys: frozenset[str]) -> Callable[[Request], Awaitable[None]]:
    """The admin routes' check: one of the admin keys (never an API key); 403 when no admin key is configured."""
    if not admin_keys:
        async def disabled(_: Request) -> None:
            raise ApiError(403, "admin_disabled", "the admin routes are off: start the gateway with --admin-key")
        return disabled
    return bearer_auth(admin_keys)
