"""Admission: one owner settles or releases each request's budgets exactly once, whatever happens."""

import asyncio

import pytest

from gateway.accounting import Accounting
from gateway.llm import Usage
from gateway.metrics import GatewayMetrics
from gateway.policies.budget import BudgetExceeded, Unresolved
from tests.harness.fakes import Budgets, call_for

CONFIG = """
config:
  metrics: {fields: {add: {user: apiKey.user_id}}}
  modelCatalog: {gpt-4o-mini: {input: 1.0, output: 2.0}}
llm:
  policies:
    apiKey: {keys: [{key: sk-mike, metadata: {user_id: mike}}]}
    localRateLimit: [{maxTokens: 1000, fillInterval: 1h, type: tokens}]
    remoteRateLimit:
      host: rl:8080
      domain: budgets
      enforcement: %s
      descriptors: [{entries: [{key: user_id, value: apiKey.user_id}], type: tokens}]
  models: [{name: "*", provider: openAI, params: {tokenize: true}}]
"""
HELLO = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}


@pytest.fixture
def budgets():
    return Budgets(**{"user_id=mike": 5000})


def setup(tmp_path, budgets, enforcement="soft", body=HELLO):
    metrics = GatewayMetrics()
    call = call_for(tmp_path, CONFIG % enforcement, body, key="sk-mike")
    return Accounting(metrics, budgets), metrics, call


def local_remaining(accounting, call) -> int:
    (bucket,) = accounting.local.buckets(call.route.name, call.route.policies.local_rate_limits)
    return bucket.verdict(True).remaining


async def test_an_exception_before_the_provider_releases_every_hold(tmp_path, budgets):
    accounting, _, call = setup(tmp_path, budgets)
    with pytest.raises(RuntimeError):
        async with await accounting.admit(call):
            assert local_remaining(accounting, call) < 1000  # the estimate is reserved
            raise RuntimeError("build_upstream failed")
    assert local_remaining(accounting, call) == 1000
    assert budgets.remaining["user_id=mike"] == 5000  # the remote reservation came back too


async def test_usage_is_settled_once_however_often_it_is_asked(tmp_path, budgets):
    accounting, metrics, call = setup(tmp_path, budgets)
    async with await accounting.admit(call) as admission:
        admission.usage = Usage(10, 20)
        admission.settle()
        admission.settle()  # a stream reports usage, then ends
    assert budgets.remaining["user_id=mike"] == 5000 - 30
    assert local_remaining(accounting, call) == 1000 - 30
    assert len(budgets.settles) == 1
    text = metrics.render().decode()
    assert 'tollgate_gen_ai_client_token_usage_sum{gen_ai_request_model="gpt-4o-mini",gen_ai_system="openai",' \
           'gen_ai_token_type="output",user="mike"} 20.0' in text
    # Cost from the catalog: 10 x $1 + 20 x $2 per million tokens.
    assert 'tollgate_gen_ai_client_cost_usd_total{gen_ai_request_model="gpt-4o-mini",gen_ai_system="openai",' \
           'user="mike"} 5e-05' in text


async def test_usage_known_at_exit_is_charged(tmp_path, budgets):
    accounting, _, call = setup(tmp_path, budgets)
    async with await accounting.admit(call) as admission:
        admission.usage = Usage()
        admission.usage.input_tokens, admission.usage.output_tokens = 7, 3  # a stream that broke off
    assert budgets.remaining["user_id=mike"] == 5000 - 10


async def test_a_remote_refusal_hands_the_local_reservation_back(tmp_path):
    budgets = Budgets(**{"user_id=mike": 0})
    accounting, _, call = setup(tmp_path, budgets, "hard")
    with pytest.raises(BudgetExceeded) as refused:
        await accounting.admit(call)
    assert "user_id=mike" in refused.value.verdict.tripped
    assert local_remaining(accounting, call) == 1000


async def test_a_hard_budget_without_max_tokens_caps_the_output_to_what_is_left(tmp_path):
    budgets = Budgets(**{"user_id=mike": 600})
    accounting, _, call = setup(tmp_path, budgets, "hard")
    async with await accounting.admit(call) as admission:
        ((d,),) = [r["descriptors"] for r in budgets.reserves]
        assert d["per_grant"] == 1  # elastic: one budget token per output token granted
        assert admission.max_tokens == 600 - d["hits_addend"]  # the whole remaining budget, minus the prompt's bound
        admission.usage = Usage(8, 40)
    assert budgets.remaining["user_id=mike"] == 600 - 48


