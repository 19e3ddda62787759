"""The building blocks of the config schema: the model base, and the scalar types.

Each scalar type is an `Annotated` pydantic type whose validator turns the YAML scalar
into what the runtime wants (seconds, bytes, a compiled `Expr`) and whose JSON schema
says what the file may contain. The gateway's file schema (config/models.py) and each
policy's own schema (policies/*.py) are built from these.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from gateway.cel import CelError, Expr, compile_expr

MIB = 1024 * 1024

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|s|m|h|d)")
_DURATION_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKMGT]i?)?B?")
_SIZE_UNITS = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
               "ki": 1024, "Ki": 1024, "Mi": MIB, "Gi": 1024 * MIB, "Ti": MIB * MIB}
_HEX64 = re.compile(r"sha256:[0-9a-fA-F]{64}")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_HOST_PORT = re.compile(r"[^\s:/]+:(\d+)|\[[0-9a-fA-F:.]+\]:(\d+)")
# Labels the gateway's metrics already carry (README, Metrics).
RESERVED_LABELS = frozenset({"gen_ai_token_type", "gen_ai_request_model", "gen_ai_system", "status", "reason"})


def parse_duration(value: Any) -> float:
    """"60s", "1m30s", "500ms", "1h", or a number of seconds; must be positive."""
    def text(value: str) -> float | None:
        if re.fullmatch(r"\d+(\.\d+)?", value):
            return float(value)
        if re.fullmatch(f"(?:{_DURATION_PART.pattern})+", value):
            return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(value))
        return None

    return _positive(value, "duration", "60s, 1m, 500ms or a number of seconds", float, text)


def parse_size(value: Any) -> int:
    """Bytes, or "10Mi" / "10MiB" (1024-based) / "10MB" (1000-based); must be positive."""
    def text(value: str) -> int | None:
        m = _SIZE.fullmatch(value)
        return int(float(m.group(1)) * _SIZE_UNITS[m.group(2) or ""]) if m else None

    return _positive(value, "size", "10Mi, 1MB or a number of bytes", int, text)


def _positive(value: Any, what: str, examples: str, number: Callable[[Any], Any],
              text: Callable[[str], Any]) -> Any:
    """A number, or text that `text` reads (None when it cannot); must be above zero."""
    if isinstance(value, bool):
        raise ValueError(f"expected a {what} like {examples}")
    parsed = number(value) if isinstance(value, (int, float)) else None
    if isinstance(value, str):
        parsed = text(value.strip())
    if parsed is None:
        raise ValueError(f"invalid {what} {value!r}: expected e.g. {examples}")
    if parsed <= 0:
        raise ValueError(f"{what} must be greater than 0, got {value!r}")
    return parsed


def compile_cel(value: Any) -> Expr:
    # YAML reads `value: 1` or `condition: true` as scalars; they are CEL literals too.
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, (int, float)):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("expected a CEL expression (a string)")
    try:
        return compile_expr(value)
    except CelError as e:
        raise ValueError(str(e)) from None


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def any_case(*values: str) -> Any:
    """An enum that also takes the capitalised spelling of Kubernetes resources (`Strict`)."""
    spellings = [*values, *(v[0].upper() + v[1:] for v in values)]
    return Annotated[Literal[values], BeforeValidator(_lower, json_schema_input_type=Literal[tuple(spellings)])]


def _key_hash(value: str) -> str:
    if not _HEX64.fullmatch(value):
        raise ValueError("keyHash must be 'sha256:' followed by 64 hex digits")
    return value.lower()


def _host_port(value: str) -> str:
    m = _HOST_PORT.fullmatch(value)
    if not m or not 1 <= int(m.group(1) or m.group(2)) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    return value


def _http_url(value: str) -> str | None:
    if not value:
        return None  # `baseUrl: $UNSET` means the provider's default, as in agentgateway
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    return value.rstrip("/")


def _not_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _absolute(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"a path must start with '/', got {value!r}")
    return value


def _label(value: str) -> str:
    if not _LABEL.fullmatch(value):
        raise ValueError(f"invalid metric label name {value!r}")
    if value in RESERVED_LABELS:
        raise ValueError(f"metric label {value!r} is already set by the gateway")
    return value


Cel = Annotated[Expr, BeforeValidator(compile_cel),
                WithJsonSchema({"type": "string", "description": "CEL expression"})]
Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(
    {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": r"^(\d+(\.\d+)?(ms|us|s|m|h|d)?)+$"}],
     "description": "duration: 60s, 1m, 500ms, or seconds"})]
ByteSize = Annotated[int, BeforeValidator(parse_size), WithJsonSchema(
    {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^\d+(\.\d+)?\s*([kKMGT]i?)?B?$"}],
     "description": "bytes, or 10Mi / 10MiB / 1MB"})]
Port = Annotated[int, Field(ge=1, le=65535)]
HostPort = Annotated[str, AfterValidator(_host_port)]
HttpUrl = Annotated[str, AfterValidator(_http_url)]
NonEmpty = Annotated[str, AfterValidator(_not_empty)]
KeyHash = Annotated[str, AfterValidator(_key_hash)]
MetricLabel = Annotated[str, AfterValidator(_label)]
AbsolutePath = Annotated[str, AfterValidator(_absolute)]
LimitType = Literal["tokens", "requests"]
Enforcement = Literal["soft", "hard"]


class Model(BaseModel):
    """A config object: agentgateway's camelCase names, unknown fields refused, immutable.

    Fields that are alternatives are declared, not validated by hand: `one_of` groups
    need exactly one field set; `at_most_one_of` pairs (first, second, what the second
    is) refuse both together.

    A subclass's docstring and the docstring under each field are the descriptions
    `tollgate schema` prints, which editors show: write them for someone editing YAML
    (what it is, its unit, its default, its values). A field's description replaces its
    type's (a Duration's format), so one whose type has a format says it.
    """

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, frozen=True, use_attribute_docstrings=True,
                              protected_namespaces=(), arbitrary_types_allowed=True)
    one_of: ClassVar[tuple[tuple[str, ...], ...]] = ()
    at_most_one_of: ClassVar[tuple[tuple[str, str, str], ...]] = ()

    @model_validator(mode="after")
    def _alternatives(self) -> "Model":
        for names in self.one_of:
            exactly_one(self, *names)
        for first, second, second_is in self.at_most_one_of:
            at_most_one(self, first, second, second_is)
        return self

    def given(self, *names: str) -> list[str]:
        """The camelCase names of the fields among `names` that the file sets."""
        fields = type(self).model_fields
        return [fields[n].alias or n for n in names if n in self.model_fields_set]


def exactly_one(model: Model, *names: str) -> None:
    given = model.given(*names)
    if len(given) != 1:
        aliases = " or ".join(f"'{type(model).model_fields[n].alias or n}'" for n in names)
        raise ValueError(f"set exactly one of {aliases}" + (f" (got {', '.join(given)})" if given else ""))


def at_most_one(model: Model, first: str, second: str, second_is: str = "") -> None:
    """Refuses `first` and `second` together; `second_is` says what the second is ("its X spelling ")."""
    if not model.given(first, second)[1:]:
        return
    fields = type(model).model_fields
    raise ValueError(f"set '{fields[first].alias or first}' or {second_is}'{fields[second].alias or second}', not both")
