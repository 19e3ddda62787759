"""The config file's schema: pydantic models with agentgateway's field names.

These models are the one place where the YAML is validated (and `tollgate schema`
prints them as JSON schema). Unknown fields are errors, so a typo names itself. CEL
fields are compiled here, so a syntax error carries the expression's location. Each
policy's own schema lives with the policy (gateway/policies/). Checks across objects
(duplicate keys, ports, keysDir contents) live in the loader.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BeforeValidator, Field, model_validator

from gateway.policies.apikey import ApiKey
from gateway.pricing import Price
from gateway.policies.local_ratelimit import LocalRateLimit
from gateway.policies.remote_ratelimit import RemoteRateLimit
from gateway.schema import MIB, AbsolutePath, ByteSize, Cel, Duration, HostPort, HttpUrl, MetricLabel, Model, \
    NonEmpty, Port


# --- routes and backends --------------------------------------------------------------

class PathMatch(Model):
    """A path match: the requests whose path starts with `pathPrefix`."""

    path_prefix: AbsolutePath
    """Prefix the request's path must start with, e.g. /anthropic; must start with '/'."""


# `matches: ["/anthropic"]` and `matches: [{path: /anthropic}]` mean a path prefix.
def _path_shorthand(value: Any) -> Any:
    return {"pathPrefix": value} if isinstance(value, str) else value


def _match_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class RouteMatch(Model):
    """Requests a route takes; `- /anthropic` and `- path: /anthropic` are short for this."""

    path: Annotated[PathMatch, BeforeValidator(_path_shorthand, json_schema_input_type=PathMatch | str)]
    """The path to match: `{pathPrefix: /anthropic}`, or the prefix alone."""


Match = Annotated[RouteMatch, BeforeValidator(_match_shorthand, json_schema_input_type=RouteMatch | str)]


class ProviderModel(Model):
    """A provider's settings on a route backend."""

    model: NonEmpty | None = None
    """Model sent upstream, replacing the one the client named; default: the requested one."""


class AIProvider(Model):
    """The backend's provider: exactly one of `openAI` or `anthropic`."""

    open_ai: ProviderModel | None = Field(default=None, alias="openAI")
    """OpenAI's API (or a compatible one): `{model: ...}`, or `{}` for the requested model."""
    anthropic: ProviderModel | None = None
    """Anthropic's Messages API: `{model: ...}`, or `{}` for the requested model."""
    one_of = (("open_ai", "anthropic"),)

    @property
    def kind(self) -> Literal["openAI", "anthropic"]:
        return "openAI" if self.open_ai is not None else "anthropic"

    @property
    def model(self) -> str | None:
        return (self.open_ai or self.anthropic).model  # type: ignore[union-attr]


class AIBackend(Model):
    """An LLM provider that serves a route's requests."""

    name: NonEmpty
    """Backend name, logged as `backend`; of several backends, the one named as the request's model serves it,
    else the first."""
    provider: AIProvider
    """The provider, and optionally the model: `{anthropic: {model: ...}}` or `{openAI: {...}}`."""
    host_override: HostPort | None = None
    """host:port to send requests to in plain HTTP, instead of the provider's URL; not with `baseUrl`."""
    base_url: HttpUrl | None = None
    """Provider URL, http(s)://host[:port][/prefix]; default https://api.openai.com or https://api.anthropic.com
    (also when empty). Not with `hostOverride`."""
    tokenize: bool = False
    """Estimate the prompt's tokens before sending, for token budgets and limits; default false."""
    at_most_one_of = (("host_override", "base_url", ""),)


class BackendTLS(Model):
    """agentgateway's `backendTLS`: how the gateway verifies (and authenticates to) a provider."""

    root: NonEmpty | None = None
    """CA bundle (PEM file) that verifies the provider, instead of the system's store."""
    cert: NonEmpty | None = None
    """Client certificate (PEM file) presented to the provider; set with `key`."""
    key: NonEmpty | None = None
    """Private key (PEM file) of `cert`."""
    hostname: NonEmpty | None = None
    """Name sent as SNI and verified, instead of the URL's host."""

    @model_validator(mode="after")
    def _pair(self) -> "BackendTLS":
        if (self.cert is None) != (self.key is None):
            raise ValueError("set 'cert' and 'key' together")
        return self


class RouteBackend(Model):
    """One of a route's backends (only `ai` backends)."""

    ai: AIBackend
    """An LLM provider: name, provider and address."""


class BackendAuth(Model):
    """agentgateway's `backendAuth`: the credential sent to the route's providers."""

    key: str
    """Upstream API key for every backend of the route, e.g. "$ANTHROPIC_API_KEY"; empty sends none."""


