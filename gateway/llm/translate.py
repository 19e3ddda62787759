"""OpenAI chat completions <-> Anthropic messages, for OpenAI clients of Anthropic upstreams.

Requests go OpenAI -> Anthropic; responses, stream events and errors come back
Anthropic -> OpenAI. Fields with no Anthropic counterpart (logprobs, seed, ...)
are dropped; ones that would change the answer's shape (`n` > 1) are refused.
"""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.llm.errors import stream_error
from gateway.llm.request import BadRequest, Dialect, LLMRequest, to_json
from gateway.llm.shape import loads
from gateway.llm.usage import Usage, openai_usage, read_anthropic

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often omit it
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter", "pause_turn": "stop"}
TOOL_CHOICES = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}


# ---- requests ---------------------------------------------------------------------

def anthropic_request(req: LLMRequest, model: str | None, cap: int | None) -> dict[str, Any]:
    """The Anthropic messages body for an OpenAI chat request."""
    body = req.body
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise BadRequest("'n' > 1 is not supported by an anthropic backend")
    system, messages = _messages(body["messages"])
    max_tokens = req.max_output_tokens or DEFAULT_MAX_TOKENS
    out: dict[str, Any] = {"model": model or req.model, "messages": messages,
                           "max_tokens": min(max_tokens, cap) if cap is not None else max_tokens}
    if system:
        out["system"] = system
    if req.stream:
        out["stream"] = True
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    temperature = body.get("temperature")
    if isinstance(temperature, (int, float)):
        out["temperature"] = min(float(temperature), 1.0)  # OpenAI's range is 0..2, Anthropic's 0..1
    if isinstance(body.get("top_p"), (int, float)):
        out["top_p"] = body["top_p"]
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    out.update(_tools(body))
    return out


