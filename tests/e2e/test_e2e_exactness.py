"""Exact under failure: a killed replica's reservations come back, a stalled service fails
closed within its timeout and keeps nothing, a request that fails after admission
(unreachable, untranslatable, timed out) keeps nothing, a hard budget refuses a prompt it
cannot bound with a 400 and counts `n`, `functions` and `response_format` in its bound, a
dropped stream (OpenAI or Anthropic) ends with an error event and is charged what it
relayed, a CEL typo never turns a budget off, and a reload reading an `apiKey` field no
key carries is logged and runs nothing unbudgeted."""

import contextlib
import json
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

from tests.harness.budgets import domain_yaml, gateway_config, remote_remaining
from tests.harness.procs import python_cmd
from tests.harness.stack import Stack

BUDGET = 5000


def chat(url: str, key: str = "sk-load-user", timeout: float = 10, **extra) -> httpx.Response:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count to five."}], **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                      timeout=timeout)


def spent(stack: Stack) -> int:
    return BUDGET - remote_remaining(stack, "load")


def hard_gateway(stack: Stack, mock_url: str, timeout: str | None = None, **policy) -> dict:
    config = gateway_config(stack, "hard")
    config["llm"]["models"][0]["params"]["baseUrl"] = mock_url
    if timeout:
        config["llm"]["policies"]["timeout"] = {"requestTimeout": timeout}
    config["llm"]["policies"]["remoteRateLimit"].update(policy)
    return config


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path)
    s.start_redis()
    s.start_ratelimit(domain_yaml(BUDGET))
    yield s
    s.stop()


def test_a_replica_killed_mid_request_blocks_nobody_past_the_lease(stack):
    slow = stack.start_mock("--delay-ms", "60000")
    fast = stack.start_mock("--completion-tokens", "20")
    doomed = stack.start_gateway(hard_gateway(stack, slow, timeout="2s"))  # lease: 2 s + 5 s margin
    other = stack.start_gateway(hard_gateway(stack, fast, timeout="2s"))
    # Without max_tokens a hard budget reserves elastically: the whole remaining budget.
    def in_flight() -> None:
        with contextlib.suppress(httpx.HTTPError):  # its replica is killed under it
            chat(doomed.url, timeout=30)

    threading.Thread(target=in_flight, daemon=True).start()
    deadline = time.monotonic() + 5
    while spent(stack) < BUDGET and time.monotonic() < deadline:
        time.sleep(0.05)
    assert spent(stack) == BUDGET  # held by the request in flight on the doomed replica
    killed_at = time.monotonic()
    doomed.proc.signal(signal.SIGKILL)
    assert chat(other.url).status_code == 429  # still held: nobody settled it
    while chat(other.url).status_code != 200:
        assert time.monotonic() - killed_at < 12, "the lease never gave the reservation back"
        time.sleep(0.25)
    assert 0 < spent(stack) < 200  # the budget holds only what the served request used


def test_a_stalled_service_fails_closed_within_its_timeout_and_keeps_nothing(stack):
    mock = stack.start_mock("--completion-tokens", "20")
    gw = stack.start_gateway(hard_gateway(stack, mock))
    assert chat(gw.url).status_code == 200  # connections warm
    before = spent(stack)
    stack.ratelimit.signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(chat(gw.url))) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
    finally:
        stack.ratelimit.signal(signal.SIGCONT)
    assert [a.status_code for a in answers] == [503] * 6
    assert elapsed < 2.5, elapsed  # each within its own 0.5 s, not behind the queued settles' 5 s
    # The reserves the gateway gave up on reach the service late, and their releases too:
    # whichever lands first, nothing stays charged.
    deadline = time.monotonic() + 10
    while spent(stack) != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spent(stack) == before
    assert chat(gw.url).status_code == 200