class RewritePath(Model):
    """agentgateway's `{full: ...}`; Gateway API's `{type: ReplaceFullPath, replaceFullPath: ...}`."""

    full: AbsolutePath | None = None
    """Path sent upstream instead of the request's, e.g. /v1/messages."""
    replace_full_path: AbsolutePath | None = None
    """Gateway API's spelling of `full`, with `type: ReplaceFullPath`."""
    type: Literal["ReplaceFullPath"] | None = None
    """Gateway API's rewrite type: only ReplaceFullPath, which goes with `replaceFullPath`."""
    one_of = (("full", "replace_full_path"),)

    @property
    def path(self) -> str:
        return self.full or self.replace_full_path or ""


class UrlRewrite(Model):
    """agentgateway's `urlRewrite`: the path sent upstream."""

    path: RewritePath
    """The new path: `{full: /v1/messages}`."""


class Timeout(Model):
    """agentgateway's `timeout` policy."""

    request_timeout: Duration
    """Time the provider has to send its response headers, then for each wait for body bytes (504 beyond):
    60s, 1m, 500ms, or seconds. Default 600s."""


class LLMPolicies(Model):
    """Policies applied to every request of the `llm` listener."""

    api_key: ApiKey | None = None
    """Virtual keys: who may call, and the metadata budgets and metrics see. Default: no key needed."""
    local_rate_limit: list[LocalRateLimit] = []
    """Token buckets kept by each replica; a request must fit every one."""
    remote_rate_limit: RemoteRateLimit | None = None
    """Budgets shared by every replica, kept by the tollgate-ratelimit service."""
    timeout: Timeout | None = None
    """Request timeout, `{requestTimeout: 60s}`; default 600s."""


class RoutePolicies(LLMPolicies):
    """A route's policies: those of `llm.policies`, plus backendAuth, backendTLS and urlRewrite."""

    backend_auth: BackendAuth | None = None
    """Upstream key for every backend of the route: `{key: "$ANTHROPIC_API_KEY"}`."""
    backend_tls: BackendTLS | None = Field(default=None, alias="backendTLS")
    """How the route's providers are verified (and authenticated to) over TLS."""
    url_rewrite: UrlRewrite | None = None
    """Rewrites the path sent upstream: `{path: {full: /v1/messages}}`."""


class Route(Model):
    """A route: the requests whose path matches go to its backend, under its policies."""

    name: NonEmpty | None = None
    """Route name, logged as `route`; it keys the route's local rate-limit buckets, so keep it stable.
    Default "bind<port>/listener<i>/route<j>"."""
    matches: list[Match] = []
    """Path prefixes the route takes (the longest matching prefix wins); none (default): every path."""
    backends: list[RouteBackend] = Field(min_length=1)
    """Where the requests go, at least one: `- ai: {name, provider, ...}`."""
    policies: RoutePolicies = RoutePolicies()
    """Keys, rate limits, budgets, timeout, upstream auth, TLS and rewrites of the route's requests."""


class ListenerTLS(Model):
    """The certificate and key a listener serves HTTPS with."""

    cert: NonEmpty
    """PEM certificate chain file, relative to the config file."""
    key: NonEmpty
    """PEM private key file, relative to the config file."""


class Listener(Model):
    """A listener on a bind's port: its protocol and its routes."""

    name: str | None = None
    """Optional name, for people reading the config."""
    protocol: Literal["HTTP", "HTTPS"] = "HTTP"
    """HTTP (default), or HTTPS, which needs `tls`. A port's listeners share protocol and tls."""
    tls: ListenerTLS | None = None
    """Certificate and key for HTTPS: `{cert: tls/cert.pem, key: tls/key.pem}`."""
    routes: list[Route] = Field(min_length=1)
    """The listener's routes, at least one."""

    @model_validator(mode="after")
    def _tls(self) -> "Listener":
        if (self.protocol == "HTTPS") != (self.tls is not None):
            raise ValueError("protocol: HTTPS needs 'tls: {cert, key}', and 'tls' needs protocol: HTTPS")
        return self


class Bind(Model):
    """A port the gateway listens on, with routes chosen by path prefix (agentgateway's `binds[]`)."""

    port: Port
    """TCP port to listen on, 1 to 65535."""
    listeners: list[Listener] = Field(min_length=1)
    """The port's listeners, at least one."""


# --- llm form -------------------------------------------------------------------------

class ModelParams(Model):
    """How a model's requests are sent upstream."""

    model: NonEmpty | None = None
    """Model sent upstream; default: the one the client requested."""
    api_key: str | None = None
    """Upstream API key, e.g. "$OPENAI_API_KEY"; empty or unset sends no credential."""
    base_url: HttpUrl | None = None
    """Provider URL, http(s)://host[:port][/prefix]; default https://api.openai.com or https://api.anthropic.com
    (also when empty)."""
    tokenize: bool = False
    """Estimate the prompt's tokens before sending, for token budgets and limits; default false."""


