"""Getting image bytes out of a request: size and time limits, content types, raw body or multipart.

The gateway does not decode images (Triton's preprocess step does, with its own pixel limits); it only refuses
what it can judge cheaply: too many bytes, a content type that is not an image, an empty file.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message

from client.contract import INVALID_IMAGE
from server.gateway.errors import ApiError

IMAGE_TYPES = frozenset({
    "image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/webp", "image/bmp", "image/x-bmp",
    "image/x-ms-bmp", "image/tiff", "image/gif",
})
# Sent by clients that don't know the type; Triton sniffs the bytes and answers invalid_image if they aren't one.
GENERIC_TYPES = frozenset({"application/octet-stream"})
MULTIPART = "multipart/form-data"
FILE_FIELDS = ("file", "files")


@dataclass(frozen=True)
class ImagePart:
    """One uploaded image, or the reason it was refused."""

    filename: str | None
    data: bytes
    error: ApiError | None = None


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def check_type(content_type: str | None, allow_missing: bool) -> ApiError | None:
    kind = media_type(content_type)
    if kind in IMAGE_TYPES or kind in GENERIC_TYPES or (allow_missing and not kind):
        return None
    if not kind:
        return ApiError(415, "unsupported_media_type", "no content type: send the image as the body with its type "
                        "(e.g. image/jpeg) or as the multipart/form-data field 'file'")
    return ApiError(415, "unsupported_media_type",
                    f"content type {kind!r} is not a supported image type (JPEG, PNG, WebP, BMP, TIFF, GIF)")


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body, refusing more than ``limit`` bytes (declared or actual) and a body slower than the timeout."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    buffer = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                buffer += chunk
                if len(buffer) > limit:
                    raise too_large(limit)
    except TimeoutError:
        raise ApiError(408, "request_timeout", "the request body was not received in time") from None
    return bytes(buffer)


def too_many_files(max_files: int) -> ApiError:
    hint = "; send several images to /v1/classify/batch" if max_files == 1 else ""
    return ApiError(413, "too_many_files", f"at most {max_files} file(s) per request{hint}")


def empty_image() -> ApiError:
    return ApiError(422, INVALID_IMAGE, "the image is empty")


def too_large(limit: int) -> ApiError:
    return ApiError(413, "payload_too_large", f"request body exceeds the limit of {limit} bytes")


async def read_images(request: Request, limit: int, timeout_s: float, max_files: int) -> list[ImagePart]:
    """Images from a multipart form (fields ``file``/``files``) or the raw body; request-level errors raise."""
    kind = media_type(request.headers.get("content-type"))
    if kind != MULTIPART:
        error = check_type(kind, allow_missing=False)
        if error:
            raise error
        body = await read_body(request, limit, timeout_s)
        return [_part(None, body, None)]
    body = await read_body(request, limit, timeout_s)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=max_files, max_fields=max_files + 16)
    except ApiError:
        raise
    except Exception as exc:  # starlette's multipart errors: malformed form, too many files or fields
        if "too many files" in str(exc).lower():
            raise too_many_files(max_files) from None
        reason = getattr(exc, "detail", None) or str(exc)  # starlette's HTTPException: the detail alone
        raise ApiError(400, "invalid_form", f"malformed multipart form: {reason}") from None
    try:
        uploads = [item for name in FILE_FIELDS for item in form.getlist(name)]
        if not uploads:
            raise ApiError(422, "missing_file", "the form has no file field named 'file'")
        if len(uploads) > max_files:
            raise too_many_files(max_files)
        parts = []
        for upload in uploads:
            if not isinstance(upload, UploadFile):
                parts.append(ImagePart(None, b"", ApiError(422, "missing_file", "field 'file' must be a file")))
                continue
            parts.append(_part(upload.filename, await upload.read(), upload.content_type))
        return parts
    finally:
        await form.close()


def _part(filename: str | None, data: bytes, content_type: str | None) -> ImagePart:
    error = check_type(content_type, allow_missing=True) if content_type is not None else None
    if error is None and not data:
        error = empty_image()
    return ImagePart(filename, data, error)
