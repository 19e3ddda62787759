"""Fuzzing a real gateway with generated bad requests (`pytest -m fuzz` runs this alone).

Over 10,000 requests, made by hypothesis from valid ones (fields set to any JSON value,
numbers beyond every range, lone surrogates, deep nesting, truncated or non-JSON bodies,
wrong paths and keys), go to one gateway process with both dialects and both providers
behind the mock upstream, streaming and not, through a local token bucket. Every answer
must be a 2xx or a 4xx, never a 5xx, and arrive within REQUEST_TIMEOUT; afterwards a good
request is still served. The mock parses and counts requests with the gateway's own code,
so a request the gateway lets through and the mock chokes on fails here too (as
`tool_calls: true` in an Anthropic message did, in the token count both share). Bounded to about a minute on the 2-core machine.
"""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness.background import Background
from tests.harness.procs import free_port, start_gateway, start_mock_llm

pytestmark = pytest.mark.fuzz

KEY = "sk-fuzz-test"
BATCH = 24  # requests per hypothesis example, sent concurrently
EXAMPLES = 440  # 440 x 24 = 10,560 requests
RAW_EXAMPLES = 300
REQUEST_TIMEOUT = 15.0  # seconds: no answer within it is a hang
ROUTES = [("/oa", "/v1/chat/completions"), ("/an", "/v1/chat/completions"), ("/an", "/v1/messages"),
          ("/oa", "/v1/messages"), ("/oa", "/v1/models"), ("/nowhere", "/v1/chat/completions")]
FIELDS = ["model", "messages", "stream", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p",
          "top_k", "stop", "stop_sequences", "tools", "tool_choice", "user", "stream_options", "system",
          "metadata", "seed", "presence_penalty", "logprobs", "top_logprobs", "parallel_tool_calls"]
MESSAGE_FIELDS = ["role", "content", "name", "tool_calls", "tool_call_id"]
PART_KEYS = ["type", "text", "image_url", "url", "function", "arguments", "name", "id", "input", "source",
             "detail", "tool_use_id", "content", "parameters"]

HUGE = st.sampled_from([2**31, 2**63, 2**64, 18446744073709551616, -(2**63) - 1, 10**30])
TEXT = st.text(max_size=12) | st.sampled_from(["\ud800", "a\udfffb", "\x00", "😀", "é" * 3])
SCALAR = st.none() | st.booleans() | st.integers(-5, 300) | HUGE | st.floats(allow_nan=False,
                                                                               allow_infinity=False) | TEXT
JSON = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(PART_KEYS + MESSAGE_FIELDS) | TEXT, inner, max_size=3),
                    max_leaves=8)


def valid(dialect_path: str, stream: bool) -> dict:
    body = {"model": "gpt-4o-mini", "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "hello"}]}
    if dialect_path == "/v1/messages":
        body["model"] = "claude-sonnet-4-5"
    return body


def encode(value) -> bytes:
    """JSON with lone surrogates written as escapes (as a client's encoder would send them)."""
    return json.dumps(value).encode()


@st.composite
def bad_request(draw) -> tuple[str, dict[str, str], bytes]:
    prefix, path = draw(st.sampled_from(ROUTES))
    body = valid(path, draw(st.booleans()))
    kind = draw(st.sampled_from(["field", "field", "message", "part", "drop", "whole", "bytes", "deep",
                                 "truncate", "number"]))
    if kind == "field":
        for _ in range(draw(st.integers(1, 3))):
            body[draw(st.sampled_from(FIELDS))] = draw(JSON)
    elif kind == "message":
        message = body["messages"][0]
        message[draw(st.sampled_from(MESSAGE_FIELDS))] = draw(JSON)
    elif kind == "part":
        body["messages"][0]["content"] = draw(st.lists(st.dictionaries(st.sampled_from(PART_KEYS), JSON,
                                                                       max_size=3), min_size=1, max_size=3))
    elif kind == "drop":
        body.pop(draw(st.sampled_from(sorted(body))))
    elif kind == "number":
        body[draw(st.sampled_from(["max_tokens", "max_completion_tokens", "n", "temperature", "top_p", "top_k"]))] = \
            draw(HUGE | st.floats() | st.integers())
    raw = encode(body)
    if kind == "whole":
        raw = encode(draw(JSON))
    elif kind == "bytes":
        raw = draw(st.binary(max_size=64))
    elif kind == "deep":
        depth = draw(st.sampled_from([65, 500, 1000, 5000, 50_000]))
        raw = raw[:-1] + b', "x": ' + b"[" * depth + b"]" * depth + b"}"
    elif kind == "truncate":
        raw = raw[:draw(st.integers(0, max(0, len(raw) - 1)))]
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    key = draw(st.sampled_from([KEY, KEY, KEY, "sk-wrong", None]))
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return prefix + path, headers, raw


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    mock, mock_url = start_mock_llm(None, "--completion-tokens", "5", "--no-record")
    port, admin = free_port(), free_port()
    bucket = [{"maxTokens": 10**12, "tokensPerFill": 10**12, "fillInterval": "1s", "type": "tokens"}]

    def route(prefix: str, provider: str, model: str) -> dict:
        return {"name": prefix.strip("/"), "matches": [prefix],
                "policies": {"apiKey": {"keys": [{"key": KEY}]}, "backendAuth": {"key": "k"},
                             "localRateLimit": bucket},
                "backends": [{"ai": {"name": provider, "provider": {provider: {"model": model}},
                                     "baseUrl": mock_url, "tokenize": True}}]}

    config = {"config": {"adminAddr": f"127.0.0.1:{admin}", "logging": {"filter": "false"}},
              "binds": [{"port": port, "listeners": [{"routes": [
                  route("/oa", "openAI", "gpt-4o-mini"), route("/an", "anthropic", "claude-sonnet-4-5")]}]}]}
    path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = start_gateway(path, port, admin)
    bg = Background()
    client = bg.run(_client(gw.url))
    yield gw, bg, client, {"sent": 0, "refused": 0}
    bg.run(client.aclose())
    bg.stop()
    gw.stop()
    mock.stop()


async def _client(url: str) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    return httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits)


