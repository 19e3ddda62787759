import signal
import sys

import pytest

from tests.harness.procs import start_redis

# A run stopped by SIGTERM (a CI timeout) exits through atexit, which reaps the servers.
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


@pytest.fixture(scope="session")
def redis_url():
    """One real redis-server for the session; tests use distinct keys or flush."""
    proc, url = start_redis()
    yield url
    proc.stop()
