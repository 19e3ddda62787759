"""Config lookups remembered per config: a reload starts afresh, and the memo stays bounded."""

from ratelimit_service import service as service_module
from ratelimit_service.config import load_texts
from ratelimit_service.limiter import Limiter, MemoryBackend
from ratelimit_service.protocol import RESERVE, parse_document
from ratelimit_service.service import Service
from ratelimit_service.stats import Stats


def config(limit: int, algorithm: str = "token_bucket"):
    text = (f"domain: d\ndescriptors:\n  - key: user_id\n"
            f"    rate_limit: {{unit: hour, requests_per_unit: {limit}, algorithm: {algorithm}}}\n")
    return load_texts([("d.yaml", text)])


def request(user: str):
    entries = [{"key": "user_id", "value": user}]
    return parse_document({"domain": "d", "id": "r1", "descriptors": [{"entries": entries}]}, RESERVE)


def test_a_new_config_is_matched_afresh():
    stats = Stats()
    svc = Service(config(10), Limiter(MemoryBackend()), stats)
    [check] = svc.plan(RESERVE, request("mike")).call.checks
    assert (check.capacity, check.key) == (10, "tollgate:rl:tb:d:user_id=mike")
    svc.config = config(50, "fixed_window")  # what a reload does
    [check] = svc.plan(RESERVE, request("mike")).call.checks
    assert (check.capacity, check.algorithm, check.key) == (50, "fw", "tollgate:rl:fw:d:user_id=mike")
    stats.shutdown()


def test_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(service_module, "MEMO_SIZE", 100)
    stats = Stats()
    svc = Service(config(10), Limiter(MemoryBackend()), stats)
    for i in range(250):
        [check] = svc.plan(RESERVE, request(f"user{i}")).call.checks
        assert check.key == f"tollgate:rl:tb:d:user_id=user{i}"
        assert len(svc.config.memo) <= 100
    stats.shutdown()
