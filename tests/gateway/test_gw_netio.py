"""Opening provider connections: happy eyeballs across a name's addresses, a CONNECT
proxy's refusal, and the HTTPS_PROXY / NO_PROXY rules."""

import asyncio
import socket

import pytest

from gateway.proxy import ProxySettings, parse_proxy
from tests.harness import sockets
from tollgate_common.netio import ConnectFailed, Proxy, connect


@pytest.fixture
def blackhole():
    listener, fillers = sockets.blackhole()
    yield listener.getsockname()
    for s in [listener, *fillers]:
        s.close()


async def test_a_blackholed_first_address_falls_back_to_the_next(blackhole, monkeypatch):
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    good = server.sockets[0].getsockname()
    loop = asyncio.get_running_loop()

    async def two_addresses(host, port, **kw):  # the resolver's answer: blackholed first, as a bad AAAA
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", blackhole),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", good)]

    monkeypatch.setattr(loop, "getaddrinfo", two_addresses)
    protocol = await connect(asyncio.Protocol, "provider.example", 443, timeout=5)
    assert protocol is not None  # the second address answered; the first one still hangs
    server.close()


async def test_the_connect_timeout_bounds_a_blackholed_address(blackhole):
    with pytest.raises(ConnectFailed, match="timed out"):
        await connect(asyncio.Protocol, *blackhole, timeout=0.5)


async def test_a_proxy_that_refuses_connect_is_a_connect_failure():
    async def refuse(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    proxy = Proxy("127.0.0.1", server.sockets[0].getsockname()[1])
    with pytest.raises(ConnectFailed, match="refused CONNECT api.example:443: HTTP/1.1 403"):
        await connect(asyncio.Protocol, "api.example", 443, proxy=proxy, timeout=5)
    server.close()


def test_proxy_settings_follow_the_usual_no_proxy_rules():
    env = {"https_proxy": "http://user:p%40ss@proxy.corp:3128", "HTTP_PROXY": "proxy.corp:8080",
           "NO_PROXY": ".internal.example, localhost, 10.0.0.0/8, 192.168.1.5:8443, [::1]"}
    settings = ProxySettings.from_environment(env)
    via = settings.for_origin
    assert via("https", "api.openai.com", 443) == Proxy.basic("proxy.corp", 3128, "user", "p@ss")
    assert via("http", "mock", 80) == Proxy("proxy.corp", 8080)
    for host, port in [("a.internal.example", 443), ("internal.example", 443), ("localhost", 443),
                       ("10.1.2.3", 443), ("192.168.1.5", 8443), ("::1", 443), ("[::1]", 443)]:
        assert via("https", host, port) is None, host
    assert via("https", "notinternal.example", 443) is not None
    assert via("https", "192.168.1.5", 443) is not None  # the entry names another port
    assert ProxySettings.from_environment({**env, "no_proxy": "*"}).for_origin("https", "x", 443) is None
    assert ProxySettings.from_environment({}).for_origin("https", "api.openai.com", 443) is None
    with pytest.raises(ValueError, match="http://host:port"):
        parse_proxy("socks5://proxy:1080")
