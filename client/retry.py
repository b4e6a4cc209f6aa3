"""Backoff policy shared by the sync and async clients: exponential with jitter, honouring Retry-After."""

from __future__ import annotations

import random
from dataclasses import dataclass

from client.errors import ClientError


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; waits base, 2*base, 4*base ... (capped), or what the server asked for."""

    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay(self, attempt: int, error: ClientError) -> float | None:
        """Seconds to wait before try ``attempt + 1``, or None to give up and raise ``error``."""
        if not error.retryable or attempt + 1 >= self.attempts:
            return None
        backoff = min(self.max_delay_s, self.base_delay_s * 2**attempt) * random.uniform(0.5, 1.0)
        if error.retry_after is not None:
            return min(self.max_delay_s, max(error.retry_after, backoff))
        return backoff

