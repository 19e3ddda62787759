"""The mock upstream as a real process, spoken to by the official SDKs."""

import time

import anthropic
import httpx
import openai
import pytest

from tests.harness.procs import start_mock_llm

HELLO = [{"role": "user", "content": "Hello!"}]
HELLO_TOKENS = 9  # 3 framing + 1 role + 2 ("Hello", "!") + 3 reply priming
KEY = "sk-upstream-secret"


@pytest.fixture(scope="module")
def mock():
    proc, url = start_mock_llm()
    yield url
    proc.stop()


@pytest.fixture(scope="module")
def keyed_mock():
    proc, url = start_mock_llm(None, "--require-key", KEY, "--completion-tokens", "7", "--chunks", "3")
    yield url
    proc.stop()


def oa(url, key="k", **kw):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=10, **kw)


def an(url, key="k", **kw):
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=10, **kw)


def test_openai_non_stream_usage(mock):
    r = oa(mock).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert r.model == "gpt-4o-mini" and r.choices[0].finish_reason == "stop"
    assert len(r.choices[0].message.content.split()) == 20
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (HELLO_TOKENS, 20, 29)


def test_openai_stream_with_and_without_usage(mock):
    chunks = list(oa(mock).chat.completions.create(
        model="m", messages=HELLO, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert chunks[-1].usage.prompt_tokens == HELLO_TOKENS
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 20 and len([c for c in chunks if c.choices]) == 1 + 5 + 1
    plain = list(oa(mock).chat.completions.create(model="m", messages=HELLO, stream=True))
    assert all(c.usage is None for c in plain) and plain[-1].choices[0].finish_reason == "stop"


def test_openai_max_tokens_caps_the_answer(mock):
    r = oa(mock).chat.completions.create(model="m", messages=HELLO, max_completion_tokens=4)
    assert r.usage.completion_tokens == 4 and r.choices[0].finish_reason == "length"


def test_anthropic_non_stream_and_stream(mock):
    client = an(mock)
    m = client.messages.create(model="claude-x", max_tokens=100, messages=HELLO)
    assert m.stop_reason == "end_turn" and len(m.content[0].text.split()) == 20
    assert (m.usage.input_tokens, m.usage.output_tokens) == (HELLO_TOKENS, 20)
    with client.messages.stream(model="claude-x", max_tokens=6, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 6 and final.stop_reason == "max_tokens"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (HELLO_TOKENS, 6)


def test_anthropic_system_prompt_is_counted(mock):
    m = an(mock).messages.create(model="c", max_tokens=5, system="Be brief.", messages=HELLO)
    assert m.usage.input_tokens == HELLO_TOKENS + 3 + 1 + 3  # one more message of 3 words/marks


def test_headers_override_usage_and_status(mock):
    headers = {"x-mock-completion-tokens": "3", "x-mock-prompt-tokens": "1000"}
    r = oa(mock, default_headers=headers).chat.completions.create(model="m", messages=HELLO)
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (1000, 3)
    with pytest.raises(openai.RateLimitError):
        oa(mock, default_headers={"x-mock-status": "429"}).chat.completions.create(model="m", messages=HELLO)
    with pytest.raises(anthropic.InternalServerError):
        an(mock, default_headers={"x-mock-status": "503"}).messages.create(model="c", max_tokens=5, messages=HELLO)
    started = time.monotonic()
    oa(mock, default_headers={"x-mock-delay-ms": "300"}).chat.completions.create(model="m", messages=HELLO)
    assert time.monotonic() - started >= 0.3


def test_chunk_delay_spaces_the_events(mock):
    client = oa(mock, default_headers={"x-mock-chunk-delay-ms": "100", "x-mock-chunks": "3"})
    started = time.monotonic()
    stamps = [time.monotonic() - started for _ in client.chat.completions.create(model="m", messages=HELLO,
                                                                                 stream=True)]
    assert stamps[-1] >= 0.3 and stamps[0] < 0.1  # the first chunk did not wait for the rest


def test_models_in_both_formats(mock):
    assert "gpt-4o-mini" in [m.id for m in oa(mock).models.list()]
    assert "claude-sonnet-4-5" in [m.id for m in an(mock).models.list()]


def test_whole_json_bodies_end_a_line_as_the_real_apis_do(mock):
    """OpenAI's and Anthropic's JSON bodies end with a newline; Content-Length counts it."""
    chat = {"model": "m", "messages": HELLO}
    answers = {
        "openai": httpx.post(f"{mock}/v1/chat/completions", json=chat),
        "anthropic": httpx.post(f"{mock}/v1/messages", json={**chat, "max_tokens": 5},
                                headers={"anthropic-version": "2023-06-01"}),
        "models": httpx.get(f"{mock}/v1/models"),
        "error": httpx.post(f"{mock}/v1/chat/completions", json=chat, headers={"x-mock-status": "429"}),
        "healthz": httpx.get(f"{mock}/healthz"),
    }
    for name, r in answers.items():
        assert r.content.endswith(b"}\n"), (name, r.content[-20:])
        assert int(r.headers["content-length"]) == len(r.content), name
        r.json()  # still one JSON document


def test_bad_requests_answer_400_in_the_providers_format(mock):
    r = httpx.post(f"{mock}/v1/messages", json={"model": "c", "max_tokens": 5, "messages": HELLO})
    assert r.status_code == 400 and r.json()["error"]["message"] == "anthropic-version: header is required"
    r = httpx.post(f"{mock}/v1/chat/completions", content=b"{nope")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    with pytest.raises(anthropic.BadRequestError, match="max_tokens"):
        an(mock).messages.create(model="c", max_tokens=0, messages=HELLO)


def test_require_key_maps_to_authentication_errors(keyed_mock):
    with pytest.raises(openai.AuthenticationError) as e:
        oa(keyed_mock, key="wrong").chat.completions.create(model="m", messages=HELLO)
    assert e.value.body["type"] == "invalid_request_error" and e.value.body["code"] == "invalid_api_key"
    with pytest.raises(anthropic.AuthenticationError) as e:
        an(keyed_mock, key="wrong").messages.create(model="c", max_tokens=5, messages=HELLO)
    assert e.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        oa(keyed_mock, key="wrong").models.list()
    r = oa(keyed_mock, key=KEY).chat.completions.create(model="m", messages=HELLO)
    assert r.usage.completion_tokens == 7
    m = an(keyed_mock, key=KEY).messages.create(model="c", max_tokens=50, messages=HELLO)
    assert m.usage.output_tokens == 7


def test_records_requests_for_tests(keyed_mock):
    httpx.delete(f"{keyed_mock}/_mock/requests")
    an(keyed_mock, key=KEY).messages.create(model="c", max_tokens=5, messages=HELLO)
    recorded = httpx.get(f"{keyed_mock}/_mock/requests").json()["requests"]
    assert len(recorded) == 1
    assert recorded[0]["method"] == "POST" and recorded[0]["path"] == "/v1/messages"
    assert recorded[0]["headers"]["authorization"] == f"Bearer {KEY}"  # how anthropic's SDK sends it
    assert recorded[0]["body"]["max_tokens"] == 5 and recorded[0]["body"]["messages"] == HELLO
    r = httpx.post(f"{keyed_mock}/v1/messages", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                   json={"model": "c", "max_tokens": 5, "messages": HELLO})
    assert r.status_code == 200 and r.json()["usage"]["output_tokens"] == 5
    assert httpx.delete(f"{keyed_mock}/_mock/requests").json() == {"requests": []}


def test_no_record_keeps_nothing():
    proc, url = start_mock_llm(None, "--no-record")
    try:
        oa(url).chat.completions.create(model="m", messages=HELLO)
        assert httpx.get(f"{url}/_mock/requests").json() == {"requests": []}
    finally:
        proc.stop()
