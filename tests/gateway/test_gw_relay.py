"""The relay: what the client gets of one provider response, and when its usage is known."""

import json

from gateway.llm import Dialect, build_upstream, parse_request
from gateway.relay import Relay
from tests.harness.fakes import Upstream, call_for
from tollgate_demo.mock_llm import Plan, anthropic_events, openai_events

CONFIG = "llm: {models: [{name: '*', provider: %s}]}\n"
STREAM = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}], "stream": True}


async def provider_stream(call, prompt: int = 9, completion: int = 12) -> list[bytes]:
    """The SSE chunks the mock upstream sends for what the gateway sends it for `call`."""
    outbound = build_upstream(call.req, call.backend.provider, None, "k")
    dialect = Dialect.ANTHROPIC if call.backend.provider == "anthropic" else Dialect.OPENAI
    plan = Plan(req=parse_request(dialect, outbound.body), prompt_tokens=prompt, completion_tokens=completion,
                truncated=False, chunks=4, delay=0, chunk_delay=0, id="r")
    events = anthropic_events(plan) if dialect == Dialect.ANTHROPIC else openai_events(plan)
    return [chunk async for chunk in events]


async def relayed(relay: Relay) -> tuple[bytes, list[bool]]:
    """The client's bytes, and usage_known after each piece."""
    out, known = [], []
    async for piece in relay.stream():
        out.append(piece)
        known.append(relay.usage_known)
    return b"".join(out), known


async def test_usage_is_known_before_the_stream_ends(tmp_path):
    call = call_for(tmp_path, CONFIG % "openAI", STREAM)
    relay = Relay(call, Upstream(200, await provider_stream(call)))
    body, known = await relayed(relay)
    assert known[-1] and not known[0]
    assert known.index(True) < len(known) - 1  # settled while [DONE] was still to come
    assert (relay.usage.input_tokens, relay.usage.output_tokens) == (9, 12)
    assert b'"prompt_tokens"' not in body  # the client did not ask for usage: the gateway's chunk is dropped
    assert body.endswith(b"data: [DONE]\n\n")


async def test_a_broken_stream_ends_with_the_usage_reported_so_far(tmp_path):
    call = call_for(tmp_path, CONFIG % "anthropic", STREAM)
    chunks = await provider_stream(call)
    upstream = Upstream(200, chunks[:3], broken=True)  # message_start came, then the connection dropped
    relay = Relay(call, upstream)
    await relayed(relay)
    assert not relay.usage_known and relay.usage.input_tokens == 9
    assert upstream.closed
    assert call.reason == "upstream_broken"  # for the access log: the client's 200 was cut short


async def test_a_provider_401_is_a_502_without_its_body(tmp_path):
    call = call_for(tmp_path, CONFIG % "openAI", {**STREAM, "stream": False})
    body = json.dumps({"error": {"message": "Incorrect API key provided: sk-up...x", "type": "auth"}}).encode()
    error = await Relay(call, Upstream(401, [body])).error()
    assert error.status == 502 and "sk-up" not in error.render(call.dialect).decode()


async def test_an_anthropic_error_reaches_an_openai_client_in_its_dialect(tmp_path):
    call = call_for(tmp_path, CONFIG % "anthropic", {**STREAM, "stream": False})
    body = json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded: sk-x"}}).encode()
    error = await Relay(call, Upstream(529, [body])).error()
    assert error.status == 529
    rendered = json.loads(error.render(call.dialect))["error"]
    assert rendered["type"] == "overloaded_error"  # the provider's vocabulary is kept, its text is not
    assert rendered["message"] == "upstream answered HTTP 529 (overloaded_error)"


async def test_a_whole_body_that_breaks_off_is_a_502(tmp_path):
    call = call_for(tmp_path, CONFIG % "openAI", {**STREAM, "stream": False})
    upstream = Upstream(200, [b'{"id": "x", "choi'], broken=True)
    try:
        await Relay(call, upstream).body()
    except Exception as e:  # noqa: BLE001 - asserting the type below
        assert (type(e).__name__, e.status, e.reason) == ("GatewayError", 502, "upstream_broken")
    else:
        raise AssertionError("a broken body must not pass")
    assert upstream.released
