"""CEL expressions for policies and metric labels: compiled and checked once at config load.

Variables (agentgateway's names): `apiKey.*` (the key's metadata, flattened),
`request.{method, path, headers}`, `llm.{requestModel, inputTokens, outputTokens,
cachedInputTokens, totalTokens, cost}` (token counts and the cost in USD once the
provider reported usage). An expression naming any other variable, or a field of
`request` or `llm` that does not exist, is refused at load: a typo such as `apikey.user_id`
would otherwise make a condition false, or a budget's value fail, on every request.

celpy's `CompiledRunner` transpiles an expression to a Python code object. Its own
`evaluate` deep-copies a name table and re-resolves every variable through typing casts
on each call (~35 us for `apiKey.user_id == 'mike'`). We run the same code object
against one light activation per request that every expression shares (~8 us).
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.evaluation import Activation as _CelActivation
from celpy.evaluation import CELEvalError

__all__ = ["Activation", "CelError", "Expr", "compile_expr", "to_cel", "to_python"]

# celpy logs every failed evaluation at ERROR; for us a failing expression is an
# ordinary outcome (a key without `user_id` makes a condition false), reported as CelError.
logging.getLogger("celpy").setLevel(logging.CRITICAL)

_ENV = celpy.Environment(runner_class=celpy.CompiledRunner)
# celpy 0.5.0's transpiled has() yields a Python bool, which its own `? :` and `!` refuse
# ("no such overload"): an expression using has() runs on the interpreter instead, which
# is correct and costs ~180 us where the compiled code costs ~8 us.
_INTERPRETER = celpy.Environment(runner_class=celpy.InterpretedRunner)
# Type names (google.protobuf.*) that celpy resolves through the environment.
_BASE = _CelActivation(annotations=_ENV.annotations)
# The transpiled code reads `base_activation` from, and writes `CEL` to, this namespace.
_GLOBALS = celpy.evaluation.result.__globals__
_EMPTY = celtypes.MapType()


class CelError(Exception):
    """A CEL expression that does not compile or does not evaluate."""


class Activation:
    """The variables of one request; build it once and evaluate every expression with it.

    Each top-level variable is converted to CEL values on first use only: most requests
    never evaluate anything that reads `request.headers`.
    """

    __slots__ = ("api_key", "method", "path", "headers", "llm", "response", "_values", "_cel")

    def __init__(
        self,
        api_key: Mapping[str, Any] | None = None,
        method: str = "",
        path: str = "",
        headers: Mapping[str, str] | None = None,
        llm: Mapping[str, Any] | None = None,
    ) -> None:
        self.api_key = api_key
        self.method = method
        self.path = path
        self.headers = headers
        self.llm = llm
        self.response: Mapping[str, Any] | None = None
        self._values: dict[str, Any] = {}
        self._cel: _Variables | None = None

    def update_llm(self, **values: Any) -> None:
        """Adds `llm.*` values (token counts once usage is known): later evaluations see them."""
        self.llm = {**(self.llm or {}), **values}
        self._values.pop("llm", None)
        self._cel = None  # its macro name table may hold the old values

    def update_response(self, **values: Any) -> None:
        """Sets `response.*` (the access log's `response.code`) once the answer is known."""
        self.response = {**(self.response or {}), **values}
        self._values.pop("response", None)
        self._cel = None

    def value(self, name: str) -> Any:
        """The CEL value of a top-level variable; KeyError for an unknown name."""
        try:
            return self._values[name]
        except KeyError:
            value = self._values[name] = _CONVERTERS[name](self)
            return value

    def cel(self) -> "_Variables":
        if self._cel is None:
            self._cel = _Variables(self)
        return self._cel


class _Variables(_CelActivation):
    """celpy activation that answers top-level names from an `Activation`.

    The transpiled code reads `activation.apiKey`; the base class resolves that through
    its name table on every access. Macros (`exists`, `map`) nest activations that
    search that table, so it is filled only when a macro asks for it.
    """

    def __init__(self, activation: Activation) -> None:
        self._activation = activation
        self._loaded = False
        super().__init__(based_on=_BASE)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_activation"].value(name)
        except KeyError:
            return super().__getattr__(name)

    get = __getattr__

    def nested_activation(self, annotations=None, vars=None):  # noqa: A002 (celpy's name)
        if not self._loaded:
            self.identifiers.load_values({name: self._activation.value(name) for name in _CONVERTERS})
            self._loaded = True
        return super().nested_activation(annotations, vars)


# The variables an expression may name, with the fields each has (None: any field).
VARIABLES: dict[str, frozenset[str] | None] = {
    "apiKey": None,
    "request": frozenset({"method", "path", "headers"}),
    "llm": frozenset({"requestModel", "inputTokens", "outputTokens", "cachedInputTokens", "totalTokens", "cost"}),
    # Known once the answer is: the access log's fields and filter. Elsewhere it is
    # empty, so a budget condition reading it evaluates as an error (false).
    "response": frozenset({"code"}),
}
_TYPE_NAMES = frozenset({"int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type",
                         "dyn"})
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})


