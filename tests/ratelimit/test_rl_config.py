"""Domain config loading: envoy's validation messages with file:line, ConfigMaps, the directory rules."""

import os
import textwrap

import pytest
from tests.harness.ratelimit import DATA

from ratelimit_service.config import ConfigError, load_dir, load_texts
from ratelimit_service.match import runtime_key


def problems(text: str, name: str = "f.yaml") -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_texts([(name, textwrap.dedent(text))])
    return [str(p) for p in e.value.problems]


def rate_limit(body: str) -> str:
    return "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n" + textwrap.indent(textwrap.dedent(body), " " * 6)


@pytest.mark.parametrize("text, expected", [
    ("descriptors: []\n", "f.yaml:1: config file cannot have empty domain"),
    ("", "f.yaml:1: config file cannot have empty domain"),
    ("domain: d\ndescriptors:\n  - value: v\n", "f.yaml:3: descriptor has empty key"),
    ("domain: d\ndescriptors:\n  - key: a\n  - key: b\n    descriptors:\n      - key: c\n        value: v\n"
     "      - key: c\n        value: v\n", "f.yaml:8: duplicate descriptor composite key 'd.b.c_v'"),
    (rate_limit("unit: fortnight\nrequests_per_unit: 1\n"), "f.yaml:5: invalid rate limit unit 'fortnight'"),
    (rate_limit("requests_per_unit: 1\n"), "f.yaml:4: invalid rate limit unit ''"),
    (rate_limit("unlimited: true\nunit: day\n"), "f.yaml:6: should not specify rate limit unit when unlimited"),
    (rate_limit("unit: day\nrequests_per_unit: 1\nreplaces:\n  - name: ''\n"),
     "f.yaml:7: should not have an empty replaces entry"),
    (rate_limit("unit: day\nrequests_per_unit: 1\nname: me\nreplaces:\n  - name: me\n"),
     "f.yaml:8: replaces should not contain name of same descriptor"),
    (rate_limit("unit: day\nrequests_per_unit: 1\nalgorithm: leaky_bucket\n"),
     "f.yaml:7: invalid rate limit algorithm 'leaky_bucket' (token_bucket, fixed_window or calendar)"),
    (rate_limit("unit: hour\nrequests_per_unit: 1\nalgorithm: calendar\n"),
     "f.yaml:7: algorithm calendar needs unit day, week, month or year, not 'hour'"),
    (rate_limit("unit: day\nrequests_per_unit: 1\ntimezone: Europe/Berln\n"), "f.yaml:7: unknown timezone 'Europe/Berln'"),
    (rate_limit("unit: day\nrequests_per_unit: 1\ntimezone: America\n"), "f.yaml:7: unknown timezone 'America'"),
    (rate_limit("unit: hour\nrequests_per_unit: 1\ntimezone: Asia/Kolkata\n"),
     "f.yaml:7: timezone applies only to calendar windows (unit day, week, month or year; algorithm calendar)"),
    (rate_limit("unit: day\nrequests_per_unit: 1\nalgorithm: fixed_window\ntimezone: UTC\n"),
     "f.yaml:8: timezone applies only to calendar windows"),
    (rate_limit("unit: month\nusd: 50\nrequests_per_unit: 5\n"),
     "f.yaml:6: should not specify both requests_per_unit and usd"),
    (rate_limit("unlimited: true\nusd: 5\n"), "f.yaml:6: should not specify usd when unlimited"),
    (rate_limit("unit: month\nusd: 0\n"),
     "f.yaml:6: invalid usd '0': a positive amount of dollars with at most 6 decimals"),
    (rate_limit("unit: month\nusd: '-5'\n"), "f.yaml:6: invalid usd '-5'"),
    (rate_limit("unit: month\nusd: '0.0000001'\n"), "f.yaml:6: invalid usd '0.0000001'"),
    (rate_limit("unit: month\nusd: ten\n"), "f.yaml:6: invalid usd 'ten'"),
    (rate_limit("unit: month\nusd: '9007199254.740993'\n"),
     "f.yaml:6: usd 9007199254.740993 is over the largest budget, 9007199254.740992"),
    (rate_limit("unit: month\nusd: 12.1234567\n"), "f.yaml:6: invalid usd '12.1234567'"),
    (rate_limit("unit: month\nrequests_per_unit: 1.5\n"), "f.yaml:6: error checking config"),
    ("domain: d\ndescriptors:\n  - key: a\n    ratelimit: {}\n", "f.yaml:4: config error, unknown key 'ratelimit'"),
    ("domain: d\ndescriptors:\n  - key: a\n    quota_mode: true\n", "f.yaml:4: config error, unknown key 'quota_mode'"),
    ("domain: d\n7: x\n", "f.yaml:2: config error, key is not of type string: 7"),
    ("domain: d\ndescriptors:\n  - just-a-string\n",
     "f.yaml:3: config error, yaml file contains list of type other than map: just-a-string"),
    (rate_limit("unit: day\nrequests_per_unit: 1.5\n"), "f.yaml:6: error checking config"),
    ("domain: d\ndescriptors:\n  - key: a\n    value: b\n    share_threshold: true\n",
     "f.yaml:5: share_threshold can only be used with wildcard values (containing '*'), but found key 'a_b'"),
    ("domain: d\ndescriptors:\n  - key: a\n   bad: [\n", "f.yaml:4: error loading config file:"),
    (rate_limit("unit: day\nrequests_per_unit: -1\n"), "f.yaml:6: error loading config file:"),
    ("- domain: d\n", "f.yaml:1: error loading config file: the document is not a map"),
])
def test_validation_messages_are_envoys_with_file_and_line(text, expected):
    assert problems(text)[0].startswith(expected)