# Requests that pass parsing and are admitted (a hard budget without max_tokens holds the
# whole remaining budget), then fail on their way upstream: (model, extra body, status, why).
AFTER_ADMISSION = {
    # Nothing listens at the backend's address: the call is never sent.
    "unreachable": ("broken-gpt", {}, 502, "is unreachable"),
    # Valid OpenAI, but the Anthropic translation refuses n > 1 after admission.
    "untranslatable": ("claude-sonnet-4-5", {"n": 2}, 400, "'n' > 1 is not supported"),
    # The provider never answers within the route's 1 s timeout.
    "timed out": ("slow-gpt", {}, 504, "did not answer within 1s"),
}


@pytest.mark.parametrize("case", AFTER_ADMISSION)
def test_a_request_that_fails_after_admission_keeps_nothing_reserved(stack, case):
    mock = stack.start_mock("--completion-tokens", "20")
    slow = stack.start_mock("--delay-ms", "60000")
    # Bound, never listening: connections are refused, and no other process of the run can
    # take the port meanwhile (a free_port() here was once taken by a service answering 401).
    nobody = socket.socket()
    nobody.bind(("127.0.0.1", 0))
    config = hard_gateway(stack, mock, timeout="1s")
    config["llm"]["models"][:0] = [
        {"name": "broken-*", "provider": "openAI",
         "params": {"apiKey": "sk-up", "baseUrl": f"http://127.0.0.1:{nobody.getsockname()[1]}"}},
        {"name": "claude-*", "provider": "anthropic", "params": {"apiKey": "sk-up", "baseUrl": mock}},
        {"name": "slow-*", "provider": "openAI", "params": {"apiKey": "sk-up", "baseUrl": slow}},
    ]
    gw = stack.start_gateway(config)
    model, extra, status, why = AFTER_ADMISSION[case]
    for _ in range(3):
        answer: list[httpx.Response] = []
        sent = threading.Thread(target=lambda: answer.append(chat(gw.url, model=model, **extra)))
        sent.start()
        if case == "timed out":  # in flight: it holds the whole budget, so it was admitted
            deadline = time.monotonic() + 0.8
            while spent(stack) < BUDGET and time.monotonic() < deadline:
                time.sleep(0.02)
            assert spent(stack) == BUDGET
        sent.join()
        assert answer[0].status_code == status, answer[0].text
        assert why in answer[0].json()["error"]["message"]
        assert spent(stack) == 0  # released on the way out, not held until the lease ends
    assert stack.mock_billed(mock)["requests"] == 0
    served = chat(gw.url, max_tokens=50)
    assert served.status_code == 200, served.text
    assert spent(stack) == served.json()["usage"]["total_tokens"]
    nobody.close()


def test_a_prompt_a_hard_budget_cannot_bound_is_refused_with_why_and_holds_nothing(stack):
    mock = stack.start_mock("--completion-tokens", "20")
    config = hard_gateway(stack, mock)
    config["llm"]["models"][:0] = [
        {"name": "claude-*", "provider": "anthropic", "params": {"apiKey": "sk-up", "baseUrl": mock}}]
    gw = stack.start_gateway(config)
    audio = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZF", "format": "wav"}}
    r = chat(gw.url, max_tokens=50,
             messages=[{"role": "user", "content": [{"type": "text", "text": "Transcribe."}, audio]}])
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert "'input_audio' cannot be bounded in tokens" in message and "a hard budget applies" in message
    # The same refusal in the Anthropic dialect, for a PDF document.
    document = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0x"}}
    r = httpx.post(f"{gw.url}/v1/messages", timeout=10, headers={"Authorization": "Bearer sk-load-user"},
                   json={"model": "claude-sonnet-4-5", "max_tokens": 50,
                         "messages": [{"role": "user", "content": [document, {"type": "text", "text": "Sum up."}]}]})
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and "'document' cannot be bounded" in r.json()["error"]["message"]
    assert stack.mock_billed(mock)["requests"] == 0 and spent(stack) == 0
    served = chat(gw.url, max_tokens=50)
    assert served.status_code == 200, served.text
    assert spent(stack) == served.json()["usage"]["total_tokens"]


