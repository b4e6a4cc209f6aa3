"""The contract between the pipelines Triton serves and everything that calls them, written once.

The repository generator writes these names into the configs, the pipeline steps inside Triton raise these errors,
and the gateway and the client's direct mode read them back. It lives in the client package, with no dependency,
because the client must install alone (``pip install ./client``) and still speak it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import NamedTuple

# Tensors of every pipeline: one encoded image in, the fused posteriors out (top-k through Triton's classification
# extension); a cascade also answers which stage answered and which stages ran.
INPUT = "image"
PROBS = "probs"
SCORES = "scores"  # a member model's class score map
CASCADE_OUTPUTS = ("stage", "stages")
# A cascade's account of each stage it ran, one JSON object per stage (name, confidence, threshold, rule, start and
# end in Unix nanoseconds), asked for by the gateway only for traced requests: its stage spans.
STAGE_REPORT = "stage_report"

# Model parameters: a pipeline's spec (JSON) marks an ensemble or cascade as a pipeline; the kind tells a cascade.
SPEC_PARAMETER = "pipeline.spec"
KIND_PARAMETER = "pipeline.kind"
LIMITS_PARAMETER = "image.limits"  # a step's decode limits (JSON of vgg.imaging.ImageLimits)
ROLLOUT_PARAMETER = "pipeline.rollout"  # a pipeline's shadow and canary (JSON of server.rollout_spec.Rollout)
MIN_INPUT_SIZE_PARAMETER = "vgg.min_input_size"  # a member's smallest input: its training size
CASCADE_KIND = "cascade"
DEFAULT_PIPELINE = "fast"  # what a request without `pipeline` gets when nothing else is configured

# An image's own faults, raised by the steps as "[code] message" and answered with these HTTP statuses.
INVALID_IMAGE, IMAGE_TOO_LARGE, IMAGE_TOO_SMALL = "invalid_image", "image_too_large", "image_too_small"
IMAGE_ERRORS = {INVALID_IMAGE: 422, IMAGE_TOO_LARGE: 413, IMAGE_TOO_SMALL: 422}
_IMAGE_ERROR = re.compile(r"\[(" + "|".join(IMAGE_ERRORS) + r")\]\s*(.*)", re.DOTALL)

# Triton's access key: every API but health needs it (server/triton_access.py enforces it).
KEY_HEADER = "vgg-triton-key"  # HTTP header; gRPC metadata keys must be lower case
GRPC_KEY_HEADER = "triton-grpc-protocol-" + KEY_HEADER  # the name Triton's gRPC frontend reads
KEY_ENV = "VGG_TRITON_KEY"
KEY_FILE_ENV = "VGG_TRITON_KEY_FILE"

# Triton's words for two failures that are not the request's fault.
UNHEALTHY_STEP = "is not healthy"  # "Stub process '<instance>' is not healthy.": the step is being restarted
RESTRICTED = "is restricted"  # an API called without the access key


class ImageError(NamedTuple):
    status: int
    code: str
    message: str


def image_error(code: str, message: str) -> str:
    """The text a step raises for an image it cannot evaluate."""
    if code not in IMAGE_ERRORS:
        raise ValueError(f"unknown image error code {code!r}; one of {', '.join(IMAGE_ERRORS)}")
    return f"[{code}] {message}"


def find_image_error(text: str) -> ImageError | None:
    """The image error inside a Triton error message (it may be wrapped in Triton's own words), else None."""
    found = _IMAGE_ERROR.search(text or "")
    if not found:
        return None
    code = found.group(1)
    return ImageError(IMAGE_ERRORS[code], code, found.group(2).strip() or code.replace("_", " "))


class ClassScore(NamedTuple):
    score: float
    index: int
    label: str


def parse_class(item: bytes | str) -> ClassScore:
    """One of Triton's classification strings, "score:index:label" (the label itself may contain colons)."""
    text = item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)
    score, index, label = [*text.split(":", 2), "", ""][:3]
    return ClassScore(float(score), int(index), label)


def default_pipeline(served: Iterable[str], configured: str | None = None) -> str | None:
    """The pipeline a request without one gets: the configured one, else `fast` if served, else the first by name."""
    names = set(served)
    if configured:
        return configured
    if DEFAULT_PIPELINE in names:
        return DEFAULT_PIPELINE
    return min(names) if names else None
