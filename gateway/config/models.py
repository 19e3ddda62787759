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
    path_prefix: AbsolutePath


# `matches: ["/anthropic"]` and `matches: [{path: /anthropic}]` mean a path prefix.
def _path_shorthand(value: Any) -> Any:
    return {"pathPrefix": value} if isinstance(value, str) else value


def _match_shorthand(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class RouteMatch(Model):
    path: Annotated[PathMatch, BeforeValidator(_path_shorthand, json_schema_input_type=PathMatch | str)]


Match = Annotated[RouteMatch, BeforeValidator(_match_shorthand, json_schema_input_type=RouteMatch | str)]


class ProviderModel(Model):
    model: NonEmpty | None = None


class AIProvider(Model):
    open_ai: ProviderModel | None = Field(default=None, alias="openAI")
    anthropic: ProviderModel | None = None
    one_of = (("open_ai", "anthropic"),)

    @property
    def kind(self) -> Literal["openAI", "anthropic"]:
        return "openAI" if self.open_ai is not None else "anthropic"

    @property
    def model(self) -> str | None:
        return (self.open_ai or self.anthropic).model  # type: ignore[union-attr]


class AIBackend(Model):
    name: NonEmpty
    provider: AIProvider
    host_override: HostPort | None = None  # plain HTTP to host:port
    base_url: HttpUrl | None = None
    tokenize: bool = False
    at_most_one_of = (("host_override", "base_url", ""),)


class BackendTLS(Model):
    """agentgateway's `backendTLS`: how the gateway verifies (and authenticates to) a provider."""

    root: NonEmpty | None = None  # CA bundle (PEM) instead of the system's store
    cert: NonEmpty | None = None  # client certificate (PEM), with `key`
    key: NonEmpty | None = None
    hostname: NonEmpty | None = None  # name sent as SNI and verified, instead of the URL's host

    @model_validator(mode="after")
    def _pair(self) -> "BackendTLS":
        if (self.cert is None) != (self.key is None):
            raise ValueError("set 'cert' and 'key' together")
        return self


class RouteBackend(Model):
    ai: AIBackend


class BackendAuth(Model):
    key: str


class RewritePath(Model):
    """agentgateway's `{full: ...}`; Gateway API's `{type: ReplaceFullPath, replaceFullPath: ...}`."""

    full: AbsolutePath | None = None
    replace_full_path: AbsolutePath | None = None
    type: Literal["ReplaceFullPath"] | None = None
    one_of = (("full", "replace_full_path"),)

    @property
    def path(self) -> str:
        return self.full or self.replace_full_path or ""


class UrlRewrite(Model):
    path: RewritePath


class Timeout(Model):
    request_timeout: Duration


class LLMPolicies(Model):
    api_key: ApiKey | None = None
    local_rate_limit: list[LocalRateLimit] = []
    remote_rate_limit: RemoteRateLimit | None = None
    timeout: Timeout | None = None


class RoutePolicies(LLMPolicies):
    backend_auth: BackendAuth | None = None
    backend_tls: BackendTLS | None = Field(default=None, alias="backendTLS")
    url_rewrite: UrlRewrite | None = None


class Route(Model):
    name: NonEmpty | None = None
    matches: list[Match] = []  # none: every path
    backends: list[RouteBackend] = Field(min_length=1)
    policies: RoutePolicies = RoutePolicies()


class ListenerTLS(Model):
    cert: NonEmpty  # PEM certificate chain, relative to the config file
    key: NonEmpty  # PEM private key


class Listener(Model):
    name: str | None = None
    protocol: Literal["HTTP", "HTTPS"] = "HTTP"
    tls: ListenerTLS | None = None
    routes: list[Route] = Field(min_length=1)

    @model_validator(mode="after")
    def _tls(self) -> "Listener":
        if (self.protocol == "HTTPS") != (self.tls is not None):
            raise ValueError("protocol: HTTPS needs 'tls: {cert, key}', and 'tls' needs protocol: HTTPS")
        return self


class Bind(Model):
    port: Port
    listeners: list[Listener] = Field(min_length=1)


# --- llm form -------------------------------------------------------------------------

class ModelParams(Model):
    model: NonEmpty | None = None
    api_key: str | None = None
    base_url: HttpUrl | None = None
    tokenize: bool = False


class LLMModel(Model):
    name: NonEmpty  # exact, or a glob ("*", "gpt-*")
    provider: Literal["openAI", "anthropic"]
    params: ModelParams = ModelParams()
    # agentgateway's llm.models[].tls (also spelled backendTLS)
    tls: BackendTLS | None = Field(default=None, validation_alias=AliasChoices("tls", "backendTLS"))


class LLM(Model):
    port: Port = 4000
    tls: ListenerTLS | None = None  # serve HTTPS (agentgateway's llm.tls)
    policies: LLMPolicies = LLMPolicies()
    models: list[LLMModel] = Field(min_length=1)


# --- top level ------------------------------------------------------------------------

class MetricFields(Model):
    add: dict[MetricLabel, Cel] = {}


class MetricsConfig(Model):
    fields: MetricFields = MetricFields()


class LogFields(Model):
    add: dict[NonEmpty, Cel] = {}  # field name -> CEL value
    remove: list[NonEmpty] = []  # default fields left out


class Logging(Model):
    """agentgateway's `config.logging`: the access log (one JSON object per request, stderr)."""

    filter: Cel | None = None  # log a request only when true ("false" turns the log off)
    fields: LogFields = LogFields()
    format: Literal["json"] = "json"


class BackendSettings(Model):
    """agentgateway's `config.backend`: how provider connections are made."""

    # A blackholed address must fail in seconds, not after the route's 600 s request timeout.
    connect_timeout: Duration = 10.0


class Settings(Model):
    admin_addr: HostPort = "localhost:15000"
    metrics: MetricsConfig = MetricsConfig()
    model_catalog: dict[str, Price] = {}
    max_body_size: ByteSize = 10 * MIB
    # Request heads (SPEC §9): 431 beyond these, 408 when not received in time.
    max_header_size: ByteSize = 64 * 1024
    max_header_count: int = Field(default=100, ge=1, le=10_000)  # hyper's and agentgateway's default
    header_timeout: Duration = 30.0
    logging: Logging = Logging()
    backend: BackendSettings = BackendSettings()


class GatewayFile(Model):
    """The whole file: `llm:` and/or `binds:`, plus `config:`."""

    config: Settings = Settings()
    llm: LLM | None = None
    binds: list[Bind] | None = None

    @model_validator(mode="after")
    def _has_traffic(self) -> "GatewayFile":
        if self.llm is None and not self.binds:
            raise ValueError("nothing to serve: add 'llm' or 'binds'")
        return self
