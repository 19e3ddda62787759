"""The gateway's HTTP/1.1 client over real loopback sockets (rate-limit service and upstream)."""

import asyncio
import shutil
import ssl
import subprocess

import pytest

from gateway.http1 import HTTPError, Pool
from gateway.upstream import UpstreamUnreachable, header_block


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request as the client wrote it: head and Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


async def serve(responses: list[bytes]):
    """A TCP server answering each request on a connection with the next canned response.

    `DROP` closes the connection without answering; `CUT:<bytes>` sends the bytes, then closes.
    """
    seen = {"connections": 0, "requests": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            while responses:
                seen["requests"].append(await read_request(reader))
                response = responses.pop(0)
                if response == b"DROP":
                    break
                writer.write(response.removeprefix(b"CUT:"))
                await writer.drain()
                if response.startswith(b"CUT:"):
                    break
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


async def test_a_reused_connection_cut_off_mid_answer_is_not_sent_again():
    # The peer began answering, so it took the request: sending it again could run
    # an LLM call twice.
    server, port, seen = await serve([
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
        b"CUT:HTTP/1.1 200 OK\r\ncontent-le",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}",
    ])
    pool = Pool("127.0.0.1", port)
    assert await pool.post("/x", b"{}") == (200, b"{}")
    with pytest.raises(HTTPError, match="connection closed"):
        await pool.post("/x", b"{}")
    assert seen["connections"] == 1 and len(seen["requests"]) == 2
    pool.close()
    server.close()


# --- the upstream side: streamed bodies, framings, timeouts, TLS -------------------------

async def scripted(script):
    """A TCP server running `script(reader, writer)` per connection; returns (server, port)."""
    async def handle(reader, writer):
        await read_request(reader)
        try:
            await script(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_chunked_body_is_handed_over_piece_by_piece_as_it_arrives():
    sent_first, go_on = asyncio.Event(), asyncio.Event()

    async def script(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata:1\r\n")
        await writer.drain()
        sent_first.set()
        await go_on.wait()
        writer.write(b"6\r\ndata:2\r\n0\r\n\r\n")
        await writer.drain()

    server, port = await scripted(script)
    response = await Pool("127.0.0.1", port).request("POST", "/v1/chat/completions", b"", b"{}")
    pieces = response.chunks()
    assert await pieces.__anext__() == b"data:1"  # before the server sent the rest
    go_on.set()
    assert [p async for p in pieces] == [b"data:2"]
    server.close()


async def test_a_body_delimited_by_the_close_is_read_whole():
    async def script(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nno length, ")
        await writer.drain()
        writer.write(b"ends at close")

    server, port = await scripted(script)
    response = await Pool("127.0.0.1", port).request("POST", "/", b"", b"")
    assert await response.read() == b"no length, ends at close"
    server.close()


async def test_a_body_cut_short_is_an_error_not_a_shorter_body():
    async def script(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")

    server, port = await scripted(script)
    response = await Pool("127.0.0.1", port).request("POST", "/", b"", b"")
    with pytest.raises(HTTPError, match="connection closed"):
        await response.read()
    server.close()


async def test_a_stalled_body_times_out_and_its_connection_is_not_reused():
    async def script(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf")
        await writer.drain()
        await asyncio.sleep(5)

    server, port = await scripted(script)
    pool = Pool("127.0.0.1", port)
    response = await pool.request("POST", "/", b"", b"", read_timeout=0.2)
    with pytest.raises(TimeoutError):
        await response.read()
    assert pool._take() is None
    server.close()


async def test_a_cancelled_read_loses_nothing_so_an_abandoned_stream_can_be_drained():
    go_on = asyncio.Event()

    async def script(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nfirst")
        await writer.drain()
        await go_on.wait()
        writer.write(b"end")
        await writer.drain()

    server, port = await scripted(script)
    response = await Pool("127.0.0.1", port).request("POST", "/", b"", b"")

    async def consume():
        return [p async for p in response.chunks()]

    reader = asyncio.create_task(consume())
    await asyncio.sleep(0.1)  # it took "first" and now waits for more
    reader.cancel()
    go_on.set()
    assert b"".join([p async for p in response.chunks()]) == b"end"
    server.close()


async def test_a_body_larger_than_the_buffer_arrives_whole():
    body = bytes(range(256)) * 8192  # 2 MiB: reading pauses and resumes on the way

    async def script(reader, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()

    server, port = await scripted(script)
    response = await Pool("127.0.0.1", port).request("POST", "/", b"", b"")
    await asyncio.sleep(0.2)  # let it buffer past the high-water mark before reading
    assert await response.read() == body
    server.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (openssl ships with the OS here)."""
    if not shutil.which("openssl"):
        pytest.fail("openssl is needed to make the TLS test's certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    return d / "cert.pem", d / "key.pem"


async def test_tls_to_a_verified_server_and_refused_to_an_unknown_one(certificate):
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)

    async def handle(reader, writer):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecret")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    trusting = ssl.create_default_context(cafile=str(cert))
    assert await Pool("127.0.0.1", port, trusting).post("/v1/messages", b"{}") == (200, b"secret")
    with pytest.raises(HTTPError, match="SSL|certificate"):
        await Pool("127.0.0.1", port, ssl.create_default_context()).post("/v1/messages", b"{}")
    server.close()


def test_a_header_that_would_split_the_request_is_refused():
    with pytest.raises(UpstreamUnreachable, match="line break"):
        header_block((("authorization", "Bearer sk\r\nX-Evil: 1"),))
    assert header_block((("x-api-key", "k"),)) == b"x-api-key: k\r\n"