def test_every_bad_file_is_reported_and_a_duplicate_domain_names_the_second_file():
    with pytest.raises(ConfigError) as e:
        load_texts([("a.yaml", "domain: x\n"), ("b.yaml", "\n\ndomain: x\n"), ("c.yaml", "domain: ''\n")])
    assert [str(p) for p in e.value.problems] == [
        "b.yaml:3: duplicate domain 'x' in config file",
        "c.yaml:1: config file cannot have empty domain",
    ]


def test_values_keep_their_text_and_nulls_are_unset():
    config = load_texts([("f.yaml", "domain: d\ndescriptors:\n  - key: code\n    value: 010\n    rate_limit:\n"
                                    "      unit: Minute\n      requests_per_unit: 5\n  - key: none\n"
                                    "    descriptors:\n")])
    match = config.find("d", (("code", "010"),))
    assert match.limit.requests_per_unit == 5 and match.limit.unit == "MINUTE"
    assert config.find("d", (("code", "8"),)) is None


def test_seed001_configmap_manifest_loads_as_is():
    config = load_dir(str(DATA))
    match = config.find("token-budgets", (("user_id", "mike"),))
    assert (match.limit.requests_per_unit, match.limit.unit, match.limit.period) == (100, "DAY", 86400)
    assert config.find("token-budgets", (("user_id", "alice"),)) is None


def test_configmap_problems_point_at_the_manifest_line():
    manifest = """\
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: ratelimit-config
        data:
          notes.txt: not loaded
          config.yaml: |
            domain: token-budgets
            descriptors:
              - key: user_id
                rate_limit:
                  unit: fortnight
        """
    assert problems(manifest, "cm.yaml") == ["cm.yaml:12: invalid rate limit unit 'fortnight'"]


def test_configmap_with_several_domains():
    manifest = textwrap.dedent("""\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: rl}
        data:
          a.yaml: |
            domain: a
          b.yml: "domain: b"
        """)
    assert sorted(load_texts([("cm.yaml", manifest)]).domains) == ["a", "b"]


