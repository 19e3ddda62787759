"""Run a pydantic model over a Document and turn its errors into `file:line: message`."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gateway.config.source import ConfigError, EnvDocument, Problem

M = TypeVar("M", bound=BaseModel)


def validate(doc: EnvDocument, model: type[M]) -> M:
    try:
        return model.model_validate(doc.data)
    except ValidationError as e:
        problems = [_problem(doc, model, err) for err in e.errors(include_url=False)]
        raise ConfigError(_unique(problems)) from None


def dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _problem(doc: EnvDocument, root: type[BaseModel], err: dict) -> Problem:
    loc = tuple(p for p in err["loc"] if p != "[key]")
    kind = err["type"]
    if kind == "extra_forbidden":
        where = dotted(loc[:-1])
        message = f"unknown field '{loc[-1]}'{_suggest(root, loc)}"
        message = f"{where}: {message}" if where else message
    elif kind == "missing":
        where = dotted(loc[:-1])
        message = f"missing required field '{loc[-1]}'"
        message = f"{where}: {message}" if where else message
    else:
        text = err["msg"].removeprefix("Value error, ")
        if kind in ("literal_error", "int_parsing", "float_parsing", "bool_parsing", "string_type",
                    "int_type", "greater_than_equal", "less_than_equal"):
            text += f", got {_shown(err.get('input'))}"
        if kind == "literal_error":
            text += _closest(err.get("input"), re.findall(r"'([^']*)'", str(err.get("ctx", {}).get("expected", ""))))
        text = doc.redact(loc, text)
        where = dotted(loc)
        message = f"{where}: {text}" if where else text
    unset = doc.unset_under(loc)
    if unset:
        message += f" (environment variable {', '.join(unset)} is not set)"
    return doc.problem(loc, message)


def _shown(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "a mapping" if isinstance(value, dict) else "a list"
    return repr(value)


def _closest(given: Any, allowed: list[str]) -> str:
    """` (did you mean 'openAI'?)` for a value that differs from an allowed one in case or
    by a typo: agentgateway's names are case-sensitive (`openAI`, not `openai`)."""
    if not isinstance(given, str) or not allowed:
        return ""
    same = [a for a in allowed if a.lower() == given.lower()]
    close = same or difflib.get_close_matches(given, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _suggest(root: type[BaseModel], loc: tuple) -> str:
    """` (did you mean 'keys'?)` or ` (expected one of: ...)` for an unknown field."""
    model = _model_at(root, loc[:-1])
    if model is None:
        return ""
    known = [f.alias or name for name, f in model.model_fields.items()]
    close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (expected one of: {', '.join(known)})"


def _model_at(root: type[BaseModel], loc: Sequence[Any]) -> type[BaseModel] | None:
    current: Any = root
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
            if field is None:
                return None
            current = field.annotation
            continue
        origin, args = typing.get_origin(current), typing.get_args(current)
        if origin in (list, tuple) and isinstance(part, int) and args:
            current = args[0]
        elif origin is dict and len(args) == 2:
            current = args[1]
        else:
            return None
    current = _unwrap(current)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """Strip Annotated[...] and Optional[...]."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _unique(problems: list[Problem]) -> list[Problem]:
    return sorted(dict.fromkeys(problems), key=lambda p: p.line)
