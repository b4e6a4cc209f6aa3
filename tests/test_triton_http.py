"""The gateway's HTTP client for Triton, on the connection edge cases a live Triton rarely produces on demand:
keep-alive connections the server closed while idle, refused connections, malformed answers, error statuses.
(Against the real Triton it is exercised by every gateway test, fail-over included.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import uvloop

from server.gateway.triton_http import TritonHttpClient, TritonHttpError, Unreachable, classification_request


async def serve(handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head, await reader.readexactly(length)


def response(status: int, body: bytes) -> bytes:
    return b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status, len(body), body)


def keep_alive(reply: Callable[[str], bytes], connections: list[None] | None = None):
    """A fake server's connection handler: answers every request on the connection with reply(path), until EOF."""
    async def handler(reader, writer):
        if connections is not None:
            connections.append(None)
        while True:
            try:
                head, _ = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            writer.write(reply(head.split(b" ")[1].decode()))
    return handler


def test_a_connection_closed_while_idle_is_replaced_transparently():
    async def main() -> None:
        connections = 0

        async def one_answer_then_close(reader, writer):  # keep-alive promised, then dropped
            nonlocal connections
            connections += 1
            await read_request(reader)
            writer.write(response(200, b'{"ok": true}'))
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.close()

        server, url = await serve(one_answer_then_close)
        client = TritonHttpClient(url)
        assert await client.get_json("/v2") == {"ok": True}
        await asyncio.sleep(0.2)  # the server has closed the pooled connection by now
        assert await client.get_json("/v2") == {"ok": True}
        assert connections == 2
        await client.close()
        server.close()

    asyncio.run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_connection_the_server_reset_before_the_request_is_unreachable(loop):
    """A dying Triton can accept a connection and reset it at once: the request must fail over, not crash (uvloop
    raises on the write) or wait forever (asyncio drops the write)."""
    async def main() -> None:
        async def accept_and_close(reader, writer):
            writer.close()

        server, url = await serve(accept_and_close)
        client = TritonHttpClient(url)
        connection = await client._connect()
        for _ in range(100):
            if connection.closed:
                break
            await asyncio.sleep(0.01)
        assert connection.closed
        with pytest.raises(Unreachable, match="closed before the request was sent"):
            await asyncio.wait_for(client._send(connection, b"GET / HTTP/1.1\r\n\r\n"), 5)
        server.close()

    (uvloop.run if loop == "uvloop" else asyncio.run)(main())


def test_keep_alive_connections_are_reused():
    async def main() -> None:
        connections: list[None] = []
        server, url = await serve(keep_alive(lambda path: response(200, b"[]"), connections))
        client = TritonHttpClient(url)
        for _ in range(5):
            assert await client.repository_index() == []
        assert len(connections) == 1
        await client.close()
        server.close()

    asyncio.run(main())


def test_refused_and_garbled_answers_are_unreachable():
    async def main() -> None:
        server, url = await serve(lambda r, w: None)
        server.close()
        await server.wait_closed()
        with pytest.raises(Unreachable, match="cannot connect"):
            await TritonHttpClient(url).is_ready()

        async def garbage(reader, writer):
            await read_request(reader)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")

        server, url = await serve(garbage)
        with pytest.raises(Unreachable, match="malformed HTTP response"):
            await TritonHttpClient(url).is_ready()
        server.close()

    asyncio.run(main())


def test_error_statuses_carry_tritons_message_and_a_bounded_name():
    async def main() -> None:
        async def rejects(reader, writer):
            head, body = await read_request(reader)
            assert b"Inference-Header-Content-Length: " in head
            header_length = int(head.split(b"Inference-Header-Content-Length: ")[1].split(b"\r\n")[0])
            header = json.loads(body[:header_length])
            assert header["inputs"][0]["parameters"]["binary_data_size"] == len(body) - header_length
            assert header["outputs"][0]["parameters"]["classification"] == 3
            writer.write(response(400, b'{"error": "[invalid_image] not a supported image"}'))

        server, url = await serve(rejects)
        with pytest.raises(TritonHttpError) as caught:
            await TritonHttpClient(url).classify("fast", "image", "probs", b"not an image", 3)
        assert caught.value.status == 400 and caught.value.name == "invalid_argument"
        assert caught.value.message == "[invalid_image] not a supported image"
        server.close()

    asyncio.run(main())


