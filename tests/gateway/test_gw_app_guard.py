"""The LLM listener's last line: a bug becomes a logged 500 in the client's error shape."""

import logging

import httpx

from gateway.app import Handler, LLMApp
from gateway.config import load
from gateway.replica import Replica


class Broken(Handler):
    async def serve(self, call, kind, receive, reply):
        raise RuntimeError("a bug on the request path")


async def test_an_unhandled_error_is_a_500_json_error_and_is_logged(caplog, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("llm: {models: [{name: '*', provider: openAI}]}\n")
    replica = Replica(load(path))
    app = LLMApp(Broken(replica, 4000))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
        with caplog.at_level(logging.ERROR, logger="tollgate.app"):
            r = await client.post("/v1/chat/completions", json={})
            anthropic = await client.post("/v1/messages", json={})
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "internal gateway error"
    assert anthropic.status_code == 500 and anthropic.json()["type"] == "error"
    assert "a bug on the request path" not in r.text  # the traceback stays in the log
    assert "a bug on the request path" in caplog.text
    assert b'tollgate_requests_total{reason="internal_error",status="500"} 2.0' in replica.metrics.render()
