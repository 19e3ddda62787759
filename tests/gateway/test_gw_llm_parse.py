"""Parsing client requests, building upstream calls, and error bodies."""

import json

import pytest

from gateway.errors import error_body
from gateway.llm import BadRequest, Dialect, build_upstream, parse_request

OA, AN = Dialect.OPENAI, Dialect.ANTHROPIC
HELLO = [{"role": "user", "content": "Hello!"}]


def req(dialect=OA, **body):
    return parse_request(dialect, json.dumps(body).encode())


@pytest.mark.parametrize("raw, words", [
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"model": "m"}', "'messages'"),
    (b'{"model": "m", "messages": []}', "'messages'"),
    (b'{"model": "m", "messages": ["hi"]}', "messages[0] must be an object"),
    (b'{"model": "m", "messages": [{"role": "robot", "content": "x"}]}', "messages[0].role"),
    (b'{"model": "m", "messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
    (b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}', "'model'"),
    (b'{"model": "m", "stream": "yes", "messages": [{"role": "user", "content": "x"}]}', "'stream'"),
    (b'{"model": "m", "max_tokens": -1, "messages": [{"role": "user", "content": "x"}]}', "'max_tokens'"),
    (b'{"model": "m", "stream_options": 1, "messages": [{"role": "user", "content": "x"}]}', "'stream_options'"),
])
def test_openai_bad_requests_name_the_problem(raw, words):
    with pytest.raises(BadRequest, match=words.replace("[", r"\[").replace("]", r"\]")):
        parse_request(OA, raw)


def test_anthropic_requires_max_tokens_and_its_roles():
    with pytest.raises(BadRequest, match="'max_tokens' is required"):
        req(AN, model="c", messages=HELLO)
    with pytest.raises(BadRequest, match="messages.0..role"):
        req(AN, model="c", max_tokens=5, messages=[{"role": "system", "content": "x"}])
    with pytest.raises(BadRequest, match="'system'"):
        req(AN, model="c", max_tokens=5, system=3, messages=HELLO)


def test_parsed_fields():
    r = req(model="gpt-4o", messages=HELLO, stream=True, max_tokens=30, max_completion_tokens=20)
    assert (r.model, r.stream, r.max_output_tokens, r.wants_usage) == ("gpt-4o", True, 20, False)
    r = req(model="gpt-4o", messages=HELLO, stream=True, stream_options={"include_usage": True})
    assert r.wants_usage and r.max_output_tokens is None
    assert req(messages=HELLO).model == ""  # left to the backend's configured model
    a = req(AN, model="c", max_tokens=64, messages=HELLO, stream=True)
    assert (a.max_output_tokens, a.wants_usage, a.stream) == (64, True, True)


def test_openai_call_reuses_the_client_bytes_when_nothing_changes():
    r = req(model="gpt-4o", messages=HELLO, max_tokens=50)
    call = build_upstream(r, "openAI", None, "sk-up", max_tokens=100)
    assert call.path == "/v1/chat/completions"
    assert call.body is r.raw
    assert call.headers == {"content-type": "application/json", "authorization": "Bearer sk-up"}


def test_openai_call_overrides_model_and_caps_output_in_the_clients_field():
    r = req(model="alias", messages=HELLO, max_tokens=500)
    body = json.loads(build_upstream(r, "openAI", "gpt-4o", None, max_tokens=100).body)
    assert body["model"] == "gpt-4o" and body["max_tokens"] == 100 and "max_completion_tokens" not in body
    body = json.loads(build_upstream(req(model="m", messages=HELLO), "openAI", None, None, max_tokens=7).body)
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body


def test_openai_stream_asks_upstream_for_usage_keeping_other_options():
    r = req(model="m", messages=HELLO, stream=True, stream_options={"include_obfuscation": False})
    body = json.loads(build_upstream(r, "openAI", None, "k").body)
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    asked = req(model="m", messages=HELLO, stream=True, stream_options={"include_usage": True})
    assert build_upstream(asked, "openAI", None, "k").body is asked.raw


def test_model_is_required_somewhere():
    with pytest.raises(BadRequest, match="'model' is required"):
        build_upstream(req(messages=HELLO), "openAI", None, "k")
    body = json.loads(build_upstream(req(messages=HELLO), "openAI", "gpt-4o", "k").body)
    assert body["model"] == "gpt-4o"


def test_anthropic_call_headers_pass_only_version_and_beta():
    r = req(AN, model="claude", max_tokens=10, messages=HELLO)
    client = {"anthropic-version": "2024-01-01", "anthropic-beta": "tools-2024", "x-api-key": "virtual",
              "authorization": "Bearer virtual"}
    call = build_upstream(r, "anthropic", None, "sk-ant", client_headers=client)
    assert call.path == "/v1/messages" and call.body is r.raw
    assert call.headers == {"content-type": "application/json", "anthropic-version": "2024-01-01",
                            "anthropic-beta": "tools-2024", "x-api-key": "sk-ant"}
    assert build_upstream(r, "anthropic", None, "k").headers["anthropic-version"] == "2023-06-01"
    capped = json.loads(build_upstream(r, "anthropic", "claude-2", "k", max_tokens=4).body)
    assert capped["max_tokens"] == 4 and capped["model"] == "claude-2"


