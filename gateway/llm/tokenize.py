"""Prompt token estimates made before a request is sent (`tokenize: true`).

The count follows OpenAI's chat formula: every message costs 3 tokens of framing
plus its role, its text and its name (+1 for having one), and the reply is primed
with 3 more. Anthropic's top-level `system` counts as one more message.

Text tokens come from tiktoken when the model's encoding file is already in
tiktoken's local cache ($TIKTOKEN_CACHE_DIR, $DATA_GYM_CACHE_DIR or
<tmp>/data-gym-cache) and matches its published checksum. tiktoken downloads a
missing file from the internet, so it is never asked for one that is not there.
Without the file (and for models tiktoken does not know, such as Claude's), text
costs one token per 3 bytes of UTF-8, rounded up: English averages about 4
characters per token, so this over-estimates prose by about a third and stays
close for code and CJK text.

Images cost a flat 765 tokens (85 with `detail: low`); URLs and base64 payloads are
not text. Tool definitions cost the tokens of their JSON.

`upper_bound_tokens` is the most a prompt can cost, for budgets that must never be
overrun: byte-level BPE tokenizers (OpenAI's and Anthropic's) never make more
tokens than the text has UTF-8 bytes, so every text the provider may read counts its
bytes: messages, tool and function definitions, response_format schemas, and any field
this code does not know (an over-estimate, never an under-estimate). Images count
4,096 each whatever their `detail` (the most billed per image among current models is
gpt-4.1-nano's 1,536 patches x 2.46 = 3,779), tools add 400 for the tool-use system
prompt Anthropic inserts, and every request adds 10 of slack. Content the bound cannot
cover (audio, files, PDF documents) raises Unbounded: a hard budget refuses it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from gateway.llm.request import Dialect, LLMRequest

log = logging.getLogger("tollgate.tokenize")

PER_MESSAGE = 3
PER_ROLE = 1  # every role name is a single token in OpenAI's encodings
PER_NAME = 1
REPLY_PRIMING = 3
IMAGE_TOKENS = 765
IMAGE_TOKENS_LOW = 85
IMAGE_TOKENS_MAX = 4096
TOOLS_PROMPT_MAX = 400
BOUND_SLACK = 10
IMAGE_TYPES = frozenset({"image_url", "image", "input_image"})
PAYLOAD_KEYS = frozenset({"data", "url", "type", "id", "tool_use_id", "cache_control"})
# Content parts the bound covers; any other type (input_audio, file, document, ...) is Unbounded.
BOUNDED_PARTS = IMAGE_TYPES | {"text", "refusal", "tool_use", "tool_result", "thinking", "redacted_thinking"}
# Request fields that never become prompt tokens; every other field counts in the bound.
NOT_PROMPT = frozenset({
    "model", "messages", "system", "tools", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n",
    "temperature", "top_p", "top_k", "seed", "user", "metadata", "logprobs", "top_logprobs", "presence_penalty",
    "frequency_penalty", "logit_bias", "parallel_tool_calls", "store", "service_tier", "stop", "stop_sequences",
    "reasoning_effort", "modalities", "thinking",
})

BLOBS = "https://openaipublic.blob.core.windows.net/encodings/"
# Encoding -> sha256 of its file, as tiktoken checks it.
ENCODINGS = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}

TextCounter = Callable[[str], int]


def utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def approx_tokens(text: str) -> int:
    """One token per 3 UTF-8 bytes, rounded up (see the module docstring)."""
    return (utf8_size(text) + 2) // 3


def estimate_tokens(req: LLMRequest) -> int:
    """The prompt tokens `req` will cost, erring high when tiktoken cannot be used."""
    return count_prompt(req, text_counter(req.model))


class Unbounded(ValueError):
    """The prompt holds content whose token cost cannot be bounded before the call."""


def upper_bound_tokens(req: LLMRequest) -> int:
    """The most prompt tokens `req` can cost on any OpenAI or Anthropic model; raises
    Unbounded naming the content it cannot bound."""
    body = req.body
    tools = TOOLS_PROMPT_MAX if body.get("tools") or body.get("functions") else 0
    extra = {k: v for k, v in body.items() if k not in NOT_PROMPT}
    extra_bytes = utf8_size(json.dumps(extra, separators=(",", ":"))) if extra else 0
    return count_prompt(req, utf8_size, IMAGE_TOKENS_MAX, bound=True) + extra_bytes + tools + BOUND_SLACK


def count_prompt(req: LLMRequest, text_tokens: TextCounter, image_tokens: int = IMAGE_TOKENS,
                 bound: bool = False) -> int:
    """OpenAI's chat formula over `req`, with `text_tokens` counting each text. With
    `bound`, every image costs `image_tokens` whatever its detail, and content of an
    unknown type raises Unbounded."""
    def tokens(value: Any) -> int:
        if isinstance(value, str):
            return text_tokens(value)
        if isinstance(value, list):
            return sum(tokens(item) for item in value)
        if not isinstance(value, dict):
            return 0
        kind = value.get("type")
        if kind in IMAGE_TYPES:
            image = value.get("image_url")
            low = not bound and isinstance(image, dict) and image.get("detail") == "low"
            return IMAGE_TOKENS_LOW if low else image_tokens
        if bound and isinstance(kind, str) and kind not in BOUNDED_PARTS:
            raise Unbounded(f"content of type {kind!r} cannot be bounded in tokens before the call")
        return sum(tokens(item) for key, item in value.items() if key not in PAYLOAD_KEYS)

    body = req.body
    total = REPLY_PRIMING
    if req.dialect == Dialect.ANTHROPIC and body.get("system"):
        total += PER_MESSAGE + PER_ROLE + tokens(body["system"])
    for message in body["messages"]:
        total += PER_MESSAGE + PER_ROLE + tokens(message.get("content"))
        name = message.get("name")
        if isinstance(name, str):
            total += PER_NAME + text_tokens(name)
        if req.dialect == Dialect.OPENAI:  # an OpenAI field, checked at parse: a list of objects
            for call in message.get("tool_calls") or ():
                total += tokens(call)
    if body.get("tools"):
        total += text_tokens(json.dumps(body["tools"], separators=(",", ":")))
    return total


@lru_cache(maxsize=128)
def text_counter(model: str) -> TextCounter:
    """tiktoken's count for `model` when its encoding is cached locally, else the approximation."""
    name = _encoding_name(model)
    encoding = _load_cached(name) if name else None
    if encoding is None:
        return approx_tokens
    encode = encoding.encode_ordinary
    return lambda text: len(encode(text))


