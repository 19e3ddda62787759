"""The baselines: bare passthroughs that forward the body to one upstream and return the answer.

No auth, no limits, no metrics, so the ratio against them is what Tollgate's own
work costs.

- default: FastAPI with an aiohttp session, what one would write by hand;
- `--lean`: plain ASGI with the gateway's own HTTP/1.1 client (gateway/http1.py), the
  same transport Tollgate uses, so its ratio isolates the policy work from the
  HTTP plumbing.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit

import aiohttp
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from gateway.http1 import Pool


def build(upstream: str) -> FastAPI:
    app = FastAPI()
    state: dict[str, aiohttp.ClientSession] = {}

    @app.on_event("startup")
    async def startup() -> None:
        state["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    @app.post("/v1/chat/completions")
    async def proxy(request: Request) -> Response:
        body = await request.body()
        async with state["session"].post(f"{upstream}/v1/chat/completions", data=body,
                                         headers={"content-type": "application/json"}) as r:
            return Response(await r.read(), status_code=r.status, media_type="application/json")

    return app


def build_lean(upstream: str):
    parts = urlsplit(upstream)
    pool = Pool(parts.hostname, parts.port or 80)
    headers = b"content-type: application/json\r\n"

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        body = message.get("body", b"")
        while message.get("more_body"):
            message = await receive()
            body += message.get("body", b"")
        status, answer = await pool.post("/v1/chat/completions", body, headers)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", b"%d" % len(answer))]})
        await send({"type": "http.response.body", "body": answer})

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--lean", action="store_true")
    args = parser.parse_args()
    app = build_lean(args.upstream) if args.lean else build(args.upstream)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                lifespan="off" if args.lean else "auto", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
