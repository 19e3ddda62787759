"""The LLM wire formats: parse a client's request, build the upstream call, adapt the answer.

Clients speak OpenAI chat completions or Anthropic messages (`Dialect`); backends
are `openAI` or `anthropic` providers. OpenAI clients may reach either provider
(translated for Anthropic); Anthropic clients reach Anthropic backends.
"""

from gateway.llm.adapter import (
    AnthropicRelay,
    AnthropicToOpenAI,
    OpenAIRelay,
    OpenAIUsageFilter,
    ResponseAdapter,
    response_adapter,
    translate_error,
)
from gateway.llm.request import BadRequest, Dialect, LLMRequest
from gateway.llm.outbound import UpstreamCall, build_upstream
from gateway.llm.parse import parse_request
from gateway.llm.tokenize import Unbounded, estimate_tokens, upper_bound_tokens
from gateway.llm.usage import Usage

__all__ = [
    "AnthropicRelay", "AnthropicToOpenAI", "BadRequest", "Dialect", "LLMRequest", "OpenAIRelay",
    "OpenAIUsageFilter", "ResponseAdapter", "Unbounded", "UpstreamCall", "Usage", "build_upstream",
    "estimate_tokens", "parse_request", "response_adapter", "translate_error", "upper_bound_tokens",
]
