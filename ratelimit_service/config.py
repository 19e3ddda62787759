"""Domain configs: envoyproxy/ratelimit's YAML, validated with its messages.

`load_dir(DIR)` reads every `*.yaml`/`*.yml` file in DIR (dot entries such as a
mounted ConfigMap's `..data` are skipped, symlinks followed) and returns the
whole `RateLimitConfig`, or raises `ConfigError` listing `file:line: message`
problems, one per bad file. The typed models below are the one place where a
document's fields are checked; the tree is built from them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from ratelimit_service.match import (
    ALGORITHMS, CALENDAR_UNITS, UNIT_SECONDS, Limit, Match, Node, Wildcard, default_algorithm, lookup,
)
from ratelimit_service.windows import BadTimezone, zone
from ratelimit_service.yamlsrc import CONFIG_SUFFIXES, Document, YamlProblem, documents
from tollgate_common.problems import ConfigError, Problem

MICROS_PER_USD = 1_000_000
# A dollar budget is counted in integer micro-dollars, which the scripts hold
# in doubles: exact up to 2^53 (about $9.007 billion).
MAX_MICRO_USD = 2**53


class Invalid(ValueError):
    """A validation message, and the field whose line it should point at."""

    def __init__(self, message: str, field_name: str | None = None):
        super().__init__(message)
        self.field_name = field_name


Uint32 = Annotated[int, Field(strict=True, ge=0, le=2**32 - 1)]
Flag = Annotated[bool, Field(strict=True)]


class _Model(BaseModel):
    # Misplaced known keys are ignored, as envoy's YAML unmarshalling does.
    model_config = ConfigDict(extra="ignore", frozen=True)


class YamlReplaces(_Model):
    name: str = ""


class YamlRateLimit(_Model):
    requests_per_unit: Uint32 | None = None
    usd: Any = None  # dollars: an integer or a decimal (49.99), read as written
    unit: str = ""
    unlimited: Flag = False
    name: str = ""
    replaces: list[YamlReplaces] = []
    algorithm: str = ""  # default: calendar for day and longer, token_bucket below
    timezone: str = ""  # calendar windows only; default UTC

    @model_validator(mode="after")
    def _check(self) -> "YamlRateLimit":
        valid_unit = self.unit.upper() in UNIT_SECONDS
        if self.unlimited and valid_unit:
            raise Invalid("should not specify rate limit unit when unlimited", "unit")
        if not self.unlimited and not valid_unit:
            raise Invalid(f"invalid rate limit unit '{self.unit}'", "unit")
        for replaces in self.replaces:
            if not replaces.name:
                raise Invalid("should not have an empty replaces entry", "replaces")
            if replaces.name == self.name:
                raise Invalid("replaces should not contain name of same descriptor", "replaces")
        if self.usd is not None:
            _check_usd(self)
        if self.algorithm and self.algorithm not in ALGORITHMS:
            raise Invalid(
                f"invalid rate limit algorithm '{self.algorithm}' (token_bucket, fixed_window or calendar)",
                "algorithm",
            )
        _check_calendar(self)
        return self

    @property
    def algorithm_code(self) -> str:
        return ALGORITHMS[self.algorithm] if self.algorithm else default_algorithm(self.unit.upper())

    @property
    def capacity(self) -> int:
        if self.usd is not None:
            return micro_dollars(self.usd)
        return self.requests_per_unit or 0


def micro_dollars(usd: Any) -> int:
    """Dollars as integer micro-dollars, exactly (Decimal, never float); raises Invalid."""
    amount = None
    if type(usd) is int or type(usd) is str:
        try:
            amount = Decimal(str(usd).strip())
        except InvalidOperation:
            pass
    micros = amount * MICROS_PER_USD if amount is not None and amount.is_finite() else None
    if micros is None or micros <= 0 or micros != micros.to_integral_value():
        raise Invalid(f"invalid usd '{usd}': a positive amount of dollars with at most 6 decimals", "usd")
    if micros > MAX_MICRO_USD:
        raise Invalid(f"usd {usd} is over the largest budget, {Decimal(MAX_MICRO_USD) / MICROS_PER_USD}", "usd")
    return int(micros)


def _check_usd(rl: YamlRateLimit) -> None:
    if rl.unlimited:
        raise Invalid("should not specify usd when unlimited", "usd")
    if rl.requests_per_unit is not None:
        raise Invalid("should not specify both requests_per_unit and usd", "usd")
    micro_dollars(rl.usd)


def _check_calendar(rl: YamlRateLimit) -> None:
    """A calendar window needs a unit of a day or longer; a timezone needs a calendar window."""
    unit = rl.unit.lower()
    if rl.algorithm == "calendar" and unit.upper() not in CALENDAR_UNITS:
        raise Invalid(f"algorithm calendar needs unit day, week, month or year, not '{unit}'", "algorithm")
    if rl.timezone:
        if rl.unlimited or rl.algorithm_code != "cal":
            raise Invalid(
                "timezone applies only to calendar windows (unit day, week, month or year; algorithm calendar)",
                "timezone",
            )
        try:
            zone(rl.timezone)
        except BadTimezone as e:
            raise Invalid(str(e), "timezone") from None


def _required(message: str) -> AfterValidator:
    """A string field envoy refuses empty, with envoy's message."""
    def check(value: str) -> str:
        if not value:
            raise Invalid(message)
        return value
    return AfterValidator(check)