def test_anthropic_client_cannot_reach_openai_backend():
    r = req(AN, model="claude", max_tokens=10, messages=HELLO)
    with pytest.raises(BadRequest, match="/v1/messages.*openAI"):
        build_upstream(r, "openAI", None, "k")


@pytest.mark.parametrize("status, oa_type, oa_code, an_type", [
    (400, "invalid_request_error", None, "invalid_request_error"),
    (401, "invalid_request_error", "invalid_api_key", "authentication_error"),
    (403, "permission_error", "permission_denied", "permission_error"),
    (413, "invalid_request_error", "request_too_large", "request_too_large"),
    (429, "rate_limit_error", "rate_limit_exceeded", "rate_limit_error"),
    (502, "api_error", "bad_gateway", "api_error"),
    (504, "api_error", "gateway_timeout", "api_error"),
])
def test_error_bodies_in_both_dialects(status, oa_type, oa_code, an_type):
    oa = json.loads(error_body(OA, status, "the key is invalid"))
    assert oa == {"error": {"message": "the key is invalid", "type": oa_type, "param": None, "code": oa_code}}
    an = json.loads(error_body(AN, status, "the key is invalid"))
    assert an == {"type": "error", "error": {"type": an_type, "message": "the key is invalid"}}
    assert json.loads(error_body("anthropic", status, "m", kind="overloaded_error"))["error"]["type"] == \
        "overloaded_error"


HI = '[{"role": "user", "content": "x"}]'
DEEP = "[" * 1000 + "]" * 1000


@pytest.mark.parametrize("dialect", [OA, AN], ids=["openai", "anthropic"])
@pytest.mark.parametrize("fields, words", [
    ('"max_tokens": 18446744073709551616', "'max_tokens' must be an integer from 1 to 2147483647"),
    ('"max_tokens": 2147483648', "'max_tokens' must be an integer from 1"),
    ('"max_tokens": 5, "temperature": 3', "'temperature' must be a number"),
    ('"max_tokens": 5, "top_p": -0.5', "'top_p' must be a number"),
    ('"max_tokens": 5, "temperature": NaN', "NaN is not a JSON number"),
    ('"max_tokens": 5, "extra": 1e999', "out of range"),
    ('"max_tokens": 5, "extra": ' + DEEP, "nested deeper than 64 levels"),
    ('"max_tokens": 5, "extra": ' + "[" * 100_000 + "]" * 100_000, "nested deeper than 64 levels"),
])
def test_numbers_and_nesting_beyond_any_model_are_refused(dialect, fields, words):
    with pytest.raises(BadRequest, match=words):
        parse_request(dialect, ('{"model": "m", "messages": ' + HI + ", " + fields + "}").encode())


@pytest.mark.parametrize("body, words", [
    ({"max_completion_tokens": 2**64}, "'max_completion_tokens' must be an integer"),
    ({"n": 1000}, "'n' must be an integer from 1 to 128"),
    ({"stop": 5}, "'stop' must be a string or an array of strings"),
    ({"tools": [{"function": 5}]}, "'tools.0..function' must be an object"),
    ({"messages": [{"role": {"a": 1}, "content": "x"}]}, "messages.0..role must be one of .* not a dict"),
    ({"messages": [{"role": "assistant", "tool_calls": 5}]}, "'messages.0..tool_calls' must be an array of objects"),
    ({"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": 1}}}]}]},
     "'messages.0..tool_calls.0..function.arguments' must be a string"),
    ({"messages": [{"role": "user", "content": [5]}]}, "messages.0..content.0. must be an object"),
])
def test_openai_malformed_shapes_name_the_field(body, words):
    with pytest.raises(BadRequest, match=words):
        req(OA, **{"model": "m", "messages": HELLO, **body})


def test_a_lone_surrogate_is_refused_and_a_pair_is_text():
    with pytest.raises(BadRequest, match=r"messages\[0\].content holds a lone UTF-16 surrogate"):
        parse_request(OA, b'{"model": "m", "messages": [{"role": "user", "content": "a\\ud800"}]}')
    with pytest.raises(BadRequest, match=r"system holds a lone UTF-16 surrogate"):
        parse_request(AN, b'{"model": "m", "max_tokens": 5, "system": "\\udfff", "messages": ' + HI.encode() + b"}")
    emoji = parse_request(OA, b'{"model": "m", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}')
    assert emoji.body["messages"][0]["content"] == "\N{GRINNING FACE}"


def test_tool_arguments_going_to_anthropic_must_be_a_json_object():
    calls = [{"id": "1", "function": {"name": "f", "arguments": "[1]"}}]
    request = req(OA, model="m", messages=[*HELLO, {"role": "assistant", "tool_calls": calls}])
    with pytest.raises(BadRequest, match="function.arguments must be a JSON object"):
        build_upstream(request, "anthropic", None, "k")