def test_classification_request_frames_the_bytes_element():
    body, header_length = classification_request("image", "probs", b"abc", 5)
    assert body[header_length:] == b"\x03\x00\x00\x00abc"
    assert json.loads(body[:header_length])["inputs"][0]["datatype"] == "BYTES"


def test_the_pool_fails_over_on_unavailable_but_not_on_a_rejected_image():
    """503 (Triton stopping, model unavailable) goes to the next endpoint; 400 is the image's fault: no retry."""
    from server.gateway.triton_pool import TritonPool

    def fake_triton(infer_status: int, infer_body: bytes, calls: list[str]):
        def reply(path: str) -> bytes:
            calls.append(path)
            return response(infer_status, infer_body) if path.endswith("/infer") else response(200, b"{}")
        return keep_alive(reply)

    async def main() -> None:
        stopping, healthy, rejecting = [], [], []
        answer = b'{"outputs": [{"name": "probs", "data": ["0.9:3:three"]}]}'
        servers = [await serve(fake_triton(503, b'{"error": "Server is stopping"}', stopping)),
                   await serve(fake_triton(200, answer, healthy)),
                   await serve(fake_triton(400, b'{"error": "[invalid_image] truncated"}', rejecting))]
        errors: list[tuple[str, str]] = []
        pool = TritonPool([url for _, url in servers[:2]], on_error=lambda url, code: errors.append((url, code)))
        await pool.start(health_interval_s=60)
        for _ in range(2):  # round robin: one of the two calls starts on the stopping endpoint
            result = await pool.call(lambda c: c.classify("fast", "image", "probs", b"jpeg", 1))
            assert result == ["0.9:3:three"]
        assert errors == [(servers[0][1], "unavailable")]
        assert [ep.healthy for ep in pool.endpoints] == [False, True]
        await pool.close()

        pool = TritonPool([servers[2][1], servers[1][1]])
        await pool.start(health_interval_s=60)
        with pytest.raises(TritonHttpError, match="truncated"):
            await pool.call(lambda c: c.classify("fast", "image", "probs", b"jpeg", 1))
        infers = [path for path in healthy if path.endswith("/infer")]
        assert len(infers) == 2  # the rejected image was not sent on to the healthy endpoint
        await pool.close()
        await asyncio.sleep(0.05)  # the fake servers see their connections close
        for server, _ in servers:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_probe_still_in_flight_when_its_endpoint_retires_reports_nothing():
    """/readyz probes alongside the background loop: a late answer must not bring back a retired endpoint's
    series (it would read as a pod that is down rather than gone)."""
    from server.gateway.triton_pool import TritonPool

    async def main() -> None:
        probed, release = asyncio.Event(), asyncio.Event()

        async def held(reader, writer):  # answers "not ready" only once the test lets it
            await read_request(reader)
            probed.set()
            await release.wait()
            writer.write(response(503, b'{"error": "not ready"}'))
            await writer.drain()

        kept_server, kept = await serve(keep_alive(lambda path: response(200, b"{}")))
        gone_server, gone = await serve(held)
        reported: list[tuple[str, bool]] = []
        pool = TritonPool([kept, gone], probe_timeout_s=60,
                          on_state=lambda ep: reported.append((ep.url, ep.healthy)))
        pool.endpoints = [pool._endpoint(url, url) for url in pool.urls]
        late_probe = asyncio.create_task(pool.probe(pool.endpoints[1]))
        await probed.wait()
        pool.urls = [kept]
        await pool.rediscover()
        assert [ep.url for ep in pool.endpoints] == [kept]
        release.set()
        assert await late_probe is False
        assert (gone, False) not in reported
        await pool.probe_all()
        assert reported == [(kept, True)]
        await pool.close()
        for server in (kept_server, gone_server):
            server.close()
        await asyncio.sleep(0.05)

    asyncio.run(main())
