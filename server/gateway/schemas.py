"""The public request/response models: FastAPI puts them in the OpenAPI schema and validates what we send."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class Prediction(BaseModel):
    label: str = Field(description="Class label from the model's label file")
    index: int = Field(description="Class index in the model's output")
    score: float = Field(description="Fused softmax probability")


class ClassifyResponse(BaseModel):
    predictions: list[Prediction] = Field(description="Top-k classes, best first")
    pipeline: str
    models: dict[str, str] = Field(description="Member model name -> version that served the request")
    timing_ms: float = Field(description="Time spent in the gateway for this image, including Triton")
    stage: str | None = Field(None, description="Cascades only: the stage (a pipeline) that answered")
    stages: list[str] | None = Field(None, description="Cascades only: the stages run, in order")
    maps: ScoreMaps | None = Field(None, description="The top-k classes' score maps; only with maps=true")


class MapGrid(BaseModel):
    rescaled_size: list[int] = Field(description="[width, height] of the image rescaled to the view's scale Q")
    window: int = Field(description="Side of the square (rescaled pixels) each cell scores: the training size")
    origin: list[int] = Field(description="[x, y] of cell (0, 0)'s window in rescaled pixels; cell (i, j) is "
                                          "origin + stride * (j, i)")
    size: list[int] = Field(description="[columns, rows] of cells")
    probs: list[list[list[float]]] = Field(description="[class][row][column], classes as in `classes`")


class ViewMap(MapGrid):
    member: str
    member_index: int
    scale: int = Field(description="Test scale Q")
    flipped: bool = Field(description="The mirrored view; its map is mirrored back (columns left to right)")
    posterior: list[float] = Field(description="The view's posterior of the `classes`: softmax of the mean scores")
    scores: list[list[list[float]]] = Field(description="Raw class scores [class][row][column]")


class ScoreMaps(BaseModel):
    values: str = Field(description="What probs and scores hold")
    classes: list[int] = Field(description="Class indices of the planes: the predictions, best first")
    image_size: list[int] = Field(description="[width, height] of the upright original image")
    stride: int = Field(description="Rescaled pixels between neighbouring cells")
    views: list[ViewMap] = Field(description="One per member, dense scale and mirror")
    fused: MapGrid = Field(description="All views' probs averaged like the posteriors, on the finest view's grid")


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_image, overloaded")
    message: str
    request_id: str | None = Field(None, description="The request's ID, as in its X-Request-ID header and the "
                                                     "gateway's access log")


class ErrorResponse(BaseModel):
    error: ErrorBody


class BatchItem(BaseModel):
    index: int = Field(description="Position of the file in the request")
    filename: str | None = None
    status: int = Field(description="HTTP status this file alone would have had")
    result: ClassifyResponse | None = None
    error: ErrorBody | None = None


class BatchResponse(BaseModel):
    results: list[BatchItem]
    pipeline: str
    timing_ms: float


class PipelineInfo(BaseModel):
    name: str
    description: str
    members: list[str]
    weights: list[float] | None
    scales: list[int]
    mode: str
    flips: bool
    num_classes: int
    versions: dict[str, str]
    default: bool
    status: str = Field("ready", description="'ready', or 'degraded' while a step of it is being restarted "
                                             "(its requests are retried and may fail with 503)")
    degraded_reason: str | None = Field(None, description="Triton's message about the broken step, if degraded")
    maps: bool = Field(False, description="Whether classify answers maps=true for it (pipelines with dense views)")
    rollout: dict[str, Any] | None = Field(None, description="Its shadow (candidate, fraction) and canary (pipeline, "
                                                              "weight now, state, reason, limits), when it has them")


class RolloutAction(BaseModel):
    action: Literal["promote", "rollback", "resume"] = Field(
        description="promote: every request to the canary; rollback: none; resume: its configured weight")


class PipelinesResponse(BaseModel):
    default: str | None
    pipelines: list[PipelineInfo]


class HealthResponse(BaseModel):
    status: str


class EndpointStatus(BaseModel):
    url: str
    ready: bool


class ReadyResponse(BaseModel):
    status: str = Field(description="'ready' or 'not_ready'")
    endpoints: list[EndpointStatus]
    pipelines: dict[str, bool] = Field(description="Pipeline -> ready on at least one endpoint")


ClassifyResponse.model_rebuild()  # its `maps` field names a model defined after it


def error_responses(*codes: int) -> dict[int | str, dict[str, object]]:
    """OpenAPI: these statuses answer the error body."""
    return {code: {"model": ErrorResponse} for code in codes}
