"""Prompt estimates: OpenAI's chat formula, tiktoken only from its local cache."""

import hashlib
import json
import logging

import pytest
import tiktoken
import tiktoken.load

from gateway.llm import Dialect, estimate_tokens, parse_request
from gateway.llm import tokenize
from tollgate_demo.mock_llm import honest_count

PROSE = ("The gateway estimates a prompt before it is sent, so that a request whose estimate does not "
         "fit the remaining budget is refused without reaching the upstream provider at all. ") * 8


def req(dialect=Dialect.OPENAI, **body):
    if dialect == Dialect.ANTHROPIC:
        body.setdefault("max_tokens", 10)
    return parse_request(dialect, json.dumps({"model": "gpt-3.5-turbo", **body}).encode())


@pytest.fixture(autouse=True)
def no_tiktoken_download(monkeypatch, tmp_path):
    """An empty tiktoken cache, and any download attempt fails the test."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))

    def refuse(*args, **kwargs):
        raise AssertionError("tiktoken tried to download an encoding")
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)
    tokenize.text_counter.cache_clear()
    tokenize._load_cached.cache_clear()
    yield
    tokenize.text_counter.cache_clear()
    tokenize._load_cached.cache_clear()


@pytest.mark.parametrize("word", ["Hello!", "Hello", "hi", "Salut!", "Danke"])
def test_one_word_message_estimates_under_ten(word):
    """Up to 6 bytes of text (2 approximate tokens) + 7 tokens of framing."""
    assert estimate_tokens(req(messages=[{"role": "user", "content": word}])) < 10
    assert estimate_tokens(req(Dialect.ANTHROPIC, messages=[{"role": "user", "content": word}])) < 10


def test_seed_short_story_prompt_does_not_fit_ten_tokens():
    assert estimate_tokens(req(messages=[{"role": "user", "content": "Tell me a short story"}])) > 10


def test_estimate_errs_high_against_a_word_count():
    messages = [{"role": "system", "content": PROSE}, {"role": "user", "content": PROSE}]
    r = req(messages=messages)
    honest = tokenize.count_prompt(r, honest_count)
    estimate = estimate_tokens(r)
    assert honest < estimate < 2 * honest


def test_overheads_follow_openais_formula():
    """Per message 3 + role 1 (+ name 1 + its text), plus 3 to prime the reply."""
    byte_tokens = lambda text: len(text.encode())  # noqa: E731
    one = req(messages=[{"role": "user", "content": "abc"}])
    assert tokenize.count_prompt(one, byte_tokens) == 3 + 1 + 3 + 3
    named = req(messages=[{"role": "user", "content": "abc", "name": "bob"}])
    assert tokenize.count_prompt(named, byte_tokens) == 3 + 1 + 3 + (1 + 3) + 3
    anthropic = req(Dialect.ANTHROPIC, system="sys", messages=[{"role": "user", "content": [
        {"type": "text", "text": "abc"}]}])
    assert tokenize.count_prompt(anthropic, byte_tokens) == (3 + 1 + 3) + (3 + 1 + 3) + 3


def test_images_cost_a_flat_rate_not_their_bytes():
    big = "data:image/png;base64," + "A" * 200_000
    r = req(messages=[{"role": "user", "content": [{"type": "text", "text": "what"},
                                                   {"type": "image_url", "image_url": {"url": big}}]}])
    low = req(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": big, "detail": "low"}}]}])
    assert estimate_tokens(r) == 3 + 1 + 2 + 765 + 3
    assert estimate_tokens(low) == 3 + 1 + 85 + 3


def test_tool_calls_and_tools_count():
    bare = req(messages=[{"role": "user", "content": "x"}])
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    with_tools = req(messages=[{"role": "user", "content": "x"}], tools=tools)
    assert estimate_tokens(with_tools) > estimate_tokens(bare) + 10
    call = req(messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]}])
    assert estimate_tokens(call) > 3 + 1 + 3 + 5


def test_a_real_tiktoken_encoding_counts_text():
    """With an encoding in hand the text count is tiktoken's, not the approximation."""
    ranks = {bytes([i]): i for i in range(256)}
    ranks[b"Hello"] = 256
    encoding = tiktoken.Encoding("test_bytes", pat_str=r"\S+|\s+", mergeable_ranks=ranks, special_tokens={})
    r = req(messages=[{"role": "user", "content": "Hello"}])
    assert tokenize.count_prompt(r, lambda t: len(encoding.encode_ordinary(t))) == 3 + 1 + 1 + 3