async def _send(client: httpx.AsyncClient, requests: list) -> list[tuple[int, bytes]]:
    async def one(path, headers, raw):
        r = await client.post(path, content=raw, headers=headers)  # the whole body, streams included
        return r.status_code, r.content

    return await asyncio.gather(*(one(*request) for request in requests))


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(batch=st.lists(bad_request(), min_size=BATCH, max_size=BATCH))
def test_generated_bad_requests_get_4xx_never_5xx_nor_a_hang(target, batch):
    gw, bg, client, counts = target
    answers = bg.run(_send(client, batch), timeout=REQUEST_TIMEOUT * 2)
    for (path, _, raw), (status, body) in zip(batch, answers):
        assert status < 500, f"{status} for POST {path} {raw[:300]!r}: {body[:300]!r}"
    counts["sent"] += len(batch)
    counts["refused"] += sum(400 <= status < 500 for status, _ in answers)


@settings(max_examples=RAW_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(head=st.one_of(
    st.binary(max_size=200),
    st.builds(lambda line, hdrs: line + b"\r\n" + b"".join(hdrs) + b"\r\n",
              st.sampled_from([b"POST /oa/v1/chat/completions HTTP/1.1", b"GET / HTTP/1.0", b"POST / HTTP/9.9",
                               b"PRI * HTTP/2.0", b"POST /\x00 HTTP/1.1", b"GET /v1/models HTTP/1.1"]),
              st.lists(st.binary(max_size=40).map(lambda b: b + b"\r\n") | st.sampled_from([
                  b"Content-Length: -1\r\n", b"Content-Length: 99999999999999999999\r\n",
                  b"Transfer-Encoding: chunked\r\n", b"Transfer-Encoding: gzip, chunked\r\n",
                  b"Upgrade: websocket\r\nConnection: Upgrade\r\n", b"Expect: 100-continue\r\n",
                  b"Host: x\r\n"]), max_size=5))))
def test_malformed_http_never_gets_a_5xx(target, head):
    gw, *_ = target
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as s:
        s.sendall(head)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    for line in answer.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            assert not line[9:10] == b"5", answer[:300]


def test_the_gateway_still_serves_after_the_fuzz(target):
    gw, bg, client, counts = target
    assert counts["sent"] >= 10_000 and counts["refused"] >= 9_000, counts
    for path, model in [("/oa/v1/chat/completions", "gpt-4o-mini"), ("/an/v1/chat/completions", "x"),
                        ("/an/v1/messages", "claude-sonnet-4-5")]:
        body = {"model": model, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
        r = httpx.post(f"{gw.url}{path}", json=body, timeout=10,
                       headers={"authorization": f"Bearer {KEY}", "anthropic-version": "2023-06-01"})
        assert r.status_code == 200, r.text
    assert gw.proc.alive()
    assert "Traceback" not in gw.proc.log(), gw.proc.log()[-3000:]
