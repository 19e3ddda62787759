"""Response adapters over real provider-shaped streams cut at arbitrary byte boundaries."""

import asyncio
import json
import random

import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from gateway.llm import Dialect, build_upstream, parse_request, response_adapter, translate_error
from gateway.llm.stream import events
from tollgate_demo.mock_llm import Plan, anthropic_events, openai_events

HELLO = [{"role": "user", "content": "Hello!"}]
PROMPT, COMPLETION = 11, 17


def request(dialect, **body):
    return parse_request(dialect, json.dumps(body).encode())


def upstream_stream(upstream_req) -> bytes:
    """What the mock upstream sends for `upstream_req` (a request as the upstream sees it)."""
    plan = Plan(req=upstream_req, prompt_tokens=PROMPT, completion_tokens=COMPLETION, truncated=False,
                chunks=4, delay=0, chunk_delay=0, id="t")
    gen = anthropic_events(plan) if upstream_req.dialect == Dialect.ANTHROPIC else openai_events(plan)

    async def collect():
        return b"".join([chunk async for chunk in gen])
    return asyncio.run(collect())


def sent_upstream(client_req, provider):
    call = build_upstream(client_req, provider, None, "k")
    dialect = Dialect.ANTHROPIC if provider == "anthropic" else Dialect.OPENAI
    return parse_request(dialect, call.body)


def cuts(data: bytes, how: str) -> list[bytes]:
    if how == "whole":
        return [data]
    if how == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(len(data))
    points = sorted(rng.sample(range(1, len(data)), 25))
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


def run(adapter, pieces) -> bytes:
    return b"".join(adapter.feed(p) for p in pieces) + adapter.finish()


def datas(stream: bytes) -> list[bytes]:
    return [data for _, _, data in events(stream)]


SPLITS = ["whole", "bytes", "random"]


@pytest.mark.parametrize("how", SPLITS)
def test_openai_relay_passes_bytes_untouched_and_reads_usage(how):
    client = request(Dialect.OPENAI, model="m", messages=HELLO, stream=True,
                     stream_options={"include_usage": True})
    stream = upstream_stream(sent_upstream(client, "openAI"))
    adapter = response_adapter(client, "openAI")
    assert run(adapter, cuts(stream, how)) == stream
    assert adapter.usage_known
    assert (adapter.usage.input_tokens, adapter.usage.output_tokens, adapter.usage.total) == (11, 17, 28)


def test_openai_usage_unknown_until_the_usage_chunk():
    client = request(Dialect.OPENAI, model="m", messages=HELLO, stream=True,
                     stream_options={"include_usage": True})
    stream = upstream_stream(client)
    cut = stream.index(b'"prompt_tokens"')
    adapter = response_adapter(client, "openAI")
    adapter.feed(stream[:cut])
    assert not adapter.usage_known and adapter.usage.total == 0
    adapter.feed(stream[cut:])
    assert adapter.usage_known and adapter.usage.total == 28


@pytest.mark.parametrize("how", SPLITS)
def test_openai_usage_chunk_the_client_did_not_ask_for_is_dropped(how):
    client = request(Dialect.OPENAI, model="m", messages=HELLO, stream=True)
    stream = upstream_stream(sent_upstream(client, "openAI"))
    assert b'"choices":[]' in stream  # the upstream did send it
    adapter = response_adapter(client, "openAI")
    out = run(adapter, cuts(stream, how))
    upstream_events = datas(stream)
    assert datas(out) == [d for d in upstream_events if b'"prompt_tokens"' not in d]
    assert out.endswith(b"data: [DONE]\n\n")
    for data in datas(out)[:-1]:
        assert ChatCompletionChunk.model_validate_json(data).choices
    assert adapter.usage_known and adapter.usage.total == 28


def test_filter_relays_each_event_as_soon_as_it_is_complete():
    client = request(Dialect.OPENAI, model="m", messages=HELLO, stream=True)
    stream = upstream_stream(sent_upstream(client, "openAI"))
    first_end = stream.index(b"\n\n") + 2
    second_end = stream.index(b"\n\n", first_end) + 2
    adapter = response_adapter(client, "openAI")
    assert adapter.feed(stream[:first_end]) == stream[:first_end]
    middle = (first_end + second_end) // 2
    assert adapter.feed(stream[first_end:middle]) == b""
    assert adapter.feed(stream[middle:second_end]) == stream[first_end:second_end]


@pytest.mark.parametrize("how", SPLITS)
def test_anthropic_relay_reads_usage_from_start_and_delta(how):
    client = request(Dialect.ANTHROPIC, model="c", max_tokens=100, messages=HELLO, stream=True)
    stream = upstream_stream(client)
    adapter = response_adapter(client, "anthropic")
    assert run(adapter, cuts(stream, how)) == stream
    assert adapter.usage_known
    assert (adapter.usage.input_tokens, adapter.usage.output_tokens) == (11, 17)


