"""What the standard ``OTEL_*`` environment variables ask of tracing, read once for both processes that trace: the
gateway (OpenTelemetry's SDK) and Triton (its own OpenTelemetry mode, configured only by ``--trace-config`` flags,
which ``triton_flags`` writes from the same variables).

Tracing is on when an OTLP endpoint is named (``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, used as is, or
``OTEL_EXPORTER_OTLP_ENDPOINT`` + ``/v1/traces``), unless ``OTEL_SDK_DISABLED=true`` or ``OTEL_TRACES_EXPORTER=none``.
Both export OTLP over HTTP. Nothing here imports OpenTelemetry: Triton's launcher and a service with tracing off
never load it.

Sampling: Triton traces every request that arrives with a trace context, whatever its sampled flag (Triton's rule),
so the gateway passes a context on only for the requests it sampled, and Triton's own ``rate`` applies to requests
without one, from the sampler's rule for roots. Behind the gateway, Triton runs ``parentbased_always_off``: it traces
exactly what the gateway sampled.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

GATEWAY_SERVICE = "vgg-serve-gateway"
UNTRACED_ROUTES = "/healthz,/readyz,/metrics"  # probes and scrapes: a trace every second says nothing
TRITON_SERVICE = "vgg-serve-triton"
BEHIND_GATEWAY = {"OTEL_TRACES_SAMPLER": "parentbased_always_off"}
SAMPLERS = ("always_on", "always_off", "traceidratio")
# The batch span processor's settings, standard variables that Triton takes as flags of the same meaning.
TRITON_BATCH_FLAGS = {"OTEL_BSP_SCHEDULE_DELAY": "bsp_schedule_delay", "OTEL_BSP_MAX_QUEUE_SIZE": "bsp_max_queue_size",
                      "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "bsp_max_export_batch_size"}


class TelemetryConfigError(ValueError):
    """An ``OTEL_*`` variable that can't be honoured; the message names it."""


@dataclass(frozen=True)
class TraceExport:
    endpoint: str  # the OTLP/HTTP traces URL
    service_name: str
    resource: dict[str, str] = field(default_factory=dict)  # OTEL_RESOURCE_ATTRIBUTES, service.name excluded
    root_rate: int = 1  # Triton's `rate` for requests without a context: 1 of every N, 0 none
    batch: dict[str, str] = field(default_factory=dict)  # Triton's bsp_* settings
    excluded_urls: str = UNTRACED_ROUTES  # the gateway's requests left untraced (comma-separated patterns)

    def triton_flags(self) -> list[str]:
        """Triton's flags for this export: OpenTelemetry mode, every sampled request, its timestamps as spans."""
        flags = ["--trace-config=mode=opentelemetry", f"--trace-config=rate={self.root_rate}",
                 "--trace-config=count=-1", "--trace-config=level=TIMESTAMPS",
                 f"--trace-config=opentelemetry,url={self.endpoint}",
                 f"--trace-config=opentelemetry,resource=service.name={self.service_name}"]
        flags += [f"--trace-config=opentelemetry,resource={key}={value}" for key, value in self.resource.items()]
        flags += [f"--trace-config=opentelemetry,{name}={value}" for name, value in self.batch.items()]
        return flags


def trace_export(env: Mapping[str, str], default_service: str) -> TraceExport | None:
    """The export the environment asks for, or None when tracing is off; TelemetryConfigError when a variable is
    malformed."""
    value = {name: text.strip() for name, text in env.items() if name.startswith("OTEL_")}
    if value.get("OTEL_SDK_DISABLED", "").lower() == "true" or value.get("OTEL_TRACES_EXPORTER", "") == "none":
        return None
    endpoint = value.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or ""
    if not endpoint and value.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        endpoint = value["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    if not endpoint:
        return None
    if not endpoint.startswith(("http://", "https://")):
        raise TelemetryConfigError(f"OTEL_EXPORTER_OTLP_ENDPOINT must be an http:// or https:// URL, not {endpoint!r}")
    resource = _key_values(value.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    service = value.get("OTEL_SERVICE_NAME") or resource.get("service.name") or default_service
    resource.pop("service.name", None)
    batch = {}
    for name, flag in TRITON_BATCH_FLAGS.items():
        if value.get(name):
            if not value[name].isdigit():
                raise TelemetryConfigError(f"{name}: expected a whole number, got {value[name]!r}")
            batch[flag] = value[name]
    excluded = value.get("OTEL_PYTHON_FASTAPI_EXCLUDED_URLS", UNTRACED_ROUTES)
    return TraceExport(endpoint, service, resource, root_rate(value), batch, excluded)


def root_rate(env: Mapping[str, str]) -> int:
    """Triton's `rate` (1 of every N requests) for requests that arrive without a trace context: the sampler's
    rule for roots (a ``parentbased_`` sampler's too)."""
    sampler = env.get("OTEL_TRACES_SAMPLER", "") or "parentbased_always_on"
    root = sampler.removeprefix("parentbased_")
    if root not in SAMPLERS:
        raise TelemetryConfigError(f"OTEL_TRACES_SAMPLER={sampler!r}: expected one of "
                                   f"{', '.join(SAMPLERS)}, optionally prefixed with parentbased_")
    if root != "traceidratio":
        return int(root == "always_on")
    text = env.get("OTEL_TRACES_SAMPLER_ARG", "") or "1.0"
    try:
        ratio = float(text)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        raise TelemetryConfigError(f"OTEL_TRACES_SAMPLER_ARG={text!r}: expected a ratio in [0, 1]")
    return round(1 / ratio) if ratio else 0


def _key_values(text: str) -> dict[str, str]:
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise TelemetryConfigError(f"OTEL_RESOURCE_ATTRIBUTES: expected key=value pairs, got {item!r}")
        pairs[key.strip()] = value.strip()
    return pairs
