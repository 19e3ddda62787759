"""Provider connections of a real gateway: a per-backend CA bundle, HTTPS_PROXY / NO_PROXY
through a real CONNECT proxy, the connect timeout against a blackholed address, and a POST
never sent to a provider twice."""

import asyncio
import json
import time

import httpx
import pytest
import yaml

from tests.harness import sockets
from tests.harness.background import Background
from tests.harness.procs import Proc, free_port, python_cmd, start_gateway
from tests.harness.tls import make_pki

KEY = "sk-egress-test"
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def connect_proxy(tunnels: list[str]):
    """A CONNECT-only HTTP proxy: records each tunnel's target, then pipes bytes both ways."""
    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ")
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            writer.close()
            return
        tunnels.append(target)
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    return await asyncio.start_server(handle, "127.0.0.1", 0)


COMPLETION = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


async def dropping_provider(received: list[int]):
    """Answers the first request of a connection; reads the second and closes unanswered."""
    async def handle(reader, writer):
        for n in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            await reader.readexactly(length)
            received.append(n)
            if n == 0:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(COMPLETION), COMPLETION))
                await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.fixture(scope="module")
def egress(tmp_path_factory):
    work = tmp_path_factory.mktemp("egress")
    pki = make_pki(work)
    tls_port = free_port()
    mock = Proc("mock-tls", python_cmd("tollgate_demo.mock_llm", "--host", "127.0.0.1", "--port", str(tls_port),
                                       "--ssl-certfile", str(pki.cert), "--ssl-keyfile", str(pki.key))).start()
    mock.wait_port(tls_port)
    bg = Background()
    tunnels: list[str] = []
    received: list[int] = []
    proxy = bg.run(connect_proxy(tunnels))
    dropper = bg.run(dropping_provider(received))
    blackhole, fillers = sockets.blackhole()

    def route(name, base_url, ca=None):
        policies = {"apiKey": {"keys": [{"key": KEY}]}, "backendAuth": {"key": "k"}}
        if ca:
            policies["backendTLS"] = {"root": str(ca)}
        return {"name": name, "matches": [f"/{name}"], "policies": policies,
                "backends": [{"ai": {"name": name, "provider": {"openAI": {}}, "baseUrl": base_url}}]}

    port, admin = free_port(), free_port()
    config = {"config": {"adminAddr": f"127.0.0.1:{admin}", "backend": {"connectTimeout": "1s"}},
              "binds": [{"port": port, "listeners": [{"routes": [
                  route("ca", f"https://localhost:{tls_port}", pki.ca),
                  route("direct", f"https://127.0.0.1:{tls_port}", pki.ca),
                  route("noca", f"https://localhost:{tls_port}"),
                  route("blackhole", f"http://127.0.0.1:{blackhole.getsockname()[1]}"),
                  route("dropper", f"http://127.0.0.1:{dropper.sockets[0].getsockname()[1]}"),
              ]}]}]}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.sockets[0].getsockname()[1]}", "NO_PROXY": "127.0.0.1,::1"}
    gw = start_gateway(path, port, admin, env=env)
    yield gw, tunnels, received, tls_port
    gw.stop()
    mock.stop()
    for s in [blackhole, *fillers]:
        s.close()
    bg.run(asyncio.sleep(0))
    proxy.close()
    dropper.close()
    bg.stop()


def chat(gw, route: str) -> httpx.Response:
    return httpx.post(f"{gw.url}/{route}/v1/chat/completions", json=HELLO,
                      headers={"authorization": f"Bearer {KEY}"}, timeout=30)


def test_a_backend_ca_bundle_verifies_a_provider_the_system_store_does_not_know(egress):
    gw, *_ = egress
    r = chat(gw, "ca")
    assert r.status_code == 200, r.text
    r = chat(gw, "noca")
    assert r.status_code == 502 and "CERTIFICATE_VERIFY_FAILED" in r.json()["error"]["message"]


def test_https_proxy_tunnels_provider_calls_and_no_proxy_bypasses_it(egress):
    gw, tunnels, _, tls_port = egress
    assert chat(gw, "ca").status_code == 200
    assert chat(gw, "direct").status_code == 200
    # Tunnels only to localhost (one per pool, kept alive); 127.0.0.1 is in NO_PROXY.
    assert tunnels and set(tunnels) == {f"localhost:{tls_port}"}


def test_a_blackholed_provider_fails_at_the_connect_timeout(egress):
    gw, *_ = egress
    started = time.monotonic()
    r = chat(gw, "blackhole")
    assert r.status_code == 502 and "timed out" in r.json()["error"]["message"]
    assert time.monotonic() - started < 10  # connectTimeout is 1 s; the route's timeout is 600 s


def test_a_post_is_never_sent_to_a_provider_twice(egress):
    gw, _, received, _ = egress
    assert chat(gw, "dropper").status_code == 200  # the connection is kept alive
    r = chat(gw, "dropper")  # sent on the kept connection, which the provider drops unanswered
    assert r.status_code == 502
    time.sleep(0.3)
    assert received == [0, 1]  # the second request reached the provider once, never retried