class Expr:
    """A compiled CEL expression; `api_key_fields` are the metadata fields it reads."""

    __slots__ = ("source", "_code", "_interpreted", "api_key_fields")

    def __init__(self, source: str, code: Any, api_key_fields: frozenset[str] = frozenset(),
                 interpreted: Any = None) -> None:
        self.source = source
        self._code = code
        self._interpreted = interpreted  # a celpy program, for what the transpiler gets wrong
        self.api_key_fields = api_key_fields

    def __repr__(self) -> str:
        return f"Expr({self.source!r})"

    def evaluate(self, activation: Activation) -> Any:
        """The value as plain Python (str, int, float, bool, list, dict, None).

        Like celpy's own runner, this passes the activation through celpy's module
        namespace: evaluate on one thread (the event loop), not from worker threads.
        """
        try:
            if self._interpreted is not None:
                value = self._interpreted.evaluate({name: activation.value(name) for name in _CONVERTERS})
            else:
                _GLOBALS["base_activation"] = activation.cel()
                exec(self._code, _GLOBALS)
                value = _GLOBALS["CEL"]
        except CELEvalError as e:
            value = e
        except Exception as e:  # celpy lets some Python errors through its own wrapper
            raise CelError(f"{self.source}: {e}") from e
        if isinstance(value, CELEvalError):
            raise CelError(f"{self.source}: {_eval_reason(value)}")
        return to_python(value)

    def test(self, activation: Activation) -> bool:
        """For conditions: an error or a non-bool result counts as false."""
        try:
            return self.evaluate(activation) is True
        except CelError:
            return False


@lru_cache(maxsize=4096)
def compile_expr(source: str) -> Expr:
    """Parse, check the names it uses, and transpile, once per distinct source (reloads
    reuse it); raises CelError naming the column of a syntax error or an unknown name."""
    if not isinstance(source, str) or not source.strip():
        raise CelError("empty CEL expression")
    try:
        tree = _ENV.compile(source)
        api_key_fields = _check_names(source, tree)
        runner = _ENV.program(tree)
    except celpy.CELParseError as e:
        raise CelError(f"invalid CEL expression {source!r}: {_syntax_hint(source, e.column)}") from None
    except CelError:
        raise
    except Exception as e:  # the transpiler rejects some well-formed trees (bad macro arguments)
        raise CelError(f"invalid CEL expression {source!r}: {e}") from None
    if any(t.data == "ident_arg" and str(t.children[0]) == "has" for t in tree.iter_subtrees()):
        interpreted = _INTERPRETER.program(_INTERPRETER.compile(source))
        return Expr(source, None, api_key_fields, interpreted)
    return Expr(source, runner.tp.executable_code, api_key_fields)


def _syntax_hint(source: str, column: int | None) -> str:
    """The parser's column, and what is wrong there when a person would see it at once:
    a string never closed, brackets that do not pair."""
    unclosed = _unclosed_quote(source)
    if unclosed is not None:
        return f"the string starting at column {unclosed + 1} is never closed"
    depth = 0
    for ch in source:
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(ch, 0)
        if depth < 0:
            break
    if depth:
        return f"syntax error at column {column}: brackets do not pair"
    return f"syntax error at column {column}"


def _unclosed_quote(source: str) -> int | None:
    """The 0-based index of a quote that opens a string never closed, if any."""
    quote, start, i = None, 0, 0
    while i < len(source):
        ch = source[i]
        if quote is None and ch in "'\"":
            quote, start = ch, i
        elif quote is not None and ch == "\\":
            i += 1  # an escaped character inside a string
        elif ch == quote:
            quote = None
        i += 1
    return start if quote is not None else None


