"""The floor for the gateway benchmark: the least a Python ASGI gateway can do per classification request.

    python -m bench.bare_proxy --triton-url 127.0.0.1:8000 --port 8090

It serves ``POST /v1/classify?pipeline=..&top_k=..`` with a raw image body under the same uvicorn settings as the
gateway (uvloop, httptools, no access log) and forwards it with the gateway's own Triton client: one more hop and
the same JSON answer, and nothing else (no FastAPI, auth, admission, limits, metrics, timeouts or fail-over). Not
for serving: ``bench.gateway_bench --bare-proxy`` measures it beside the real gateway, so the cost of the hop
itself and the cost of the gateway's features are told apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from urllib.parse import parse_qsl

import uvicorn
from starlette.types import Receive, Scope, Send

from client.contract import INPUT, PROBS
from server.gateway.classifier import parse_class_dicts
from server.gateway.triton_http import TritonHttpClient


class BareProxy:
    """Raw ASGI: read the body, one Triton call, answer its top-k as the gateway's JSON."""

    def __init__(self, triton_url: str) -> None:
        self.triton = TritonHttpClient(triton_url)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/readyz":
            await self._answer(send, 200 if await self.triton.is_ready() else 503, {})
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
        pipeline, top_k = query.get("pipeline", "fast"), int(query.get("top_k", 5))
        top = await self.triton.classify(pipeline, INPUT, PROBS, body, top_k)
        await self._answer(send, 200, {"predictions": parse_class_dicts(top), "pipeline": pipeline})

    @staticmethod
    async def _answer(send: Send, status: int, document: dict) -> None:
        payload = json.dumps(document, separators=(",", ":")).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--triton-url", default="127.0.0.1:8000", help="Triton's HTTP endpoint, host:port")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    uvicorn.run(BareProxy(args.triton_url), host="127.0.0.1", port=args.port, log_level=args.log_level,
                loop="auto", http="auto", access_log=False, server_header=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
