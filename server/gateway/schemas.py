"""The public request/response models: FastAPI puts them in the OpenAPI schema and validates what we send."""

from __future__ import annotations

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


class ErrorBody(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_image, overloaded")
    message: str


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