def _messages(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """(system prompt, turns): system/developer turns join the system prompt, tool results
    become user turns, and consecutive turns of one role merge (Anthropic alternates)."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role in ("system", "developer"):
            system.append(_text(message.get("content"), i))
            continue
        if role == "tool":
            role, blocks = "user", [_tool_result(message)]
        elif role == "function":
            raise BadRequest(f"messages[{i}]: role 'function' cannot go to an anthropic backend; use 'tool'")
        else:
            blocks = _blocks(message.get("content"), i)
            if role == "assistant":
                blocks += [_tool_use(call, i) for call in message.get("tool_calls") or ()]
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += blocks
        else:
            turns.append({"role": role, "content": blocks})
    return "\n\n".join(s for s in system if s), turns


def _text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    parts = []
    for part in content:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise BadRequest(f"messages[{i}]: a system message may only hold text parts")
        parts.append(str(part.get("text", "")))
    return "".join(parts)


def _blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    blocks = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "refusal"):
            blocks.append({"type": "text", "text": str(part.get(kind) or "")})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), i))
        else:
            raise BadRequest(f"messages[{i}]: content part type {kind!r} cannot go to an anthropic backend")
    return blocks


def _image(image: Any, i: int) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str) or not url:
        raise BadRequest(f"messages[{i}]: image_url needs a url")
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64" or not data:
            raise BadRequest(f"messages[{i}]: an image data URL must be base64")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _tool_use(call: Any, i: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not function.get("name"):
        raise BadRequest(f"messages[{i}].tool_calls: each call needs function.name")
    arguments = loads(function.get("arguments") or "{}", f"messages[{i}].tool_calls: function.arguments")
    if not isinstance(arguments, dict):
        raise BadRequest(f"messages[{i}].tool_calls: function.arguments must be a JSON object")
    return {"type": "tool_use", "id": call.get("id") or "", "name": function["name"], "input": arguments}


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list):
        content = [{"type": "text", "text": str(p.get("text", ""))} for p in content if isinstance(p, dict)]
    return {"type": "tool_result", "tool_use_id": message.get("tool_call_id") or "", "content": content or ""}


def _tools(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        out["tools"] = [_tool(t) for t in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        out["tool_choice"] = dict(TOOL_CHOICES[choice])
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out["tool_choice"] = {"type": "tool", "name": choice["function"].get("name", "")}
    if body.get("parallel_tool_calls") is False and "tools" in out:
        out.setdefault("tool_choice", {"type": "auto"})["disable_parallel_tool_use"] = True
    return out


def _tool(tool: Any) -> dict[str, Any]:
    function = tool.get("function") if isinstance(tool, dict) else None
    if not isinstance(function, dict) or not function.get("name"):
        raise BadRequest("tools: each tool needs function.name")
    out = {"name": function["name"],
           "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


# ---- responses --------------------------------------------------------------------

def openai_completion(message: dict[str, Any], usage: Usage) -> dict[str, Any]:
    """The chat.completion for an Anthropic message; fills `usage` from it."""
    read_anthropic(message.get("usage"), usage)
    text, calls = [], []
    for block in message.get("content") or ():
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id"), "type": "function",
                          "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input", {}))}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    choice = {"index": 0, "message": reply, "logprobs": None,
              "finish_reason": FINISH_REASONS.get(message.get("stop_reason"), "stop")}
    return {"id": message.get("id"), "object": "chat.completion", "created": int(time.time()),
            "model": message.get("model"), "choices": [choice], "usage": openai_usage(usage)}


class StreamTranslator:
    """Turns Anthropic stream events into OpenAI chat.completion.chunk frames."""

    __slots__ = ("usage", "include_usage", "_id", "_model", "_created", "_tools", "_text_frame")

    def __init__(self, usage: Usage, include_usage: bool) -> None:
        self.usage = usage
        self.include_usage = include_usage
        self._id, self._model, self._created = "", "", int(time.time())
        self._tools: dict[int, int] = {}  # Anthropic block index -> OpenAI tool_calls index
        self._text_frame: tuple[bytes, bytes] | None = None

    def event(self, name: str | None, data: dict[str, Any]) -> bytes:
        kind = data.get("type", name)
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return self._text(delta.get("text", ""))
            if delta.get("type") == "input_json_delta" and data.get("index") in self._tools:
                call = {"index": self._tools[data["index"]], "function": {"arguments": delta.get("partial_json", "")}}
                return self._chunk({"tool_calls": [call]})
            return b""
        if kind == "message_start":
            message = data.get("message") or {}
            self._id, self._model = message.get("id", ""), message.get("model", "")
            read_anthropic(message.get("usage"), self.usage)
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            return self._block_start(data.get("index"), data.get("content_block") or {})
        if kind == "message_delta":
            read_anthropic(data.get("usage"), self.usage)
            reason = (data.get("delta") or {}).get("stop_reason")
            return self._chunk({}, FINISH_REASONS.get(reason, "stop")) if reason else b""
        if kind == "message_stop":
            tail = self._frame({"choices": [], "usage": openai_usage(self.usage)}) if self.include_usage else b""
            return tail + b"data: [DONE]\n\n"
        if kind == "error":  # the provider's text stays out: it may quote what it was sent
            return b"data: " + stream_error(Dialect.OPENAI, data.get("error")) + b"\n\n"
        return b""  # ping, content_block_stop, and event types newer than this code

    def _block_start(self, index: Any, block: dict[str, Any]) -> bytes:
        if block.get("type") == "tool_use":
            self._tools[index] = position = len(self._tools)
            call = {"index": position, "id": block.get("id"), "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""}}
            return self._chunk({"tool_calls": [call]})
        if block.get("type") == "text" and block.get("text"):
            return self._text(block["text"])
        return b""

    def _text(self, text: str) -> bytes:
        """A content delta chunk; text deltas are most of a stream, so their frame is
        encoded once and only the text is encoded per chunk."""
        if self._text_frame is None:
            head, _, tail = self._chunk({"content": ""}).partition(b'{"content":""}')
            self._text_frame = (head + b'{"content":', b"}" + tail)
        head, tail = self._text_frame
        return head + json.dumps(text).encode() + tail

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        return self._frame({"choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    def _frame(self, fields: dict[str, Any]) -> bytes:
        chunk = {"id": self._id, "object": "chat.completion.chunk", "created": self._created,
                 "model": self._model, **fields}
        return b"data: " + to_json(chunk) + b"\n\n"
