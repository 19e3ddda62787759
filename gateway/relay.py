"""The response side: the upstream's answer adapted for the client, its usage read on the way.

A `Relay` reads one upstream response and hands back what the client should get: the
whole body, or the stream piece by piece as it arrives. `usage` fills in as the provider
reports it and `usage_known` turns true with the final figures, so the caller can settle
the moment they are known, before the stream's last bytes reach the client.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from gateway.call import Call
from gateway.errors import GatewayError
from gateway.http1 import HTTPError, Response as UpstreamResponse
from gateway.llm import Usage, response_adapter, translate_error

log = logging.getLogger("tollgate.relay")


class Relay:
    __slots__ = ("call", "response", "adapter")

    def __init__(self, call: Call, response: UpstreamResponse) -> None:
        self.call = call
        self.response = response
        self.adapter = response_adapter(call.req, call.backend.provider)
        call.upstream_status = response.status

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def ok(self) -> bool:
        return self.response.status < 300

    @property
    def usage(self) -> Usage:
        return self.adapter.usage

    @property
    def usage_known(self) -> bool:
        return self.adapter.usage_known

    async def body(self) -> bytes:
        """The whole 2xx body as the client should get it; its usage is read."""
        try:
            raw = await self.response.read()
        except (HTTPError, TimeoutError) as e:
            status = 504 if isinstance(e, TimeoutError) else 502
            raise GatewayError(status, "upstream_broken", f"upstream response failed: {type(e).__name__}") from e
        finally:
            self.response.release()
        return self.adapter.convert(raw)

    async def stream(self) -> AsyncIterator[bytes]:
        """The 2xx stream as the client should get it, piece by piece. A stream the
        upstream breaks off ends with an error event in the client's dialect; its usage
        is then what was reported, or counted from what was relayed."""
        try:
            async for chunk in self.response.chunks():
                yield self.adapter.feed(chunk)
            yield self.adapter.finish()
        except (HTTPError, TimeoutError) as e:
            log.warning("upstream stream broke: %s", type(e).__name__)
            # The client already has its 200; the access log and metrics say what happened.
            self.call.reason = "upstream_broken"
            yield self.adapter.broken()
        finally:
            self.response.close()

    async def error(self) -> GatewayError:
        """A non-2xx answer, as the gateway's own error in the client's dialect.

        The upstream's body never reaches the client (llm/errors.py): it keeps the
        upstream's status with the gateway's message. A 401/403 from the provider is about
        the gateway's upstream key, not the client's virtual key: it becomes a 502 and is
        logged as an error naming the backend, since only an operator can fix it.
        """
        try:
            raw = await self.response.read()
        except (HTTPError, TimeoutError):
            raw = b""  # the status alone is passed on
        finally:
            self.response.release()
        status = self.response.status
        backend = self.call.backend
        if status in (401, 403):
            log.error("backend %r (%s) rejected the gateway's upstream credentials with HTTP %d; "
                      "check its apiKey / backendAuth", backend.name, backend.provider, status)
            return GatewayError(502, "upstream_auth", f"the upstream provider rejected the gateway's "
                                f"credentials (HTTP {status}); check the backend's apiKey")
        if not 400 <= status <= 599:  # a redirect or an unknown code is no answer a client can use
            return GatewayError(502, "upstream_error", f"upstream answered HTTP {status}")
        return GatewayError(status, "upstream_error", "", body=translate_error(
            self.call.req, backend.provider, status, raw))
