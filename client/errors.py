"""The one exception type of the SDK, carrying the gateway's error code so callers can branch on it."""

from __future__ import annotations

from typing import Any

# Worth retrying: the service was busy or unreachable, not the request wrong.
RETRYABLE_STATUS = frozenset({429, 503})
CONNECTION_ERROR = "connection_error"


class ClientError(Exception):
    """A failed call: ``status`` is the HTTP status (0 when no answer came), ``code`` the gateway's error code."""

    def __init__(self, status: int, code: str, message: str, retry_after: float | None = None,
                 request_id: str | None = None) -> None:
        """``request_id``: the gateway's ID of the request that failed (its X-Request-ID), to find it in its logs."""
        super().__init__(f"{code} ({status}): {message}" if status else f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.request_id = request_id

    @property
    def retryable(self) -> bool:
        return self.status in RETRYABLE_STATUS or self.code == CONNECTION_ERROR

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.request_id:
            out["request_id"] = self.request_id
        return out


def from_response(status: int, body: Any, headers: dict[str, str] | None = None) -> ClientError:
    """Build a ClientError from an error response of the gateway ({"error": {"code", "message"}})."""
    error = body.get("error") if isinstance(body, dict) else None
    code = str(error.get("code", "http_error")) if isinstance(error, dict) else "http_error"
    message = str(error.get("message", "")) if isinstance(error, dict) else str(body)[:300]
    retry_after = None
    raw = (headers or {}).get("retry-after")
    if raw:
        try:
            retry_after = float(raw)
        except ValueError:
            retry_after = None
    request_id = (error.get("request_id") if isinstance(error, dict) else None) or (headers or {}).get("x-request-id")
    return ClientError(status, code, message or f"HTTP {status}", retry_after, request_id)
