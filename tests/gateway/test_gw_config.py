"""Loading both config forms into the runtime dataclasses."""

import json
import os
from pathlib import Path

import pytest
from starlette.datastructures import Headers

from gateway.cel import Activation
from gateway.config import load

DATA = Path(__file__).parent / "data"
SEED000 = sorted(DATA.glob("seed000_*.yaml"))


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def only_route(config):
    assert len(config.listeners) == 1 and len(config.listeners[0].routes) == 1
    return config.listeners[0].routes[0]


def auth(route, key):
    return route.policies.api_key.authenticate(Headers({"authorization": f"Bearer {key}"}))


def test_seed000_files_are_verbatim_from_the_seed():
    seed = next(Path("/work/shared/seeds").glob("000_*.txt"), None)
    if seed is None:
        pytest.skip("seed documents not present")
    text = seed.read_text()
    assert len(SEED000) == 4
    for path in SEED000:
        assert path.read_text().rstrip("\n") in text


@pytest.mark.parametrize("path", SEED000, ids=lambda p: p.stem)
def test_seed000_configs_load(path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream")
    config = load(path)
    route = only_route(config)
    assert config.listeners[0].port == 4000
    assert config.admin_addr == "localhost:15000"
    assert auth(route, "sk-alice-abc123def456").metadata == {"user": "alice"}
    assert auth(route, "sk-bob-xyz789uvw012").metadata == {"user": "bob"}
    backend = route.backends[0]
    assert backend.provider == "openAI" and backend.api_key == "sk-upstream"
    assert backend.base_url == "https://api.openai.com"
    assert config.warnings == ()


def test_seed000_budget_and_tokenize():
    budget = only_route(load(DATA / "seed000_token_budget.yaml"))
    (limit,) = budget.policies.local_rate_limits
    assert (limit.max_tokens, limit.tokens_per_fill, limit.fill_interval, limit.type) == (10, 1, 60.0, "tokens")
    assert budget.backends[0].tokenize is False and budget.model_routing is True
    assert only_route(load(DATA / "seed000_tokenize.yaml")).backends[0].tokenize is True


def test_seed000_binds_form():
    config = load(DATA / "seed000_global_budget.yaml")
    route = only_route(config)
    assert route.path_prefix == "/" and route.model_routing is False
    assert route.name == "bind4000/listener0/route0"
    backend = route.backends[0]
    assert (backend.name, backend.provider, backend.model) == ("openai", "openAI", "gpt-3.5-turbo")
    (limit,) = route.policies.local_rate_limits
    assert (limit.max_tokens, limit.fill_interval) == (100000, 86400.0)


def test_unset_upstream_key_is_a_warning_with_its_line(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = DATA / "seed000_virtual_keys.yaml"
    config = load(path)
    assert only_route(config).backends[0].api_key is None
    assert config.warnings == (f"{path}:18: environment variable OPENAI_API_KEY is not set; using an empty value",)


def test_seed001_deployment_shape(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-upstream")
    config = load(DATA / "seed001_gateway.yaml")
    route = only_route(config)
    assert config.listeners[0].port == 8080
    assert (route.name, route.path_prefix) == ("claude", "/anthropic")
    assert route.policies.url_rewrite == "/v1/chat/completions"
    backend = route.backends[0]
    assert backend.provider == "anthropic" and backend.model == "claude-sonnet-5"
    assert backend.base_url == "http://127.0.0.1:9999"
    assert backend.api_key == route.policies.backend_auth == "sk-ant-upstream"
    assert route.policies.api_key.mode == "strict"
    mike = auth(route, "sk-mike-key")
    alice = auth(route, "sk-alice-key")
    assert mike.metadata == {"user_id": "mike"} and mike.allowed_models is None
    assert alice.allows("claude-sonnet-5") and not alice.allows("gpt-4o")

    ((condition, policy),) = route.policies.remote_rate_limit.rules
    assert (policy.service, policy.domain, policy.failure_mode) == ("ratelimit.ratelimit:8081", "token-budgets",
                                                                    "failClosed")
    (descriptor,) = policy.descriptors
    assert descriptor.limit_type == "tokens" and policy.enforcement_of(descriptor) == "soft"
    (entry,) = descriptor.entries
    assert entry.entry_key == "user_id"
    assert condition.test(Activation(mike.metadata)) is True
    assert condition.test(Activation(alice.metadata)) is False
    assert entry.entry_value.evaluate(Activation(mike.metadata)) == "mike"
    assert config.watch_paths == ((DATA / "seed001_gateway.yaml").absolute(), (DATA / "seed001_keys").absolute())


def test_every_standalone_field():
    config = load(DATA / "standalone_full.yaml")
    assert config.admin_addr == "127.0.0.1:15001"
    assert config.max_body_bytes == 1024 * 1024
    assert config.model_catalog["gpt-4o-mini"].output == 0.6
    assert config.metrics_fields["user_id"].evaluate(Activation({"user_id": "u1"})) == "u1"
    (listener,) = config.listeners
    # Longest prefix first, one Route per match, sharing the route's name.
    assert [(r.path_prefix, r.name) for r in listener.routes] == [
        ("/anthropic", "bind4100/listener0/route1"), ("/claude", "bind4100/listener0/route1"), ("/", "openai")]
    claude = listener.routes[0]
    assert claude.policies.url_rewrite == "/v1/messages"
    assert claude.backends[0].base_url == "https://api.anthropic.com" and claude.backends[0].model is None
    openai = listener.routes[2]
    assert openai.backends[0].base_url == "http://127.0.0.1:9998/prefix" and openai.backends[0].tokenize
    p = openai.policies
    assert p.request_timeout == 30.0
    assert (p.api_key.mode, p.api_key.header_name, p.api_key.prefix) == ("optional", "x-api-key", "")
    one = p.api_key.authenticate(Headers({"x-api-key": "sk-one"}))
    assert one.metadata == {"user_id": "one", "tier": "gold"} and one.allows("gpt-4o-mini")
    assert p.api_key.authenticate(Headers({"x-api-key": ""})) is None  # keyHash of "" never matches a sent key
    assert [(lim.max_tokens, lim.fill, lim.fill_interval, lim.type) for lim in p.local_rate_limits] == [
        (100, 100, 60.0, "tokens"), (5, 1, 0.5, "requests")]
    ((condition, policy),) = p.remote_rate_limit.rules
    assert condition is None
    assert (policy.service, policy.failure_mode, policy.timeout) == ("127.0.0.1:8080", "failOpen", 0.25)
    hard, soft = policy.descriptors
    assert (hard.limit_type, policy.enforcement_of(hard), soft.limit_type, policy.enforcement_of(soft)) == (
        "tokens", "hard", "requests", "soft")
    llm = Activation(None, llm={"inputTokens": 3, "outputTokens": 4})
    assert hard.cost is None and soft.cost.evaluate(llm) == 11  # a cost expression is soft-only


def test_key_hash_authenticates_like_the_key(tmp_path):
    from gateway.policies.apikey import key_digest
    path = write(tmp_path, f"""
llm:
  policies:
    apiKey:
      keys:
      - keyHash: sha256:{key_digest("sk-hashed").upper()}
        metadata: {{user_id: h}}
  models:
  - name: gpt-4o
    provider: openAI
""")
    assert auth(only_route(load(path)), "sk-hashed").metadata == {"user_id": "h"}


def test_env_expansion_both_spellings_and_escape(tmp_path, monkeypatch):
    monkeypatch.setenv("TG_PORT", "4321")
    monkeypatch.setenv("TG_HOST", "127.0.0.1")
    monkeypatch.setenv("TG_KEY", "sk-from-env")
    path = write(tmp_path, """
llm:
  port: ${TG_PORT}
  policies:
    apiKey:
      keys:
      - key: $TG_KEY
        metadata: {note: "costs $$5"}
  models:
  - name: "*"
    provider: anthropic
    params:
      baseUrl: http://${TG_HOST}:9000/v1
      apiKey: "${TG_KEY}-upstream"
""")
    config = load(path)
    route = only_route(config)
    assert config.listeners[0].port == 4321
    assert route.backends[0].base_url == "http://127.0.0.1:9000/v1"
    assert route.backends[0].api_key == "sk-from-env-upstream"
    assert auth(route, "sk-from-env").metadata == {"note": "costs $5"}


def secret_mount(root: Path, files: dict[str, dict]) -> Path:
    """The layout kubelet gives a mounted Secret: names link through `..data`."""
    mount = root / "keys"
    stamp = mount / "..2024_01_01_00_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, body in files.items():
        (stamp / name).write_text(json.dumps(body))
        (mount / name).symlink_to(Path("..data") / name)
    (mount / "..data").symlink_to(stamp.name)
    return mount


def test_keys_dir_mounted_secret_layout(tmp_path):
    secret_mount(tmp_path, {
        "mike": {"key": "sk-mike-key", "metadata": {"user_id": "mike"}},
        "bob.json": {"key": "sk-bob-key", "metadata": {"user_id": "bob"}, "allowedModels": ["gpt-*"]},
    })
    (tmp_path / "keys" / ".hidden").write_text("not json at all")
    path = write(tmp_path, """
llm:
  policies:
    apiKey:
      keysDir: keys
      keys:
      - key: sk-inline
  models:
  - name: "*"
    provider: openAI
""")
    config = load(path)
    route = only_route(config)
    assert len(route.policies.api_key.store) == 3
    assert auth(route, "sk-mike-key").metadata == {"user_id": "mike"}
    assert auth(route, "sk-bob-key").allowed_models == ("gpt-*",)
    assert (tmp_path / "keys").absolute() in config.watch_paths


def test_keys_dir_absolute_path_and_empty_dir(tmp_path):
    keys = tmp_path / "empty"
    keys.mkdir()
    path = write(tmp_path / "", f"""
llm:
  policies:
    apiKey:
      mode: permissive
      keysDir: {keys}
  models:
  - name: "*"
    provider: openAI
""")
    assert len(only_route(load(path)).policies.api_key.store) == 0


def test_empty_base_url_from_unset_variable_means_provider_default(tmp_path, monkeypatch):
    monkeypatch.delenv("TG_UNSET_URL", raising=False)
    path = write(tmp_path, "llm:\n  models:\n  - {name: '*', provider: anthropic, params: {baseUrl: $TG_UNSET_URL}}\n")
    config = load(path)
    assert only_route(config).backends[0].base_url == "https://api.anthropic.com"
    assert config.warnings == (f"{path}:3: environment variable TG_UNSET_URL is not set; using an empty value",)


def test_llm_form_defaults(tmp_path):
    path = write(tmp_path, """
llm:
  models:
  - name: gpt-4o
    provider: openAI
    params: {model: gpt-4o-2024-08-06, baseUrl: "http://localhost:8000/"}
  - name: "claude-*"
    provider: anthropic
""")
    config = load(path)
    route = only_route(config)
    assert config.listeners[0].port == 4000 and route.name == "llm" and route.path_prefix == "/"
    assert route.policies.api_key is None and route.policies.remote_rate_limit is None
    gpt, claude = route.backends
    assert (gpt.name, gpt.model, gpt.base_url) == ("gpt-4o", "gpt-4o-2024-08-06", "http://localhost:8000")
    assert (claude.name, claude.provider, claude.base_url) == ("claude-*", "anthropic", "https://api.anthropic.com")
    assert config.max_body_bytes == 10 * 1024 * 1024


def test_both_forms_together_and_route_names_stable(tmp_path):
    text = """
llm:
  port: 4001
  models: [{name: "*", provider: openAI}]
binds:
- port: 4002
  listeners:
  - routes:
    - backends: [{ai: {name: a, provider: {openAI: {}}}}]
"""
    first = load(write(tmp_path, text))
    second = load(write(tmp_path, text + "\n# edited\n"))
    assert [lst.port for lst in first.listeners] == [4001, 4002]
    names = lambda c: [r.name for lst in c.listeners for r in lst.routes]  # noqa: E731
    assert names(first) == names(second) == ["llm", "bind4002/listener0/route0"]


@pytest.mark.parametrize("value, seconds", [("60s", 60.0), ("1m", 60.0), ("500ms", 0.5), (86400, 86400.0),
                                            ("1h30m", 5400.0), ("2.5", 2.5)])
def test_fill_interval_spellings(tmp_path, value, seconds):
    path = write(tmp_path, f"""
llm:
  policies:
    localRateLimit: [{{maxTokens: 1, fillInterval: {json.dumps(value)}}}]
  models: [{{name: "*", provider: openAI}}]
""")
    assert only_route(load(path)).policies.local_rate_limits[0].fill_interval == seconds


@pytest.mark.parametrize("value, size", [("10Mi", 10 * 2**20), ("10MiB", 10 * 2**20), ("1MB", 10**6),
                                         (2048, 2048), ("512k", 512000)])
def test_max_body_size_spellings(tmp_path, value, size):
    path = write(tmp_path, f"""
config: {{maxBodySize: {json.dumps(value)}}}
llm: {{models: [{{name: "*", provider: openAI}}]}}
""")
    assert load(path).max_body_bytes == size


def test_remote_rate_limit_flat_conditional_with_aliases(tmp_path):
    path = write(tmp_path, """
llm:
  policies:
    remoteRateLimit:
      conditional:
      - condition: "apiKey.tier == 'free'"
        host: rl:8080
        domain: free
        descriptors:
        - entries: [{key: user, value: apiKey.user_id}]
          type: tokens
      - condition: "true"
        policy:
          global:
            domain: everyone
            backendRef: {name: ratelimit, port: 8081}
            enforcement: hard
            descriptors:
            - entries: [{name: user, expression: apiKey.user_id}]
              unit: Requests
  models: [{name: "*", provider: openAI}]
""")
    (free_if, free), (rest_if, rest) = only_route(load(path)).policies.remote_rate_limit.rules
    assert (free.service, free.domain, free.descriptors[0].limit_type) == ("rl:8080", "free", "tokens")
    assert (rest.service, rest.domain) == ("ratelimit:8081", "everyone")
    assert (rest.descriptors[0].limit_type, rest.enforcement_of(rest.descriptors[0])) == ("requests", "hard")
    assert rest_if.test(Activation(None)) is True
    assert free_if.test(Activation({"tier": "free"})) is True


def test_config_path_may_be_a_symlink_swapped_like_a_configmap(tmp_path):
    target = write(tmp_path, "llm: {models: [{name: '*', provider: openAI}]}\n", "real.yaml")
    link = tmp_path / "config.yaml"
    link.symlink_to(target.name)
    assert load(link).source == link
    assert os.path.islink(load(link).watch_paths[0])