def cache_file(name: str) -> Path | None:
    """Where tiktoken keeps encoding `name`; None when its cache is disabled."""
    directory = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    if directory is None:
        directory = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not directory:
        return None
    return Path(directory) / hashlib.sha1(f"{BLOBS}{name}.tiktoken".encode()).hexdigest()


def _encoding_name(model: str) -> str | None:
    if not model or not any(cache_file(n) and cache_file(n).exists() for n in ENCODINGS):
        return None  # nothing cached: skip importing tiktoken at all
    from tiktoken.model import encoding_name_for_model
    try:
        name = encoding_name_for_model(model)
    except KeyError:
        return None
    return name if name in ENCODINGS else None


@lru_cache(maxsize=None)
def _load_cached(name: str) -> Any:
    path = cache_file(name)
    try:
        data = path.read_bytes() if path else b""
    except OSError:
        return None
    if hashlib.sha256(data).hexdigest() != ENCODINGS[name]:
        log.warning("tiktoken cache file for %s at %s is missing or corrupt; estimating from characters",
                    name, path)
        return None
    import tiktoken  # a verified cache file means tiktoken will not touch the network
    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # noqa: BLE001 - a broken install must not fail requests
        log.warning("tiktoken could not load %s (%s); estimating from characters", name, e)
        return None
