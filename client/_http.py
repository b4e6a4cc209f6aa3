"""Requests to and responses from the gateway, shared by the sync and async clients (no I/O here)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx

from client.errors import CONNECTION_ERROR, ClientError, from_response
from client.results import Classification, PipelineInfo
from client.trace_context import trace_headers

# Errors after which the request may not have been processed (or its answer was lost): safe to resend,
# since classifying is a pure function of the image.
TRANSPORT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadError, httpx.WriteError,
                    httpx.RemoteProtocolError, httpx.PoolTimeout)


def classify_request(data: bytes, content_type: str, top_k: int, pipeline: str | None,
                     maps: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``httpx.Client.post``: the raw image as the body, no multipart overhead."""
    params: dict[str, Any] = {"top_k": top_k}
    if pipeline:
        params["pipeline"] = pipeline
    if maps:
        params["maps"] = "true"
    return {"url": "/v1/classify", "params": params, "content": data,
            "headers": {"content-type": content_type, **trace_headers()}}


def batch_request(images: list[tuple[bytes, str, str | None]], top_k: int, pipeline: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {"top_k": top_k}
    if pipeline:
        params["pipeline"] = pipeline
    files = [("file", (name or f"image{i}", data, kind)) for i, (data, kind, name) in enumerate(images)]
    return {"url": "/v1/classify/batch", "params": params, "files": files, "headers": trace_headers()}


def check(response: httpx.Response) -> Any:
    """The JSON body of a successful response; a ClientError built from the gateway's error body otherwise."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    if response.status_code >= 400:
        raise from_response(response.status_code, body, dict(response.headers))
    if isinstance(body, dict) and "x-request-id" in response.headers:
        body["request_id"] = response.headers["x-request-id"]  # read back by the results parsed from the body
    return body


def parse_classification(body: dict[str, Any]) -> Classification:
    return Classification.from_json(body)


def parse_batch(body: dict[str, Any]) -> list[Classification | ClientError]:
    out: list[Classification | ClientError] = []
    request_id = body.get("request_id")  # one request for the whole batch
    for item in body["results"]:
        if item.get("result") is not None:
            out.append(Classification.from_json({**item["result"], "request_id": request_id}))
        else:
            error = item.get("error") or {}
            out.append(ClientError(int(item.get("status", 0)), error.get("code", "error"), error.get("message", ""),
                                   request_id=request_id))
    return out


def parse_pipelines(body: dict[str, Any]) -> list[PipelineInfo]:
    return [PipelineInfo.from_json(item) for item in body["pipelines"]]


@contextlib.contextmanager
def translated_errors() -> Iterator[None]:
    """httpx's connection and timeout errors as ClientErrors (the retry policy knows which to resend)."""
    try:
        yield
    except TRANSPORT_ERRORS as exc:
        raise transport_error(exc) from None
    except httpx.TimeoutException as exc:
        raise timeout_error(exc) from None


def transport_error(exc: Exception) -> ClientError:
    return ClientError(0, CONNECTION_ERROR, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def timeout_error(exc: Exception) -> ClientError:
    return ClientError(0, "timeout", f"no answer in time ({type(exc).__name__})")


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


def rollout_request(pipeline: str, action: str, admin_key: str) -> dict[str, Any]:
    """Keyword arguments for ``post``: the admin route, with the admin key instead of the API key."""
    return {"url": f"/v1/pipelines/{quote(pipeline, safe='')}/rollout", "json": {"action": action},
            "headers": {"authorization": f"Bearer {admin_key}"}}


def shadow_url(pipeline: str) -> str:
    return f"/v1/pipelines/{quote(pipeline, safe='')}/shadow"


def gateway_only(what: str) -> ClientError:
    return ClientError(0, "gateway_only", f"{what} is the gateway's (http://...); direct mode (grpc://) has none")


def maps_unsupported() -> ClientError:
    return ClientError(0, "maps_unsupported", "score maps come from the gateway (http://...); direct mode "
                                              "(grpc://) does not lay them out")
