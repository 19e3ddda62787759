"""Drives HTTP load with wrk and parses its summary (requests/s, p50, p99)."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

LUA = """
wrk.method = "POST"
wrk.body = [[{body}]]
{headers}
"""

# Each request takes the next bearer key in turn: many users, as in production.
ROTATE = """
local keys = {{{keys}}}
local i = 0
request = function()
  i = i + 1
  wrk.headers["Authorization"] = "Bearer " .. keys[(i % #keys) + 1]
  return wrk.format()
end
"""


@dataclass(frozen=True)
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int

    def row(self, name: str) -> str:
        return f"{name:<28} {self.rps:>9.0f} rps   p50 {self.p50_ms:6.2f} ms   p99 {self.p99_ms:7.2f} ms   errors {self.errors}"


def median(results: list[Result]) -> Result:
    return Result(statistics.median(r.rps for r in results), statistics.median(r.p50_ms for r in results),
                  statistics.median(r.p99_ms for r in results), sum(r.errors for r in results))


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse(out: str) -> Result:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = {m.group(1): _ms(m.group(2), m.group(3))
           for m in re.finditer(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    errors = 0
    for m in re.finditer(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    return Result(rps, pct["50"], pct["99"], errors)


def run(url: str, body: str, headers: dict[str, str], connections: int, seconds: float, threads: int = 1,
        bearer_keys: list[str] | None = None) -> Result:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    header_lines = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA.format(body=body, headers=header_lines))
        if bearer_keys:
            f.write(ROTATE.format(keys=", ".join(f'"{k}"' for k in bearer_keys)))
        script = Path(f.name)
    try:
        out = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--latency",
             "-s", str(script), url],
            capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    finally:
        script.unlink()
    result = parse(out)
    if result.errors:
        print(f"wrk reported errors against {url}:\n{out}", file=sys.stderr)
    return result
