"""The official SDKs work against the gateway by changing the base URL only."""

import anthropic
import openai
import pytest
import yaml

from tests.harness.procs import free_port, start_gateway, start_mock_llm

UPSTREAM_KEY = "sk-upstream-sdk-secret"
ANTHROPIC_UPSTREAM_KEY = "sk-ant-upstream-secret"
KEY = "sk-sdk-user-1"
TIGHT = "sk-sdk-tight-budget"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    mock, mock_url = start_mock_llm(None, "--completion-tokens", "30")
    port, admin_port = free_port(), free_port()
    config = {
        "llm": {
            "port": port,
            "policies": {"apiKey": {"mode": "strict", "keys": [
                {"key": KEY, "metadata": {"user_id": "sdk"}},
            ]}},
            "models": [
                {"name": "gpt-*", "provider": "openAI",
                 "params": {"apiKey": "$OPENAI_API_KEY", "baseUrl": mock_url}},
                {"name": "claude-*", "provider": "anthropic",
                 "params": {"apiKey": "$ANTHROPIC_API_KEY", "baseUrl": mock_url}},
            ],
        },
        "config": {"adminAddr": f"127.0.0.1:{admin_port}"},
    }
    path = tmp_path_factory.mktemp("sdk") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = start_gateway(path, port, admin_port,
                       env={"OPENAI_API_KEY": UPSTREAM_KEY, "ANTHROPIC_API_KEY": ANTHROPIC_UPSTREAM_KEY})
    yield gw
    gw.stop()
    mock.stop()


@pytest.fixture(scope="module")
def budget_stack(tmp_path_factory):
    mock, mock_url = start_mock_llm(None, "--completion-tokens", "50")
    port, admin_port = free_port(), free_port()
    config = {
        "llm": {
            "port": port,
            "policies": {
                "apiKey": {"keys": [{"key": TIGHT}]},
                "localRateLimit": [{"maxTokens": 20, "tokensPerFill": 1, "fillInterval": "1h", "type": "tokens"}],
            },
            "models": [{"name": "*", "provider": "openAI", "params": {"apiKey": "k", "baseUrl": mock_url}}],
        },
        "config": {"adminAddr": f"127.0.0.1:{admin_port}"},
    }
    path = tmp_path_factory.mktemp("sdk-budget") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = start_gateway(path, port, admin_port)
    yield gw
    gw.stop()
    mock.stop()


def oai(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def test_openai_non_streaming(stack):
    resp = oai(stack.url).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello there"}])
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens == 30
    assert resp.usage.prompt_tokens > 0


def test_openai_streaming_with_and_without_usage(stack):
    client = oai(stack.url)
    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    # The gateway asked the upstream for usage, but the client did not: no usage chunk.
    assert all(c.usage is None for c in chunks)

    chunks = list(client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True,
        stream_options={"include_usage": True}))
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 30


def test_openai_authentication_error(stack):
    with pytest.raises(openai.AuthenticationError) as err:
        oai(stack.url, "sk-wrong").chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert "key" in str(err.value).lower()


def test_models_list_shows_what_the_globs_can_serve(stack):
    """Both entries are globs: each lists its provider's models that it would serve."""
    ids = [m.id for m in oai(stack.url).models.list()]
    assert ids == ["claude-sonnet-4-5", "gpt-3.5-turbo", "gpt-4o-mini"]  # the mock's three, each once
    client = anthropic.Anthropic(base_url=stack.url, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == ids  # Anthropic's list shape for its SDK


def test_openai_rate_limit_error(budget_stack):
    client = oai(budget_stack.url, TIGHT)
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}])
    assert "rate limit" in str(err.value)
    assert err.value.response.headers["retry-after"]


def test_anthropic_messages(stack):
    client = anthropic.Anthropic(base_url=stack.url, auth_token=KEY, api_key=None, max_retries=0)
    msg = client.messages.create(model="claude-sonnet-5", max_tokens=100,
                                 messages=[{"role": "user", "content": "Hello"}])
    assert msg.content[0].text
    assert msg.usage.output_tokens == 30

    with client.messages.stream(model="claude-sonnet-5", max_tokens=100,
                                messages=[{"role": "user", "content": "Hello"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text
    assert final.usage.output_tokens == 30


def test_anthropic_sdk_with_x_api_key(stack):
    # The Anthropic SDK's default: the key in `x-api-key`, accepted when no Authorization is sent.
    client = anthropic.Anthropic(base_url=stack.url, api_key=KEY, max_retries=0)
    msg = client.messages.create(model="claude-sonnet-5", max_tokens=100,
                                 messages=[{"role": "user", "content": "Hello"}])
    assert msg.usage.output_tokens == 30


def test_anthropic_sdk_authentication_error(stack):
    client = anthropic.Anthropic(base_url=stack.url, auth_token="sk-wrong", api_key=None, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        client.messages.create(model="claude-sonnet-5", max_tokens=10,
                               messages=[{"role": "user", "content": "Hello"}])


def test_openai_client_to_anthropic_backend(stack):
    raw = oai(stack.url).chat.completions.with_raw_response.create(
        model="claude-sonnet-5", messages=[{"role": "system", "content": "Be brief."},
                                             {"role": "user", "content": "Hello"}])
    # The gateway wrote this body (Anthropic's, translated): it ends a line, as OpenAI's do.
    assert raw.http_response.content.endswith(b"}\n"), raw.http_response.content[-20:]
    resp = raw.parse()
    assert resp.choices[0].message.content
    assert resp.usage.completion_tokens == 30