async def test_a_hard_budget_with_max_tokens_reserves_bound_plus_cap(tmp_path, budgets):
    accounting, _, call = setup(tmp_path, budgets, "hard", {**HELLO, "max_tokens": 100})
    async with await accounting.admit(call) as admission:
        ((d,),) = [r["descriptors"] for r in budgets.reserves]
        assert "per_grant" not in d and d["hits_addend"] > 100
        assert admission.max_tokens is None  # the client's own cap stands
        assert admission.headers() == {"x-ratelimit-remaining-tokens": str(min(
            5000 - d["hits_addend"], local_remaining(accounting, call)))}


USD = """
config:
  modelCatalog: {gpt-4o-mini: {input: 0.15, output: 0.6, cachedInput: 0.075}}
llm:
  policies:
    apiKey: {keys: [{key: sk-mike, metadata: {user_id: mike}}]}
    remoteRateLimit:
      host: rl:8080
      domain: budgets
      enforcement: hard
      descriptors:
      - {entries: [{key: user_usd, value: apiKey.user_id}], type: usd}
      - {entries: [{key: team, value: apiKey.team}], type: usd, required: %s}
  models: [{name: "*", provider: openAI}]
"""


async def test_a_dollar_budget_reserves_the_worst_case_and_settles_the_exact_cost(tmp_path):
    budgets = Budgets(**{"user_usd=mike": 50_000_000})
    accounting, metrics, call = setup_with(tmp_path, budgets, USD % "false", {**HELLO, "max_tokens": 100, "n": 2})
    async with await accounting.admit(call) as admission:
        ((d,),) = [r["descriptors"] for r in budgets.reserves]  # the team descriptor is skipped: not required
        # The prompt's bound at the dearer input price, plus 2 answers x 100 tokens x $0.60 per 1M.
        assert d["hits_addend"] == call.price.bound_micros(_bound(call)) + 120
        admission.usage = Usage(input_tokens=1000, output_tokens=2000, cached_input_tokens=400)
    # 600 x $0.15 + 400 x $0.075 + 2000 x $0.60 per 1M = 90 + 30 + 1200 micro-dollars.
    assert budgets.remaining["user_usd=mike"] == 50_000_000 - 1320
    assert 'gen_ai_system="openai"} 0.00132' in metrics.render().decode()


async def test_a_required_descriptor_that_cannot_apply_refuses_the_request(tmp_path):
    budgets = Budgets()
    accounting, _, call = setup_with(tmp_path, budgets, USD % "true", HELLO)
    with pytest.raises(Unresolved, match="apiKey.team|team"):
        await accounting.admit(call)
    assert budgets.reserves == []


async def test_an_unpriced_model_under_a_dollar_budget_is_refused(tmp_path):
    budgets = Budgets()
    accounting, _, call = setup_with(tmp_path, budgets, USD % "false", {**HELLO, "model": "gpt-9-unpriced"})
    with pytest.raises(Unresolved, match="gpt-9-unpriced"):
        await accounting.admit(call)
    fallback = (USD % "false").replace("type: usd}", "type: usd, fallbackPrice: {input: 1, output: 2}}", 1)
    accounting, _, call = setup_with(tmp_path, budgets, fallback, {**HELLO, "model": "gpt-9-unpriced"})
    async with await accounting.admit(call) as admission:
        admission.usage = Usage(1000, 1000)
    assert budgets.settles[-1]["descriptors"][0]["hits_addend"] == 3000  # $1 + $2 per 1M, 1000 tokens each


def _bound(call) -> int:
    from gateway.llm import upper_bound_tokens
    return upper_bound_tokens(call.req)


def setup_with(tmp_path, budgets, config, body):
    metrics = GatewayMetrics()
    return Accounting(metrics, budgets), metrics, call_for(tmp_path, config, body, key="sk-mike")


async def test_a_request_cancelled_while_the_service_decides_releases_its_id(tmp_path):
    """The client hung up during admission: the reserve may still land, so its id is released."""
    class Stalled(Budgets):
        async def reserve(self, target, rid, lease, descriptors):
            self.reserves.append({"id": rid})
            await asyncio.sleep(3600)

    budgets = Stalled(**{"user_id=mike": 5000})
    accounting, _, call = setup(tmp_path, budgets, "hard")
    admitting = asyncio.ensure_future(accounting.admit(call))
    while not budgets.reserves:
        await asyncio.sleep(0)
    admitting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await admitting
    assert [s["id"] for s in budgets.settles] == [budgets.reserves[0]["id"]]
    assert all(d["hits_addend"] == 0 for d in budgets.settles[0]["descriptors"])  # a release: zeros
