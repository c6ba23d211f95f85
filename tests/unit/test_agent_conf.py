"""agent.conf parsing, typed config, file checks and environment rules."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monolith_serving.core.agent_conf import (
    AgentConfig,
    ConfError,
    DeployType,
    DiscoveryKind,
    ServerPorts,
    VersionPolicy,
    config_from_entries,
    load_agent_config,
    replica_id_from_pod_name,
    resolve_environment,
)
from monolith_serving.core.conf_syntax import (
    parse_bool,
    parse_conf_file,
    parse_conf_text,
    parse_float,
    parse_int,
)
from monolith_serving.core.errors import FailedPreconditionError, InvalidArgumentError
from monolith_serving.core.zk_paths import UNSET_REPLICA_ID

DATA = Path(__file__).parent / "data" / "agent_conf"
FULL = DATA / "full.conf"

MINIMAL_ENTRY = "deploy_type entry\nbase_path /models/m\n"
MINIMAL_PS = "deploy_type ps\nbase_path /models/m\nnum_ps 10\n"


def write_conf(tmp_path: Path, text: str, name: str = "agent.conf") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> AgentConfig:
    return load_agent_config(write_conf(tmp_path, text))


def line_of(path: Path, needle: str) -> int:
    """1-based number of the first line of ``path`` containing ``needle``."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in {path}")


# --------------------------------------------------------------------------- the full fixture


def test_full_fixture_uses_every_syntax_feature() -> None:
    config = load_agent_config(FULL)

    # include (nested, relative to the including file) and a comma list kept as one value
    assert config.bzid == "demo_bzid"
    assert config.zk_servers == "127.0.0.1:2181,127.0.0.2:2181"
    assert config.num_ps == 4
    assert config.fetch_ps_timeout_ms == 200
    # trailing comments stripped, `key=value` form, alias server_type -> deploy_type
    assert config.base_name == "ctr_model"
    assert config.base_path == "/data/export/ctr_model"
    assert config.deploy_type is DeployType.PS
    # boolean spellings, mixed case
    assert (config.dense_alone, config.dc_aware, config.enable_batching) == (False, True, False)
    assert (config.enable_model_warmup, config.stand_alone_serving) == (True, False)
    # products
    assert config.load_retry_interval_micros == 60_000_000
    assert config.max_waiting_sec == 600
    # none -> default; repeated key -> tuple (none entries dropped)
    assert config.layout_pattern is None
    assert config.layout_filters == ("ps_{i}; i % 2 == 1", "entry")
    assert config.version_policy is VersionPolicy.LATEST
    assert config.update_model_status_interval == 0.5
    # TF Serving pass-through kept verbatim; unknown and agent-owned keys dropped
    assert dict(config.tfs_flags) == {"batching_parameters_file": "/etc/tfs/batching.conf"}
    assert not hasattr(config, "rough_sort_model_name")
    # derived defaults
    assert config.discovery is DiscoveryKind.ZK
    assert config.num_shard == 2
    assert config.origins["deploy_type"] == f"{FULL}:{line_of(FULL, 'server_type ps')}"
    assert config.origins["num_ps"].endswith(f"more.conf:{line_of(DATA / 'inc' / 'more.conf', 'num_ps')}")


def test_unknown_key_is_logged_at_debug(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="monolith_serving.core.agent_conf"):
        load_text(tmp_path, MINIMAL_ENTRY + "no_such_key 3\n")
    unknown = [r for r in caplog.records if "no_such_key" in r.getMessage()]
    assert [r.levelno for r in unknown] == [logging.DEBUG]
    assert "agent.conf:3" in unknown[0].getMessage()


