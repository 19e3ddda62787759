"""Hot reload of the domain configs in a running service, and the first load's failure."""

import os
import subprocess
import sys
import threading
import time
import uuid

import pytest
from ratelimit_service.config import load_texts
from ratelimit_service.reload import POLL_SECONDS
from tests.harness.procs import REPO, free_port
from tests.harness.ratelimit import call, descriptor, metric, start_service, wait_until

RELOAD_SECONDS = 2.0


def domain_yaml(domain: str, limit: int, unit: str = "hour") -> str:
    return f"""domain: {domain}
descriptors:
  - key: user_id
    rate_limit:
      unit: {unit}
      requests_per_unit: {limit}
"""


def current_limit(base, domain, user):
    r = call(base, domain, descriptor(("user_id", user), hits_addend=0))  # check only
    status = r.json()["statuses"][0]
    return status.get("currentLimit", {}).get("requestsPerUnit"), status.get("limitRemaining")


@pytest.fixture
def running(redis_url, tmp_path):
    started = []

    def start(files: dict[str, str]):
        for name, text in files.items():
            (tmp_path / name).write_text(text)
        proc, base = start_service(tmp_path, redis_url)
        started.append(proc)
        return proc, base

    yield start
    for proc in started:
        proc.stop()


def test_an_edit_applies_within_2s_and_keeps_the_spend(running, tmp_path):
    _, base = running({"budgets.yaml": domain_yaml("budgets", 10)})
    user = uuid.uuid4().hex
    call(base, "budgets", descriptor(("user_id", user)), hits_addend=4)
    assert current_limit(base, "budgets", user) == (10, 6)
    (tmp_path / "budgets.yaml").write_text(domain_yaml("budgets", 50))
    assert wait_until(lambda: current_limit(base, "budgets", user)[0] == 50, RELOAD_SECONDS)
    assert current_limit(base, "budgets", user) == (50, 46)  # what was spent stays spent


def two_limits(user_limit: int, team_limit: int, team_unit: str = "hour") -> str:
    return f"""domain: d
descriptors:
  - key: user_id
    rate_limit: {{unit: hour, requests_per_unit: {user_limit}}}
  - key: team
    rate_limit:
      unit: {team_unit}
      requests_per_unit: {team_limit}
"""


def test_a_bad_edit_is_rejected_whole_and_the_last_good_config_stays(running, tmp_path):
    proc, base = running({"d.yaml": two_limits(10, 20), "other.yaml": domain_yaml("other", 5)})
    user = uuid.uuid4().hex
    errors = metric(base, "tollgate_ratelimit_config_errors_total")
    # The user limit's change is valid, the team's unit is not: neither applies.
    (tmp_path / "d.yaml").write_text(two_limits(99, 30, team_unit="fortnight"))
    assert wait_until(lambda: metric(base, "tollgate_ratelimit_config_errors_total") == errors + 1, RELOAD_SECONDS)
    assert current_limit(base, "d", user)[0] == 10
    assert current_limit(base, "other", user)[0] == 5
    assert f"{tmp_path / 'd.yaml'}:7: invalid rate limit unit 'fortnight'" in proc.log()
    # The same bad contents are reported once, not at every poll.
    wait_until(lambda: False, 1.0)
    assert metric(base, "tollgate_ratelimit_config_errors_total") == errors + 1
    (tmp_path / "d.yaml").write_text(two_limits(99, 30))
    assert wait_until(lambda: current_limit(base, "d", user)[0] == 99, RELOAD_SECONDS)


# A domain file as a slow writer leaves it, piece by piece. Every cut parses, the issue's
# `- key: user_i` included (a descriptor without a limit), and none holds the user's limit.
PIECES = ["domain: d\ndescriptors:\n", "  - key: team\n", "    rate_limit: {unit: hour, requests_per_unit: 100}\n",
          "  - key: project\n", "    rate_limit: {unit: hour, requests_per_unit: 50}\n", "  - key: user_i", "d\n",
          "    rate_limit: {unit: hour, requests_per_unit: %d}\n"]
PAUSE = 0.3  # the writer's pause after each piece: well under the service's 1 s poll interval