def _check_names(source: str, tree: Any) -> frozenset[str]:
    """Refuses unknown variables and unknown fields of `request` and `llm`; returns the
    `apiKey` fields read (`apiKey.team`, `apiKey['team']`)."""
    bound = {_first_ident(t.children[2].children[0]) for t in tree.iter_subtrees()
             if t.data == "member_dot_arg" and str(t.children[1]) in _MACROS}
    fields: set[str] = set()
    for node in tree.iter_subtrees():
        if node.data == "ident":
            name = node.children[0]
            if name not in VARIABLES and name not in bound and name not in _TYPE_NAMES:
                raise CelError(f"invalid CEL expression {source!r}: unknown variable '{name}' at column "
                               f"{name.column}{_did_you_mean(name, VARIABLES)}; variables: {', '.join(VARIABLES)}")
        elif node.data in ("member_dot", "member_index"):
            root = _first_ident(node.children[0], only_member=True)
            field = node.children[1] if node.data == "member_dot" else _string_literal(node.children[1])
            if root is None or field is None:
                continue
            known = VARIABLES.get(root, ())
            if root == "apiKey":
                fields.add(str(field))
            elif known and field not in known:
                raise CelError(f"invalid CEL expression {source!r}: {root} has no field '{field}'"
                               f"{_did_you_mean(field, known)}; fields: {', '.join(sorted(known))}")
    return frozenset(fields)


def _first_ident(tree: Any, only_member: bool = False) -> str | None:
    """The identifier `tree` is made of; with `only_member`, only a bare `name` chain."""
    while hasattr(tree, "data"):
        if tree.data == "ident":
            return str(tree.children[0])
        if only_member and (tree.data not in ("member", "primary") or len(tree.children) != 1):
            return None
        tree = tree.children[0]
    return None


def _string_literal(tree: Any) -> str | None:
    literal = next((t for t in tree.iter_subtrees() if t.data == "literal"), None) if hasattr(tree, "data") else None
    text = str(literal.children[0]) if literal is not None else ""
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"" else None


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(str(name), list(known), n=1, cutoff=0.6) or [
        k for k in known if k.lower() == str(name).lower()]
    return f" (did you mean '{close[0]}'?)" if close else ""


def to_cel(value: Any) -> Any:
    """Plain Python (JSON-like) to celtypes."""
    return celpy.json_to_cel(value)


def to_python(value: Any) -> Any:
    if isinstance(value, celtypes.BoolType):
        return bool(value)
    if isinstance(value, (celtypes.IntType, celtypes.UintType)):
        return int(value)
    if isinstance(value, celtypes.DoubleType):
        return float(value)
    if isinstance(value, celtypes.StringType):
        return str(value)
    if isinstance(value, celtypes.BytesType):
        return bytes(value)
    if isinstance(value, celtypes.ListType):
        return [to_python(v) for v in value]
    if isinstance(value, celtypes.MapType):
        return {to_python(k): to_python(v) for k, v in value.items()}
    return value


def _metadata(a: Activation) -> Any:
    api_key = a.api_key
    if not api_key:
        return _EMPTY
    cached = getattr(api_key, "cel", None)  # auth.Metadata converts once at load
    return cached if cached is not None else to_cel(dict(api_key))


def _request(a: Activation) -> celtypes.MapType:
    S = celtypes.StringType
    return celtypes.MapType({S("method"): S(a.method), S("path"): S(a.path), S("headers"): _headers(a.headers)})


def _headers(headers: Mapping[str, str] | None) -> celtypes.MapType:
    if not headers:
        return _EMPTY
    S = celtypes.StringType
    return celtypes.MapType({S(k.lower()): S(v) for k, v in headers.items()})


def _llm(a: Activation) -> Any:
    return to_cel(dict(a.llm)) if a.llm else _EMPTY


def _response(a: Activation) -> Any:
    return to_cel(dict(a.response)) if a.response else _EMPTY


_CONVERTERS = {"apiKey": _metadata, "request": _request, "llm": _llm, "response": _response}


def _eval_reason(error: CELEvalError) -> str:
    # celpy's args: (message, Python exception type, that exception's args).
    if not error.args:
        return "evaluation error"
    message = str(error.args[0])
    detail = error.args[2] if len(error.args) == 3 else ()
    if detail and str(detail[0]) not in message:
        message = f"{message}: {detail[0]}"
    return message