def test_monolith_rough_sort_keys_warn_as_unsupported(caplog: pytest.LogCaptureFixture) -> None:
    """Monolith loads an extra model for them; we load none, so a conf asking for one must not pass silently."""
    with caplog.at_level(logging.DEBUG, logger="monolith_serving.core.agent_conf"):
        load_agent_config(FULL)
    (record,) = [r for r in caplog.records if "rough_sort_model_name" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert f"full.conf:{line_of(FULL, 'rough_sort_model_name')}" in record.getMessage()
    assert "not supported" in record.getMessage()


def test_rough_sort_keys_asking_for_nothing_do_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="monolith_serving.core.agent_conf"):
        load_text(
            tmp_path,
            MINIMAL_ENTRY + "rough_sort_model_name\nrough_sort_model_local_path none\n"
            "rough_sort_resource_constrained false\nrough_sort_model_loaded_server ps\n",
        )
    assert [r.getMessage().split("'")[1] for r in caplog.records] == ["rough_sort_model_loaded_server"]


def test_entries_keep_file_and_line() -> None:
    entries = parse_conf_file(FULL)
    by_key = {e.key: e for e in entries}
    assert by_key["server_type"].line == line_of(FULL, "server_type ps")
    assert by_key["bzid"].file.endswith("common.conf")
    # include order: included keys appear where the include line is
    assert [e.key for e in entries][:4] == ["bzid", "zk_servers", "num_ps", "fetch_ps_timeout_ms"]


def test_defaults_match_reference(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL_ENTRY)
    expected = {
        "bzid": None,
        "base_name": None,
        "num_ps": 1,
        "num_shard": None,
        "stand_alone_serving": False,
        "zk_servers": None,
        "agent_version": 1,
        "update_model_status_interval": 1.0,
        "max_waiting_sec": 1200,
        "version_policy": VersionPolicy.LATEST,
        "version_data": 1,
        "dense_alone": False,
        "dc_aware": False,
        "layout_pattern": None,
        "layout_filters": (),
        "fetch_ps_timeout_ms": 200,
        "fetch_ps_retry": 2,
        "fetch_ps_long_conn_num": 100,
        "aio_thread_num": 30,
        "file_system_poll_wait_seconds": 1,
        "file_system_poll_wait_seconds_ps": 0,
        "enable_batching": False,
        "max_num_load_retries": 5,
        "load_retry_interval_micros": 60_000_000,
        "num_load_threads": 0,
        "num_unload_threads": 0,
        "enable_model_warmup": True,
        "grpc_max_threads": 0,
        "discovery": DiscoveryKind.STATIC,
    }
    assert {key: getattr(config, key) for key in expected} == expected
    assert dict(config.tfs_flags) == {}


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL_ENTRY + "batching_parameters_file /b\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.num_ps = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.tfs_flags["x"] = "y"  # type: ignore[index]


# --------------------------------------------------------------------------- value syntax

BOOL_SPELLINGS = [
    *[(spelling, True) for spelling in ("true", "yes", "1", "t", "y")],
    *[(spelling, False) for spelling in ("false", "no", "0", "f", "n")],
]


@pytest.mark.parametrize(("spelling", "value"), BOOL_SPELLINGS)
def test_every_boolean_spelling_in_a_conf(tmp_path: Path, spelling: str, value: bool) -> None:
    for variant in {spelling, spelling.upper(), spelling.capitalize()}:
        config = load_text(tmp_path, MINIMAL_ENTRY + f"enable_batching {variant}  # c\n")
        assert config.enable_batching is value


@pytest.mark.parametrize("text", ["", "2", "on", "off", "truee", "ja", "-1"])
def test_parse_bool_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bool(text)


@given(st.lists(st.integers(min_value=-(10**6), max_value=10**6), min_size=1, max_size=3), st.data())
def test_int_product_equals_product_of_factors(factors: list[int], data: st.DataObject) -> None:
    text = ""
    for index, factor in enumerate(factors):
        if index:
            text += data.draw(st.sampled_from(["*", " * ", "  *", "*\t"]))
        text += str(factor)
    assert parse_int(text) == math.prod(factors)


