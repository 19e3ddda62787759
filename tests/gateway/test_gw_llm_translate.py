"""OpenAI chat requests translated for Anthropic backends."""

import json

import pytest

from gateway.llm import BadRequest, Dialect, build_upstream, parse_request


def translated(cap=None, model=None, **body):
    req = parse_request(Dialect.OPENAI, json.dumps({"model": "claude-x", **body}).encode())
    call = build_upstream(req, "anthropic", model, "sk-ant", max_tokens=cap)
    assert call.path == "/v1/messages" and call.headers["x-api-key"] == "sk-ant"
    out = json.loads(call.body)
    # Whatever we send must itself be a valid Anthropic request.
    parse_request(Dialect.ANTHROPIC, call.body)
    return out


def test_system_and_developer_messages_become_the_system_prompt():
    out = translated(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Use metric units."}]},
        {"role": "user", "content": "How far is it?"},
    ])
    assert out["system"] == "Be brief.\n\nUse metric units."
    assert out["messages"] == [{"role": "user", "content": [{"type": "text", "text": "How far is it?"}]}]


def test_parameters():
    out = translated(messages=[{"role": "user", "content": "hi"}], stop="END", temperature=1.6, top_p=0.5,
                     stream=True, user="alice")
    assert out["stop_sequences"] == ["END"]
    assert out["temperature"] == 1.0  # Anthropic's ceiling
    assert (out["top_p"], out["stream"], out["metadata"]) == (0.5, True, {"user_id": "alice"})
    assert out["max_tokens"] == 4096
    assert "stream_options" not in out and "user" not in out
    assert translated(messages=[{"role": "user", "content": "hi"}], stop=["a", "b"])["stop_sequences"] == ["a", "b"]


def test_max_tokens_from_either_field_then_capped():
    msgs = [{"role": "user", "content": "hi"}]
    assert translated(messages=msgs, max_completion_tokens=300)["max_tokens"] == 300
    assert translated(messages=msgs, max_tokens=300)["max_tokens"] == 300
    assert translated(cap=50, messages=msgs, max_tokens=300)["max_tokens"] == 50
    assert translated(cap=50, messages=msgs, max_tokens=20)["max_tokens"] == 20
    assert translated(cap=50, messages=msgs)["max_tokens"] == 50
    assert translated(model="claude-real", messages=msgs)["model"] == "claude-real"


def test_images_and_merged_turns():
    out = translated(messages=[
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        ]},
        {"role": "user", "content": "Be precise."},
    ])
    assert len(out["messages"]) == 1
    blocks = out["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                     "data": "iVBORw0KGgo="}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
    assert blocks[3] == {"type": "text", "text": "Be precise."}


def test_tools_round_trip():
    out = translated(
        messages=[
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "12C"},
        ],
        tools=[{"type": "function", "function": {"name": "weather", "description": "Get weather",
                                                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        tool_choice="required", parallel_tool_calls=False,
    )
    assert out["tools"] == [{"name": "weather", "description": "Get weather",
                             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert out["messages"][1] == {"role": "assistant", "content": [
        {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}}]}
    assert out["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "12C"}]}
    named = translated(messages=[{"role": "user", "content": "x"}], tools=[
        {"type": "function", "function": {"name": "f"}}], tool_choice={"type": "function", "function": {"name": "f"}})
    assert named["tool_choice"] == {"type": "tool", "name": "f"}


@pytest.mark.parametrize("body, words", [
    ({"n": 2, "messages": [{"role": "user", "content": "x"}]}, "'n'"),
    ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "role 'function'"),
    ({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}, "input_audio"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,xx"}}]}]},
     "base64"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}]}]},
     "arguments"),
    ({"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "u"}}]},
                   {"role": "user", "content": "x"}]}, "system message"),
])
def test_untranslatable_requests_are_refused_with_a_reason(body, words):
    req = parse_request(Dialect.OPENAI, json.dumps({"model": "c", **body}).encode())
    with pytest.raises(BadRequest, match=words):
        build_upstream(req, "anthropic", None, "k")


def test_non_ascii_text_survives():
    out = translated(messages=[{"role": "user", "content": "Grüße, 日本 🙂"}])
    assert out["messages"][0]["content"][0]["text"] == "Grüße, 日本 🙂"
