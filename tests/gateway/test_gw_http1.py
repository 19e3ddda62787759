"""The rate-limit service client's HTTP/1.1 over real loopback sockets."""

import asyncio

import pytest

from gateway.policies.http1 import HTTPError, Pool


async def serve(responses: list[bytes]):
    """A TCP server answering each request on a connection with the next canned response."""
    seen = {"connections": 0, "requests": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            while responses:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                seen["requests"].append(head + await reader.readexactly(length))
                response = responses.pop(0)
                if response == b"DROP":
                    break
                writer.write(response)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def test_keeps_the_connection_alive_and_reads_both_framings():
    server, port, seen = await serve([
        b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\n{\"a\": true}",
        b"HTTP/1.1 429 Too Many\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"b\"\r\n4\r\n: 1}\r\n0\r\n\r\n",
    ])
    pool = Pool("127.0.0.1", port)
    assert await pool.post("/v1/reserve", b'{"x": 1}') == (200, b'{"a": true}')
    assert await pool.post("/v1/settle", b"{}") == (429, b'{"b": 1}')
    assert seen["connections"] == 1
    assert seen["requests"][0].startswith(b"POST /v1/reserve HTTP/1.1\r\n")
    assert seen["requests"][0].endswith(b'\r\n\r\n{"x": 1}')
    pool.close()
    server.close()


async def test_connection_close_and_a_dropped_peer():
    server, port, seen = await serve([
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\n{}",
        b"DROP",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
    ])
    pool = Pool("127.0.0.1", port)
    assert await pool.post("/x", b"{}") == (200, b"{}")
    with pytest.raises(HTTPError):
        await pool.post("/x", b"{}")  # a new connection, which the peer drops
    assert await pool.post("/x", b"{}") == (200, b"{}")  # and a fresh one works again
    assert seen["connections"] == 3
    pool.close()
    server.close()


async def test_refused_connection_is_an_http_error():
    server, port, _ = await serve([])
    server.close()
    await server.wait_closed()
    with pytest.raises(HTTPError):
        await Pool("127.0.0.1", port).post("/x", b"{}")


async def test_a_reused_connection_closed_by_the_peer_is_retried_once_on_a_fresh_one():
    # The peer answers once, then closes the idle connection without answering the
    # next request (uvicorn's keep-alive timeout racing our reuse).
    server, port, seen = await serve([
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
        b"DROP",
        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n{\"a\"",
    ])
    pool = Pool("127.0.0.1", port)
    assert await pool.post("/x", b"{}") == (200, b"{}")
    assert await pool.post("/x", b"{}") == (200, b'{"a"')
    assert seen["connections"] == 2
    pool.close()
    server.close()