def test_functions_response_format_and_n_are_in_the_hard_bound_and_refused_up_front(stack):
    mock = stack.start_mock("--completion-tokens", "20")
    gw = stack.start_gateway(hard_gateway(stack, mock))
    big = "Look the answer up in the catalogue. " * 150  # 5,550 bytes: more than the budget can cost
    functions = [{"name": "lookup", "description": big, "parameters": {"type": "object", "properties": {}}}]
    schema = {"type": "json_schema",
              "json_schema": {"name": "answer", "schema": {"type": "object", "description": big}}}
    for extra in ({"functions": functions}, {"response_format": schema}, {"n": 60}):  # n: 60 x 100 > 5,000
        r = chat(gw.url, max_tokens=100, **extra)
        assert r.status_code == 429, (list(extra), r.text)
    assert stack.mock_billed(mock)["requests"] == 0 and spent(stack) == 0  # refused before any call
    # Without what tips the bound over, the same requests are served.
    small = [{**functions[0], "description": "Look it up."}]
    for extra in ({"functions": small}, {"n": 40}):
        r = chat(gw.url, max_tokens=100, **extra)
        assert r.status_code == 200, (list(extra), r.text)
    billed = stack.mock_billed(mock)
    assert spent(stack) == billed["prompt_tokens"] + billed["completion_tokens"]


def test_n_answers_are_all_in_the_hard_bound(stack):
    mock = stack.start_mock("--completion-tokens", "100")
    gws = [stack.start_gateway(hard_gateway(stack, mock)) for _ in range(2)]
    served = 0
    lock = threading.Lock()

    def worker(i: int) -> None:
        nonlocal served
        for _ in range(5):
            r = chat(gws[i % 2].url, n=8, max_tokens=100)
            if r.status_code == 200:
                with lock:
                    served += r.json()["usage"]["total_tokens"]

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    billed = stack.mock_billed(mock)
    assert 0 < served == billed["prompt_tokens"] + billed["completion_tokens"] <= BUDGET
    assert spent(stack) == served


def test_a_dropped_stream_ends_with_an_error_event_and_is_charged_what_it_relayed(stack):
    mock = stack.start_mock("--completion-tokens", "30", "--chunks", "6", "--drop-after", "3")
    gw = stack.start_gateway(hard_gateway(stack, mock))
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", timeout=10,
                      headers={"Authorization": "Bearer sk-load-user"},
                      json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Count to five."}],
                            "stream": True}) as r:
        events = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert json.loads(events[-1][6:])["error"]["type"] == "api_error"  # not a silent, complete-looking end
    assert "data: [DONE]" not in events
    billed = stack.mock_billed(mock)
    charged = spent(stack)
    # The prompt as estimated plus the 15 words relayed, counted from their text.
    assert billed["completion_tokens"] == 15 and charged >= billed["completion_tokens"]
    assert charged <= billed["prompt_tokens"] + 15 + 30  # never the whole reservation


