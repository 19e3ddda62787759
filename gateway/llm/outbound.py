"""The call to send upstream: path, body and headers for the backend's provider."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.llm import anthropic, openai
from gateway.llm.adapter import unsupported
from gateway.llm.request import BadRequest, Dialect, LLMRequest, to_json
from gateway.llm.translate import anthropic_request

PROVIDERS = ("openAI", "anthropic")


@dataclass(frozen=True, slots=True)
class UpstreamCall:
    path: str  # relative to the backend's base URL
    body: bytes
    # content-type and the upstream credential; of the client's headers only
    # anthropic-version and anthropic-beta, so its own credential never goes upstream
    headers: dict[str, str]


def build_upstream(req: LLMRequest, provider: str, model: str | None, api_key: str | None,
                   max_tokens: int | None = None,
                   client_headers: Mapping[str, str] | None = None) -> UpstreamCall:
    """The upstream request for `req` on a `provider` backend.

    `model` (the backend's configured model) replaces the client's; `max_tokens`
    caps the output (a client asking for less keeps its own figure). Raises
    `BadRequest` when no model is known or the dialect cannot reach the provider.
    """
    if provider not in PROVIDERS:
        raise ValueError(f"unknown provider {provider!r}")
    if not (model or req.model):
        raise BadRequest("'model' is required (the backend configures none)")
    if provider == "anthropic":
        if req.dialect == Dialect.ANTHROPIC:
            body = anthropic.upstream_body(req, model, max_tokens)
        else:
            body = to_json(anthropic_request(req, model, max_tokens))
        return UpstreamCall(anthropic.PATH, body, anthropic.headers(api_key, client_headers))
    if req.dialect == Dialect.ANTHROPIC:
        raise BadRequest(unsupported(provider))
    headers = {"content-type": "application/json"}
    if api_key:
        headers["authorization"] = "Bearer " + api_key
    return UpstreamCall(openai.PATH, openai.upstream_body(req, model, max_tokens), headers)


MODELS_PATH = "/v1/models"


def models_headers(provider: str, api_key: str | None) -> dict[str, str]:
    """The headers of a provider's model list request: its credential (and Anthropic's version)."""
    if provider == "anthropic":
        out = anthropic.headers(api_key, None)
        out.pop("content-type", None)
        return out
    return {"authorization": "Bearer " + api_key} if api_key else {}
