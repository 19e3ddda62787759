"""The official SDKs parse what gateway.llm makes of the real mock upstream's answers.

A small in-process relay stands where the gateway's request path will: it runs
parse_request -> build_upstream -> a real HTTP call to the mock process ->
ResponseAdapter, and hands the result to the SDK through httpx's transport hook.
"""

import json

import anthropic
import httpx
import httpx2
import openai
import pytest

from gateway.llm import Dialect, build_upstream, parse_request, response_adapter, translate_error
from tests.harness.procs import start_mock_llm

UPSTREAM_KEY = "sk-upstream-only"
VIRTUAL_KEY = "sk-virtual-client"
HELLO = [{"role": "user", "content": "Hello!"}]


@pytest.fixture(scope="module")
def mock():
    proc, url = start_mock_llm(None, "--require-key", UPSTREAM_KEY, "--completion-tokens", "12", "--chunks", "4")
    yield url
    proc.stop()


class Relay:
    """A stand-in for the request path, over one provider."""

    def __init__(self, mock_url: str, provider: str, api_key: str = UPSTREAM_KEY) -> None:
        self.mock_url, self.provider, self.api_key = mock_url, provider, api_key
        self.http = httpx  # the module the client SDK speaks: httpx (openai) or httpx2 (anthropic)
        self.upstream = httpx.Client(timeout=10)
        self.adapters = []

    def __call__(self, request):
        dialect = Dialect.ANTHROPIC if request.url.path.endswith("/v1/messages") else Dialect.OPENAI
        req = parse_request(dialect, request.read())
        call = build_upstream(req, self.provider, None, self.api_key, client_headers=request.headers)
        upstream = self.upstream.send(
            self.upstream.build_request("POST", self.mock_url + call.path, content=call.body, headers=call.headers),
            stream=True)
        if upstream.status_code >= 300:
            body = translate_error(req, self.provider, upstream.status_code, upstream.read())
            upstream.close()
            return self.http.Response(upstream.status_code, content=body, headers={"content-type": "application/json"})
        adapter = response_adapter(req, self.provider)
        self.adapters.append(adapter)
        if not req.stream:
            body = adapter.convert(upstream.read())
            upstream.close()
            return self.http.Response(200, content=body, headers={"content-type": "application/json"})

        def relay():
            try:
                for chunk in upstream.iter_raw():
                    out = adapter.feed(chunk)
                    if out:
                        yield out
                yield adapter.finish()
            finally:
                upstream.close()
        return self.http.Response(200, content=relay(), headers={"content-type": "text/event-stream"})


def openai_client(relay):
    return openai.OpenAI(base_url="http://gateway/v1", api_key=VIRTUAL_KEY, max_retries=0,
                         http_client=httpx.Client(transport=httpx.MockTransport(relay)))


def anthropic_client(relay):
    relay.http = httpx2
    return anthropic.Anthropic(base_url="http://gateway", api_key=VIRTUAL_KEY, max_retries=0,
                               http_client=httpx2.Client(transport=httpx2.MockTransport(relay)))


def last_upstream_request(mock):
    return httpx.get(f"{mock}/_mock/requests").json()["requests"][-1]


def test_openai_to_openai_stream_without_usage_still_accounts(mock):
    relay = Relay(mock, "openAI")
    chunks = list(openai_client(relay).chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True))
    assert all(c.choices for c in chunks)  # the usage chunk the client did not ask for is gone
    assert len("".join(c.choices[0].delta.content or "" for c in chunks).split()) == 12
    assert relay.adapters[0].usage_known and relay.adapters[0].usage.output_tokens == 12
    sent = last_upstream_request(mock)
    assert sent["body"]["stream_options"] == {"include_usage": True}
    assert sent["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert VIRTUAL_KEY not in json.dumps(sent)


def test_openai_to_openai_stream_with_usage(mock):
    relay = Relay(mock, "openAI")
    chunks = list(openai_client(relay).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.total_tokens == relay.adapters[0].usage.total == 9 + 12


@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_on_anthropic_backend(mock, stream):
    relay = Relay(mock, "anthropic")
    client = openai_client(relay)
    messages = [{"role": "system", "content": "Be brief."}, *HELLO]
    if stream:
        chunks = list(client.chat.completions.create(model="claude-x", messages=messages, stream=True,
                                                     stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        r = client.chat.completions.create(model="claude-x", messages=messages, max_tokens=5)
        text, usage = r.choices[0].message.content, r.usage
        assert r.choices[0].finish_reason == "length"
    assert len(text.split()) == usage.completion_tokens == (12 if stream else 5)
    assert usage.prompt_tokens == relay.adapters[0].usage.input_tokens == 9 + 7
    sent = last_upstream_request(mock)
    assert sent["path"] == "/v1/messages" and sent["headers"]["x-api-key"] == UPSTREAM_KEY
    assert "authorization" not in sent["headers"] and sent["body"]["system"] == "Be brief."


def test_anthropic_client_on_anthropic_backend(mock):
    relay = Relay(mock, "anthropic")
    with anthropic_client(relay).messages.stream(model="claude-x", max_tokens=100, messages=HELLO) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == final.usage.output_tokens == relay.adapters[0].usage.output_tokens == 12
    sent = last_upstream_request(mock)
    assert sent["headers"]["x-api-key"] == UPSTREAM_KEY and "authorization" not in sent["headers"]
    assert sent["headers"]["anthropic-version"] == anthropic._constants.ANTHROPIC_API_VERSION  # the client's


def test_upstream_auth_failure_reaches_each_sdk_as_its_error(mock):
    with pytest.raises(openai.AuthenticationError) as e:
        openai_client(Relay(mock, "anthropic", api_key="wrong")).chat.completions.create(model="c", messages=HELLO)
    assert "upstream answered HTTP 401 (authentication_error)" in e.value.message
    with pytest.raises(anthropic.AuthenticationError):
        anthropic_client(Relay(mock, "anthropic", api_key="wrong")).messages.create(
            model="c", max_tokens=5, messages=HELLO)
    with pytest.raises(openai.AuthenticationError):
        openai_client(Relay(mock, "openAI", api_key="wrong")).chat.completions.create(model="c", messages=HELLO)