@pytest.mark.parametrize("provider, dialect", [("anthropic", Dialect.ANTHROPIC), ("anthropic", Dialect.OPENAI)])
def test_abandoned_anthropic_stream_keeps_the_input_from_message_start(provider, dialect):
    body = {"model": "c", "max_tokens": 100, "messages": HELLO, "stream": True}
    client = request(dialect, **body)
    stream = upstream_stream(sent_upstream(client, provider))
    start_end = stream.index(b"\n\n") + 2  # message_start is the first event
    adapter = response_adapter(client, provider)
    for byte in cuts(stream[:start_end + 30], "bytes"):
        adapter.feed(byte)
    assert not adapter.usage_known
    assert (adapter.usage.input_tokens, adapter.usage.output_tokens) == (11, 1)


def test_anthropic_usage_counts_cache_tokens_as_input():
    client = request(Dialect.ANTHROPIC, model="c", max_tokens=100, messages=HELLO, stream=True)
    start = {"type": "message_start", "message": {"id": "m", "usage": {
        "input_tokens": 5, "cache_creation_input_tokens": 7, "cache_read_input_tokens": 100, "output_tokens": 1}}}
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 40}}
    stream = b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode())
                      for e in (start, delta))
    adapter = response_adapter(client, "anthropic")
    run(adapter, [stream])
    assert (adapter.usage.input_tokens, adapter.usage.output_tokens) == (112, 40)


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("wants_usage", [True, False])
def test_anthropic_stream_translated_for_openai_client(how, wants_usage):
    body = {"model": "claude", "messages": HELLO, "stream": True}
    if wants_usage:
        body["stream_options"] = {"include_usage": True}
    client = request(Dialect.OPENAI, **body)
    stream = upstream_stream(sent_upstream(client, "anthropic"))
    adapter = response_adapter(client, "anthropic")
    out = run(adapter, cuts(stream, how))
    frames = datas(out)
    assert frames[-1] == b"[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(f) for f in frames[:-1]]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    upstream_text = "".join(json.loads(d)["delta"]["text"] for d in datas(stream) if b"text_delta" in d)
    assert text == upstream_text and len(text.split()) == COMPLETION
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    usage_chunks = [c for c in chunks if c.usage]
    if wants_usage:
        assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
        assert (usage_chunks[0].usage.prompt_tokens, usage_chunks[0].usage.completion_tokens) == (11, 17)
    else:
        assert usage_chunks == []
    assert adapter.usage_known and adapter.usage.total == 28


def anthropic_sse(*evs) -> bytes:
    return b"".join(b"event: %s\ndata: %s\n\n" % (e["type"].encode(), json.dumps(e).encode()) for e in evs)