class LLMModel(Model):
    """A model the `llm` listener serves, and the provider that serves it."""

    name: NonEmpty
    """Model name clients ask for: exact, or a glob ("*", "gpt-*"). An exact name wins, else the first glob that
    matches."""
    provider: Literal["openAI", "anthropic"]
    """The provider's API: openAI or anthropic."""
    params: ModelParams = ModelParams()
    """Upstream model, key, URL, and prompt token estimates."""
    # agentgateway's llm.models[].tls
    tls: BackendTLS | None = Field(default=None, validation_alias=AliasChoices("tls", "backendTLS"))
    """How the provider is verified (and authenticated to) over TLS; also spelled backendTLS."""


class LLM(Model):
    """The `llm:` form: one listener, requests routed by their model's name."""

    port: Port = 4000
    """TCP port to listen on; default 4000."""
    tls: ListenerTLS | None = None
    """Serve HTTPS with this certificate and key (agentgateway's llm.tls); default plain HTTP."""
    policies: LLMPolicies = LLMPolicies()
    """Keys, rate limits, budgets and timeout, applied to every request."""
    models: list[LLMModel] = Field(min_length=1)
    """The models served, at least one; a request's `model` picks the entry."""


# --- top level ------------------------------------------------------------------------

class MetricFields(Model):
    """Labels the gateway adds to its token and cost metrics."""

    add: dict[MetricLabel, Cel] = {}
    """`{label: CEL}`, e.g. `user_id: apiKey.user_id`; a CEL error gives an empty label. Labels the gateway sets
    already (status, reason, gen_ai_*) are refused."""


class MetricsConfig(Model):
    """agentgateway's `config.metrics`."""

    fields: MetricFields = MetricFields()
    """Labels added to the token and cost metrics: `{add: {label: CEL}}`."""


class LogFields(Model):
    """The fields of each access log line."""

    add: dict[NonEmpty, Cel] = {}
    """`{field: CEL}`: fields added, evaluated per request; a field whose expression fails is null."""
    remove: list[NonEmpty] = []
    """Default fields left out, e.g. [path, key_metadata]."""


class Logging(Model):
    """agentgateway's `config.logging`: the access log (one JSON object per request, stderr)."""

    filter: Cel | None = None
    """CEL: log a request only when true, e.g. "response.code >= 400"; "false" turns the log off. Default: every
    request."""
    fields: LogFields = LogFields()
    """Fields added to and removed from each line."""
    format: Literal["json"] = "json"
    """Only json."""


class BackendSettings(Model):
    """agentgateway's `config.backend`: how provider connections are made."""

    # A blackholed address must fail in seconds, not after the route's 600 s request timeout.
    connect_timeout: Duration = 10.0
    """Time to open a provider connection (TCP, proxy tunnel and TLS): 60s, 1m, 500ms, or seconds; default 10s."""


class Settings(Model):
    """agentgateway's `config:`: the process's settings."""

    admin_addr: HostPort = "localhost:15000"
    """Admin listener (/metrics, /healthz/*) as host:port; default localhost:15000."""
    metrics: MetricsConfig = MetricsConfig()
    """Labels added to the token and cost metrics."""
    model_catalog: dict[str, Price] = {}
    """Prices, `{model: {input, output, cachedInput?}}` in USD per 1M tokens: for the cost metric, llm.cost and usd
    budgets."""
    max_body_size: ByteSize = 10 * MIB
    """Request body limit: bytes, 10Mi / 10MiB (1024-based) or 10MB (1000-based); default 10Mi. 413 beyond."""
    # Request heads: 431 beyond these, 408 when not received in time.
    max_header_size: ByteSize = 64 * 1024
    """Limit on a request's head (request line and headers): bytes, 64Ki or 64KB; default 64Ki. 431 beyond."""
    max_header_count: int = Field(default=100, ge=1, le=10_000)  # hyper's and agentgateway's default
    """Most headers in a request, 1 to 10000; default 100. 431 beyond."""
    header_timeout: Duration = 30.0
    """Time to receive a request's head: 60s, 1m, 500ms, or seconds; default 30s. 408 beyond."""
    logging: Logging = Logging()
    """The access log: one JSON object per request on stderr, on by default."""
    backend: BackendSettings = BackendSettings()
    """How provider connections are made: `{connectTimeout: 10s}`."""


class GatewayFile(Model):
    """The whole file: `llm:` and/or `binds:`, plus `config:`."""

    config: Settings = Settings()
    """Process settings: admin address, metrics labels, prices, request limits, access log."""
    llm: LLM | None = None
    """One listener whose requests are routed by model name."""
    binds: list[Bind] | None = None
    """Ports whose listeners route requests by path prefix."""

    @model_validator(mode="after")
    def _has_traffic(self) -> "GatewayFile":
        if self.llm is None and not self.binds:
            raise ValueError("nothing to serve: add 'llm' or 'binds'")
        return self
