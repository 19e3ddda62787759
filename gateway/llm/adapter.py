"""One upstream response on its way back to the client: relayed or translated, usage read.

`usage_known` turns true once the provider's final figures have been read (OpenAI's
usage chunk or body, Anthropic's `message_delta` or body). Before that, `usage` may
already hold partial figures (Anthropic's `message_start` gives the input tokens), so
a stream that ends early is still charged what the provider reported.

Events reach the client as soon as they are complete: relays hand complete events on
untouched and only parse the few events that carry usage or an error (an error event is
replaced by a sanitized one, llm/errors.py); everything holds back at most one partial
event, so no byte of an error event leaves before it can be replaced.
"""

from __future__ import annotations

import json
from typing import Any

from gateway.errors import error_body
from gateway.llm.errors import ERROR_MARK, sanitized_error, scrub_events
from gateway.llm.request import BadRequest, Dialect, LLMRequest, to_json
from gateway.llm.stream import EventBuffer, events, frame
from gateway.llm.tokenize import estimate_tokens, text_counter
from gateway.llm.translate import StreamTranslator, openai_completion
from gateway.llm.usage import Usage, read_anthropic, read_openai

# Byte markers of the events that carry usage; inside JSON strings quotes are escaped,
# so generated text cannot fake them.
OPENAI_USAGE = b'"prompt_tokens"'
ANTHROPIC_START = b'"message_start"'
ANTHROPIC_DELTA = b'"message_delta"'


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class ResponseAdapter:
    """Relays one response unchanged; subclasses read usage or translate."""

    __slots__ = ("req", "usage", "usage_known", "_buffer")
    UPSTREAM = "openAI"  # the provider whose events arrive

    def __init__(self, req: LLMRequest) -> None:
        self.req = req
        self.usage = Usage()
        self.usage_known = False
        self._buffer = EventBuffer()

    def convert(self, raw: bytes) -> bytes:
        """A complete 2xx non-streaming body, as the client should get it."""
        body = _json_object(raw)
        if body is not None:
            self._read_body(body)
        return raw

    def feed(self, chunk: bytes) -> bytes:
        """Stream bytes as they arrive; returns what to send the client now: the events
        completed so far (an error event must be whole to be replaced before any of its
        bytes leave)."""
        return self._relay(self._buffer.take(chunk))

    def finish(self) -> bytes:
        """The end of the upstream stream; returns any last bytes for the client."""
        return self._relay(self._buffer.rest())

    def _relay(self, complete: bytes) -> bytes:
        if not complete:
            return b""
        self._scan(complete)
        return scrub_events(self.req.dialect, complete) if ERROR_MARK in complete else complete

    def broken(self) -> bytes:
        """The upstream stream broke off: the error event that ends the client's stream.

        Without the provider's final figures, the usage becomes the prompt (as reported,
        else estimated) plus the output tokens already relayed, counted from their text.
        """
        if not self.usage_known:
            text = relayed_text(self._buffer.kept, self.UPSTREAM)
            self.usage.output_tokens = max(self.usage.output_tokens, text_counter(self.req.model)(text))
            if not self.usage.input_tokens:
                self.usage.input_tokens = estimate_tokens(self.req)
        body = error_body(self.req.dialect, 502, "the upstream provider's stream broke off before it ended")
        return frame("error" if self.req.dialect == Dialect.ANTHROPIC else None, body)

    def _read_body(self, body: dict[str, Any]) -> None:
        pass

    def _scan(self, complete: bytes) -> None:
        pass


def relayed_text(blocks: list[bytes], provider: str) -> str:
    """The generated text in these complete SSE blocks of an OpenAI or Anthropic stream."""
    out: list[str] = []
    for block in blocks:
        for _, _, data in events(block):
            event = _json_object(data) if data.startswith(b"{") else None
            if event is None:
                continue
            if provider == "anthropic":
                delta = event.get("delta")
                if isinstance(delta, dict):
                    out += [v for k in ("text", "partial_json", "thinking") if isinstance(v := delta.get(k), str)]
                continue
            for choice in event.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if not isinstance(delta, dict):
                    continue
                out += [v for k in ("content", "refusal") if isinstance(v := delta.get(k), str)]
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") if isinstance(call, dict) else None
                    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                        out.append(function["arguments"])
    return "".join(out)


