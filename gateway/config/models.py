"""The config file's schema: pydantic models with agentgateway's field names.

These models are the one place where the YAML is validated (and `tollgate schema`
prints them as JSON schema). Unknown fields are errors, so a typo names itself. CEL
fields are compiled here, so a syntax error carries the expression's location.
Checks across objects (duplicate keys, ports, keysDir contents) live in the loader.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, JsonValue, field_validator, model_validator
from pydantic.alias_generators import to_camel

from gateway.cel import Expr
from gateway.config.types import (MIB, ByteSize, Cel, Duration, Enforcement, HostPort, HttpUrl, KeyHash,
                                  LimitType, MetricLabel, NonEmpty, Port, any_case)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True,
                              protected_namespaces=(), arbitrary_types_allowed=True)

    def given(self, *names: str) -> list[str]:
        """The camelCase names of the fields among `names` that the file sets."""
        fields = type(self).model_fields
        return [fields[n].alias or n for n in names if n in self.model_fields_set]


def _exactly_one(model: Model, *names: str) -> None:
    given = model.given(*names)
    if len(given) != 1:
        aliases = " or ".join(f"'{type(model).model_fields[n].alias or n}'" for n in names)
        raise ValueError(f"set exactly one of {aliases}" + (f" (got {', '.join(given)})" if given else ""))


# --- apiKey ---------------------------------------------------------------------------

class HeaderLocation(Model):
    name: NonEmpty
    prefix: str | None = None  # default "Bearer " for authorization, "" otherwise


class KeyLocation(Model):
    header: HeaderLocation


class KeyEntry(Model):
    """One virtual key; also the shape of each file in a keysDir."""

    key: NonEmpty | None = None
    key_hash: KeyHash | None = None
    metadata: dict[str, JsonValue] = {}  # JSON only: CEL sees it as apiKey.*
    allowed_models: list[NonEmpty] | None = None

    @model_validator(mode="after")
    def _one_key(self) -> "KeyEntry":
        _exactly_one(self, "key", "key_hash")
        return self


class ApiKey(Model):
    mode: any_case("strict", "optional", "permissive") = "strict"
    keys: list[KeyEntry] = []
    keys_dir: NonEmpty | None = None
    location: KeyLocation | None = None


# --- rate limits ----------------------------------------------------------------------

class LocalRateLimit(Model):
    max_tokens: int = Field(ge=0)
    tokens_per_fill: int | None = Field(default=None, ge=1)  # default: maxTokens
    fill_interval: Duration
    type: LimitType = "requests"


class DescriptorEntry(Model):
    """`{key, value: CEL}`; seed 001 / Kubernetes spell them `{name, expression}`."""

    key: NonEmpty | None = None
    value: Cel | None = None
    name: NonEmpty | None = None
    expression: Cel | None = None

    @model_validator(mode="after")
    def _spelled_once(self) -> "DescriptorEntry":
        _exactly_one(self, "key", "name")
        _exactly_one(self, "value", "expression")
        return self

    @property
    def entry_key(self) -> str:
        return self.key or self.name  # type: ignore[return-value]

    @property
    def entry_value(self) -> Expr:
        return self.value or self.expression  # type: ignore[return-value]


class Descriptor(Model):
    entries: list[DescriptorEntry] = Field(min_length=1)
    type: LimitType | None = None
    unit: any_case("tokens", "requests") | None = None  # Kubernetes: Tokens|Requests
    cost: Cel | None = None
    enforcement: Enforcement | None = None

    @model_validator(mode="after")
    def _one_type(self) -> "Descriptor":
        if self.type is not None and self.unit is not None:
            raise ValueError("set 'type' or its Kubernetes spelling 'unit', not both")
        return self

    @property
    def limit_type(self) -> LimitType:
        return self.type or self.unit or "requests"


class BackendRef(Model):
    """A Kubernetes Service reference (seed 001); becomes host `name.namespace:port`."""

    name: NonEmpty
    namespace: str | None = None
    port: Port
    kind: Literal["Service"] | None = None

    @property
    def host(self) -> str:
        name = f"{self.name}.{self.namespace}" if self.namespace else self.name
        return f"{name}:{self.port}"


_TARGET_FIELDS = ("host", "backend_ref", "domain", "failure_mode", "timeout", "enforcement", "descriptors")


class RemoteTarget(Model):
    """A remote rate-limit call: which service, which domain, which descriptors."""

    host: HostPort | None = None
    backend_ref: BackendRef | None = None
    domain: NonEmpty | None = None
    failure_mode: Literal["failClosed", "failOpen"] = "failClosed"
    timeout: Duration = 0.5
    enforcement: Enforcement = "soft"
    descriptors: list[Descriptor] | None = None

    def check_complete(self) -> None:
        _exactly_one(self, "host", "backend_ref")
        missing = [n for n in ("domain", "descriptors") if getattr(self, n) is None]
        if missing:
            raise ValueError(f"missing required field '{missing[0]}'")
        if not self.descriptors:
            raise ValueError("'descriptors' must not be empty")

    def complete_unless(self, alternative: str) -> None:
        """Either the target fields are complete, or `alternative` holds them instead."""
        if getattr(self, alternative) is None:
            self.check_complete()
        elif given := self.given(*_TARGET_FIELDS):
            raise ValueError(f"'{alternative}' and '{given[0]}' cannot be combined")

    @property
    def service(self) -> str:
        return self.host or self.backend_ref.host  # type: ignore[union-attr]


class CompleteTarget(RemoteTarget):
    @model_validator(mode="after")
    def _complete(self) -> "CompleteTarget":
        self.check_complete()
        return self


class GlobalPolicy(Model):
    global_: CompleteTarget = Field(alias="global")


class ConditionalTarget(RemoteTarget):
    """`{condition, <target fields>}`, or seed 001's `{condition, policy: {global: {...}}}`."""

    condition: Cel
    policy: GlobalPolicy | None = None

    @model_validator(mode="after")
    def _complete(self) -> "ConditionalTarget":
        self.complete_unless("policy")
        return self

    @property
    def target(self) -> RemoteTarget:
        return self.policy.global_ if self.policy else self


