"""tollgate-mock-llm: a fake OpenAI- and Anthropic-compatible upstream.

Serves `POST /v1/chat/completions` and `POST /v1/messages` (JSON and SSE, with real
`usage`), `GET /v1/models` and `GET /healthz`. Usage and timing come from the
command line, and each request may override them with headers:
`x-mock-completion-tokens`, `x-mock-prompt-tokens`, `x-mock-chunks`,
`x-mock-delay-ms` (before the response starts), `x-mock-chunk-delay-ms` (between
stream chunks) and `x-mock-status` (answer with that error status instead).
OpenAI's `n` is honoured (n answers, usage summed); `--drop-after N` breaks every
stream off after N content pieces, as a provider whose connection drops would.

Errors can also be asked for through a gateway, which forwards no x-mock-* header: a
model named `mock-error-<status>` answers that status, and `mock-error-stream` streams
one chunk and then an error event. With `--echo-key` (or `x-mock-echo-key: 1`) every
error quotes the credential it was sent, as some providers' errors do: the leak the
gateway must not relay.

Prompt tokens are counted from the messages (words and punctuation marks plus
OpenAI's per-message framing); completion tokens are one word each, capped by the
request's max_tokens. The last 100 requests are kept for tests at
`GET /_mock/requests` as `{"requests": [{method, path, headers, body}]}` (the body
parsed when it is JSON); `DELETE` clears them; `--no-record` turns this off.
`GET /_mock/usage` totals what the mock billed: the usage it reported, and for a
dropped stream its prompt plus the words sent (`DELETE` resets it).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from gateway.errors import error_body
from gateway.llm.request import BadRequest, Dialect, LLMRequest, to_json
from gateway.llm.parse import parse_request
from gateway.llm.stream import DONE, frame
from gateway.llm.tokenize import count_prompt

JSON = "application/json"
SSE = "text/event-stream"
WORDS = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor "
         "incididunt ut labore et dolore magna aliqua").split()
WORD_OR_MARK = re.compile(r"\w+|[^\w\s]")
# A stream chunk that carries answer text (OpenAI's first chunk has an empty content).
TEXT_CHUNK = re.compile(rb'"content":"[^"]|"text_delta"')


@dataclass
class Settings:
    completion_tokens: int = 20
    chunks: int = 5
    delay_ms: int = 0
    chunk_delay_ms: int = 0
    require_key: str | None = None
    echo_key: bool = False
    record: bool = True
    drop_after: int | None = None  # content pieces a stream sends before its connection drops
    models: tuple[str, ...] = ("gpt-4o-mini", "gpt-3.5-turbo", "claude-sonnet-4-5")


@dataclass
class Plan:
    """What one request is answered with."""

    req: LLMRequest
    prompt_tokens: int
    completion_tokens: int
    truncated: bool  # capped by the request's max tokens
    chunks: int
    delay: float
    chunk_delay: float
    id: str
    created: int = field(default_factory=lambda: int(time.time()))
    choices: int = 1  # OpenAI's n: each answer is completion_tokens long

    @property
    def model(self) -> str:
        return self.req.model

    @property
    def billed_completion(self) -> int:
        return self.completion_tokens * self.choices

    def pieces(self) -> tuple[str, ...]:
        return completion_pieces(self.completion_tokens, self.chunks)

    def text(self) -> str:
        return "".join(self.pieces())


class MockError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


ERROR_MODEL = re.compile(r"mock-error-(\d{3})")
STREAM_ERROR_MODEL = "mock-error-stream"


def credential(request: Request) -> str:
    """The upstream key the request carried (Bearer or x-api-key)."""
    auth = request.headers.get("authorization", "")
    return auth.removeprefix("Bearer ") if auth else request.headers.get("x-api-key", "")


def echoed_error(dialect: Dialect, status: int, message: str, key: str) -> bytes:
    """An error that quotes the caller's key in its message, type, code and param."""
    body = json.loads(error_body(dialect, status, f"{message}; Incorrect API key provided: {key}"))
    body["error"].update({"param": key, "code": f"key_{key}"} if dialect == Dialect.OPENAI else {})
    return to_json(body)


def json_response(body: bytes, status: int = 200) -> Response:
    """A whole JSON body ending a line, as OpenAI's and Anthropic's APIs send them: a
    client that prints it (curl) starts its next line on a line of its own."""
    return Response(body + b"\n", status, media_type=JSON)


def honest_count(text: str) -> int:
    return len(WORD_OR_MARK.findall(text))