def test_tool_use_stream_becomes_tool_call_deltas():
    client = request(Dialect.OPENAI, model="claude", messages=HELLO, stream=True)
    stream = anthropic_sse(
        {"type": "message_start", "message": {"id": "msg_1", "model": "claude", "usage": {"input_tokens": 9}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me look."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"city\":"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": " \"Oslo\"}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}},
        {"type": "message_stop"},
    )
    adapter = response_adapter(client, "anthropic")
    chunks = [ChatCompletionChunk.model_validate_json(d) for d in datas(run(adapter, cuts(stream, "bytes")))[:-1]]
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert calls[0].id == "toolu_1" and calls[0].function.name == "weather" and calls[0].index == 0
    assert json.loads("".join(tc.function.arguments or "" for tc in calls)) == {"city": "Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert (adapter.usage.input_tokens, adapter.usage.output_tokens) == (9, 30)


def test_stream_error_event_becomes_an_openai_error_frame():
    client = request(Dialect.OPENAI, model="claude", messages=HELLO, stream=True)
    stream = anthropic_sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    out = run(response_adapter(client, "anthropic"), [stream])
    error = json.loads(datas(out)[0])["error"]
    assert error["message"] == "upstream sent an error event (overloaded_error)"
    assert error["type"] == "overloaded_error"


def test_crlf_framing_and_a_missing_final_blank_line():
    client = request(Dialect.ANTHROPIC, model="c", max_tokens=100, messages=HELLO, stream=True)
    stream = upstream_stream(client).replace(b"\n", b"\r\n")[:-4]  # cut the last blank line too
    adapter = response_adapter(client, "anthropic")
    run(adapter, cuts(stream, "random"))
    assert adapter.usage_known and adapter.usage.total == 28
    translated = response_adapter(request(Dialect.OPENAI, model="c", messages=HELLO, stream=True), "anthropic")
    out = run(translated, cuts(stream, "bytes"))
    assert out.endswith(b"data: [DONE]\n\n") and translated.usage.total == 28


def test_non_stream_bodies():
    oa = request(Dialect.OPENAI, model="m", messages=HELLO)
    raw = json.dumps({"id": "x", "choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}}).encode()
    adapter = response_adapter(oa, "openAI")
    assert adapter.convert(raw) is raw and adapter.usage_known and adapter.usage.total == 10

    an = request(Dialect.ANTHROPIC, model="c", max_tokens=9, messages=HELLO)
    raw = json.dumps({"content": [], "usage": {"input_tokens": 3, "output_tokens": 5}}).encode()
    adapter = response_adapter(an, "anthropic")
    assert adapter.convert(raw) is raw and adapter.usage.total == 8

    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
               "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"},
                           {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": 1}}],
               "stop_reason": "tool_use", "usage": {"input_tokens": 12, "output_tokens": 3}}
    adapter = response_adapter(oa, "anthropic")
    translated = adapter.convert(json.dumps(message).encode())
    assert translated.endswith(b"}\n")  # a body the gateway writes ends a line, as OpenAI's do
    completion = ChatCompletion.model_validate_json(translated)
    choice = completion.choices[0]
    assert choice.message.content == "Hi there" and choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.name == "f"
    assert json.loads(choice.message.tool_calls[0].function.arguments) == {"a": 1}
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == \
        (12, 3, 15)
    assert adapter.usage_known and adapter.usage.total == 15


def test_upstream_errors_in_the_clients_dialect_keep_only_known_words():
    oa = request(Dialect.OPENAI, model="m", messages=HELLO)
    an = request(Dialect.ANTHROPIC, model="c", max_tokens=9, messages=HELLO)
    anthropic_error = b'{"type":"error","error":{"type":"rate_limit_error","message":"slow down sk-secret"}}'
    translated = json.loads(translate_error(oa, "anthropic", 429, anthropic_error))
    assert translated["error"] == {"message": "upstream answered HTTP 429 (rate_limit_error)",
                                   "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    relayed = json.loads(translate_error(an, "anthropic", 429, anthropic_error))
    assert relayed == {"type": "error", "error": {"type": "rate_limit_error",
                                                  "message": "upstream answered HTTP 429 (rate_limit_error)"}}
    openai_error = b'{"error":{"message":"bad sk-secret","type":"invalid_request_error","param":"sk-secret",' \
                   b'"code":"context_length_exceeded"}}'
    error = json.loads(translate_error(oa, "openAI", 400, openai_error))["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "context_length_exceeded", None)
    invented = b'{"error":{"message":"m","type":"sk-secret-type","code":"sk-secret-code"}}'
    assert b"sk-secret" not in translate_error(oa, "openAI", 400, invented)
    html = json.loads(translate_error(oa, "openAI", 502, b"<html>Bad Gateway</html>"))
    assert html["error"]["message"] == "upstream answered HTTP 502"
    assert json.loads(translate_error(an, "anthropic", 503, b""))["type"] == "error"


@pytest.mark.parametrize("how", SPLITS)
def test_error_events_in_relayed_streams_are_replaced_whole(how):
    """However the upstream cuts its bytes, no byte of an error event's text reaches the client."""
    oa = request(Dialect.OPENAI, model="m", messages=HELLO, stream=True, stream_options={"include_usage": True})
    an = request(Dialect.ANTHROPIC, model="c", max_tokens=9, messages=HELLO, stream=True)
    openai_stream = upstream_stream(oa)
    openai_stream = openai_stream.replace(
        b"data: [DONE]", b'data: {"error":{"message":"key sk-secret-123","type":"server_error"}}\n\ndata: [DONE]')
    out = run(response_adapter(oa, "openAI"), cuts(openai_stream, how))
    assert b"sk-secret" not in out and b'"upstream sent an error event (server_error)"' in out
    assert out.endswith(b"data: [DONE]\n\n")
    anthropic_stream = anthropic_sse({"type": "error", "error": {"type": "api_error", "message": "sk-secret-123"}})
    out = run(response_adapter(an, "anthropic"), cuts(anthropic_stream, how))
    assert b"sk-secret" not in out
    assert datas(out) == [b'{"type":"error","error":{"type":"api_error","message":"upstream sent an error event '
                          b'(api_error)"}}']
    assert out.startswith(b"event: error\n")


def test_running_usage_on_content_chunks_is_not_final():
    """OpenAI-compatible servers with continuous usage stats: only the finishing chunk is final."""
    client = request(Dialect.OPENAI, model="m", messages=HELLO, stream=True, stream_options={"include_usage": True})

    def chunk(content, finish, completion):
        choice = {"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}
        usage = {"prompt_tokens": 5, "completion_tokens": completion, "total_tokens": 5 + completion}
        return b"data: " + json.dumps({"id": "c", "choices": [choice], "usage": usage}).encode() + b"\n\n"
    adapter = response_adapter(client, "openAI")
    adapter.feed(chunk("Hi", None, 1))
    assert not adapter.usage_known and adapter.usage.total == 6
    adapter.feed(chunk(None, "stop", 2) + b"data: [DONE]\n\n")
    assert adapter.usage_known and adapter.usage.total == 7