@pytest.mark.parametrize("client", ["anthropic", "openai"])
def test_a_dropped_anthropic_stream_ends_with_an_error_event_and_is_charged_input_and_relayed_output(stack, client):
    mock = stack.start_mock("--completion-tokens", "30", "--chunks", "6", "--drop-after", "3")
    config = hard_gateway(stack, mock)
    config["llm"]["models"] = [{"name": "claude-*", "provider": "anthropic",
                                "params": {"apiKey": "sk-up", "baseUrl": mock}}]
    gw = stack.start_gateway(config)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True,
            "messages": [{"role": "user", "content": "Count to five."}]}
    path = "/v1/messages" if client == "anthropic" else "/v1/chat/completions"
    with httpx.stream("POST", f"{gw.url}{path}", json=body, timeout=10,
                      headers={"Authorization": "Bearer sk-load-user", "anthropic-version": "2023-06-01"}) as r:
        assert r.status_code == 200
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    if client == "anthropic":
        kinds = [e["type"] for e in events]
        assert kinds[-1] == "error" and events[-1]["error"]["type"] == "api_error", kinds
        assert "message_stop" not in kinds and "message_delta" not in kinds  # not a clean end
        relayed = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    else:
        assert events[-1]["error"]["type"] == "api_error"
        relayed = "".join(c["delta"].get("content") or "" for e in events[:-1] for c in e["choices"])
    billed = stack.mock_billed(mock)
    assert billed["completion_tokens"] == len(relayed.split()) == 15  # 3 of 6 pieces reached the client
    # Charged: the input the provider reported at message_start, plus the output relayed,
    # counted from its text (Claude's tokenizer is not local: one token per 3 bytes, rounded up).
    assert spent(stack) == billed["prompt_tokens"] + (len(relayed.encode()) + 2) // 3


def test_a_cel_typo_is_refused_by_validate_and_on_reload(tmp_path):
    stack = Stack(tmp_path)
    try:
        stack.start_redis()
        stack.start_ratelimit(domain_yaml(100))
        stack.start_mock("--completion-tokens", "120")
        config = gateway_config(stack, "soft")
        remote = config["llm"]["policies"]["remoteRateLimit"]
        config["llm"]["policies"]["remoteRateLimit"] = {"conditional": [
            {"condition": "apiKey.user_id in ['load', 'carol']", **remote}]}
        gw = stack.start_gateway(config)
        assert chat(gw.url).status_code == 200
        assert chat(gw.url).status_code == 429
        text = gw.config_path.read_text()
        typo = text.replace("apiKey.user_id in", "apikey.user_id in")
        assert typo != text
        check = tmp_path / "typo.yaml"
        check.write_text(typo)
        validate = subprocess.run(python_cmd("gateway", "validate", "-f", str(check)), capture_output=True, text=True)
        assert validate.returncode != 0 and "unknown variable 'apikey'" in validate.stderr
        assert "did you mean 'apiKey'" in validate.stderr
        gw.config_path.write_text(typo)
        deadline = time.monotonic() + 5
        while "unknown variable 'apikey'" not in gw.proc.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "config change rejected" in gw.proc.log()
        assert chat(gw.url).status_code == 429  # the budget still applies
    finally:
        stack.stop()


def test_a_reload_reading_an_api_key_field_no_key_carries_logs_it_and_runs_no_request_unbudgeted(tmp_path):
    stack = Stack(tmp_path)
    try:
        stack.start_redis()
        stack.start_ratelimit(domain_yaml(BUDGET))
        mock = stack.start_mock("--completion-tokens", "20")
        gw = stack.start_gateway(gateway_config(stack, "soft"))
        assert chat(gw.url).status_code == 200
        served = stack.mock_billed(mock)["requests"]
        text = gw.config_path.read_text()
        typo = text.replace("value: apiKey.user_id", "value: apiKey.userid")
        assert typo != text
        line = typo.splitlines().index(next(x for x in typo.splitlines() if "apiKey.userid" in x)) + 1
        gw.config_path.write_text(typo)
        deadline = time.monotonic() + 5
        while "apiKey.userid" not in gw.proc.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (f"{gw.config_path}:{line}: apiKey.userid is read here but no configured key carries it "
                "(keys carry: user_id)") in gw.proc.log()
        assert "config reloaded" in gw.proc.log()  # a warning: the reload itself is taken
        # A tokens budget is required: a value that cannot be worked out refuses the
        # request instead of serving it with no budget at all.
        refused = chat(gw.url)
        assert refused.status_code == 403, refused.text
        assert "apiKey.userid" in refused.json()["error"]["message"]
        assert stack.mock_billed(mock)["requests"] == served
    finally:
        stack.stop()