# What Monolith's int(eval(v)) accepts and its confs use; same meaning (Python's precedence and literals).
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2**20", 2**20),
        ("1<<20", 1 << 20),
        ("1 << 10 + 2", 1 << 12),  # + binds tighter than <<, as in Python
        ("6e7", 60_000_000),
        ("1.5e3", 1500),
        ("0x10", 16),
        ("0XfF", 255),
        ("0o17", 15),
        ("0b101", 5),
        ("1_000", 1000),
        ("-2 ** 2", -4),
        ("(60 - 1) * (1 + 1)", 118),
        ("2 ** 3 ** 2", 2**9),  # right-associative
        ("+7 - -3", 10),
        ("64 * 2**30", 64 * 2**30),
        ("007", 7),  # leading zeros: decimal, as before (Python itself refuses them)
        ("-060 * 1000", -60_000),
        ("0", 0),
        ("00", 0),
    ],
)
def test_parse_int_accepts_monolith_arithmetic(text: str, value: int) -> None:
    assert parse_int(text) == value
    assert type(parse_int(text)) is int


@pytest.mark.parametrize(
    "text",
    [
        "", "3 *", "* 3", "1.5", "2 ** -1", "__import__('os')", "6 / 2", "7 // 2", "7 % 2", "2 3", "True", "1j",
        "'1'", "x", "inf", "(1, 2)", "[1]", "1 if 1 else 2", "2 ** 65", "9 ** 9 ** 9", "1 << 64", "2**63",
        "1e30", "1 < 2", "1 >> 1", "~1", "abs(1)", "1" * 201,
    ],
)  # fmt: skip
def test_parse_int_rejects_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_int(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1 * 10", 10.0), ("0.5", 0.5), (".25", 0.25), ("1e-1", 0.1), ("2**-1", 0.5), ("3", 3.0), ("00.05", 0.05)],
)
def test_parse_float_accepts_arithmetic(text: str, value: float) -> None:
    assert parse_float(text) == value


@pytest.mark.parametrize("text", ["nan", "inf", "1/2", "", "1,5", "1e999", "1e300 * 1e300", "(-8) ** 0.5", "1.0 << 2"])
def test_parse_float_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_float(text)


def test_monolith_arithmetic_in_a_conf(tmp_path: Path) -> None:
    config = load_text(
        tmp_path,
        MINIMAL_ENTRY + "update_model_status_interval 1 * 10\nmax_waiting_sec 2**10\n"
        "load_retry_interval_micros 6e7\nfetch_ps_timeout_ms 0x10\nfetch_ps_long_conn_num 1 << 7\n",
    )
    assert config.update_model_status_interval == 10.0
    assert (config.max_waiting_sec, config.load_retry_interval_micros) == (1024, 60_000_000)
    assert (config.fetch_ps_timeout_ms, config.fetch_ps_long_conn_num) == (16, 128)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
def test_parse_float_round_trips(value: float) -> None:
    assert parse_float(repr(value)) == value


@pytest.mark.parametrize("none", ["none", "None", "NONE"])
def test_none_means_unset(tmp_path: Path, none: str) -> None:
    config = load_text(tmp_path, MINIMAL_ENTRY + f"num_ps {none}\nbzid {none}\n")
    assert (config.num_ps, config.bzid) == (1, None)


def test_repeated_scalar_with_same_value_is_fine(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL_ENTRY + "num_ps 3\nnum_ps 3\nserver_type entry\n")
    assert (config.num_ps, config.deploy_type) == (3, DeployType.ENTRY)


def test_parse_conf_text_resolves_includes_next_to_the_named_file(tmp_path: Path) -> None:
    write_conf(tmp_path, "num_ps 7\n", "sub.conf")
    entries = parse_conf_text("include sub.conf\nbzid x # c\n", file=tmp_path / "virtual.conf")
    assert [(e.key, e.value) for e in entries] == [("num_ps", "7"), ("bzid", "x")]