def test_directory_rules(tmp_path):
    (tmp_path / "a.yaml").write_text("domain: a\n")
    (tmp_path / "b.yml").write_text("domain: b\n")
    (tmp_path / ".hidden.yaml").write_text("domain: hidden\n")
    (tmp_path / "notes.txt").write_text("domain: txt\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text("domain: c\n")
    (tmp_path / "..2024_01").mkdir()
    (tmp_path / "..2024_01" / "d.yaml").write_text("domain: d\n")
    os.symlink("..2024_01/d.yaml", tmp_path / "linked.yaml")
    assert sorted(load_dir(str(tmp_path)).domains) == ["a", "b", "d"]


def test_matching_follows_envoy():
    config = load_texts([("m.yaml", textwrap.dedent("""\
        domain: m
        descriptors:
          - key: k
            rate_limit: {unit: second, requests_per_unit: 1}
          - key: k
            value: exact
            rate_limit: {unit: second, requests_per_unit: 2}
          - key: k
            value: pre*
            rate_limit: {unit: second, requests_per_unit: 3}
          - key: k
            value: a*m*z
            share_threshold: true
            rate_limit: {unit: second, requests_per_unit: 4}
          - key: parent
            descriptors:
              - key: child
                rate_limit: {unit: second, requests_per_unit: 5}
          - key: leaf
            rate_limit: {unit: second, requests_per_unit: 6}
        """))])

    def rpu(*entries):
        match = config.find("m", entries)
        return match and match.limit.requests_per_unit

    assert rpu(("k", "exact")) == 2
    assert rpu(("k", "prefix")) == 3
    assert rpu(("k", "other")) == 1
    assert rpu(("k", "a-m-z")) == 4 and rpu(("k", "amz")) == 4 and rpu(("k", "a-z")) == 1
    assert config.find("m", (("k", "a1m2z"),)).bucket == (("k", "a*m*z"),)
    assert config.find("m", (("k", "prefix"),)).bucket == (("k", "prefix"),)
    assert rpu(("parent", "x"), ("child", "y")) == 5
    assert rpu(("parent", "x")) is None  # no limit at that depth
    assert rpu(("leaf", "x"), ("more", "y")) is None  # the request is deeper than the config
    assert rpu(("unknown", "x")) is None and config.find("nope", (("k", "x"),)) is None
    assert runtime_key((("a", "1"), ("b", ""))) == "a_1.b"


@pytest.mark.parametrize("body, algorithm", [
    ("unit: second\nrequests_per_unit: 1\n", "tb"), ("unit: minute\nrequests_per_unit: 1\n", "tb"),
    ("unit: hour\nrequests_per_unit: 1\n", "tb"), ("unit: day\nrequests_per_unit: 1\n", "cal"),
    ("unit: week\nrequests_per_unit: 1\n", "cal"), ("unit: month\nrequests_per_unit: 1\n", "cal"),
    ("unit: year\nrequests_per_unit: 1\n", "cal"),
    ("unit: day\nrequests_per_unit: 1\nalgorithm: token_bucket\n", "tb"),
    ("unit: day\nrequests_per_unit: 1\nalgorithm: fixed_window\n", "fw"),
    ("unit: minute\nrequests_per_unit: 1\nalgorithm: fixed_window\n", "fw"),
])
def test_calendar_windows_are_the_default_from_a_day_up(body, algorithm):
    config = load_texts([("f.yaml", rate_limit(body))])
    assert config.find("d", (("a", "x"),)).limit.algorithm == algorithm


@pytest.mark.parametrize("usd, micros", [
    ("50", 50_000_000), ("'49.99'", 49_990_000), ("'0.000001'", 1), ("'12.500000'", 12_500_000),
    ("'9007199254.740992'", 2**53), ('"1e3"', 1_000_000_000),
])
def test_usd_budgets_are_whole_micro_dollars(usd, micros):
    config = load_texts([("f.yaml", rate_limit(f"unit: month\nusd: {usd}\n"))])
    limit = config.find("d", (("a", "x"),)).limit
    assert (limit.requests_per_unit, limit.usd) == (micros, True)
    assert limit.current_limit == {"requestsPerUnit": micros, "unit": "MONTH"}  # /json: envoy's fields
    assert limit.v1_limit == {"requestsPerUnit": micros, "unit": "MONTH", "usd": True}


def test_timezone_is_kept_with_its_calendar_limit():
    config = load_texts([("f.yaml", rate_limit("unit: day\nrequests_per_unit: 5\ntimezone: Asia/Kolkata\n"))])
    limit = config.find("d", (("a", "x"),)).limit
    assert (limit.algorithm, limit.timezone) == ("cal", "Asia/Kolkata")
    default = load_texts([("f.yaml", rate_limit("unit: day\nrequests_per_unit: 5\n"))])
    assert default.find("d", (("a", "x"),)).limit.timezone == "UTC"


def test_decimal_dollars_are_read_exactly_as_written():
    text = "domain: d\ndescriptors:\n  - key: team\n    rate_limit: {unit: month, usd: 49.99}\n"
    (match,) = [load_texts([("f.yaml", text)]).find("d", (("team", "eng"),))]
    assert match.limit.requests_per_unit == 49_990_000  # float("49.99") * 1e6 is 49989999.99...