def test_corrupt_cache_file_falls_back_without_network(tmp_path, caplog):
    path = tokenize.cache_file("cl100k_base")
    assert path.parent == tmp_path
    path.write_bytes(b"not an encoding")
    with caplog.at_level(logging.WARNING, "tollgate.tokenize"):
        counter = tokenize.text_counter("gpt-3.5-turbo")
    assert counter is tokenize.approx_tokens
    assert "corrupt" in caplog.text
    assert path.exists()  # tiktoken was never asked, so it did not delete and re-fetch it


def test_cache_path_matches_tiktokens_own(tmp_path):
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    assert tokenize.cache_file("o200k_base") == tmp_path / hashlib.sha1(url.encode()).hexdigest()


def test_unknown_models_and_no_cache_use_the_approximation():
    assert tokenize.text_counter("claude-sonnet-4-5") is tokenize.approx_tokens
    assert tokenize.text_counter("gpt-4o") is tokenize.approx_tokens
    assert tokenize.approx_tokens("abcdef") == 2 and tokenize.approx_tokens("abcdefg") == 3
    assert tokenize.approx_tokens("日本") == 2  # 6 UTF-8 bytes


@pytest.mark.parametrize("text", ["Hello!", PROSE, "日本語のテキスト" * 20, "🙂🚀" * 30, "{\"a\": [1, 2, 3]}" * 20])
def test_upper_bound_holds_even_for_one_token_per_byte(text):
    """A byte-level encoding with no merges is the worst case any BPE tokenizer can reach."""
    worst = tiktoken.Encoding("no_merges", pat_str=r"\S+|\s+",
                              mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={})
    for dialect in (Dialect.OPENAI, Dialect.ANTHROPIC):
        r = req(dialect, messages=[{"role": "user", "content": text, "name": "bob"}])
        worst_case = tokenize.count_prompt(r, lambda t: len(worst.encode_ordinary(t)))
        assert tokenize.upper_bound_tokens(r) >= worst_case
        assert tokenize.upper_bound_tokens(r) >= estimate_tokens(r)


def test_upper_bound_covers_images_and_the_tool_prompt():
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    plain = req(messages=[{"role": "user", "content": "x"}])
    with_image = req(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, image]}])
    tools = [{"type": "function", "function": {"name": "f"}}]
    with_tools = req(messages=[{"role": "user", "content": "x"}], tools=tools)
    base = tokenize.upper_bound_tokens(plain)
    assert tokenize.upper_bound_tokens(with_image) == base + tokenize.IMAGE_TOKENS_MAX
    assert tokenize.upper_bound_tokens(with_tools) == base + 400 + len(json.dumps(tools, separators=(",", ":")))


def test_upper_bound_covers_what_the_estimate_may_leave_out():
    plain = req(messages=[{"role": "user", "content": "x"}])
    base = tokenize.upper_bound_tokens(plain)
    low = {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}}
    with_low = req(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}, low]}])
    assert estimate_tokens(with_low) - estimate_tokens(plain) == tokenize.IMAGE_TOKENS_LOW
    assert tokenize.upper_bound_tokens(with_low) == base + tokenize.IMAGE_TOKENS_MAX  # some models bill thousands
    functions = [{"name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]
    schema = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
    for extra in ({"functions": functions}, {"response_format": schema}):
        grown = tokenize.upper_bound_tokens(req(messages=[{"role": "user", "content": "x"}], **extra))
        assert grown >= base + len(json.dumps(extra, separators=(",", ":")))
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
    with pytest.raises(tokenize.Unbounded, match="input_audio"):
        tokenize.upper_bound_tokens(req(messages=[{"role": "user", "content": [audio]}]))


def test_an_openai_only_field_in_an_anthropic_message_is_not_counted():
    """Found by the fuzz suite: `tool_calls: true` in a /v1/messages message broke the count."""
    from gateway.llm import Dialect, estimate_tokens, parse_request, upper_bound_tokens
    raw = b'{"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": "hi", "tool_calls": true}]}'
    req = parse_request(Dialect.ANTHROPIC, raw)
    assert estimate_tokens(req) > 0 and upper_bound_tokens(req) > 0
