"""The caller's OpenTelemetry trace context as W3C headers (``traceparent``, ``tracestate``), so that the gateway's
and Triton's spans join the caller's trace.

The client does not depend on OpenTelemetry: a caller with a context has imported it, so when it is not loaded there
is no context to pass on, and nothing is imported here.
"""

from __future__ import annotations

import sys


def trace_headers() -> dict[str, str]:
    """The current context's headers through the caller's configured propagator; {} without one."""
    if "opentelemetry.context" not in sys.modules:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier
