"""The `tollgate` command as users run it: a real subprocess per call."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from starlette.datastructures import Headers

from gateway.config import load
from gateway.policies.apikey import key_digest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"


def tollgate(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


def test_validate_ok():
    result = tollgate("validate", "-f", str(DATA / "seed001_gateway.yaml"), env={"ANTHROPIC_API_KEY": "x"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{DATA / 'seed001_gateway.yaml'}: ok (1 listener(s), 1 route(s))"
    assert result.stderr == ""


def test_validate_reports_every_problem_and_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("llm:\n  port: 99999\n  policies:\n    apiKey:\n      mode: sometimes\n"
                   "  models: [{name: '*', provider: openAI}]\n")
    result = tollgate("validate", "-f", str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}:2: llm.port: Input should be less than or equal to 65535, got 99999",
        f"{bad}:5: llm.policies.apiKey.mode: Input should be 'strict', 'optional' or 'permissive', got 'sometimes'",
    ]
    assert "ok" not in result.stdout


def test_run_with_invalid_config_exits_2_before_serving(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("llm:\n  models:\n  - name: a\n    provider: openAI\n   params: {}\n")
    result = tollgate("--log-level", "warning", env={"TOLLGATE_CONFIG": str(bad)})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"{bad}:5: YAML syntax error:")


def test_no_config_given():
    env = {k: v for k, v in os.environ.items() if k != "TOLLGATE_CONFIG"}
    result = subprocess.run([sys.executable, "-m", "gateway", "validate"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**env, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "pass -f CONFIG or set TOLLGATE_CONFIG" in result.stderr


def test_a_missing_provider_is_one_line_without_unrelated_unset_variables(tmp_path):
    """The entry's `$OPENAI_API_KEY` is unset, but the problem is the missing provider alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}
    configs = {
        "llm.yaml": ("llm:\n  models:\n  - name: '*'\n"
                     "    params: {apiKey: \"$OPENAI_API_KEY\", baseUrl: \"$OPENAI_BASE_URL\"}\n",
                     "3: llm.models[0]"),
        "binds.yaml": ("binds:\n- port: 3000\n  listeners:\n  - routes:\n    - backends:\n      - ai: {name: openai}\n"
                       "      policies: {backendAuth: {key: \"$OPENAI_API_KEY\"}}\n",
                       "6: binds[0].listeners[0].routes[0].backends[0].ai"),
    }
    for name, (text, where) in configs.items():
        (tmp_path / name).write_text(text)
        result = subprocess.run([sys.executable, "-m", "gateway", "validate", "-f", str(tmp_path / name)], cwd=REPO,
                                capture_output=True, text=True, timeout=60, env={**env, "PYTHONPATH": str(REPO)})
        assert result.returncode == 1, result.stderr
        assert result.stderr.splitlines() == [f"{tmp_path / name}:{where}: missing required field 'provider'"]
        assert "OPENAI" not in result.stdout + result.stderr


def words(text: str) -> str:
    """Help text with argparse's line wrapping undone."""
    return " ".join(text.split())


def test_help_says_that_f_with_no_command_runs_the_gateway():
    result = tollgate("--help")
    assert result.returncode == 0, result.stderr
    assert "`tollgate -f CONFIG`, with no command, runs a gateway replica" in words(result.stdout)


def test_demo_help_says_it_runs_on_a_copy_of_the_deploy_files():
    listing, own = words(tollgate("--help").stdout), words(tollgate("demo", "--help").stdout)
    assert "demo run the whole system locally, on a copy of the deploy files" in listing
    assert "run on a fresh copy of deploy/gateway and deploy/ratelimit" in own
    assert "the copy is removed when the demo stops" in own
    assert "from deploy/" not in listing + own


def test_ratelimit_help_shows_every_default():
    result = subprocess.run([sys.executable, "-m", "ratelimit_service", "--help"], cwd=REPO, capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stderr
    text = words(result.stdout)
    for default in ("(env REDIS_URL; default memory://)", "(env PORT; default 8080)", "(env HOST; default 127.0.0.1)",
                    "(env LOG_LEVEL; default info)", "CONFIG_DIR; required"):
        assert default in text, default


def test_keys_generate_round_trips(tmp_path):
    result = tollgate("keys", "generate", "--metadata", "user_id=mike", "--metadata", "tier=gold",
                      "--allowed-model", "claude-*")
    assert result.returncode == 0, result.stderr
    key, *entry_lines = result.stdout.splitlines()
    assert key.startswith("sk-") and len(key) > 40 and " " not in key
    entries = yaml.safe_load("\n".join(entry_lines))
    assert entries == [{"keyHash": entries[0]["keyHash"], "metadata": {"user_id": "mike", "tier": "gold"},
                        "allowedModels": ["claude-*"]}]
    assert key not in result.stdout.split("\n", 1)[1]  # the entry holds the digest only

    # Paste the entry into a config: the printed key authenticates as mike.
    config = tmp_path / "config.yaml"
    indented = "\n".join("      " + line for line in entry_lines)
    config.write_text(f"llm:\n  policies:\n    apiKey:\n      keys:\n{indented}\n"
                      "  models: [{name: '*', provider: anthropic}]\n")
    assert tollgate("validate", "-f", str(config)).returncode == 0
    policy = load(config).listeners[0].routes[0].policies.api_key
    identity = policy.authenticate(Headers({"authorization": f"Bearer {key}"}))
    assert identity.metadata == {"user_id": "mike", "tier": "gold"}
    assert identity.allows("claude-3-haiku") and not identity.allows("gpt-4o")


def test_keys_generate_writes_a_keys_dir_file_and_never_replaces_one(tmp_path):
    from gateway.config.keyfiles import read_keys_dir

    result = tollgate("keys", "generate", "--metadata", "user_id=carol", "--metadata", "team=research",
                      "--keys-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert key.startswith("sk-") and "\n" not in key
    written = tmp_path / "carol"  # named after user_id
    assert key not in written.read_text() and oct(written.stat().st_mode & 0o777) == "0o600"
    (carol,), problems = read_keys_dir(tmp_path)
    assert problems == [] and carol.identity.metadata == {"user_id": "carol", "team": "research"}
    assert carol.digest == key_digest(key)

    again = tollgate("keys", "generate", "--metadata", "user_id=carol", "--keys-dir", str(tmp_path))
    assert again.returncode != 0 and "exists" in again.stderr and again.stdout == ""
    assert read_keys_dir(tmp_path)[0][0].digest == key_digest(key)  # carol's key still works
    assert [p.name for p in tmp_path.iterdir()] == ["carol"]  # no partial file left behind
    nameless = tollgate("keys", "generate", "--keys-dir", str(tmp_path))
    assert nameless.returncode != 0 and "--name" in nameless.stderr


def test_keys_are_random_and_prefix_is_configurable():
    first = tollgate("keys", "generate", "--prefix", "tg_").stdout.splitlines()
    second = tollgate("keys", "generate", "--prefix", "tg_").stdout.splitlines()
    assert first[0].startswith("tg_") and first[0] != second[0] and first[1] != second[1]
    assert first[1].startswith("- keyHash: sha256:") and len(first) == 2


def test_schema_validates_the_fixtures():
    jsonschema = pytest.importorskip("jsonschema")
    result = tollgate("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    for path in sorted(DATA.glob("*.yaml")):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    typo = {"llm": {"models": [{"name": "*", "provider": "openAI"}], "polices": {}}}
    with pytest.raises(jsonschema.ValidationError, match="polices"):
        jsonschema.validate(typo, schema)


def _schema_objects(node, where="#"):
    """(where, object schema) of every schema object in `node`: $defs, properties, items,
    anyOf/oneOf/allOf branches, additionalProperties, and so on."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from _schema_objects(item, f"{where}[{i}]")
    elif isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            if key in ("$defs", "properties"):
                for name, sub in value.items():
                    yield from _schema_objects(sub, f"{where}.{name}" if key == "properties" else name)
            elif key not in ("default", "examples", "const", "enum"):
                yield from _schema_objects(value, where if key in ("anyOf", "oneOf", "allOf") else f"{where}.{key}")


def test_every_field_of_the_schema_says_what_it_is():
    schema = json.loads(tollgate("schema").stdout)
    objects = list(_schema_objects(schema))
    fields = [(f"{where}.{name}", sub) for where, node in objects for name, sub in node.get("properties", {}).items()]
    assert len(fields) > 100  # the walk reaches every object
    missing = [name for name, sub in fields if not str(sub.get("description", "")).strip()]
    assert not missing, f"{len(missing)} of {len(fields)} properties have no description: {', '.join(missing)}"
    # each config object too (JsonValue, pydantic's own, is not one: it has no properties)
    undescribed = [name for name, node in schema["$defs"].items()
                   if "properties" in node and not node.get("description")]
    assert not undescribed, f"objects without a description: {', '.join(undescribed)}"


def test_the_shipped_config_validates_from_the_checkout_wherever_it_is_run(tmp_path):
    shipped = REPO / "deploy" / "gateway" / "config.yaml"
    for cwd in (REPO, tmp_path):  # `keysDir: ${TOLLGATE_KEYS_DIR:-keys}`: next to the file
        result = subprocess.run([sys.executable, "-m", "gateway", "validate", "-f", str(shipped)], cwd=cwd,
                                capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(REPO), "TOLLGATE_KEYS_DIR": ""})
        assert result.returncode == 0, result.stderr
        assert "keysDir" not in result.stderr


def test_a_keys_dir_from_the_environment_is_the_shells_path_one_in_the_file_is_the_files(tmp_path):
    (tmp_path / "conf" / "keys").mkdir(parents=True)
    (tmp_path / "conf" / "keys" / "carol").write_text('{"key": "sk-carol", "metadata": {"user_id": "carol"}}')
    (tmp_path / "conf" / "config.yaml").write_text(
        "llm:\n  policies:\n    apiKey:\n      keysDir: ${TOLLGATE_KEYS_DIR:-keys}\n"
        "  models: [{name: '*', provider: anthropic}]\n")
    config = "conf/config.yaml"
    from_file = tollgate("validate", "-f", str(tmp_path / config), env={"TOLLGATE_KEYS_DIR": ""})
    assert from_file.returncode == 0, from_file.stderr
    shell = subprocess.run([sys.executable, "-m", "gateway", "validate", "-f", config], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60,
                           env={**os.environ, "PYTHONPATH": str(REPO), "TOLLGATE_KEYS_DIR": "conf/keys"})
    assert shell.returncode == 0, shell.stderr  # not conf/conf/keys
    wrong = tollgate("validate", "-f", str(tmp_path / config), env={"TOLLGATE_KEYS_DIR": "nowhere"})
    assert wrong.returncode != 0
    assert f"keysDir '{REPO / 'nowhere'}' (from $TOLLGATE_KEYS_DIR): No such file or directory" in wrong.stderr


def test_a_used_port_is_one_clear_line_and_each_warning_shows_once(tmp_path):
    import socket

    with socket.socket() as taken, socket.socket() as spare:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spare.bind(("127.0.0.1", 0))
        admin = spare.getsockname()[1]
        spare.close()
        config = tmp_path / "config.yaml"
        config.write_text(f"config: {{adminAddr: '127.0.0.1:{admin}'}}\nllm:\n  port: {port}\n"
                          "  models: [{name: '*', provider: openAI, params: {apiKey: $TOLLGATE_TEST_UNSET}}]\n")
        result = tollgate("-f", str(config))  # TOLLGATE_TEST_UNSET is unset
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (f"tollgate: cannot listen on 0.0.0.0:{port} (an LLM listener: llm.port / binds[].port): "
                         "Address already in use")
    assert "Traceback" not in result.stderr and "Task exception" not in result.stderr
    assert result.stderr.count("TOLLGATE_TEST_UNSET is not set") == 1
    assert "Started server process" not in result.stderr


def test_an_api_key_field_no_key_carries_is_a_warning_naming_it_and_its_line(tmp_path):
    # `apiKey.userid` for `user_id`: valid CEL that fails on every request, so validate
    # passes the file but names the field, where it is read, and the fields keys do carry.
    config = tmp_path / "config.yaml"
    config.write_text(
        "llm:\n"
        "  policies:\n"
        "    apiKey:\n"
        "      keys:\n"
        "      - {key: sk-alice, metadata: {user_id: alice, team: red}}\n"
        "    remoteRateLimit:\n"
        "      host: 127.0.0.1:8081\n"
        "      domain: budgets\n"
        "      descriptors:\n"
        "      - type: tokens\n"
        "        entries:\n"
        "        - key: user_id\n"
        "          value: apiKey.userid\n"
        "      - type: requests\n"
        "        entries:\n"
        "        - key: team\n"
        "          value: apiKey.team\n"
        "  models: [{name: '*', provider: openAI, params: {apiKey: k}}]\n")
    result = tollgate("validate", "-f", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: ok")
    assert result.stderr.splitlines() == [
        f"warning: {config}:13: apiKey.userid is read here but no configured key carries it "
        "(keys carry: team, user_id)"]  # apiKey.team (line 17) is carried: no warning

    # A key in the keysDir that carries the field is enough: the warning goes.
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "bob").write_text('{"key": "sk-bob", "metadata": {"userid": "bob"}}')
    config.write_text(config.read_text().replace("      keys:\n", f"      keysDir: {keys}\n      keys:\n"))
    result = tollgate("validate", "-f", str(config))
    assert result.returncode == 0 and result.stderr == "", result.stderr


def readme_yaml_blocks(section: str) -> list[str]:
    """The ```yaml blocks of one `## ` section of the README."""
    text = (REPO / "README.md").read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return [block.split("```", 1)[0] for block in body.split("```yaml\n")[1:]]


def test_the_readmes_configuration_examples_validate(tmp_path):
    """What a newcomer copies from the README's Configuration section loads: the gateway
    config (with a key in its keysDir) by `tollgate validate`, the domain file by the
    service's loader, and the recipes' override lines inside that domain file."""
    from ratelimit_service.config import load_texts

    gateway, domain = readme_yaml_blocks("Configuration")[:2]
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "carol").write_text('{"key": "sk-carol", "metadata": {"user_id": "carol", "team": "r"}}')
    (tmp_path / "config.yaml").write_text(gateway)
    result = tollgate("validate", "-f", str(tmp_path / "config.yaml"),
                      env={"OPENAI_API_KEY": "sk-x", "TOLLGATE_KEYS_DIR": ""})
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, result.stderr
    # The recipe "give one person a different budget": its lines, inside that domain file.
    (recipe,) = [b for b in readme_yaml_blocks("Quick start") if "value: carol" in b]
    with_override = domain + "".join(line[2:] + "\n" for line in recipe.splitlines() if line.strip())
    carol = (("user_id", "carol"),)
    assert load_texts([("config.yaml", domain)]).find("token-budgets", carol).limit.requests_per_unit == 1_000_000
    overridden = load_texts([("config.yaml", with_override)])
    assert overridden.find("token-budgets", carol).limit.requests_per_unit == 5_000_000
    assert overridden.find("token-budgets", (("user_usd", "carol"),)).limit.requests_per_unit == 200_000_000
