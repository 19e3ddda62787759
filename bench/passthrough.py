"""The baseline: a bare FastAPI passthrough with the gateway's upstream client.

It forwards the body to one upstream and returns the answer: no auth, no limits, no
metrics, so the ratio against it is what Tollgate's own work costs.
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    uvicorn.run(build(args.upstream), host="127.0.0.1", port=args.port, loop="uvloop",
                http="httptools", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