# --------------------------------------------------------------------------- errors name key, file, line


def assert_conf_error(exc: pytest.ExceptionInfo[ConfError], key: str, path: Path, line: int) -> None:
    message = str(exc.value)
    assert isinstance(exc.value, InvalidArgumentError)
    assert f"'{key}'" in message, message
    assert f"{path}:{line}:" in message, message


def test_bad_int_names_key_and_line(tmp_path: Path) -> None:
    path = write_conf(tmp_path, MINIMAL_ENTRY + "# comment\nnum_ps ten\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "num_ps", path, 4)
    assert "'ten'" in str(exc.value)


def test_bad_product_names_key_and_line(tmp_path: Path) -> None:
    path = write_conf(tmp_path, MINIMAL_ENTRY + "load_retry_interval_micros 60 * 1000 / 2\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "load_retry_interval_micros", path, 3)


def test_bad_bool_names_key_and_line(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "dc_aware maybe\n" + MINIMAL_ENTRY)
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "dc_aware", path, 1)


def test_bad_enum_names_key_and_line(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "base_path /m\nserver_type proxy\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "server_type", path, 2)


def test_key_without_value_is_unset(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="monolith_serving.core.agent_conf"):
        empty_keys = "bzid   # nothing\nnum_ps\nlayout_filters\nrough_sort_model_name\n"
        config = load_text(tmp_path, MINIMAL_ENTRY + empty_keys)
    assert (config.bzid, config.num_ps, config.layout_filters) == (None, 1, ())
    warned = {r.getMessage().split("key ")[1].split(" ")[0] for r in caplog.records if r.levelno == logging.WARNING}
    assert warned == {"'bzid'", "'num_ps'"}  # known keys only; an unknown one without a value is not worth a warning


def test_include_without_path(tmp_path: Path) -> None:
    path = write_conf(tmp_path, MINIMAL_ENTRY + "include   # nothing\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "include", path, 3)


def test_include_missing_file_names_include_line() -> None:
    path = DATA / "include_missing.conf"
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "include", path, line_of(path, "include does_not_exist"))
    assert "does_not_exist.conf" in str(exc.value)


def test_missing_top_level_file(tmp_path: Path) -> None:
    with pytest.raises(ConfError, match=r"nope\.conf"):
        load_agent_config(tmp_path / "nope.conf")


def test_include_cycle() -> None:
    with pytest.raises(ConfError) as exc:
        load_agent_config(DATA / "cycle_a.conf")
    b = DATA / "cycle_b.conf"
    assert_conf_error(exc, "include", b, line_of(b, "include cycle_a.conf"))
    assert "cycle" in str(exc.value)


def test_self_include_through_other_spelling_is_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    path = write_conf(tmp_path, "include d/../agent.conf\n")
    with pytest.raises(ConfError, match="cycle"):
        load_agent_config(path)


def test_same_file_included_twice_is_not_a_cycle(tmp_path: Path) -> None:
    write_conf(tmp_path, "layout_filters ps_0\n", "f.conf")
    config = load_text(tmp_path, MINIMAL_ENTRY + "include f.conf\ninclude f.conf\n")
    assert config.layout_filters == ("ps_0", "ps_0")


def test_repeated_scalar_with_other_value_names_both_lines(tmp_path: Path) -> None:
    path = write_conf(tmp_path, MINIMAL_ENTRY + "num_ps 3\nnum_ps 4\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "num_ps", path, 4)
    assert f"{path}:3" in str(exc.value)


def test_alias_and_key_disagreeing(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "base_path /m\ndeploy_type entry\nserver_type ps\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "server_type", path, 3)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("deploy_type entry\nbase_path /m\nzk_servers zk:2181\nbase_name m\n", "bzid"),
        ("deploy_type entry\nbase_path /m\nzk_servers zk:2181\nbzid b\n", "base_name"),
        ("deploy_type entry\nbase_path /m\ndiscovery consul\nbase_name m\n", "bzid"),
        ("deploy_type entry\nbase_path /m\ndiscovery zk\nbzid b\nbase_name m\n", "zk_servers"),
        ("deploy_type unified\nzk_servers zk:2181\nbzid b\n", "layout_pattern"),
        ("deploy_type ps\nbzid b\n", "base_path"),
        ("bzid b\nbase_path /m\n", "deploy_type"),
    ],
)
def test_missing_required_key(tmp_path: Path, text: str, key: str) -> None:
    path = write_conf(tmp_path, text)
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert f"'{key}'" in str(exc.value)
    assert str(path) in str(exc.value)


def test_required_key_given_as_none_names_its_line(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "deploy_type entry\nbase_path /m\nzk_servers zk\nbase_name m\nbzid none\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "bzid", path, 5)


def test_dense_without_dense_alone(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "base_path /m\n# dense needs dense_alone\ndeploy_type dense\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "deploy_type", path, 3)
    assert "dense_alone" in str(exc.value)
    assert load_text(tmp_path, "base_path /m\ndeploy_type dense\ndense_alone yes\n").dense_alone


@pytest.mark.parametrize(
    ("line", "key", "blamed_line"),
    [
        ("num_ps 0", "num_ps", 3),
        ("num_shard 0", "num_shard", 3),
        ("aio_thread_num 0", "aio_thread_num", 3),
        ("update_model_status_interval 0", "update_model_status_interval", 3),
        ("agent_version 4", "agent_version", 3),
        ("agent_port 70000", "agent_port", 3),
        ("agent_version 3", "deploy_type", 1),  # v3 agents are unified; deploy_type is on line 1
    ],
)
def test_impossible_values(tmp_path: Path, line: str, key: str, blamed_line: int) -> None:
    path = write_conf(tmp_path, MINIMAL_ENTRY + line + "\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, key, path, blamed_line)


def test_unified_defaults_to_agent_version_3_and_rejects_other_versions(tmp_path: Path) -> None:
    unified = "deploy_type unified\nzk_servers zk:2181\nbzid b\nlayout_pattern /b/layouts/l\n"
    assert load_text(tmp_path, unified).agent_version == 3
    path = write_conf(tmp_path, unified + "agent_version 1\n")
    with pytest.raises(ConfError) as exc:
        load_agent_config(path)
    assert_conf_error(exc, "agent_version", path, 5)
    with pytest.raises(ConfError, match="'discovery'"):
        load_text(tmp_path, "deploy_type unified\nbzid b\nlayout_pattern l\n")


# --------------------------------------------------------------------------- derived choices


def test_stand_alone_serving_means_mixed(tmp_path: Path) -> None:
    assert load_text(tmp_path, "stand_alone_serving true\nbase_path /m\n").deploy_type is DeployType.MIXED
    config = load_text(tmp_path, "server_type entry\nstand_alone_serving y\nbase_path /m\n")
    assert config.deploy_type is DeployType.MIXED


@pytest.mark.parametrize(
    ("extra", "kind"),
    [
        ("", DiscoveryKind.STATIC),
        ("zk_servers zk:2181\nbzid b\nbase_name m\n", DiscoveryKind.ZK),
        ("zk_servers zk:2181\ndiscovery static\n", DiscoveryKind.STATIC),
        ("discovery Consul\nconsul_address c:8500\nbzid b\nbase_name m\n", DiscoveryKind.CONSUL),
    ],
)
def test_discovery_choice(tmp_path: Path, extra: str, kind: DiscoveryKind) -> None:
    assert load_text(tmp_path, MINIMAL_ENTRY + extra).discovery is kind


# --------------------------------------------------------------------------- environment


def test_environment_ports_and_ids(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL_ENTRY)
    env = {
        "PORT": "9001",
        "PORT2": "9002",
        "PORT3": "9003",
        "PORT4": "9004",
        "PORT5": "9005",
        "SHARD_ID": "0",
        "REPLICA_ID": "7",
        "MY_POD_NAME": "pod-a",
        "MY_HOST_IP": "10.0.0.1",
        "MY_HOST_IPV6": "fd00::1",
        "TCE_INTERNAL_IDC": "LF",
        "TCE_CLUSTER": "Default",
    }
    resolved = resolve_environment(config, env)
    assert (resolved.archon_port, resolved.agent_port) == (9001, 9002)
    assert (resolved.tfs_grpc_port, resolved.tfs_http_port) == (9003, 9004)
    assert resolved.tfs_ps_ports is None  # PORT5.. only matter in mixed mode
    assert (resolved.shard_id, resolved.replica_id, resolved.pod_name) == (0, 7, "pod-a")
    assert (resolved.host_ip, resolved.host_ipv6) == ("10.0.0.1", "fd00::1")
    assert (resolved.idc, resolved.cluster) == ("lf", "default")
    assert resolved.psm is None
    assert resolve_environment(config, {"TCE_PSM": "Data.Serving"}).psm == "Data.Serving"  # verbatim
    assert resolved.num_shard == 1
    assert config.agent_port is None  # the input is left untouched


def test_environment_is_only_read_from_the_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(os.environ, "SHARD_ID", "3")
    monkeypatch.setitem(os.environ, "PORT2", "1234")
    resolved = resolve_environment(load_text(tmp_path, MINIMAL_PS), {})
    assert (resolved.shard_id, resolved.agent_port, resolved.replica_id) == (0, None, UNSET_REPLICA_ID)


def test_empty_variables_count_as_unset(tmp_path: Path) -> None:
    resolved = resolve_environment(load_text(tmp_path, MINIMAL_ENTRY), {"PORT2": "", "SHARD_ID": " "})
    assert (resolved.agent_port, resolved.shard_id) == (None, 0)


def test_conf_port_wins_over_environment(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL_ENTRY + "agent_port 5555\n")
    assert resolve_environment(config, {"PORT2": "6666"}).agent_port == 5555


def test_mixed_mode_ps_and_dense_ports(tmp_path: Path) -> None:
    env = {f"PORT{n}": str(9000 + n) for n in range(5, 11)}
    mixed = load_text(tmp_path, "stand_alone_serving true\nbase_path /m\n")
    resolved = resolve_environment(mixed, env)
    assert resolved.tfs_ps_ports == ServerPorts(grpc=9005, http=9006, archon=9007)
    assert resolved.tfs_dense_ports is None
    dense = resolve_environment(load_text(tmp_path, "stand_alone_serving true\ndense_alone true\nbase_path /m\n"), env)
    assert dense.tfs_dense_ports == ServerPorts(grpc=9008, http=9009, archon=9010)
    assert resolve_environment(mixed, {}).tfs_ps_ports == ServerPorts()


@pytest.mark.parametrize(
    ("pod_name", "digest"),
    [
        # RFC 1321's published MD5 test vectors.
        ("abc", "900150983cd24fb0d6963f7d28e17f72"),
        ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
        ("", "d41d8cd98f00b204e9800998ecf8427e"),
    ],
)
def test_replica_id_from_pod_name_is_monoliths_md5_slice(pod_name: str, digest: str) -> None:
    """Monolith (utils.replica_id_from_pod_name): hex digits 10..19 of the name's MD5, as an integer. A pod must get
    the node Monolith's agent gives it (the crc32 used before gave another)."""
    assert replica_id_from_pod_name(pod_name) == int(digest[10:20], 16)


@given(st.text(min_size=1, max_size=40))
def test_replica_id_from_pod_name_is_stable_and_fits_40_bits(name: str) -> None:
    value = replica_id_from_pod_name(name)
    assert 0 <= value < 2**40
    assert value == replica_id_from_pod_name(name)


def test_replica_id_uses_pod_name_only_without_replica_id(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL_ENTRY)
    from_pod = resolve_environment(config, {"MY_POD_NAME": "abc"})
    assert from_pod.replica_id == 0xD24FB0D696  # RFC 1321: md5("abc") = 900150983c d24fb0d696 3f7d28e17f72
    explicit = resolve_environment(config, {"MY_POD_NAME": "serving-ps-3", "REPLICA_ID": "2"})
    assert explicit.replica_id == 2


def test_replica_id_is_minus_one_without_replica_id_and_pod_name(tmp_path: Path) -> None:
    """Monolith's "no id" (-1): its entry then takes a sequential node, its PS and dense register `-1`."""
    config = load_text(tmp_path, MINIMAL_ENTRY)
    assert resolve_environment(config, {}).replica_id == UNSET_REPLICA_ID
    assert AgentConfig(deploy_type=DeployType.ENTRY).replica_id == UNSET_REPLICA_ID


def test_replica_id_minus_one_counts_as_unset(tmp_path: Path) -> None:
    """Monolith reads REPLICA_ID with a default of -1 and falls back to the pod name on -1."""
    config = load_text(tmp_path, MINIMAL_ENTRY)
    assert resolve_environment(config, {"REPLICA_ID": "-1", "MY_POD_NAME": "abc"}).replica_id == 0xD24FB0D696
    assert resolve_environment(config, {"REPLICA_ID": "-1"}).replica_id == UNSET_REPLICA_ID
    with pytest.raises(ConfError, match="REPLICA_ID"):
        resolve_environment(config, {"REPLICA_ID": "-2"})


def test_num_shard_from_environment_and_conflict(tmp_path: Path) -> None:
    from_env = resolve_environment(load_text(tmp_path, MINIMAL_PS), {"MONOLITH_HOST_SHARD_N": "3"})
    assert from_env.num_shard == 3
    path = write_conf(tmp_path, MINIMAL_PS + "num_shard 2\n")
    with pytest.raises(ConfError) as exc:
        resolve_environment(load_agent_config(path), {"MONOLITH_HOST_SHARD_N": "3"})
    assert_conf_error(exc, "num_shard", path, 4)
    assert "MONOLITH_HOST_SHARD_N" in str(exc.value)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SHARD_ID": "x"}, "SHARD_ID"),
        ({"SHARD_ID": "-1"}, "SHARD_ID"),
        ({"PORT3": "65536"}, "PORT3"),
        ({"REPLICA_ID": "1.5"}, "REPLICA_ID"),
        ({"MONOLITH_HOST_SHARD_N": "0"}, "MONOLITH_HOST_SHARD_N"),
    ],
)
def test_bad_environment_values_name_the_variable(tmp_path: Path, env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfError, match=re.escape(variable)):
        resolve_environment(load_text(tmp_path, MINIMAL_ENTRY), env)


def test_shard_id_must_be_below_num_shard(tmp_path: Path) -> None:
    path = write_conf(tmp_path, MINIMAL_PS + "num_shard 2\n")
    with pytest.raises(ConfError) as exc:
        resolve_environment(load_agent_config(path), {"SHARD_ID": "2"})
    assert "SHARD_ID" in str(exc.value)
    assert "num_shard" in str(exc.value)
    assert f"{path}:4" in str(exc.value)


@pytest.mark.parametrize(
    ("env", "cluster"),
    [
        ({"TCE_LOGICAL_CLUSTER": "Logical", "TCE_CLUSTER": "tce", "TCE_PHYSICAL_CLUSTER": "phys"}, "logical"),
        ({"TCE_CLUSTER": "TCE", "TCE_PHYSICAL_CLUSTER": "phys"}, "tce"),
        ({"TCE_PHYSICAL_CLUSTER": "Phys"}, "phys"),
        ({"TCE_LOGICAL_CLUSTER": "", "TCE_CLUSTER": "tce"}, "tce"),  # empty counts as unset
    ],
)
def test_cluster_variables_in_monolith_order(env: dict[str, str], cluster: str) -> None:
    """Monolith's AgentConfig.cluster: TCE_LOGICAL_CLUSTER, TCE_CLUSTER, TCE_PHYSICAL_CLUSTER, lower-cased. Its
    agent and ours must name the same dc_aware folder, and its deploy conf (dc_aware true) must start with only
    TCE_LOGICAL_CLUSTER set."""
    resolved = resolve_environment(load_agent_config(FULL), {"TCE_INTERNAL_IDC": "LF", "SHARD_ID": "1", **env})
    assert (resolved.idc, resolved.cluster) == ("lf", cluster)


@pytest.mark.parametrize(
    ("text", "env", "variable"),
    [
        (MINIMAL_PS + "dc_aware true\n", {"TCE_INTERNAL_IDC": "lf", "TCE_CLUSTER": "a:b"}, "TCE_CLUSTER"),
        (MINIMAL_PS + "dc_aware true\n", {"TCE_INTERNAL_IDC": "l/f", "TCE_CLUSTER": "c"}, "TCE_INTERNAL_IDC"),
        ("deploy_type unified\nzk_servers z:1\nbzid b\nlayout_pattern l\n", {"TCE_PSM": "p:s"}, "TCE_PSM"),
        ("deploy_type unified\nzk_servers z:1\nbzid b\nlayout_pattern l\n", {"MY_POD_NAME": "a:b"}, "MY_POD_NAME"),
    ],
)
def test_names_with_a_colon_are_refused_where_they_become_registry_names(
    tmp_path: Path, text: str, env: dict[str, str], variable: str
) -> None:
    with pytest.raises(ConfError, match=variable):
        resolve_environment(load_text(tmp_path, text), env)
    resolve_environment(load_text(tmp_path, MINIMAL_PS), env)  # unused: no error


def test_dc_aware_needs_idc_and_cluster() -> None:
    config = load_agent_config(FULL)
    with pytest.raises(ConfError) as exc:
        resolve_environment(config, {"TCE_INTERNAL_IDC": "lf"})
    assert_conf_error(exc, "dc_aware", FULL, line_of(FULL, "dc_aware"))
    resolved = resolve_environment(config, {"TCE_INTERNAL_IDC": "lf", "TCE_CLUSTER": "c1", "SHARD_ID": "1"})
    assert (resolved.idc, resolved.cluster) == ("lf", "c1")
    assert resolved.ps_tasks() == (1, 3)


# --------------------------------------------------------------------------- ps tasks


def test_ps_tasks_example(tmp_path: Path) -> None:
    config = load_text(tmp_path, MINIMAL_PS + "num_shard 3\n")
    assert resolve_environment(config, {"SHARD_ID": "1"}).ps_tasks() == (1, 4, 7)


def test_ps_tasks_needs_resolved_config(tmp_path: Path) -> None:
    with pytest.raises(FailedPreconditionError):
        load_text(tmp_path, MINIMAL_PS).ps_tasks()


def test_entry_serves_no_ps_tasks(tmp_path: Path) -> None:
    assert resolve_environment(load_text(tmp_path, MINIMAL_ENTRY), {}).ps_tasks() == ()


@given(st.integers(min_value=1, max_value=64), st.integers(min_value=1, max_value=16))
def test_ps_tasks_partition_all_tasks_across_shards(num_ps: int, num_shard: int) -> None:
    base = config_from_entries(parse_conf_text(f"deploy_type ps\nbase_path /m\nnum_ps {num_ps}\n", file="mem.conf"))
    served: list[int] = []
    for shard in range(num_shard):
        env = {"SHARD_ID": str(shard), "MONOLITH_HOST_SHARD_N": str(num_shard)}
        tasks = resolve_environment(base, env).ps_tasks()
        assert all(task % num_shard == shard for task in tasks)
        served.extend(tasks)
    assert sorted(served) == list(range(num_ps))