def overrides(request: Request) -> dict[str, int]:
    """The x-mock-* headers, read in one pass over the raw headers (most requests have none)."""
    found = {}
    for name, value in request.scope["headers"]:
        if name.startswith(b"x-mock-"):
            key = name.decode().lower()
            try:
                found[key] = int(value)
            except ValueError:
                raise MockError(400, f"header {key} must be an integer, not {value.decode()!r}") from None
    return found


@lru_cache(maxsize=256)
def completion_pieces(tokens: int, chunks: int) -> tuple[str, ...]:
    """The answer text, one word per token, split into at most `chunks` stream pieces."""
    words = [WORDS[i % len(WORDS)] for i in range(tokens)]
    size = max(1, -(-len(words) // max(1, chunks)))
    return tuple("".join((" " if i or start else "") + w for i, w in enumerate(words[start:start + size]))
                 for start in range(0, len(words), size))


class Mock:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.recorded: deque[dict] = deque(maxlen=100)
        self.billed = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0}
        self._ids = itertools.count(1)

    # ---- shared request handling ------------------------------------------------

    async def answer(self, request: Request, dialect: Dialect) -> Response:
        raw = await request.body()
        if self.settings.record:
            self.record(request, raw)
        echo = self.settings.echo_key or request.headers.get("x-mock-echo-key") == "1"
        try:
            plan = self.plan(request, dialect, raw)
        except MockError as e:
            body = (echoed_error(dialect, e.status, e.message, credential(request)) if echo
                    else error_body(dialect, e.status, e.message))
            return json_response(body, e.status)
        if plan.delay:
            await asyncio.sleep(plan.delay)
        if plan.req.stream:
            events = anthropic_events(plan) if dialect == Dialect.ANTHROPIC else openai_events(plan)
            if plan.model == STREAM_ERROR_MODEL:
                events = failing_events(events, dialect, credential(request) if echo else "")
            return StreamingResponse(self.billing(plan, events), media_type=SSE, headers={"cache-control": "no-cache"})
        self.bill(plan.prompt_tokens, plan.billed_completion)
        body = anthropic_message(plan) if dialect == Dialect.ANTHROPIC else openai_completion(plan)
        return json_response(to_json(body))

    def bill(self, prompt: int, completion: int) -> None:
        self.billed["prompt_tokens"] += prompt
        self.billed["completion_tokens"] += completion
        self.billed["requests"] += 1

    async def billing(self, plan: Plan, events: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The stream, billed once it ends; with --drop-after, broken off mid-way."""
        sent, pieces = 0, plan.pieces()
        async for chunk in events:
            if TEXT_CHUNK.search(chunk):
                if sent == self.settings.drop_after:
                    words = sum(honest_count(p) for p in pieces[:sent]) * plan.choices
                    self.bill(plan.prompt_tokens, words)
                    raise ConnectionAbortedError("mock: the connection drops mid-stream (--drop-after)")
                sent += 1
            yield chunk
        self.bill(plan.prompt_tokens, plan.billed_completion)

    def plan(self, request: Request, dialect: Dialect, raw: bytes) -> Plan:
        self.check_key(request, dialect)
        if dialect == Dialect.ANTHROPIC and not request.headers.get("anthropic-version"):
            raise MockError(400, "anthropic-version: header is required")
        try:
            req = parse_request(dialect, raw)
        except BadRequest as e:
            raise MockError(400, str(e)) from None
        if not req.model:
            raise MockError(400, "'model' is required")
        asked = overrides(request)
        named = ERROR_MODEL.fullmatch(req.model)
        status = asked.get("x-mock-status", int(named.group(1)) if named else 0)
        if status >= 400:
            raise MockError(status, f"mock upstream answered {status} as asked by x-mock-status")
        s = self.settings
        wanted = asked.get("x-mock-completion-tokens", s.completion_tokens)
        cap = req.max_output_tokens
        completion = min(wanted, cap) if cap is not None else wanted
        prompt = asked.get("x-mock-prompt-tokens", -1)
        return Plan(
            req=req, prompt_tokens=prompt if prompt >= 0 else count_prompt(req, honest_count),
            completion_tokens=max(0, completion), truncated=completion < wanted,
            chunks=asked.get("x-mock-chunks", s.chunks),
            delay=asked.get("x-mock-delay-ms", s.delay_ms) / 1000,
            chunk_delay=asked.get("x-mock-chunk-delay-ms", s.chunk_delay_ms) / 1000,
            id=f"mock-{next(self._ids)}", choices=req.choices,
        )

    def check_key(self, request: Request, dialect: Dialect) -> None:
        key = self.settings.require_key
        if key is None:
            return
        # Anthropic takes x-api-key, and its current SDK sends the key as a Bearer token.
        ok = request.headers.get("authorization") == f"Bearer {key}"
        if not ok and dialect == Dialect.ANTHROPIC:
            ok = request.headers.get("x-api-key") == key
        if not ok:
            raise MockError(401, "invalid API key for the mock upstream")

    def record(self, request: Request, raw: bytes) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        self.recorded.append({"method": request.method, "path": request.url.path,
                              "headers": dict(request.headers), "body": body})

    # ---- routes ---------------------------------------------------------------------

    async def chat(self, request: Request) -> Response:
        return await self.answer(request, Dialect.OPENAI)

    async def messages(self, request: Request) -> Response:
        return await self.answer(request, Dialect.ANTHROPIC)

    async def models(self, request: Request) -> Response:
        dialect = Dialect.ANTHROPIC if request.headers.get("anthropic-version") else Dialect.OPENAI
        if self.settings.record:
            self.record(request, b"")
        try:
            self.check_key(request, dialect)
        except MockError as e:
            return json_response(error_body(dialect, e.status, e.message), e.status)
        names = self.settings.models
        if dialect == Dialect.ANTHROPIC:
            data = [{"type": "model", "id": n, "display_name": n, "created_at": "2025-01-01T00:00:00Z"}
                    for n in names]
            body = {"data": data, "has_more": False, "first_id": names[0] if names else None,
                    "last_id": names[-1] if names else None}
        else:
            body = {"object": "list",
                    "data": [{"id": n, "object": "model", "created": 0, "owned_by": "mock"} for n in names]}
        return json_response(to_json(body))

    async def usage(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.billed = dict.fromkeys(self.billed, 0)
        return json_response(to_json(self.billed))

    async def requests(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.recorded.clear()
        return json_response(to_json({"requests": list(self.recorded)}))

    async def healthz(self, request: Request) -> Response:
        return json_response(b'{"status":"ok"}')


# ---- OpenAI bodies ----------------------------------------------------------------

def openai_usage(plan: Plan) -> dict:
    return {"prompt_tokens": plan.prompt_tokens, "completion_tokens": plan.billed_completion,
            "total_tokens": plan.prompt_tokens + plan.billed_completion}


def openai_completion(plan: Plan) -> dict:
    message = {"role": "assistant", "content": plan.text(), "refusal": None}
    finish = "length" if plan.truncated else "stop"
    choices = [{"index": i, "message": message, "logprobs": None, "finish_reason": finish}
               for i in range(plan.choices)]
    return {"id": f"chatcmpl-{plan.id}", "object": "chat.completion", "created": plan.created,
            "model": plan.model, "choices": choices, "usage": openai_usage(plan)}


async def openai_events(plan: Plan) -> AsyncIterator[bytes]:
    head = {"id": f"chatcmpl-{plan.id}", "object": "chat.completion.chunk", "created": plan.created,
            "model": plan.model}
    usage = plan.req.wants_usage
    if usage:
        head["usage"] = None  # as OpenAI does once include_usage is on

    def chunk(delta: dict, finish: str | None = None) -> bytes:
        choices = [{"index": i, "delta": delta, "logprobs": None, "finish_reason": finish} for i in range(plan.choices)]
        return frame(None, to_json({**head, "choices": choices}))

    yield chunk({"role": "assistant", "content": ""})
    for piece in plan.pieces():
        if plan.chunk_delay:
            await asyncio.sleep(plan.chunk_delay)
        yield chunk({"content": piece})
    yield chunk({}, "length" if plan.truncated else "stop")
    if usage:
        yield frame(None, to_json({**head, "choices": [], "usage": openai_usage(plan)}))
    yield DONE


# ---- Anthropic bodies -------------------------------------------------------------

def anthropic_message(plan: Plan) -> dict:
    return {"id": f"msg_{plan.id}", "type": "message", "role": "assistant", "model": plan.model,
            "content": [{"type": "text", "text": plan.text()}],
            "stop_reason": "max_tokens" if plan.truncated else "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": plan.completion_tokens}}


def event(data: dict) -> bytes:
    return frame(data["type"], to_json(data))


async def anthropic_events(plan: Plan) -> AsyncIterator[bytes]:
    start = {**anthropic_message(plan), "content": [], "stop_reason": None,
             "usage": {"input_tokens": plan.prompt_tokens, "output_tokens": 1}}
    yield event({"type": "message_start", "message": start})
    yield event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    yield event({"type": "ping"})
    for piece in plan.pieces():
        if plan.chunk_delay:
            await asyncio.sleep(plan.chunk_delay)
        yield event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}})
    yield event({"type": "content_block_stop", "index": 0})
    stop = "max_tokens" if plan.truncated else "end_turn"
    yield event({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                 "usage": {"output_tokens": plan.completion_tokens}})
    yield event({"type": "message_stop"})


async def failing_events(events: AsyncIterator[bytes], dialect: Dialect, key: str) -> AsyncIterator[bytes]:
    """The stream's first event, then an error event as the provider sends one mid-stream."""
    async for chunk in events:
        yield chunk
        break
    message = f"stream failed; Incorrect API key provided: {key}" if key else "stream failed"
    if dialect == Dialect.ANTHROPIC:
        yield event({"type": "error", "error": {"type": "overloaded_error", "message": message}})
    else:
        yield frame(None, to_json({"error": {"message": message, "type": "server_error", "param": key or None,
                                             "code": None}}))
        yield DONE


# ---- process ----------------------------------------------------------------------

def build_app(settings: Settings) -> Starlette:
    mock = Mock(settings)
    return Starlette(routes=[
        Route("/v1/chat/completions", mock.chat, methods=["POST"]),
        Route("/v1/messages", mock.messages, methods=["POST"]),
        Route("/v1/models", mock.models, methods=["GET"]),
        Route("/healthz", mock.healthz, methods=["GET"]),
        Route("/_mock/requests", mock.requests, methods=["GET", "DELETE"]),
        Route("/_mock/usage", mock.usage, methods=["GET", "DELETE"]),
    ])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="tollgate-mock-llm", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default=env("MOCK_LLM_HOST", "0.0.0.0"))
    p.add_argument("--port", type=int, default=int(env("MOCK_LLM_PORT", env("PORT", "8000"))))
    p.add_argument("--completion-tokens", type=int, default=int(env("MOCK_LLM_COMPLETION_TOKENS", "20")),
                   help="tokens (words) per answer, capped by the request's max tokens")
    p.add_argument("--chunks", type=int, default=int(env("MOCK_LLM_CHUNKS", "5")),
                   help="content chunks per streamed answer")
    p.add_argument("--delay-ms", type=int, default=int(env("MOCK_LLM_DELAY_MS", "0")),
                   help="wait before answering")
    p.add_argument("--chunk-delay-ms", type=int, default=int(env("MOCK_LLM_CHUNK_DELAY_MS", "0")),
                   help="wait between stream chunks")
    p.add_argument("--require-key", default=env("MOCK_LLM_REQUIRE_KEY"),
                   help="answer 401 unless the upstream key (Bearer or x-api-key) is this")
    p.add_argument("--echo-key", action="store_true", default=env("MOCK_LLM_ECHO_KEY") == "1",
                   help="quote the credential received in every error (a leaking provider)")
    p.add_argument("--models", default=env("MOCK_LLM_MODELS", ",".join(Settings.models)),
                   help="comma-separated names for GET /v1/models")
    p.add_argument("--ssl-certfile", default=env("MOCK_LLM_SSL_CERTFILE"), help="serve HTTPS with this certificate")
    p.add_argument("--ssl-keyfile", default=env("MOCK_LLM_SSL_KEYFILE"), help="and this key")
    p.add_argument("--no-record", action="store_true", default=env("MOCK_LLM_NO_RECORD") == "1",
                   help="do not keep requests for /_mock/requests (benchmarks)")
    p.add_argument("--drop-after", type=int, default=env("MOCK_LLM_DROP_AFTER"),
                   help="break every stream off after this many content pieces (a dropped connection)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    settings = Settings(
        completion_tokens=args.completion_tokens, chunks=args.chunks, delay_ms=args.delay_ms,
        chunk_delay_ms=args.chunk_delay_ms, require_key=args.require_key, echo_key=args.echo_key,
        record=not args.no_record,
        models=tuple(m for m in args.models.split(",") if m),
        drop_after=int(args.drop_after) if args.drop_after is not None else None,
    )
    uvicorn.run(build_app(settings), host=args.host, port=args.port, log_level="warning",
                access_log=False, lifespan="off", ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)


if __name__ == "__main__":
    main()
