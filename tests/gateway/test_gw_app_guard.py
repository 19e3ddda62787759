"""The LLM listener's last line: a bug becomes a logged 500 in the OpenAI error shape."""

import logging
from types import SimpleNamespace

import httpx

from gateway.app import Handler, LLMApp
from gateway.metrics import Metrics


class Broken(Handler):
    async def handle(self, request):
        raise RuntimeError("a bug on the request path")


async def test_an_unhandled_error_is_a_500_json_error_and_is_logged(caplog):
    metrics = Metrics()
    app = LLMApp(Broken(SimpleNamespace(metrics=metrics), 4000))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        with caplog.at_level(logging.ERROR, logger="tollgate.app"):
            r = await client.post("/v1/chat/completions", json={})
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "internal gateway error"
    assert "a bug on the request path" not in r.text  # the traceback stays in the log
    assert "a bug on the request path" in caplog.text
    assert b'tollgate_requests_total{reason="internal_error",status="500"} 1.0' in metrics.render()
