"""A lean asyncio client for one Triton server's HTTP/REST endpoint (the KServe v2 protocol): keep-alive
connections, httptools for parsing, and the binary tensor extension for the image.

Why not tritonclient: its asyncio clients (aiohttp, grpc.aio) spend several times this client's CPU on the same
call (``python -m bench.triton_clients``, bench/results/triton_clients.md), and on a machine it shares with
Triton, the gateway's every CPU millisecond is taken from Triton. The price is this module:
the few v2 requests the gateway makes, tested on connection edge cases in tests/test_triton_http.py and against a
real Triton by every gateway test.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any
from urllib.parse import quote

import httptools

from client.contract import KEY_HEADER, UNHEALTHY_STEP

MAX_IDLE_CONNECTIONS = 64
# Triton's statuses for the errors its HTTP frontend reports, as the bounded labels the metrics use.
STATUS_NAMES = {400: "invalid_argument", 404: "not_found", 500: "internal", 501: "unimplemented", 503: "unavailable"}


class Unreachable(Exception):
    """The endpoint did not take or did not answer the request (refused, reset, closed): safe to retry elsewhere."""


class TritonHttpError(Exception):
    """Triton answered with an error status; ``message`` is Triton's own text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def name(self) -> str:
        return "unhealthy_step" if self.unhealthy_step else STATUS_NAMES.get(self.status, f"http_{self.status}")

    @property
    def unavailable(self) -> bool:
        """Triton stopping or not yet serving: another replica may answer (inference is pure, so retry there)."""
        return self.status == 503

    @property
    def unhealthy_step(self) -> bool:
        """A pipeline step's stub process died or froze: the request never ran, and another instance (or the
        step once the launcher has reloaded it) can answer it."""
        return self.status == 500 and UNHEALTHY_STEP in self.message


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.chunks: list[bytes] = []
        self.closed = False
        self.reusable = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(Unreachable(f"malformed HTTP response: {exc}"))
            self.close()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.reusable = self.parser.should_keep_alive()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), b"".join(self.chunks)))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(Unreachable(f"connection closed before the response ({exc or 'by the server'})"))

    def _fail(self, error: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(error)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.closed:  # a dying server may accept and reset before the first write
            raise Unreachable("connection closed before the request was sent")
        self.waiter = asyncio.get_running_loop().create_future()
        self.chunks = []
        self.reusable = False
        try:
            self.transport.write(data)
        except (RuntimeError, OSError) as exc:  # uvloop: "unable to perform operation on ... closed"
            raise Unreachable(f"connection closed before the request was sent ({exc})") from None
        return await self.waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class TritonHttpClient:
    """Requests to one Triton HTTP endpoint ("host:port") over a pool of keep-alive connections."""

    def __init__(self, url: str, connect_timeout_s: float = 2.0, key: str | None = None) -> None:
        self.url = url.removeprefix("http://").rstrip("/")
        host, _, port = self.url.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)  # an IPv6 address comes as [addr]:port
        self.connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._host_header = self.url.encode()
        self._key_header = b"%s: %s\r\n" % (KEY_HEADER.encode(), key.encode()) if key else b""

    async def request(self, method: str, path: str, body: bytes = b"", headers: bytes = b"") -> tuple[int, bytes]:
        """(status, body). A connection that was idle may have been closed by the server meanwhile: then the
        request goes once more on a new connection; a new connection failing is Unreachable."""
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: %d\r\n%s%s\r\n" % (
            method.encode(), path.encode(), self._host_header, len(body), self._key_header, headers)
        while self._idle:
            connection = self._idle.pop()
            if connection.closed:
                continue
            try:
                return await self._send(connection, head + body)
            except Unreachable:
                break  # stale; fall through to a fresh connection
        return await self._send(await self._connect(), head + body)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(_Connection, self.host, self.port), self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise Unreachable(f"cannot connect to {self.url}: {exc or type(exc).__name__}") from None
        return connection

    async def _send(self, connection: _Connection, data: bytes) -> tuple[int, bytes]:
        try:
            result = await connection.request(data)
        except BaseException:  # cancelled or failed mid-request: the connection's state is unknown
            connection.close()
            raise
        if connection.reusable and not connection.closed and len(self._idle) < MAX_IDLE_CONNECTIONS:
            self._idle.append(connection)
        else:
            connection.close()
        return result

    async def get_json(self, path: str, body: bytes | None = None) -> Any:
        """GET (or POST when there is a body) a JSON resource; TritonHttpError on an error status."""
        status, payload = await self.request("GET" if body is None else "POST", path, body or b"",
                                             b"" if body is None else b"Content-Type: application/json\r\n")
        if status != 200:
            raise _error(status, payload)
        return json.loads(payload)

    async def is_ready(self) -> bool:
        status, _ = await self.request("GET", "/v2/health/ready")
        return status == 200

    async def is_model_ready(self, name: str) -> bool:
        status, _ = await self.request("GET", f"/v2/models/{quote(name, safe='')}/ready")
        return status == 200

    async def repository_index(self) -> list[dict[str, Any]]:
        return await self.get_json("/v2/repository/index", b"{}")

    async def model_config(self, name: str) -> dict[str, Any]:
        return await self.get_json(f"/v2/models/{quote(name, safe='')}/config")

    async def classify(self, model: str, input_name: str, output_name: str, data: bytes, top_k: int) -> list[str]:
        """One BYTES element in, Triton's classification extension out: ["score:index:label", ...]."""
        return (await self.classify_with(model, input_name, output_name, data, top_k, ()))[0]

    async def classify_with(self, model: str, input_name: str, output_name: str, data: bytes, top_k: int,
                            extra: tuple[str, ...], request_id: str | None = None, headers: bytes = b"",
                            ) -> tuple[list[str], dict[str, list[str]]]:
        """classify, plus the named ``extra`` outputs as JSON lists (a cascade's `stage` and `stages`); the
        request carries ``request_id`` as Triton's request ID, and ``headers`` (whole lines: a trace context)."""
        body, header_length = classification_request(input_name, output_name, data, top_k, extra, request_id)
        payload = await self.infer(model, body, header_length, headers)
        outputs = {output.get("name"): output.get("data", []) for output in json.loads(payload).get("outputs", [])}
        missing = [name for name in (output_name, *extra) if name not in outputs]
        if missing:
            raise TritonHttpError(502, f"the inference server's response has no {missing[0]!r} output")
        return [str(item) for item in outputs[output_name]], {name: [str(i) for i in outputs[name]] for name in extra}

    async def infer(self, model: str, body: bytes, header_length: int, headers: bytes = b"") -> bytes:
        """POST an inference request in the binary tensor extension's framing (``header_length``: its JSON header's
        length) with ``headers`` (whole lines); the response's body, TritonHttpError on an error status."""
        status, payload = await self.request(
            "POST", f"/v2/models/{quote(model, safe='')}/infer", body,
            b"Content-Type: application/octet-stream\r\nInference-Header-Content-Length: %d\r\n%s"
            % (header_length, headers))
        if status != 200:
            raise _error(status, payload)
        return payload

    async def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()


def classification_request(input_name: str, output_name: str, data: bytes, top_k: int,
                           extra: tuple[str, ...] = (), request_id: str | None = None) -> tuple[bytes, int]:
    """(body, length of its JSON header) of a v2 inference request: ``data`` as one BYTES element in the binary
    tensor extension's framing (4-byte little-endian length, then the bytes), top-k asked of the classification
    extension as JSON strings."""
    identity = json.dumps({"id": request_id}).encode()[1:-1] + b"," if request_id else b""
    header = (b'{%s"inputs":[{"name":"%s","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":%d}}],'
              b'"outputs":[{"name":"%s","parameters":{"classification":%d,"binary_data":false}}%s]}'
              % (identity, input_name.encode(), len(data) + 4, output_name.encode(), top_k,
                 b"".join(b',{"name":"%s","parameters":{"binary_data":false}}' % name.encode() for name in extra)))
    return header + struct.pack("<I", len(data)) + data, len(header)


def _error(status: int, payload: bytes) -> TritonHttpError:
    try:
        message = str(json.loads(payload).get("error", ""))
    except (ValueError, AttributeError):
        message = payload[:500].decode("utf-8", "replace")
    return TritonHttpError(status, message or f"HTTP {status}")
