"""Invalid configs: every problem is `file:line: message`, at the bad value or its key."""

import json
from pathlib import Path

import pytest

from gateway.config import ConfigError, load

MODELS = "  models: [{name: '*', provider: openAI}]\n"


def problems(tmp_path: Path, text: str, name: str = "config.yaml") -> list[str]:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value) == "\n".join(str(p) for p in e.value.problems)
    return [str(p).removeprefix(f"{path}:") for p in e.value.problems]


def test_yaml_syntax_error(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  models:\n  - name: a\n    provider: openAI\n   params: {}\n")
    assert p.startswith("5: YAML syntax error:")


def test_yaml_unclosed_quote_is_reported_where_the_quote_opens(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  port: 4000\n  models:\n  - name: 'gpt\n")
    assert p == "4: YAML syntax error: found unexpected end of stream in a quoted scalar that starts at column 11"


def test_yaml_bad_indent_names_line_column_and_the_fix(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  models:\n  - name: a\n    provider: openAI\n   params: {}\n")
    assert p == ("5: YAML syntax error: did not find expected key at column 4 "
                 "(a block mapping that starts at line 2); check the indentation")


def test_yaml_key_without_its_colon_is_reported_on_its_own_line(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  port 4000\n" + MODELS)
    assert p == ("2: YAML syntax error: no ':' after 'port 4000', so the next line's key cannot follow it; "
                 "add the ':' or check the indentation")


def test_a_value_in_the_wrong_case_gets_a_did_you_mean(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  models: [{name: '*', provider: openai}]\n")
    assert p == ("2: llm.models[0].provider: Input should be 'openAI' or 'anthropic', got 'openai' "
                 "(did you mean 'openAI'?)")


def test_duplicate_yaml_key(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  port: 1\n  port: 2\n" + MODELS)
    assert p == "3: YAML syntax error: duplicate key 'port' (first at line 2)"


def test_unknown_field_names_itself_and_suggests(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  policies:\n    apiKey:\n      kyes: []\n" + MODELS)
    assert p == "4: llm.policies.apiKey: unknown field 'kyes' (did you mean 'keys'?)"


def test_unknown_field_lists_choices_when_nothing_is_close(tmp_path):
    (p,) = problems(tmp_path, "llm:\n" + MODELS + "frontendPolicies: {}\n")
    assert p == "3: unknown field 'frontendPolicies' (expected one of: config, llm, binds)"


def test_bad_enum(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  policies:\n    apiKey:\n      mode: strictt\n" + MODELS)
    assert p == "4: llm.policies.apiKey.mode: Input should be 'strict', 'optional' or 'permissive', got 'strictt' (did you mean 'strict'?)"


def test_unknown_provider_llm_and_binds_forms(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  models:\n  - name: a\n    provider: gemini\n")
    assert p == "4: llm.models[0].provider: Input should be 'openAI' or 'anthropic', got 'gemini'"
    (p,) = problems(tmp_path, """binds:
- port: 4000
  listeners:
  - routes:
    - backends:
      - ai:
          name: g
          provider:
            gemini: {model: x}
""")
    assert p == ("9: binds[0].listeners[0].routes[0].backends[0].ai.provider: unknown field 'gemini' "
                 "(expected one of: openAI, anthropic)")


def test_bad_key_hash(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  policies:\n    apiKey:\n      keys:\n      - keyHash: sha256:abc\n" + MODELS)
    assert p == "5: llm.policies.apiKey.keys[0].keyHash: keyHash must be 'sha256:' followed by 64 hex digits"


def test_key_and_key_hash_together(tmp_path):
    text = f"llm:\n  policies:\n    apiKey:\n      keys:\n      - key: a\n        keyHash: sha256:{'0' * 64}\n" + MODELS
    (p,) = problems(tmp_path, text)
    assert p == "5: llm.policies.apiKey.keys[0]: set exactly one of 'key' or 'keyHash' (got key, keyHash)"


def test_cel_syntax_error_at_its_line(tmp_path):
    (p,) = problems(tmp_path, """llm:
  policies:
    remoteRateLimit:
      conditional:
      - condition: "apiKey.user_id =="
        host: rl:8080
        domain: d
        descriptors: [{entries: [{key: u, value: apiKey.user_id}]}]
""" + MODELS)
    assert p == ("5: llm.policies.remoteRateLimit.conditional[0].condition: "
                 "invalid CEL expression 'apiKey.user_id ==': syntax error at column 16")


def test_cel_unterminated_string_is_named(tmp_path):
    (p,) = problems(tmp_path, "config:\n  metrics:\n    fields:\n      add:\n"
                    "        user: \"apiKey.user_id == 'mike\"\nllm:\n" + MODELS)
    assert p == ("5: config.metrics.fields.add.user: invalid CEL expression \"apiKey.user_id == 'mike\": "
                 "the string starting at column 19 is never closed")


def test_cel_error_in_metrics_label_and_bad_label(tmp_path):
    ps = problems(tmp_path, "config:\n  metrics:\n    fields:\n      add:\n        user: 'apiKey.('\n"
                  "        status: apiKey.x\nllm:\n" + MODELS)
    assert ps[0].startswith("5: config.metrics.fields.add.user: invalid CEL expression")
    assert ps[1] == "6: config.metrics.fields.add.status: metric label 'status' is already set by the gateway"


def test_rate_limit_semantics(tmp_path):
    ps = problems(tmp_path, """llm:
  policies:
    localRateLimit:
    - maxTokens: -1
      fillInterval: 0s
      type: token
    - maxTokens: 1
      fillInterval: soon
""" + MODELS)
    assert ps == [
        "4: llm.policies.localRateLimit[0].maxTokens: Input should be greater than or equal to 0, got -1",
        "5: llm.policies.localRateLimit[0].fillInterval: duration must be greater than 0, got '0s'",
        "6: llm.policies.localRateLimit[0].type: Input should be 'tokens' or 'requests', got 'token' (did you mean 'tokens'?)",
        "8: llm.policies.localRateLimit[1].fillInterval: invalid duration 'soon': "
        "expected e.g. 60s, 1m, 500ms or a number of seconds",
    ]


def test_remote_rate_limit_shapes(tmp_path):
    ps = problems(tmp_path, """llm:
  policies:
    remoteRateLimit:
      conditional:
      - condition: "true"
        domain: d
        policy: {global: {domain: d, host: "rl:1", descriptors: [{entries: [{key: a, value: "1"}]}]}}
      - condition: "true"
        host: rl
        domain: d
        descriptors: [{entries: [{key: a, value: "1"}]}]
      - condition: "true"
        host: "rl:1"
        descriptors: [{entries: [{key: a, value: "1"}]}]
      - condition: "true"
        policy:
          global:
            backendRef: {name: rl, port: 8081}
            descriptors: [{entries: [{key: a, value: "1"}]}]
      - condition: "true"
        policy:
          global:
            domain: d
            host: "rl:1"
            backendRef: {name: rl, port: 8081}
            descriptors: []
""" + MODELS)
    assert ps == [
        "5: llm.policies.remoteRateLimit.conditional[0]: 'policy' and 'domain' cannot be combined",
        "9: llm.policies.remoteRateLimit.conditional[1].host: expected host:port, got 'rl'",
        "12: llm.policies.remoteRateLimit.conditional[2]: missing required field 'domain'",
        "17: llm.policies.remoteRateLimit.conditional[3].policy.global: missing required field 'domain'",
        "22: llm.policies.remoteRateLimit.conditional[4].policy.global: "
        "set exactly one of 'host' or 'backendRef' (got host, backendRef)",
    ]


def test_descriptor_spelled_twice(tmp_path):
    ps = problems(tmp_path, """llm:
  policies:
    remoteRateLimit:
      host: "rl:1"
      domain: d
      descriptors:
      - entries: [{key: a, value: "1", expression: "2"}]
      - entries: [{name: a, expression: "2"}]
        type: tokens
        unit: Tokens
""" + MODELS)
    assert ps == [
        "7: llm.policies.remoteRateLimit.descriptors[0].entries[0]: "
        "set exactly one of 'value' or 'expression' (got value, expression)",
        "8: llm.policies.remoteRateLimit.descriptors[1]: set 'type' or its Kubernetes spelling 'unit', not both",
    ]


def test_empty_models_and_nothing_to_serve(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  models: []\n")
    assert p == "2: llm.models: List should have at least 1 item after validation, not 0"
    (p,) = problems(tmp_path, "config: {adminAddr: 'localhost:15000'}\n")
    assert p == "1: nothing to serve: add 'llm' or 'binds'"


def test_ports(tmp_path):
    ps = problems(tmp_path, """config:
  adminAddr: localhost:4001
llm:
  port: 4001
  models: [{name: '*', provider: openAI}]
binds:
- port: 70000
  listeners: [{routes: [{backends: [{ai: {name: a, provider: {openAI: {}}}}]}]}]
""")
    assert ps == ["7: binds[0].port: Input should be less than or equal to 65535, got 70000"]
    ps = problems(tmp_path, """config:
  adminAddr: localhost:4001
llm:
  port: 4001
  models: [{name: '*', provider: openAI}]
binds:
- port: 4001
  listeners: [{routes: [{backends: [{ai: {name: a, provider: {openAI: {}}}}]}]}]
""")
    assert ps == ["2: adminAddr port 4001 is also an LLM listener port (line 4)",
                  "7: port 4001 is already used (line 4)"]


def test_duplicate_keys_inline_and_in_keys_dir(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "again").write_text(json.dumps({"key": "sk-one"}))
    ps = problems(tmp_path, """llm:
  policies:
    apiKey:
      keysDir: keys
      keys:
      - key: sk-one
      - key: sk-one
""" + MODELS)
    config = tmp_path / "config.yaml"
    assert ps == [
        f"7: duplicate API key (the same key is at {config}:6)",
        f"{keys / 'again'}:1: duplicate API key (the same key is at {config}:6)",
    ]
    assert all("sk-one" not in p for p in ps)  # never echo a key


def test_keys_dir_problems_point_into_the_key_file(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "broken").write_text('{\n  "key": "sk-x",\n  "metadata": {"a": 1,}\n}\n')
    (keys / "typo.json").write_text('{\n  "key": "sk-y",\n  "metdata": {}\n}\n')
    (keys / "list").write_text('["sk-z"]')
    path = tmp_path / "config.yaml"
    path.write_text("llm:\n  policies:\n    apiKey:\n      keysDir: keys\n" + MODELS)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert [str(p) for p in e.value.problems] == [
        f"{keys / 'broken'}:3: invalid JSON: Expecting property name enclosed in double quotes",
        f"{keys / 'list'}:1: a key file must hold a JSON object like " + '{"key": "...", "metadata": {}}',
        f"{keys / 'typo.json'}:3: unknown field 'metdata' (did you mean 'metadata'?)",
    ]


def test_missing_keys_dir(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  policies:\n    apiKey:\n      keysDir: nowhere\n" + MODELS)
    assert p == f"4: keysDir '{tmp_path / 'nowhere'}': No such file or directory"


def test_unset_variable_where_a_value_is_required(tmp_path, monkeypatch):
    monkeypatch.delenv("TG_UNSET_PORT", raising=False)
    monkeypatch.delenv("TG_UNSET_KEY", raising=False)
    ps = problems(tmp_path, "llm:\n  port: ${TG_UNSET_PORT}\n  policies:\n    apiKey:\n      keys:\n"
                  "      - key: $TG_UNSET_KEY\n" + MODELS)
    assert ps == [
        "2: llm.port: Input should be a valid integer, unable to parse string as an integer, got '' "
        "(environment variable TG_UNSET_PORT is not set)",
        "6: llm.policies.apiKey.keys[0].key: must not be empty (environment variable TG_UNSET_KEY is not set)",
    ]


def test_empty_and_unreadable_files(tmp_path):
    (p,) = problems(tmp_path, "# nothing\n")
    assert p == "1: config is empty: expected 'llm:' or 'binds:'"
    (p,) = problems(tmp_path, "- a list\n")
    assert p == "1: config is not a mapping: expected 'llm:' or 'binds:'"
    with pytest.raises(ConfigError) as e:
        load(tmp_path / "absent.yaml")
    assert str(e.value) == f"{tmp_path / 'absent.yaml'}: cannot read: No such file or directory"  # no line 1


def test_all_problems_reported_at_once_in_line_order(tmp_path):
    ps = problems(tmp_path, """llm:
  port: 0
  policies:
    apiKey: {mode: nope}
  models:
  - name: ""
    provider: openAI
    params: {baseUrl: "ftp://x"}
""")
    assert [p.split(":")[0] for p in ps] == ["2", "4", "6", "8"]


def test_route_problems(tmp_path):
    ps = problems(tmp_path, """binds:
- port: 4000
  listeners:
  - routes:
    - name: r
      matches: [{path: {pathPrefix: nope}}]
      backends: [{ai: {name: a, provider: {openAI: {}}, hostOverride: "x:1", baseUrl: "http://y"}}]
      policies:
        urlRewrite: {path: {replaceFullPath: v1/chat}}
    - name: r
      backends: []
""")
    assert ps == [
        "6: binds[0].listeners[0].routes[0].matches[0].path.pathPrefix: a path must start with '/', got 'nope'",
        "7: binds[0].listeners[0].routes[0].backends[0].ai: set 'hostOverride' or 'baseUrl', not both",
        "9: binds[0].listeners[0].routes[0].policies.urlRewrite.path.replaceFullPath: "
        "a path must start with '/', got 'v1/chat'",
        "11: binds[0].listeners[0].routes[1].backends: List should have at least 1 item after validation, not 0",
    ]


def test_duplicate_route_and_model_names(tmp_path):
    ps = problems(tmp_path, """llm:
  port: 4001
  models:
  - {name: gpt, provider: openAI}
  - {name: gpt, provider: anthropic}
binds:
- port: 4000
  listeners:
  - routes:
    - {name: r, backends: [{ai: {name: a, provider: {openAI: {}}}}]}
    - {name: r, backends: [{ai: {name: a, provider: {openAI: {}}}}]}
""")
    assert ps == ["5: duplicate model name 'gpt' (first at line 4)",
                  "11: duplicate route name 'r' (first at line 10)"]


def test_metadata_must_be_json(tmp_path):
    (p,) = problems(tmp_path, "llm:\n  policies:\n    apiKey:\n      keys:\n      - key: k\n"
                    "        metadata:\n          since: 2024-01-01\n" + MODELS)
    assert p == "7: llm.policies.apiKey.keys[0].metadata.since: input was not a valid JSON value"


def test_a_problem_names_the_variable_never_its_value(tmp_path, monkeypatch):
    secret = "sk-upstream-config-secret-9d8e7f"
    monkeypatch.setenv("TG_SECRET", secret)
    ps = problems(tmp_path, "config:\n  adminAddr: $TG_SECRET\nllm:\n  port: $TG_SECRET\n"
                  "  policies:\n    apiKey: {mode: \"${TG_SECRET}\"}\n" + MODELS +
                  "binds:\n- port: 8080\n  listeners:\n  - routes:\n    - backends:\n"
                  "      - ai: {name: a, provider: {openAI: {}}, hostOverride: \"x-$TG_SECRET\"}\n")
    assert len(ps) == 4 and not any(secret in p or secret[3:] in p for p in ps), ps
    assert "4: llm.port: Input should be a valid integer, unable to parse string as an integer, " \
           "got the value of $TG_SECRET" in ps
    assert any("the value of $TG_SECRET" in p and "adminAddr" in p for p in ps)
    assert any("hostOverride" in p and "the value of $TG_SECRET" in p for p in ps)


def test_a_cost_expression_under_a_hard_budget_is_refused(tmp_path):
    """A hard budget reserves the worst case; `cost: llm.outputTokens * 2` has none it knows."""
    (p,) = problems(tmp_path, "llm:\n  policies:\n    remoteRateLimit:\n      host: rl:1\n      domain: d\n"
                    "      descriptors:\n      - entries: [{key: u, value: apiKey.user_id}]\n"
                    "        type: tokens\n        enforcement: hard\n        cost: llm.outputTokens * 2\n" + MODELS)
    assert p.startswith("3: llm.policies.remoteRateLimit: descriptors[0]: 'cost' cannot be combined with "
                        "enforcement: hard")
