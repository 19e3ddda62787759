"""The README's quick start: `tollgate demo` serves the walkthrough on the default ports,
on a copy of the deploy files that it names, applies live and removes at exit; and it
owns its children: a plain `kill`, a dying child or the demo's own death leaves no
process behind."""

import os
import re
import shutil
import signal
import time
from pathlib import Path

import httpx
import pytest

from tollgate_demo.demo import PORTS, port_free
from tests.harness.procs import Proc, python_cmd

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello!"}]}
REPO = Path(__file__).resolve().parents[2]
MIKE = "- {key: user_id, value: mike, rate_limit: {unit: day, requests_per_unit: 100}}"


def children_of(pid: int) -> dict[int, str]:
    """{pid: command line} of the processes whose parent is `pid`."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue
    return found


def gone(pids, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and "zombie" not in _state(p) for p in pids):
            return all(port_free(port) for port in PORTS.values())
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        return "zombie" if (Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" else ""
    except OSError:
        return "zombie"


@pytest.fixture
def demo():
    busy = [f"{name} {port}" for name, port in PORTS.items() if not port_free(port)]
    if busy:
        pytest.skip(f"the demo's fixed ports are taken on this machine: {', '.join(busy)}")
    proc = Proc("demo", python_cmd("gateway", "demo"), env={"REDIS_URL": ""}).start()
    deadline = time.monotonic() + 40
    while "Ctrl-C stops everything" not in proc.log():  # the walkthrough's last line
        assert proc.alive() and time.monotonic() < deadline, proc.log()
        time.sleep(0.2)
    yield proc
    proc.stop()  # the whole process group, whatever the test left
    shutil.rmtree(workdir_of(proc), ignore_errors=True)  # a demo killed outright cannot remove its copy


def workdir_of(demo: Proc) -> Path:
    """The copy of the deploy files the demo runs on, as its walkthrough names it."""
    found = re.search(r"runs on a copy of the deploy files in (\S+)\.\n", demo.log())
    assert found, demo.log()
    return Path(found.group(1))


def mike_raised_within(seconds: float, chat) -> bool:
    """mike is served again once the service has reloaded his raised limit."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if chat("sk-mike-key").status_code == 200:
            return True
        time.sleep(0.2)
    return False


def test_walkthrough_on_the_demo_then_a_plain_kill_stops_everything(demo):
    def chat(key: str) -> httpx.Response:
        return httpx.post("http://127.0.0.1:4000/v1/chat/completions", json=BODY,
                          headers={"Authorization": f"Bearer {key}"}, timeout=10)

    shipped = (REPO / "deploy" / "ratelimit" / "config.yaml").read_bytes()
    workdir = workdir_of(demo)
    copy = workdir / "ratelimit" / "config.yaml"
    assert f"edit his line in {copy}" in demo.log()
    assert copy.read_bytes() == shipped and REPO not in workdir.parents

    alice = chat("sk-alice-abc123def456")
    assert alice.status_code == 200
    assert chat("sk-mike-key").status_code == 200
    refused = chat("sk-mike-key")
    assert refused.status_code == 429
    assert "daily token budget for user_id=mike exhausted; resets" in refused.json()["error"]["message"]
    budget = httpx.get("http://127.0.0.1:4000/v1/budget", headers={"Authorization": "Bearer sk-mike-key"})
    models = httpx.get("http://127.0.0.1:4000/v1/models", headers={"Authorization": "Bearer sk-mike-key"})
    # Every body ends a line, as OpenAI's do, so curl's prompt starts on its own: the
    # gateway's own, and the mock upstream's answer relayed as it came.
    for answer in (alice, refused, budget, models):
        assert answer.text.endswith("}\n"), answer.text[-20:]

    # The README's live edit, on the copy: mike's daily limit raised, served again.
    assert copy.read_text().count(MIKE) == 1
    copy.write_text(copy.read_text().replace(MIKE, MIKE.replace("100}", "1000000}")))
    assert mike_raised_within(10, chat), demo.log()[-2000:]
    assert (REPO / "deploy" / "ratelimit" / "config.yaml").read_bytes() == shipped  # the repository's untouched
    assert "memory://" in demo.log()  # the embedded store, no Redis needed
    assert "TOLLGATE_RATELIMIT_TOKEN" not in demo.log()  # the demo made one: no warning about it
    metrics = httpx.get("http://127.0.0.1:15000/metrics").text
    assert 'user_id="mike"' in metrics
    # /metrics names every key's spend: on a laptop it stays on loopback.
    assert "admin on 127.0.0.1:15000" in demo.log(), demo.log()

    children = children_of(demo.popen.pid)
    assert len(children) == 3, children
    os.kill(demo.popen.pid, signal.SIGTERM)  # `kill <pid>`: the demo alone, not its group
    assert demo.popen.wait(30) == 0
    assert gone(children), children_of(1)
    assert not workdir.exists(), list(workdir.rglob("*"))  # the copy goes with the demo


def test_a_child_that_dies_is_named_and_the_others_stopped(demo):
    children = children_of(demo.popen.pid)
    (ratelimit,) = [pid for pid, cmd in children.items() if "ratelimit_service" in cmd]
    os.kill(ratelimit, signal.SIGKILL)
    assert demo.popen.wait(30) == 1
    assert "tollgate demo: ratelimit killed by SIGKILL; stopping the others" in demo.log()
    assert gone(children)


def test_ctrl_c_in_the_terminal_stops_the_demo_quietly(demo):
    """A terminal's Ctrl-C signals its whole foreground group. The children are out of it,
    so only the demo hears it and stops them in order, the gateway first (its settles
    land on a service still up): no child is reported as having died, nothing is lost."""
    children = children_of(demo.popen.pid)
    groups = {os.getpgid(pid) for pid in children}
    assert os.getpgid(demo.popen.pid) not in groups, "the children share the terminal's group"
    httpx.post("http://127.0.0.1:4000/v1/chat/completions", json=BODY,
               headers={"Authorization": "Bearer sk-alice-abc123def456"}, timeout=10)
    os.killpg(demo.popen.pid, signal.SIGINT)
    assert demo.popen.wait(30) == 0
    assert gone(children), children_of(1)
    log = demo.log()
    for noise in ("stopping the others", "Traceback", "could not be delivered", "KeyboardInterrupt"):
        assert noise not in log, log[-3000:]


def test_the_demo_killed_outright_takes_its_children_along(demo):
    children = children_of(demo.popen.pid)
    os.kill(demo.popen.pid, signal.SIGKILL)  # no handler runs: the kernel signals the children
    demo.popen.wait(10)
    assert gone(children)
