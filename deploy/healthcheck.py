#!/usr/bin/env python3
"""Container healthcheck: exit 0 when an HTTP endpoint answers 200, else 1.

The slim image has no curl, so compose and the image's HEALTHCHECK call this with
the service's own endpoint (default: a gateway's readiness on the admin port).
Usage: tollgate-healthcheck [URL]   (or env TOLLGATE_HEALTHCHECK_URL)
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:15000/healthz/ready"


def check(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("TOLLGATE_HEALTHCHECK_URL", DEFAULT_URL)
    healthy = check(url)
    if not healthy:
        print(f"unhealthy: {url}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