class RemoteRateLimit(RemoteTarget):
    """The plain form, or `{conditional: [...]}` (first true condition wins)."""

    conditional: list[ConditionalTarget] | None = None

    @model_validator(mode="after")
    def _complete(self) -> "RemoteRateLimit":
        self.complete_unless("conditional")
        return self

    @property
    def rules(self) -> list[tuple[Expr | None, RemoteTarget]]:
        if self.conditional is None:
            return [(None, self)]
        return [(c.condition, c.target) for c in self.conditional]


# --- routes and backends --------------------------------------------------------------

class PathMatch(Model):
    path_prefix: str

    @field_validator("path_prefix")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"pathPrefix must start with '/', got {value!r}")
        return value


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

    @model_validator(mode="after")
    def _one(self) -> "AIProvider":
        _exactly_one(self, "open_ai", "anthropic")
        return self

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

    @model_validator(mode="after")
    def _one_target(self) -> "AIBackend":
        if self.host_override and self.base_url:
            raise ValueError("set 'hostOverride' or 'baseUrl', not both")
        return self


class RouteBackend(Model):
    ai: AIBackend


class BackendAuth(Model):
    key: str


class RewritePath(Model):
    """agentgateway's `{full: ...}`; Gateway API's `{type: ReplaceFullPath, replaceFullPath: ...}`."""

    full: str | None = None
    replace_full_path: str | None = None
    type: Literal["ReplaceFullPath"] | None = None

    @model_validator(mode="after")
    def _one(self) -> "RewritePath":
        _exactly_one(self, "full", "replace_full_path")
        if not self.path.startswith("/"):
            raise ValueError(f"the rewritten path must start with '/', got {self.path!r}")
        return self

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
    url_rewrite: UrlRewrite | None = None


class Route(Model):
    name: NonEmpty | None = None
    matches: list[Match] = []  # none: every path
    backends: list[RouteBackend] = Field(min_length=1)
    policies: RoutePolicies = RoutePolicies()


class Listener(Model):
    name: str | None = None
    routes: list[Route] = Field(min_length=1)


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


class LLM(Model):
    port: Port = 4000
    policies: LLMPolicies = LLMPolicies()
    models: list[LLMModel] = Field(min_length=1)


# --- top level ------------------------------------------------------------------------

class MetricFields(Model):
    add: dict[MetricLabel, Cel] = {}


class Metrics(Model):
    fields: MetricFields = MetricFields()


class Price(Model):
    input: float = Field(ge=0)  # USD per 1M input tokens
    output: float = Field(ge=0)  # USD per 1M output tokens


class Settings(Model):
    admin_addr: HostPort = "localhost:15000"
    metrics: Metrics = Metrics()
    model_catalog: dict[str, Price] = {}
    max_body_size: ByteSize = 10 * MIB


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