class OpenAIRelay(ResponseAdapter):
    """OpenAI to an OpenAI client that asked for usage (or no stream): bytes pass through."""

    __slots__ = ()

    def _read_body(self, body: dict[str, Any]) -> None:
        self.usage_known = read_openai(body.get("usage"), self.usage)

    def _scan(self, complete: bytes) -> None:
        if OPENAI_USAGE not in complete:
            return
        for _, _, data in events(complete):
            if OPENAI_USAGE in data:
                self._usage_only(data)

    def _usage_only(self, data: bytes) -> bool:
        """Reads the usage of a chunk; True when the chunk carries nothing else.

        Some OpenAI-compatible servers report running usage on every chunk; only the
        usage-only chunk or a finishing chunk holds the final figures.
        """
        chunk = _json_object(data)
        if chunk is None or not read_openai(chunk.get("usage"), self.usage):
            return False
        choices = chunk.get("choices")
        if not choices or any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
            self.usage_known = True
        return not choices


class OpenAIUsageFilter(OpenAIRelay):
    """OpenAI stream whose client did not ask for usage: the gateway's usage chunk is dropped."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> bytes:
        return self._filter(self._buffer.take(chunk))

    def finish(self) -> bytes:
        return self._filter(self._buffer.rest())

    def _filter(self, complete: bytes) -> bytes:
        if ERROR_MARK in complete:
            complete = scrub_events(self.req.dialect, complete)
        if OPENAI_USAGE not in complete:
            return complete
        kept = [raw + b"\n\n" for _, raw, data in events(complete)
                if not (OPENAI_USAGE in data and self._usage_only(data))]
        return b"".join(kept)


class AnthropicRelay(ResponseAdapter):
    """Anthropic to an Anthropic client: bytes pass through, usage read from two events."""

    __slots__ = ()
    UPSTREAM = "anthropic"

    def _read_body(self, body: dict[str, Any]) -> None:
        self.usage_known = read_anthropic(body.get("usage"), self.usage)

    def _scan(self, complete: bytes) -> None:
        if ANTHROPIC_START not in complete and ANTHROPIC_DELTA not in complete:
            return
        for _, _, data in events(complete):
            if ANTHROPIC_DELTA in data:
                event = _json_object(data)
                if event is not None and read_anthropic(event.get("usage"), self.usage):
                    self.usage_known = True
            elif ANTHROPIC_START in data:
                event = _json_object(data)
                if event is not None and isinstance(event.get("message"), dict):
                    read_anthropic(event["message"].get("usage"), self.usage)


class AnthropicToOpenAI(ResponseAdapter):
    """Anthropic upstream, OpenAI client: bodies, events and errors are translated."""

    __slots__ = ("_translator",)
    UPSTREAM = "anthropic"

    def __init__(self, req: LLMRequest) -> None:
        super().__init__(req)
        self._translator = StreamTranslator(self.usage, req.wants_usage)

    def convert(self, raw: bytes) -> bytes:
        message = _json_object(raw)
        if message is None:
            return raw
        completion = openai_completion(message, self.usage)
        self.usage_known = isinstance(message.get("usage"), dict)
        return to_json(completion) + b"\n"  # ends a line, as OpenAI's own bodies do

    def feed(self, chunk: bytes) -> bytes:
        return self._translate(self._buffer.take(chunk))

    def finish(self) -> bytes:
        return self._translate(self._buffer.rest())

    def _translate(self, complete: bytes) -> bytes:
        if not complete:
            return b""
        out = []
        for name, _, data in events(complete):
            event = _json_object(data) if data else None
            if event is not None:
                out.append(self._translator.event(name, event))
                if event.get("type") == "message_delta" and isinstance(event.get("usage"), dict):
                    self.usage_known = True
        return b"".join(out)


def response_adapter(req: LLMRequest, provider: str) -> ResponseAdapter:
    """The adapter for one response from `provider` ("openAI" | "anthropic") to `req`'s client."""
    if provider == "anthropic":
        return AnthropicRelay(req) if req.dialect == Dialect.ANTHROPIC else AnthropicToOpenAI(req)
    if req.dialect == Dialect.ANTHROPIC:
        raise BadRequest(unsupported(provider))
    return OpenAIRelay(req) if req.wants_usage else OpenAIUsageFilter(req)


def unsupported(provider: str) -> str:
    return f"a /v1/messages (Anthropic) request cannot be sent to an {provider} backend"


def translate_error(req: LLMRequest, provider: str, status: int, raw: bytes) -> bytes:
    """An upstream's non-2xx body as the gateway's own error in the client's dialect: the
    upstream's status, and of its body only a known error type and code (llm/errors.py)."""
    return sanitized_error(req.dialect, status, raw)