def test_a_file_caught_half_written_is_never_applied(running, tmp_path):
    """The writer takes 2.1 s in all, pausing 0.3 s at a time: the old watcher read the
    file once its events had been coming for a second, mid-write, and applied a cut."""
    whole = "".join(PIECES)
    for cut in range(1, len(PIECES)):  # the hazard is real: each cut is a valid config
        assert load_texts([("d.yaml", "".join(PIECES[:cut]))])
    _, base = running({"d.yaml": whole % 10})
    user = uuid.uuid4().hex
    loads = metric(base, "tollgate_ratelimit_config_loads_total")
    limits: list[int | None] = []
    done = threading.Event()

    def sample() -> None:  # the user's limit as the service answers it, every 20 ms
        while not done.is_set():
            limits.append(current_limit(base, "d", user)[0])
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with open(tmp_path / "d.yaml", "w") as f:
            for piece in PIECES[:-1]:
                f.write(piece)
                f.flush()
                time.sleep(PAUSE)
            f.write(PIECES[-1] % 20)
        # A file still being written when a poll reads it is applied two polls after its
        # last write at the latest (a single save: one poll); the rest is loaded-machine slack.
        assert wait_until(lambda: limits and limits[-1] == 20, 2 * POLL_SECONDS + RELOAD_SECONDS)
    finally:
        done.set()
        sampler.join()
    assert None not in limits, limits
    assert metric(base, "tollgate_ratelimit_config_loads_total") == loads + 1  # the whole file, once


def test_files_added_and_removed(running, tmp_path):
    _, base = running({"a.yaml": domain_yaml("a", 10)})
    user = uuid.uuid4().hex
    (tmp_path / "new.yml").write_text(domain_yaml("new", 7))
    assert wait_until(lambda: current_limit(base, "new", user)[0] == 7, RELOAD_SECONDS)
    (tmp_path / "a.yaml").unlink()
    assert wait_until(lambda: current_limit(base, "a", user)[0] is None, RELOAD_SECONDS)
    assert metric(base, "tollgate_ratelimit_config_domains") == 1


def test_configmap_data_symlink_swap_is_seen(running, tmp_path):
    # The layout kubelet gives a mounted ConfigMap: files behind a `..data` symlink.
    def version(name: str, limit: int):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.yaml").write_text(domain_yaml("cm", limit))

    version("..2024_01", 10)
    os.symlink("..2024_01", tmp_path / "..data")
    os.symlink("..data/config.yaml", tmp_path / "config.yaml")
    _, base = running({})
    user = uuid.uuid4().hex
    assert current_limit(base, "cm", user)[0] == 10
    version("..2024_02", 25)
    os.symlink("..2024_02", tmp_path / "..data_tmp")
    os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the atomic swap kubelet does
    assert wait_until(lambda: current_limit(base, "cm", user)[0] == 25, RELOAD_SECONDS)


def test_a_duplicate_domain_on_reload_is_rejected(running, tmp_path):
    proc, base = running({"a.yaml": domain_yaml("a", 10)})
    user = uuid.uuid4().hex
    (tmp_path / "b.yaml").write_text(domain_yaml("a", 20))
    assert wait_until(lambda: "duplicate domain 'a' in config file" in proc.log(), RELOAD_SECONDS)
    assert current_limit(base, "a", user)[0] == 10


def test_first_load_failure_exits_with_the_message(tmp_path, redis_url):
    (tmp_path / "bad.yaml").write_text("domain: x\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n"
                                       "      requests_per_unit: 1\n  - key: a\n")
    result = subprocess.run(
        [sys.executable, "-m", "ratelimit_service", "--config-dir", str(tmp_path), "--redis-url", redis_url,
         "--port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1
    assert f"{tmp_path / 'bad.yaml'}:7: duplicate descriptor composite key 'x.a'" in result.stderr


def test_config_dir_from_the_environment_and_missing_dir(tmp_path):
    env = {**os.environ, "CONFIG_DIR": str(tmp_path / "missing")}
    result = subprocess.run(
        [sys.executable, "-m", "ratelimit_service", "--port", str(free_port())],
        cwd=REPO, capture_output=True, text=True, timeout=30, env=env,
    )
    assert result.returncode == 1 and "cannot read config directory" in result.stderr
