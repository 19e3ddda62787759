"""CEL: compiled once, evaluated against one activation per request."""

import pytest

from gateway.cel import Activation, CelError, compile_expr
from gateway.policies.apikey import Metadata


def test_seed_001_condition_true_only_for_mike():
    cond = compile_expr("apiKey.user_id == 'mike'")
    assert cond.evaluate(Activation({"user_id": "mike"})) is True
    assert cond.evaluate(Activation({"user_id": "alice"})) is False


def test_missing_metadata_is_an_error_and_test_treats_it_as_false():
    cond = compile_expr("apiKey.user_id == 'mike'")
    with pytest.raises(CelError, match="user_id"):
        cond.evaluate(Activation(None))
    assert cond.test(Activation(None)) is False
    assert compile_expr("'not a bool'").test(Activation(None)) is False


def test_request_variables():
    act = Activation(None, "POST", "/anthropic", {"X-Team": "red", "content-type": "application/json"})
    assert compile_expr("request.method").evaluate(act) == "POST"
    assert compile_expr("request.path.startsWith('/anth')").evaluate(act) is True
    # Header names are lower-cased, as HTTP/2 and Starlette present them.
    assert compile_expr("request.headers['x-team']").evaluate(act) == "red"


def test_llm_variables_for_cost_arrive_with_usage():
    act = Activation({"user_id": "mike"}, "POST", "/v1/chat/completions", {}, {"requestModel": "gpt-4o"})
    cost = compile_expr("llm.inputTokens + 2 * llm.outputTokens")
    with pytest.raises(CelError):
        cost.evaluate(act)  # no token counts before the response
    assert compile_expr("[1].exists(x, llm.requestModel == 'gpt-4o')").evaluate(act) is True  # a macro's table
    act.update_llm(inputTokens=10, outputTokens=5, totalTokens=15)
    assert cost.evaluate(act) == 20
    assert isinstance(cost.evaluate(act), int)
    assert compile_expr("[1].exists(x, llm.outputTokens == 5)").evaluate(act) is True  # the table is renewed
    assert compile_expr("llm.requestModel").evaluate(act) == "gpt-4o"
    assert compile_expr("apiKey.user_id").evaluate(act) == "mike"


def test_results_are_plain_python():
    act = Activation({"tags": ["a", "b"], "n": 2, "ratio": 0.5})
    tags = compile_expr("apiKey.tags.map(t, t + '!')").evaluate(act)
    assert tags == ["a!", "b!"] and type(tags) is list and type(tags[0]) is str
    assert type(compile_expr("apiKey.n * 3").evaluate(act)) is int
    assert type(compile_expr("apiKey.ratio").evaluate(act)) is float
    assert compile_expr("{'k': apiKey.n}").evaluate(act) == {"k": 2}
    assert compile_expr("apiKey.tags.exists(t, t == 'b')").evaluate(act) is True


@pytest.mark.parametrize("src", ["apiKey.user_id ==", "a &&& b", "'unterminated", "foo(", "  "])
def test_syntax_errors_raise_at_compile(src):
    with pytest.raises(CelError):
        compile_expr(src)


def test_runtime_errors_name_the_cause():
    with pytest.raises(CelError, match="divide by zero"):
        compile_expr("1 / 0").evaluate(Activation(None))
    with pytest.raises(CelError, match="unbound function: nosuch"):
        compile_expr("nosuch(1)").evaluate(Activation(None))


def test_one_activation_serves_many_expressions():
    act = Activation(Metadata({"user_id": "mike", "team": "infra"}), "GET", "/v1/models", {})
    exprs = [compile_expr(s) for s in ("apiKey.user_id", "apiKey.team", "request.path", "apiKey.user_id == 'mike'")]
    assert [e.evaluate(act) for e in exprs] == ["mike", "infra", "/v1/models", True]


@pytest.mark.parametrize("src, with_team, without", [
    ("has(apiKey.team) ? apiKey.team : 'none'", "research", "none"),
    ("!has(apiKey.team)", False, True),
    ("has(apiKey.team) && apiKey.team == 'research'", True, False),
    ("has(llm.cost) && llm.cost > 0.0 ? 'priced' : 'unpriced'", "priced", "unpriced"),
])
def test_has_works_inside_other_operators(src, with_team, without):
    """celpy's transpiled has() gives a Python bool its own `? :` and `!` refuse."""
    team = Activation(api_key={"team": "research"}, llm={"cost": 0.25})
    solo = Activation(api_key={"user_id": "solo"}, llm={"inputTokens": 3})
    expr = compile_expr(src)
    assert expr.evaluate(team) == with_team
    assert expr.evaluate(solo) == without
