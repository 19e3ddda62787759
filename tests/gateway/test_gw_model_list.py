"""GET /v1/models in process: what `ModelDirectory.names` lists for each config form.

Configs are loaded from YAML as users write them; the provider's own list comes from a
fake upstream that records which backends were asked.
"""

import json
from pathlib import Path

from gateway.config import load
from gateway.config.runtime import Route
from gateway.model_list import ModelDirectory
from gateway.policies.apikey import identity_of
from tests.harness.fakes import Upstream

PROVIDER_MODELS = ["gpt-4o", "gpt-4o-mini", "claude-sonnet-4-5"]


class Provider:
    """The upstream seam: every GET /v1/models answers PROVIDER_MODELS, in OpenAI's shape."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def send(self, url, headers, body, timeout, tls=None, connect_timeout=None, method="POST"):
        self.asked.append(url)
        data = [{"id": n, "object": "model"} for n in PROVIDER_MODELS]
        return Upstream(200, [json.dumps({"object": "list", "data": data}).encode()])


def routes(tmp_path: Path, text: str) -> list[Route]:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return [route for listener in load(path).listeners for route in listener.routes]


async def listed(route: Route, identity=None) -> tuple[list[str], list[str]]:
    """(the names listed, the provider URLs asked)."""
    provider = Provider()
    names = await ModelDirectory(provider).names(route, identity, None)
    return names, provider.asked


def binds(*backends: str) -> str:
    return ("binds:\n- port: 3000\n  listeners:\n  - routes:\n    - backends:\n"
            + "".join(f"      - ai: {b}\n" for b in backends))


async def test_binds_backend_with_a_fixed_model_lists_the_model_not_its_name(tmp_path):
    (route,) = routes(tmp_path, binds("{name: openai, provider: {openAI: {model: gpt-4o-mini}}}"))
    assert await listed(route) == (["gpt-4o-mini"], [])


async def test_binds_backend_without_a_model_lists_what_its_provider_offers(tmp_path):
    (route,) = routes(tmp_path, binds("{name: claude, provider: {anthropic: {}}, baseUrl: 'http://up.test'}"))
    assert await listed(route) == (sorted(PROVIDER_MODELS), ["http://up.test/v1/models"])


async def test_binds_second_backend_is_listed_by_the_name_that_reaches_it(tmp_path):
    """A request naming claude-x would reach the first backend (and get gpt-4o-mini); one
    naming `anthropic` gets claude-x."""
    (route,) = routes(tmp_path, binds("{name: openai, provider: {openAI: {model: gpt-4o-mini}}}",
                                      "{name: anthropic, provider: {anthropic: {model: claude-x}}}",
                                      "{name: open, provider: {openAI: {}}}"))
    names, _ = await listed(route)
    assert names == ["anthropic", "gpt-4o-mini"]  # `open`'s models would all reach the first backend


async def test_binds_listing_is_filtered_by_the_keys_allowed_models(tmp_path):
    (route,) = routes(tmp_path, binds("{name: openai, provider: {openAI: {}}, baseUrl: 'http://up.test'}"))
    narrow = identity_of("ab" * 32, allowed_models=["gpt-*"])
    assert (await listed(route, narrow))[0] == ["gpt-4o", "gpt-4o-mini"]


def llm(*models: str) -> str:
    return "llm:\n  models:\n" + "".join(f"  - {m}\n" for m in models)


async def test_llm_glob_with_a_fixed_model_lists_that_model_without_asking_the_provider(tmp_path):
    (route,) = routes(tmp_path, llm("{name: 'gpt-*', provider: openAI, params: {model: gpt-4o-mini}}",
                                    "{name: '*', provider: anthropic, params: {model: claude-x}}"))
    assert await listed(route) == (["claude-x", "gpt-4o-mini"], [])


async def test_llm_glob_whose_fixed_model_it_would_not_serve_lists_nothing(tmp_path):
    """`fast-*` answers with gpt-4o-mini, but a request naming gpt-4o-mini is not routed to it."""
    (route,) = routes(tmp_path, llm("{name: 'fast-*', provider: openAI, params: {model: gpt-4o-mini}}"))
    assert await listed(route) == ([], [])


async def test_llm_exact_entry_lists_its_name_even_with_a_fixed_model(tmp_path):
    """In the llm form an exact name is what clients ask for; the entry maps it upstream."""
    (route,) = routes(tmp_path, llm("{name: fast, provider: openAI, params: {model: gpt-4o-mini}}"))
    assert await listed(route) == (["fast"], [])