class YamlDescriptor(_Model):
    key: Annotated[str, _required("descriptor has empty key")] = Field("", validate_default=True)
    value: str = ""
    rate_limit: YamlRateLimit | None = None
    descriptors: list["YamlDescriptor"] = []
    shadow_mode: Flag = False
    detailed_metric: Flag = False
    share_threshold: Flag = False

    @model_validator(mode="after")
    def _share(self) -> "YamlDescriptor":
        if self.share_threshold and "*" not in self.value:
            raise Invalid(
                "share_threshold can only be used with wildcard values (containing '*'), "
                f"but found key '{composite_key(self.key, self.value)}'",
                "share_threshold",
            )
        return self


class YamlRoot(_Model):
    domain: Annotated[str, _required("config file cannot have empty domain")] = Field("", validate_default=True)
    descriptors: list[YamlDescriptor] = []


def composite_key(key: str, value: str) -> str:
    return f"{key}_{value}" if value else key


@dataclass(frozen=True)
class RateLimitConfig:
    """All domains, ready for lookups; replaced whole on reload."""

    domains: dict[str, Node] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    # What the service derived from lookups in this config (service.py); it goes
    # with the config when a reload replaces it.
    memo: dict = field(default_factory=dict, compare=False, repr=False)

    def find(self, domain: str, entries: tuple[tuple[str, str], ...]) -> Match | None:
        root = self.domains.get(domain)
        return None if root is None else lookup(root, entries)


def config_files(config_dir: str) -> list[str]:
    """The files a directory contributes, in name order."""
    names = sorted(n for n in os.listdir(config_dir) if not n.startswith(".") and n.endswith(CONFIG_SUFFIXES))
    return [p for p in (os.path.join(config_dir, n) for n in names) if os.path.isfile(p)]


def read_dir(config_dir: str) -> list[tuple[str, str]]:
    """(path, text) of each config file; one snapshot feeds both the change check and the load."""
    try:
        paths = config_files(config_dir)
    except OSError as e:
        raise ConfigError([Problem(config_dir, None, f"cannot read config directory: {e.strerror}")]) from None
    texts: list[tuple[str, str]] = []
    problems: list[Problem] = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                texts.append((path, f.read()))
        except (OSError, UnicodeDecodeError) as e:
            problems.append(Problem(path, None, f"error loading config file: {e}"))
    if problems:
        raise ConfigError(problems)
    return texts


def load_dir(config_dir: str) -> RateLimitConfig:
    return load_texts(read_dir(config_dir))


def load_texts(texts: list[tuple[str, str]]) -> RateLimitConfig:
    """Builds the config from (file name, YAML text) pairs; all-or-nothing."""
    domains: dict[str, Node] = {}
    problems: list[Problem] = []
    for name, text in texts:
        try:
            for doc in documents(text, name):
                root = _validate(doc)
                if root.domain in domains:
                    raise YamlProblem(doc.line(("domain",)), f"duplicate domain '{root.domain}' in config file")
                domains[root.domain] = _build(root, doc)
        except YamlProblem as e:
            problems.append(Problem(name, e.line, e.message))
    if problems:
        raise ConfigError(problems)
    return RateLimitConfig(domains, tuple(name for name, _ in texts))


def _validate(doc: Document) -> YamlRoot:
    try:
        return YamlRoot.model_validate(doc.data if doc.data is not None else {})
    except ValidationError as e:
        error = e.errors(include_url=False)[0]
        path = tuple(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, Invalid):
            target = path + (cause.field_name,) if cause.field_name else path
            raise YamlProblem(doc.line(target), str(cause)) from None
        raise YamlProblem(
            doc.line(path), f"error loading config file: {'.'.join(map(str, path))}: {error['msg']}"
        ) from None


def _build(root: YamlRoot, doc: Document) -> Node:
    node = Node()
    _add_descriptors(node, root.descriptors, root.domain, ("descriptors",), doc)
    return node


def _add_descriptors(parent: Node, descriptors: list[YamlDescriptor], parent_key: str, path: tuple, doc: Document):
    for i, d in enumerate(descriptors):
        final = composite_key(d.key, d.value)
        full_key = f"{parent_key}.{final}"
        slot = (d.key, d.value or None)
        if slot in parent.children:
            raise YamlProblem(doc.line(path + (i,)), f"duplicate descriptor composite key '{full_key}'")
        child = Node(limit=_limit(d, full_key.split(".", 1)[1]), share_threshold=d.share_threshold)
        parent.children[slot] = child
        if "*" in d.value:
            parent.wildcards.append(Wildcard(d.key, d.value, tuple(d.value.split("*"))))
        _add_descriptors(child, d.descriptors, full_key, path + (i, "descriptors"), doc)


def _limit(d: YamlDescriptor, stat_key: str) -> Limit | None:
    rl = d.rate_limit
    if rl is None:
        return None
    return Limit(
        requests_per_unit=rl.capacity,
        unit="" if rl.unlimited else rl.unit.upper(),
        stat_key=stat_key,
        algorithm=rl.algorithm_code,
        usd=rl.usd is not None,
        timezone=rl.timezone or "UTC",
        name=rl.name,
        replaces=tuple(r.name for r in rl.replaces),
        unlimited=rl.unlimited,
        shadow_mode=d.shadow_mode,
        detailed_metric=d.detailed_metric,
    )
